"""The numbers behind `docker stats`.

The kernel already keeps a container's accounts in its cgroup (see the
cgroups layer), but only as running totals: nanoseconds of CPU since the
group was made, bytes of memory now. A percentage needs two readings and
something to compare with, so the Engine API's stats document carries the
previous reading beside the current one (cpu_stats and precpu_stats) and,
in each, the host's own CPU time so far (system_cpu_usage: the sum of the
first seven columns of /proc/stat's "cpu" line, turned from clock ticks
into nanoseconds). The engine only reports; the client does the arithmetic.
`cpu_percent` and `memory_percent` below are that arithmetic, as the docker
CLI does it:

    CPU %    = container CPU time gained / host CPU time gained x online CPUs x 100
    memory % = (usage - inactive page cache) / limit x 100

The host's CPU time grows by one second per second for every CPU, so the
ratio alone is the container's share of the whole machine; multiplying by
the number of CPUs makes one busy core read 100%, as `top` would show it.
The page cache not recently used is left out of memory because the kernel
gives it back the moment it is needed (v1 calls it total_inactive_file, v2
inactive_file). A container with no memory limit is limited by the host,
so Docker reports the host's memory as its limit, and so do we.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from mini_docker.cgroups import Cgroup, CgroupError, open_cgroup
from mini_docker.cgroups.stats import flat_keyed, nested_keyed, read_text
from mini_docker.engine.logs import rfc3339_nano
from mini_docker.errors import NotFound

ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: "no previous reading"


def host_cpu(proc_stat: str = "/proc/stat") -> tuple[int, int]:
    """(system_cpu_usage in ns, online CPUs) from /proc/stat, as dockerd reads them.

    The "cpu" line's user, nice, system, idle, iowait, irq and softirq ticks,
    summed; and one "cpuN" line per online CPU.
    """
    ticks = 0
    cpus = 0
    with open(proc_stat) as f:
        for line in f:
            if line.startswith("cpu "):
                ticks = sum(int(value) for value in line.split()[1:8])
            elif line.startswith("cpu"):
                cpus += 1
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK"), cpus


def host_memory(meminfo: str = "/proc/meminfo") -> int:
    """The host's total memory in bytes (MemTotal)."""
    with open(meminfo) as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no MemTotal in {meminfo}")


def empty_cpu_stats() -> dict[str, Any]:
    """The cpu_stats of no reading at all: precpu_stats before the second one."""
    return {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}


def container_stats(group: Cgroup | str, *, container_id: str = "", name: str = "",
                    previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """One reading of the group's accounts, shaped as GET /containers/{id}/stats returns it.

    `group`: the container's cgroup, or its path ("mini-docker/<id>").
    `previous`: the reading before, whose cpu_stats become precpu_stats.
    NotFound if the group does not exist (the container is not running).
    """
    group = open_cgroup(group) if isinstance(group, str) else group
    stats = group.stats()
    system_ns, cpus = host_cpu()
    read = rfc3339_nano()
    memory: dict[str, Any] = {}
    if stats.memory_usage is not None:
        machine = host_memory()
        limit = stats.memory_limit if stats.memory_limit is not None else machine
        memory = {"usage": stats.memory_usage, "limit": min(limit, machine),
                  "stats": flat_keyed(_read(group, "memory", "memory.stat"))}
        if stats.memory_max_usage is not None:
            memory["max_usage"] = stats.memory_max_usage
    cpu_usage = {"total_usage": stats.cpu_usage_ns or 0,
                 "usage_in_kernelmode": stats.cpu_system_ns or 0,
                 "usage_in_usermode": stats.cpu_user_ns or 0}
    percpu = _percpu(group)
    if percpu:
        cpu_usage["percpu_usage"] = percpu
    pids = {"current": stats.pids_current or 0}
    if stats.pids_limit is not None:
        pids["limit"] = stats.pids_limit
    return {
        "read": read,
        "preread": previous["read"] if previous else ZERO_TIME,
        "pids_stats": pids,
        "blkio_stats": {"io_service_bytes_recursive": _io_service_bytes(group)},
        "cpu_stats": {
            "cpu_usage": cpu_usage,
            "system_cpu_usage": system_ns,
            "online_cpus": cpus,
            "throttling_data": {"periods": stats.cpu_periods or 0,
                                "throttled_periods": stats.cpu_throttled_periods or 0,
                                "throttled_time": stats.cpu_throttled_ns or 0},
        },
        "precpu_stats": previous["cpu_stats"] if previous else empty_cpu_stats(),
        "memory_stats": memory,
        "name": f"/{name}" if name and not name.startswith("/") else name,
        "id": container_id,
    }


def stats_stream(group: Cgroup | str, *, container_id: str = "", name: str = "",
                 interval: float = 1.0,
                 is_running: Callable[[], bool] | None = None) -> Iterator[dict[str, Any]]:
    """A reading every `interval` seconds, each with the one before as its precpu.

    The first has no previous reading (a CPU percentage needs the second).
    Ends when `is_running()` says the container stopped or its group is gone.
    """
    group = open_cgroup(group) if isinstance(group, str) else group
    previous = None
    while is_running is None or is_running():
        try:
            previous = container_stats(group, container_id=container_id, name=name,
                                       previous=previous)
        except NotFound:
            return
        yield previous
        time.sleep(interval)


def cpu_percent(stats: dict[str, Any]) -> float:
    """CPU use between precpu_stats and cpu_stats, 100 per busy CPU (docker CLI's formula)."""
    now, before = stats["cpu_stats"], stats["precpu_stats"]
    cpu_delta = now["cpu_usage"]["total_usage"] - before["cpu_usage"]["total_usage"]
    system_delta = now.get("system_cpu_usage", 0) - before.get("system_cpu_usage", 0)
    cpus = now.get("online_cpus") or len(now["cpu_usage"].get("percpu_usage") or ())
    if system_delta > 0 and cpu_delta > 0:
        return cpu_delta / system_delta * cpus * 100.0
    return 0.0


def memory_usage(stats: dict[str, Any]) -> int:
    """Memory in use without the inactive page cache, as the docker CLI shows it."""
    memory = stats.get("memory_stats") or {}
    usage = memory.get("usage", 0)
    counters = memory.get("stats") or {}
    inactive = counters.get("total_inactive_file", counters.get("inactive_file"))  # v1, v2
    return usage - inactive if inactive is not None and inactive < usage else usage


def memory_percent(stats: dict[str, Any]) -> float:
    """memory_usage as a share of the limit (the host's memory if none was set)."""
    limit = (stats.get("memory_stats") or {}).get("limit", 0)
    return memory_usage(stats) / limit * 100.0 if limit else 0.0


def _read(group: Cgroup, controller: str, file: str) -> str | None:
    """A file of the group's `controller`, or None where the host has no such thing."""
    try:
        return read_text(group.file_path(controller, file))
    except CgroupError:  # the controller is not mounted (v1)
        return None


def _percpu(group: Cgroup) -> list[int]:
    """CPU time by CPU, in ns: v1's cpuacct.usage_percpu (v2 does not keep it)."""
    if group.driver != "v1":
        return []
    return [int(value) for value in (_read(group, "cpuacct", "cpuacct.usage_percpu") or "").split()]


def _io_service_bytes(group: Cgroup) -> list[dict[str, Any]]:
    """Bytes read and written, per block device: v1's io_service_bytes lines
    ("8:0 Read 4096"), or v2's io.stat ("8:0 rbytes=4096 wbytes=0")."""
    found = []
    if group.driver == "v1":
        text = (_read(group, "blkio", "blkio.throttle.io_service_bytes_recursive")
                or _read(group, "blkio", "blkio.throttle.io_service_bytes"))
        for line in (text or "").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in ("Read", "Write") and ":" in parts[0]:
                major, minor = parts[0].split(":")
                found.append(_io_entry(major, minor, parts[1].lower(), parts[2]))
    else:
        for device, values in nested_keyed(_read(group, "io", "io.stat")).items():
            major, _, minor = device.partition(":")
            found.append(_io_entry(major, minor, "read", values.get("rbytes", 0)))
            found.append(_io_entry(major, minor, "write", values.get("wbytes", 0)))
    return found


def _io_entry(major: str, minor: str, op: str, value: str | int) -> dict[str, Any]:
    return {"major": int(major), "minor": int(minor), "op": op, "value": int(value)}
