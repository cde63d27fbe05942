"""What a container may use: the limits, checked before anything touches the kernel.

`docker run -m 512m --cpus 1.5 --pids-limit 100` becomes, in the OCI
config.json that runc reads, a `linux.resources` object: memory in bytes,
CPU time as a quota per period, a number of tasks. `Resources` is that object
as a Python record, with one difference: it refuses to exist with a value the
kernel would refuse, or one that makes no sense ("10x" bytes, 4 CPUs on a
2-CPU machine, a pids limit of 0). Every check happens here, in plain
Python, so that a bad request fails before the first cgroup directory is
made and no half-configured group is ever left behind.

Each field is None when the request leaves that limit alone; -1 means
"no limit" where the OCI specification says so (memory, swap, CPU quota,
pids). The drivers (v1.py, v2.py) turn these fields into writes to files.

Records here are plain classes, not dataclasses: importing dataclasses costs
the mini-runc command 7 ms of its ~30, and runc's speed is the target.
"""

from __future__ import annotations

import os
import re

from mini_docker.errors import InvalidArgument
from mini_docker.records import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the cost of importing typing
if TYPE_CHECKING:
    from typing import Any

UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
MIN_MEMORY = 6 * 1024 * 1024  # docker refuses less: the runtime itself would not fit
DEFAULT_PERIOD = 100_000  # µs: the CFS period docker uses for --cpus
MIN_QUOTA = 1000  # µs: the smallest quota the kernel accepts
MAX_SHARES = 262_144
PIDS_MESSAGE = "a pids limit must be positive, or -1 for none"


def parse_memory(text: str | int) -> int:
    """Bytes from docker's size syntax: "512m", "1.5g", "64k", "100" (bytes).

    The units are powers of 1024, case does not matter, and "mb", "MiB" and
    "m" all mean the same, as in docker's `RAMInBytes`.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise InvalidArgument(f"invalid memory size '{text}'")
        return text
    found = re.fullmatch(r"(\d+(?:\.\d+)?) ?([bkmgtp]?)(?:i?b)?", str(text).strip(), re.I)
    if not found:
        raise InvalidArgument(f"invalid memory size '{text}'")
    return int(float(found[1]) * UNITS[found[2].lower()])


def parse_cpus(text: str | float) -> float:
    """A number of CPUs as `docker run --cpus` takes it: more than 0, at most this machine's."""
    try:
        cpus = float(text)
    except (TypeError, ValueError):
        raise InvalidArgument(f"invalid cpus value '{text}'") from None
    available = os.cpu_count() or 1
    if not cpus > 0:  # also refuses NaN
        raise InvalidArgument(f"cpus {text} must be more than 0")
    if cpus > available:
        raise InvalidArgument(f"cpus {text} is more than the {available} CPUs this machine has")
    if cpus * DEFAULT_PERIOD < MIN_QUOTA:
        raise InvalidArgument(f"cpus {text} is less than 0.01, the smallest share the kernel"
                              " enforces (1 ms in every 100 ms)")
    return cpus


def validate_pids_limit(limit: int) -> int:
    """A pids limit: the most tasks the group may hold, or -1 for no limit."""
    if not isinstance(limit, int) or limit == 0 or limit < -1:
        raise InvalidArgument(PIDS_MESSAGE)
    return limit


def parse_cpu_list(text: str, what: str = "cpuset cpus") -> list[int]:
    """The kernel's list syntax, "0-2,5": the numbers it names, in order."""
    numbers: list[int] = []
    for part in text.split(","):
        found = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", part)
        if not found or (found[2] and int(found[2]) < int(found[1])):
            raise InvalidArgument(f"invalid {what} '{text}': use a list such as 0-2,5")
        numbers.extend(range(int(found[1]), int(found[2] or found[1]) + 1))
    return numbers


def _online(path: str) -> list[int]:
    """The numbers in a sysfs list such as /sys/devices/system/node/online ([0] if unreadable)."""
    try:
        with open(path) as f:
            return parse_cpu_list(f.read().strip(), path)
    except (OSError, InvalidArgument):
        return [0]


def _ranges(numbers: list[int]) -> str:
    return ",".join(str(n) for n in numbers)


# ruff: noqa: RUF023 - a record's __slots__ list its fields in their order, not sorted


class DeviceRule(Value):
    """One entry of the device access list (OCI linux.resources.devices).

    type: "a" (all), "c" (character) or "b" (block); major, minor: None is
    every number ("*"); access: a subset of "rwm" (read, write, mknod).
    """

    __slots__ = ("allow", "type", "major", "minor", "access")

    def __init__(self, allow: bool, type: str = "a", major: int | None = None,
                 minor: int | None = None, access: str = "rwm") -> None:
        self.allow = allow
        self.type = type
        self.major = major
        self.minor = minor
        self.access = access
        if self.type not in ("a", "b", "c"):
            raise InvalidArgument(f"invalid device type '{self.type}': use a, b or c")
        if not self.access or set(self.access) - set("rwm"):
            raise InvalidArgument(f"invalid device access '{self.access}': use letters of rwm")
        for number in (self.major, self.minor):
            if number is not None and (not isinstance(number, int) or number < 0):
                raise InvalidArgument(f"invalid device number {number!r}")

    def rule(self) -> str:
        """The line the v1 devices controller reads: "c 1:3 rwm", "a *:* rwm"."""
        def number(n: int | None) -> str:
            return "*" if n is None else str(n)
        return f"{self.type} {number(self.major)}:{number(self.minor)} {self.access}"


class ThrottleDevice(Value):
    """A rate limit on one block device (OCI blockIO.throttle*Device): bytes or I/Os a second."""

    __slots__ = ("major", "minor", "rate")

    def __init__(self, major: int, minor: int, rate: int) -> None:
        self.major = major
        self.minor = minor
        self.rate = rate
        if min(self.major, self.minor, self.rate) < 0:
            raise InvalidArgument(f"invalid throttle {self.major}:{self.minor} {self.rate}")


class Resources(Value):
    """Limits for one cgroup, the fields of OCI linux.resources; None leaves one alone."""

    __slots__ = ("memory", "memory_reservation", "memory_swap", "cpu_shares", "cpu_quota",
                 "cpu_period", "cpus", "cpuset_cpus", "cpuset_mems", "pids_limit", "blkio_weight",
                 "throttle_read_bps", "throttle_write_bps", "throttle_read_iops",
                 "throttle_write_iops", "devices")

    def __init__(
        self,
        memory: int | None = None,  # bytes, -1 for none (memory.limit)
        memory_reservation: int | None = None,  # bytes: a soft floor/target (memory.reservation)
        memory_swap: int | None = None,  # memory + swap in bytes, -1 for none (memory.swap)
        cpu_shares: int | None = None,  # relative weight, 1024 is the default (cpu.shares)
        cpu_quota: int | None = None,  # µs of CPU time per period, -1 for none (cpu.quota)
        cpu_period: int | None = None,  # µs (cpu.period)
        cpus: float | None = None,  # docker's --cpus: a quota over the default period
        cpuset_cpus: str | None = None,  # "0-1" (cpu.cpus)
        cpuset_mems: str | None = None,  # NUMA nodes, "0" (cpu.mems)
        pids_limit: int | None = None,  # tasks, -1 for none (pids.limit)
        blkio_weight: int | None = None,  # 10-1000 (blockIO.weight)
        throttle_read_bps: tuple[ThrottleDevice, ...] = (),
        throttle_write_bps: tuple[ThrottleDevice, ...] = (),
        throttle_read_iops: tuple[ThrottleDevice, ...] = (),
        throttle_write_iops: tuple[ThrottleDevice, ...] = (),
        devices: tuple[DeviceRule, ...] = (),
    ) -> None:
        self.memory = memory
        self.memory_reservation = memory_reservation
        self.memory_swap = memory_swap
        self.cpu_shares = cpu_shares
        self.cpu_quota = cpu_quota
        self.cpu_period = cpu_period
        self.cpus = cpus
        self.cpuset_cpus = cpuset_cpus
        self.cpuset_mems = cpuset_mems
        self.pids_limit = pids_limit
        self.blkio_weight = blkio_weight
        self.throttle_read_bps = tuple(throttle_read_bps)
        self.throttle_write_bps = tuple(throttle_write_bps)
        self.throttle_read_iops = tuple(throttle_read_iops)
        self.throttle_write_iops = tuple(throttle_write_iops)
        self.devices = tuple(devices)
        self._check_memory()
        self._check_cpu()
        if self.pids_limit is not None:
            validate_pids_limit(self.pids_limit)
        if self.blkio_weight is not None and not 10 <= self.blkio_weight <= 1000:
            raise InvalidArgument(f"blkio weight {self.blkio_weight} is out of range: use 10 to 1000")

    def _check_memory(self) -> None:
        for name in ("memory", "memory_reservation", "memory_swap"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < -1):
                raise InvalidArgument(f"invalid {name.replace('_', ' ')} {value!r}:"
                                      " use a number of bytes, or -1 for no limit")
        if self.memory is not None and 0 <= self.memory < MIN_MEMORY:
            raise InvalidArgument("Minimum memory limit allowed is 6MB")
        limited = self.memory is not None and self.memory > 0
        if self.memory_swap is not None and self.memory_swap > 0:
            if not limited:
                raise InvalidArgument("You should always set the Memory limit when using"
                                      " Memoryswap limit")
            if self.memory_swap < self.memory:
                raise InvalidArgument("Minimum memoryswap limit should be larger than memory limit")
        if limited and self.memory_reservation is not None and self.memory_reservation > self.memory:
            raise InvalidArgument("Minimum memory limit can not be less than memory reservation limit")

    def _check_cpu(self) -> None:
        if self.cpus is not None:
            parse_cpus(self.cpus)
            if self.cpu_quota is not None or self.cpu_period is not None:
                raise InvalidArgument("Conflicting options: cpus and a CPU quota or period"
                                      " cannot both be set")
        if self.cpu_shares is not None and not 2 <= self.cpu_shares <= MAX_SHARES:
            raise InvalidArgument(f"cpu shares {self.cpu_shares} is out of range: use 2 to {MAX_SHARES}")
        if self.cpu_period is not None and not 1000 <= self.cpu_period <= 1_000_000:
            raise InvalidArgument(f"cpu period {self.cpu_period} is out of range:"
                                  " use 1000 to 1000000 µs")
        if self.cpu_quota is not None and self.cpu_quota != -1 and self.cpu_quota < MIN_QUOTA:
            raise InvalidArgument(f"cpu quota {self.cpu_quota} is out of range:"
                                  " use 1000 µs or more, or -1 for none")
        if self.cpuset_cpus is not None:
            available = os.cpu_count() or 1
            wanted = parse_cpu_list(self.cpuset_cpus)
            if max(wanted) >= available:
                raise InvalidArgument(f"Requested CPUs are not available - requested"
                                      f" {self.cpuset_cpus}, available: 0-{available - 1}")
        if self.cpuset_mems is not None:
            online = _online("/sys/devices/system/node/online")
            if not set(parse_cpu_list(self.cpuset_mems, "cpuset mems")) <= set(online):
                raise InvalidArgument(f"Requested memory nodes are not available - requested"
                                      f" {self.cpuset_mems}, available: {_ranges(online)}")

    def cpu_max(self) -> tuple[int | None, int | None]:
        """(quota, period) in µs after turning `cpus` into them; None where unset."""
        if self.cpus is not None:
            return round(self.cpus * DEFAULT_PERIOD), DEFAULT_PERIOD
        return self.cpu_quota, self.cpu_period

    def throttles(self) -> dict[str, tuple[ThrottleDevice, ...]]:
        """The device rate limits by kind: "read_bps", "write_bps", "read_iops", "write_iops"."""
        kinds = ("read_bps", "write_bps", "read_iops", "write_iops")
        return {k: getattr(self, f"throttle_{k}") for k in kinds if getattr(self, f"throttle_{k}")}

    def is_empty(self) -> bool:
        return all(getattr(self, name) in (None, ()) for name in self.__slots__)

    @classmethod
    def from_oci(cls, doc: dict[str, Any]) -> "Resources":
        """Read the OCI runtime spec's `linux.resources` object (config.json).

        A wrong type, an unknown key, or a setting these drivers do not apply
        (swappiness, realtime CPU time, hugepages...) is an InvalidArgument that
        names its JSON path: a limit is never dropped in silence. As runc does,
        0 means "not set" for the memory, CPU and block I/O numbers.
        """
        from mini_docker.cgroups.oci import resources_from_oci
        return resources_from_oci(doc)


def needed_controllers(resources: Resources) -> list[str]:
    """The controllers (by their v1 names) that `resources` asks something of."""
    r = resources
    wanted = {
        "memory": (r.memory, r.memory_reservation, r.memory_swap),
        "cpu": (r.cpu_shares, *r.cpu_max()),
        "cpuset": (r.cpuset_cpus, r.cpuset_mems),
        "pids": (r.pids_limit,),
        "blkio": (r.blkio_weight, *r.throttles().values()),
        "devices": (r.devices,),
    }
    return [name for name, values in wanted.items() if any(v not in (None, ()) for v in values)]
