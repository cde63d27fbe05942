"""The cgroup v2 driver: one directory in one unified tree.

cgroup v2 has a single hierarchy, usually mounted at /sys/fs/cgroup, and a
group is a single directory in it. Controllers are not separate trees
but switches: a parent lists in cgroup.subtree_control which controllers
its children get, and only then do files such as memory.max appear in
them. So `create()` walks down from the root, switching on (+memory +cpu
...) whatever each level can hand down. What the root itself can hand down
is listed in its cgroup.controllers; on a hybrid host that list is nearly
empty, because the controllers are held by the v1 hierarchies.

Some things v1 had as controllers are core in v2: every group has
cgroup.freeze (and cgroup.events to say when freezing is done),
cgroup.kill (SIGKILL to everything inside, atomically, kernel 5.14+),
cpu.stat's usage and the pressure files. Device access is no longer a
controller at all but an eBPF program attached to the group; this driver
does not load one, so `set()` accepts device rules and returns a warning
saying they are not enforced. (A container run by mini_docker still sees
only the device nodes its runtime put in its /dev.)

The numbers change too: cpu.weight (1-10000) replaces cpu.shares, io.weight
replaces blkio.weight, memory.swap.max counts swap alone instead of
memory plus swap. The conversions are runc's, so the same OCI config means
the same thing on either kind of host.
"""

from __future__ import annotations

import os

from mini_docker.cgroups.base import (Cgroup, CgroupError, Write, gone_while_waiting, wait_until,
                                      write_file)
from mini_docker.cgroups.resources import DEFAULT_PERIOD, Resources, needed_controllers
from mini_docker.cgroups.stats import (Pressure, Stats, flat_keyed, io_bytes, nested_keyed,
                                       parse_pressure, read_text, single_value)

CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")  # the ones create() switches on
V2_NAME = {"blkio": "io"}  # a v1 controller name -> its v2 name
DEVICES_WARNING = ("device rules are not enforced by the cgroup v2 driver: v2 controls devices"
                   " with an eBPF program, which this driver does not load")
IO_KEYS = {"read_bps": "rbps", "write_bps": "wbps", "read_iops": "riops", "write_iops": "wiops"}
HINTS = {"memory.swap.max": "swap accounting is off: boot with swapaccount=1 to limit swap"}


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2-262144, default 1024) as cpu.weight (1-10000, default 100), as runc does."""
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_to_io_weight(weight: int) -> int:
    """blkio.weight (10-1000) as io.weight (1-10000), as runc does."""
    return 1 + ((weight - 10) * 9999) // 990


def swap_max(memory: int | None, memory_swap: int | None) -> str | None:
    """memory.swap.max from OCI's memory + swap total, or None to leave it alone.

    v1 limits memory plus swap together; v2 limits swap alone, so the value
    is the difference (runc's ConvertMemorySwapToCgroupV2Value).
    """
    if memory_swap is None:
        return "max" if memory == -1 else None  # no memory limit: no swap limit either
    if memory_swap == -1:
        return "max"
    return str(memory_swap - (memory or 0))


class V2Cgroup(Cgroup):
    """A group in the cgroup2 tree mounted at `root`."""

    driver = "v2"

    def __init__(self, path: str, root: str = "/sys/fs/cgroup") -> None:
        super().__init__(path)
        self.root = root.rstrip("/") or "/"
        self.dir = f"{self.root}/{self.path}"

    def directories(self) -> list[str]:
        return [self.dir]

    def directory_fd(self) -> int | None:
        return os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def renamed(self, path: str) -> Cgroup:
        raise CgroupError(f"cannot rename cgroup {self.path}: cgroup v2 does not rename groups")

    def file_path(self, controller: str, file: str) -> str:
        return f"{self.dir}/{file}"

    def missing_file(self, write: Write) -> str:
        return HINTS.get(write.file) or super().missing_file(write)

    def _ancestors(self) -> list[str]:
        """The root and each directory between it and the group."""
        parts = self.path.split("/")
        return [self.root] + [f"{self.root}/{'/'.join(parts[:i])}" for i in range(1, len(parts))]

    def _controllers(self, directory: str) -> list[str]:
        return (read_text(f"{directory}/cgroup.controllers") or "").split()

    def available(self) -> list[str]:
        """The controllers this group has or, not made yet, could be given.

        create() hands down, level by level, whatever the root has, so what
        the root lists is what a new group will get.
        """
        return self._controllers(self.dir if os.path.isdir(self.dir) else self.root)

    def require(self, resources: Resources) -> None:
        available = self.available()
        for v1_name in needed_controllers(resources):
            name = V2_NAME.get(v1_name, v1_name)
            if name == "devices" or name in available:
                continue
            at_root = name in self._controllers(self.root)
            fix = (f"enable it with: echo +{name} > <parent>/cgroup.subtree_control" if at_root else
                   "on a hybrid host it belongs to a v1 hierarchy: use the v1 driver, or boot with"
                   " systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all")
            raise CgroupError(f"the {name} cgroup controller is not available to {self.dir}"
                              f" (cgroup.controllers: {' '.join(available) or 'empty'}): {fix}")

    def create(self) -> None:
        self._make_dirs(self.root)
        for directory in self._ancestors():
            self._enable(directory)

    def _enable(self, directory: str) -> None:
        """Hand down to `directory`'s children every controller we use that it has."""
        enabled = (read_text(f"{directory}/cgroup.subtree_control") or "").split()
        wanted = [c for c in CONTROLLERS if c in self._controllers(directory) and c not in enabled]
        if wanted:
            write_file(f"{directory}/cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))

    def add(self, pid: int) -> None:
        write_file(f"{self.dir}/cgroup.procs", str(pid))

    def join(self) -> None:
        # v2 moves whole processes only (cgroup.threads is for threaded groups)
        write_file(f"{self.dir}/cgroup.procs", "0")

    def plan(self, resources: Resources) -> tuple[list[Write], list[str]]:
        r = resources
        writes: list[Write] = []
        warnings: list[str] = []
        if r.memory is not None:
            writes.append(Write("memory", "memory.max", _limit(r.memory)))
        if r.memory_reservation is not None:  # docker's --memory-reservation is memory.low
            writes.append(Write("memory", "memory.low", _limit(r.memory_reservation)))
        swap = swap_max(r.memory, r.memory_swap)
        if swap is not None and (os.path.exists(f"{self.dir}/memory.swap.max") or swap not in ("max", "0")):
            writes.append(Write("memory", "memory.swap.max", swap))
        if r.cpu_shares is not None:
            writes.append(Write("cpu", "cpu.weight", str(shares_to_weight(r.cpu_shares))))
        quota, period = r.cpu_max()
        if quota is not None or period is not None:
            writes.append(Write("cpu", "cpu.max",
                                f"{_limit(quota if quota is not None else -1)} {period or DEFAULT_PERIOD}"))
        if r.cpuset_cpus is not None:
            writes.append(Write("cpuset", "cpuset.cpus", r.cpuset_cpus))
        if r.cpuset_mems is not None:
            writes.append(Write("cpuset", "cpuset.mems", r.cpuset_mems))
        if r.pids_limit is not None:
            writes.append(Write("pids", "pids.max", _limit(r.pids_limit)))
        if r.blkio_weight is not None:
            if os.path.exists(f"{self.dir}/io.bfq.weight"):  # BFQ takes blkio's scale as is
                writes.append(Write("io", "io.bfq.weight", str(r.blkio_weight)))
            else:
                writes.append(Write("io", "io.weight", f"default {blkio_to_io_weight(r.blkio_weight)}"))
        writes += self._io_max(r)
        if r.devices:
            warnings.append(DEVICES_WARNING)
        return writes, warnings

    def _io_max(self, r: Resources) -> list[Write]:
        """One io.max line per device: "8:0 rbps=1048576 wiops=120"."""
        lines: dict[str, list[str]] = {}
        for kind, devices in r.throttles().items():
            for d in devices:
                lines.setdefault(f"{d.major}:{d.minor}", []).append(f"{IO_KEYS[kind]}={d.rate}")
        return [Write("io", "io.max", f"{dev} {' '.join(keys)}") for dev, keys in lines.items()]

    def _read(self, file: str) -> str | None:
        return read_text(f"{self.dir}/{file}")

    def stats(self) -> Stats:
        self.require_exists()
        memory_stat = flat_keyed(self._read("memory.stat"))
        cpu_stat = flat_keyed(self._read("cpu.stat"))
        has_io = self._read("io.stat") is not None
        read_bytes, write_bytes = io_bytes(nested_keyed(self._read("io.stat")), "rbytes", "wbytes")

        def ns(key: str) -> int | None:
            return cpu_stat[key] * 1000 if key in cpu_stat else None
        return Stats(
            memory_usage=single_value(self._read("memory.current")),
            memory_limit=single_value(self._read("memory.max")),
            memory_max_usage=single_value(self._read("memory.peak")),
            memory_cache=memory_stat.get("file"),
            memory_anon=memory_stat.get("anon"),
            oom_kills=self.oom_events() if self._read("memory.events") is not None else None,
            cpu_usage_ns=ns("usage_usec"),
            cpu_user_ns=ns("user_usec"),
            cpu_system_ns=ns("system_usec"),
            cpu_periods=cpu_stat.get("nr_periods"),
            cpu_throttled_periods=cpu_stat.get("nr_throttled"),
            cpu_throttled_ns=ns("throttled_usec"),
            pids_current=single_value(self._read("pids.current")),
            pids_limit=single_value(self._read("pids.max")),
            io_read_bytes=read_bytes if has_io else None,
            io_write_bytes=write_bytes if has_io else None,
        )

    def pressure(self) -> dict[str, Pressure]:
        found = {}
        for resource in ("cpu", "memory", "io", "irq"):
            parsed = parse_pressure(self._read(f"{resource}.pressure"))
            if parsed is not None:
                found[resource] = parsed
        return found

    def freeze(self) -> None:
        self._set_frozen(1)

    def thaw(self) -> None:
        self._set_frozen(0)

    def _set_frozen(self, value: int) -> None:
        """Write cgroup.freeze, then wait for cgroup.events to report the group (un)frozen."""
        path = f"{self.dir}/cgroup.freeze"
        if not os.path.exists(path):
            raise CgroupError(f"{path} is missing: freezing a v2 group needs kernel 5.2 or later")
        write_file(path, str(value))

        def reached() -> bool:
            if not os.path.exists(path):  # removed meanwhile (see V1Cgroup._freezer)
                return gone_while_waiting(self.path, thawing=not value)
            return self._events().get("frozen") == value

        wait_until(reached, 5.0, f"cgroup {self.path} to be {'frozen' if value else 'thawed'}")

    def _events(self) -> dict[str, int]:
        return flat_keyed(self._read("cgroup.events"))

    def frozen(self) -> bool:
        return self._events().get("frozen") == 1

    def kill_all(self) -> None:
        """cgroup.kill where the kernel has it (5.14+); else SIGKILL each pid until none is left."""
        kill = f"{self.dir}/cgroup.kill"
        if os.path.exists(kill):
            write_file(kill, "1")
        self._kill_until_empty()

    def oom_events(self) -> int:
        return flat_keyed(self._read("memory.events")).get("oom_kill", 0)


def _limit(value: int) -> str:
    """A v2 limit: "max" for none (-1), else the number."""
    return "max" if value == -1 else str(value)
