"""What a cgroup has used: the numbers behind `docker stats`.

The kernel keeps the accounts and shows them as small text files, in a
handful of formats that the v2 documentation names (cgroup-v2.rst,
"Interface Files"): a single value ("536870912", or "max"), flat keyed
lines ("anon 1234"), and nested keyed lines ("8:0 rbytes=10 wbytes=0").
cgroup v1 uses the same shapes under other file names. The parsers here
read those shapes; each driver knows which file holds which number and
fills one `Stats` record, so the layer above never sees the difference.

Records here are plain classes, not dataclasses: importing dataclasses costs
the mini-runc command 7 ms of its ~30, and runc's speed is the target.
"""

from __future__ import annotations

import errno

from mini_docker.records import Value

# A v1 "no limit" reads as the largest page-aligned 64-bit number, not as "max".
UNLIMITED = 1 << 62


# ruff: noqa: RUF023 - a record's __slots__ list its fields in their order, not sorted


class Stats(Value):
    """One reading of a cgroup's accounts; None where this host does not keep the number.

    Memory in bytes, CPU time in nanoseconds, I/O in bytes, all since the
    group was made (max_usage: the highest usage seen).
    """

    __slots__ = ("memory_usage", "memory_limit", "memory_max_usage", "memory_cache",
                 "memory_anon", "oom_kills", "cpu_usage_ns", "cpu_user_ns", "cpu_system_ns",
                 "cpu_periods", "cpu_throttled_periods", "cpu_throttled_ns", "pids_current",
                 "pids_limit", "io_read_bytes", "io_write_bytes")

    def __init__(
        self,
        memory_usage: int | None = None,
        memory_limit: int | None = None,  # None: no limit
        memory_max_usage: int | None = None,
        memory_cache: int | None = None,  # page cache: v1 "cache", v2 "file"
        memory_anon: int | None = None,  # v1 "rss", v2 "anon"
        oom_kills: int | None = None,
        cpu_usage_ns: int | None = None,
        cpu_user_ns: int | None = None,
        cpu_system_ns: int | None = None,
        cpu_periods: int | None = None,  # CFS periods in which the group could run
        cpu_throttled_periods: int | None = None,  # periods in which it ran out of quota
        cpu_throttled_ns: int | None = None,
        pids_current: int | None = None,
        pids_limit: int | None = None,  # None: no limit
        io_read_bytes: int | None = None,
        io_write_bytes: int | None = None,
    ) -> None:
        self.memory_usage = memory_usage
        self.memory_limit = memory_limit
        self.memory_max_usage = memory_max_usage
        self.memory_cache = memory_cache
        self.memory_anon = memory_anon
        self.oom_kills = oom_kills
        self.cpu_usage_ns = cpu_usage_ns
        self.cpu_user_ns = cpu_user_ns
        self.cpu_system_ns = cpu_system_ns
        self.cpu_periods = cpu_periods
        self.cpu_throttled_periods = cpu_throttled_periods
        self.cpu_throttled_ns = cpu_throttled_ns
        self.pids_current = pids_current
        self.pids_limit = pids_limit
        self.io_read_bytes = io_read_bytes
        self.io_write_bytes = io_write_bytes


class PressureLine(Value):
    """Pressure stall information: the share of time tasks waited (percent, over
    10, 60 and 300 seconds) and the total time waited in µs."""

    __slots__ = ("avg10", "avg60", "avg300", "total_us")

    def __init__(self, avg10: float, avg60: float, avg300: float, total_us: int) -> None:
        self.avg10 = avg10
        self.avg60 = avg60
        self.avg300 = avg300
        self.total_us = total_us


class Pressure(Value):
    """A <resource>.pressure file: "some" task was stalled, or "full": all were."""

    __slots__ = ("some", "full")

    def __init__(self, some: PressureLine, full: PressureLine | None) -> None:
        self.some = some
        self.full = full


def read_text(path: str) -> str | None:
    """A cgroup file's text, or None if it does not exist (a controller not enabled).

    A group being removed at that moment also counts as absent: the kernel
    answers a read of a file in a group it is tearing down with ENODEV.
    """
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ENODEV:
            return None
        raise


def single_value(text: str | None) -> int | None:
    """A single-value file: a number, or None for "max" (v2) or a v1 "no limit"."""
    if text is None or text.strip() in ("", "max"):
        return None
    value = int(text.split()[0])
    return None if value >= UNLIMITED else value


def flat_keyed(text: str | None) -> dict[str, int]:
    """Lines of "key value", as memory.stat, cpu.stat, memory.events, cgroup.events."""
    found = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            found[parts[0]] = int(parts[1])
    return found


def nested_keyed(text: str | None) -> dict[str, dict[str, str]]:
    """Lines of "key sub=value sub=value", as io.stat, io.max and the pressure files."""
    found = {}
    for line in (text or "").splitlines():
        key, *pairs = line.split()
        found[key] = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    return found


def parse_pressure(text: str | None) -> Pressure | None:
    """A pressure file ("some avg10=0.00 avg60=0.00 avg300=0.00 total=0"), or None."""
    lines = {key: PressureLine(float(v["avg10"]), float(v["avg60"]), float(v["avg300"]),
                               int(v["total"]))
             for key, v in nested_keyed(text).items()}
    return Pressure(lines["some"], lines.get("full")) if "some" in lines else None


def io_bytes(table: dict[str, dict[str, str]], read: str, write: str) -> tuple[int, int]:
    """Bytes read and written, summed over the devices of an io.stat-style table."""
    return (sum(int(row.get(read, 0)) for row in table.values()),
            sum(int(row.get(write, 0)) for row in table.values()))
