"""`pause` and `resume`: freeze every process of a container, and thaw it.

This is the cgroup freezer (chapter 3): the kernel stops scheduling every
process in the group at once, without a signal they could see or handle.
`docker pause` is exactly this.
"""

from __future__ import annotations

import os

from mini_docker.errors import Conflict
from mini_docker.runtime.state import StateDir


def pause(container_id: str, *, root: str | os.PathLike | None = None) -> None:
    states, group = _running_group(container_id, root, "running")
    group.freeze()


def resume(container_id: str, *, root: str | os.PathLike | None = None) -> None:
    states, group = _running_group(container_id, root, "paused")
    group.thaw()


def _running_group(container_id: str, root, expected: str):
    states = StateDir(root) if root else StateDir()
    state = states.load(container_id)
    status = states.status(state)
    if status != expected:
        raise Conflict(f"container {container_id} is {status}, not {expected}")
    group = states.group(state)
    if group is None:
        raise Conflict(f"container {container_id} has no cgroup to freeze")
    return states, group
