"""`events --stats`: one reading of a container's accounts, in runc's shape.

The numbers come from the container's cgroup (chapter 3); this module only
arranges them the way `runc events --stats` prints them, so that tools which
read runc's output read ours.
"""

from __future__ import annotations

import os

from mini_docker.errors import Conflict
from mini_docker.runtime.state import StateDir


def stats(container_id: str, *, root: str | os.PathLike | None = None) -> dict:
    states = StateDir(root) if root else StateDir()
    state = states.load(container_id)
    group = states.group(state)
    if group is None or not group.exists():
        raise Conflict(f"container {container_id} has no cgroup to read")
    s = group.stats()
    return {
        "type": "stats",
        "id": container_id,
        "data": {
            "cpu": {
                "usage": {"total": s.cpu_usage_ns, "kernel": s.cpu_system_ns,
                          "user": s.cpu_user_ns},
                "throttling": {"periods": s.cpu_periods,
                               "throttledPeriods": s.cpu_throttled_periods,
                               "throttledTime": s.cpu_throttled_ns},
            },
            "memory": {
                "usage": {"usage": s.memory_usage, "max": s.memory_max_usage,
                          "limit": s.memory_limit},
                "cache": s.memory_cache,
                "raw": {"anon": s.memory_anon},
                "oom_kills": s.oom_kills,
            },
            "pids": {"current": s.pids_current, "limit": s.pids_limit},
            "blkio": {"read_bytes": s.io_read_bytes, "write_bytes": s.io_write_bytes},
        },
    }
