"""The cgroup v1 driver: one directory per controller.

In cgroup v1 each controller has a hierarchy of its own, mounted at
/sys/fs/cgroup/<controller> (a few may share one, as cpu,cpuacct often
do). A group is therefore not one directory but several with the same
relative path, one in each hierarchy, and a process must be written into
each of them:

    /sys/fs/cgroup/memory/mini-docker/<id>/   memory.limit_in_bytes, memory.stat...
    /sys/fs/cgroup/cpu/mini-docker/<id>/      cpu.shares, cpu.cfs_quota_us...
    /sys/fs/cgroup/pids/mini-docker/<id>/     pids.max, pids.current
    /sys/fs/cgroup/freezer/mini-docker/<id>/  freezer.state
    ...

Two quirks of v1 show up below. A new cpuset group starts with no CPUs and
no memory nodes, and the kernel refuses to put a task in it until they are
filled in, so `create()` copies them from the parent. And the memory and
memory+swap limits must be written in an order that keeps the kernel's
rule memsw >= memory true at every step, as runc does.
"""

from __future__ import annotations

import os

from mini_docker.cgroups.base import (Cgroup, CgroupError, Write, gone_while_waiting, kill_each,
                                      wait_until, write_file)
from mini_docker.cgroups.resources import Resources, needed_controllers
from mini_docker.cgroups.stats import (Stats, flat_keyed, read_text, single_value)

CONTROLLERS = ("cpuset", "cpu", "cpuacct", "memory", "pids", "blkio", "freezer", "devices")
HINTS = {
    "memory.memsw.limit_in_bytes": "swap accounting is off: boot with swapaccount=1 to limit swap",
    "blkio.bfq.weight": "a blkio weight needs the BFQ I/O scheduler (CONFIG_BFQ_GROUP_IOSCHED)",
}
THROTTLE_FILES = {"read_bps": "blkio.throttle.read_bps_device",
                  "write_bps": "blkio.throttle.write_bps_device",
                  "read_iops": "blkio.throttle.read_iops_device",
                  "write_iops": "blkio.throttle.write_iops_device"}


class V1Cgroup(Cgroup):
    """A group spread over the v1 hierarchies in `mounts` (controller -> mount point)."""

    driver = "v1"

    def __init__(self, path: str, mounts: dict[str, str]) -> None:
        super().__init__(path)
        self.mounts = {c: mounts[c] for c in CONTROLLERS if c in mounts}

    def dir(self, controller: str) -> str:
        """The group's directory in `controller`'s hierarchy."""
        if controller not in self.mounts:
            raise CgroupError(_not_mounted(controller))
        return f"{self.mounts[controller]}/{self.path}"

    def directories(self) -> list[str]:
        # co-mounted controllers (cpu,cpuacct) share one directory
        return list(dict.fromkeys(f"{m}/{self.path}" for m in self.mounts.values()))

    def file_path(self, controller: str, file: str) -> str:
        return f"{self.dir(controller)}/{file}"

    def missing_file(self, write: Write) -> str:
        return HINTS.get(write.file) or super().missing_file(write)

    def require(self, resources: Resources) -> None:
        for controller in needed_controllers(resources):
            if controller not in self.mounts:
                raise CgroupError(_not_mounted(controller))

    def create(self) -> None:
        for mount in dict.fromkeys(self.mounts.values()):
            self._make_dirs(mount)
        if "cpuset" in self.mounts:
            self._fill_cpuset()

    def _fill_cpuset(self) -> None:
        """Give every empty cpuset on the way down its parent's CPUs and memory nodes."""
        parent = self.mounts["cpuset"]
        for part in self.path.split("/"):
            here = f"{parent}/{part}"
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not (read_text(f"{here}/{name}") or "").strip():
                    write_file(f"{here}/{name}", (read_text(f"{parent}/{name}") or "").strip())
            parent = here

    def add(self, pid: int) -> None:
        for directory in self.directories():
            write_file(f"{directory}/cgroup.procs", str(pid))

    def join(self) -> None:
        """Move ourselves, through `tasks` (one thread) and pid 0 (the caller).

        Moving another process, or a whole one through cgroup.procs, takes a
        lock that every fork in the system also takes, and waits for the
        readers of it to drain: an RCU grace period, some 10 ms on an idle
        machine. A thread that moves itself cannot be forking at that moment,
        so the kernel skips the lock; for a process of one thread, as a child
        just forked is, the thread is the whole process.
        """
        for directory in self.directories():
            write_file(f"{directory}/tasks", "0")

    def plan(self, resources: Resources) -> tuple[list[Write], list[str]]:
        r = resources
        writes = self._memory_writes(r)
        if r.memory_reservation is not None:
            writes.append(Write("memory", "memory.soft_limit_in_bytes", str(r.memory_reservation)))
        if r.cpu_shares is not None:
            writes.append(Write("cpu", "cpu.shares", str(r.cpu_shares)))
        quota, period = r.cpu_max()
        if period is not None:  # the period first: the quota is checked against it
            writes.append(Write("cpu", "cpu.cfs_period_us", str(period)))
        if quota is not None:
            writes.append(Write("cpu", "cpu.cfs_quota_us", str(quota)))
        if r.cpuset_cpus is not None:
            writes.append(Write("cpuset", "cpuset.cpus", r.cpuset_cpus))
        if r.cpuset_mems is not None:
            writes.append(Write("cpuset", "cpuset.mems", r.cpuset_mems))
        if r.pids_limit is not None:
            writes.append(Write("pids", "pids.max", "max" if r.pids_limit == -1 else str(r.pids_limit)))
        if r.blkio_weight is not None:
            # blkio.weight came with the CFQ scheduler (gone since 5.0); BFQ's is blkio.bfq.weight
            cfq = os.path.exists(self.file_path("blkio", "blkio.weight"))
            writes.append(Write("blkio", "blkio.weight" if cfq else "blkio.bfq.weight",
                                str(r.blkio_weight)))
        for kind, devices in r.throttles().items():
            writes += [Write("blkio", THROTTLE_FILES[kind], f"{d.major}:{d.minor} {d.rate}")
                       for d in devices]
        for rule in r.devices:
            writes.append(Write("devices", "devices.allow" if rule.allow else "devices.deny",
                                rule.rule()))
        return writes, []

    def _memory_writes(self, r: Resources) -> list[Write]:
        """memory.limit_in_bytes and memory.memsw.limit_in_bytes, in an order the kernel accepts.

        memsw (memory + swap) may never be below memory. When both move, the
        one written first must keep that true: raise memsw before memory,
        lower memory before memsw.
        """
        memsw_file = "memory.memsw.limit_in_bytes"
        swap = r.memory_swap
        if r.memory == -1 and swap is None and os.path.exists(self.file_path("memory", memsw_file)):
            swap = -1  # no memory limit means no swap limit either
        memory = [Write("memory", "memory.limit_in_bytes", str(r.memory))] if r.memory is not None else []
        memsw = [Write("memory", memsw_file, str(swap))] if swap is not None else []
        if memory and memsw:
            current = single_value(read_text(self.file_path("memory", "memory.limit_in_bytes")))
            if swap == -1 or (current is not None and current < swap):
                return memsw + memory
        return memory + memsw

    def _read(self, controller: str, file: str) -> str | None:
        return read_text(self.file_path(controller, file)) if controller in self.mounts else None

    def stats(self) -> Stats:
        self.require_exists()
        memory_stat = flat_keyed(self._read("memory", "memory.stat"))
        cpu_stat = flat_keyed(self._read("cpu", "cpu.stat"))
        user, system = self._cpu_user_system()
        read_bytes, write_bytes = self._io_bytes()
        return Stats(
            memory_usage=single_value(self._read("memory", "memory.usage_in_bytes")),
            memory_limit=single_value(self._read("memory", "memory.limit_in_bytes")),
            memory_max_usage=single_value(self._read("memory", "memory.max_usage_in_bytes")),
            memory_cache=memory_stat.get("total_cache", memory_stat.get("cache")),
            memory_anon=memory_stat.get("total_rss", memory_stat.get("rss")),
            oom_kills=self.oom_events() if "memory" in self.mounts else None,
            cpu_usage_ns=single_value(self._read("cpuacct", "cpuacct.usage")),
            cpu_user_ns=user,
            cpu_system_ns=system,
            cpu_periods=cpu_stat.get("nr_periods"),
            cpu_throttled_periods=cpu_stat.get("nr_throttled"),
            cpu_throttled_ns=cpu_stat.get("throttled_time"),
            pids_current=single_value(self._read("pids", "pids.current")),
            pids_limit=single_value(self._read("pids", "pids.max")),
            io_read_bytes=read_bytes,
            io_write_bytes=write_bytes,
        )

    def _cpu_user_system(self) -> tuple[int | None, int | None]:
        """User and system CPU time in ns: cpuacct.usage_user/_sys, else cpuacct.stat's ticks."""
        user = single_value(self._read("cpuacct", "cpuacct.usage_user"))
        system = single_value(self._read("cpuacct", "cpuacct.usage_sys"))
        if user is None:
            ticks = flat_keyed(self._read("cpuacct", "cpuacct.stat"))
            tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
            if ticks:
                user, system = ticks.get("user", 0) * tick_ns, ticks.get("system", 0) * tick_ns
        return user, system

    def _io_bytes(self) -> tuple[int | None, int | None]:
        """Bytes read and written, from the "8:0 Read 4096" lines of io_service_bytes."""
        text = self._read("blkio", "blkio.throttle.io_service_bytes")
        if text is None:
            return None, None
        totals = {"Read": 0, "Write": 0}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in totals:
                totals[parts[1]] += int(parts[2])
        return totals["Read"], totals["Write"]

    def freeze(self) -> None:
        self._freezer("FROZEN")

    def thaw(self) -> None:
        self._freezer("THAWED")

    def _freezer(self, state: str) -> None:
        """Ask for `state`; the kernel passes through FREEZING until every task has stopped.
        A group removed meanwhile (its last process gone: a container killed as it is
        thawed) has nothing left to thaw, and cannot be frozen."""
        path = self.file_path("freezer", "freezer.state")
        write_file(path, state)

        def reached() -> bool:
            now = read_text(path)
            if now is None:
                return gone_while_waiting(self.path, thawing=state == "THAWED")
            return now.strip() == state

        wait_until(reached, 5.0, f"cgroup {self.path} to be {state}")

    def frozen(self) -> bool:
        return (self._read("freezer", "freezer.state") or "").strip() == "FROZEN"

    def kill_all(self) -> None:
        """Freeze, SIGKILL everyone, thaw: frozen processes cannot fork away from the kill."""
        if "freezer" in self.mounts and os.path.isdir(self.dir("freezer")):
            try:
                self.freeze()
            except CgroupError:
                pass  # a task stuck in the kernel will not freeze: kill the rest anyway
            try:
                kill_each(self.procs())
            finally:
                self.thaw()  # a frozen process cannot act on its SIGKILL until thawed
        self._kill_until_empty()

    def oom_events(self) -> int:
        return flat_keyed(self._read("memory", "memory.oom_control")).get("oom_kill", 0)


def _not_mounted(controller: str) -> str:
    mount = f"/sys/fs/cgroup/{controller}"
    return (f"the {controller} cgroup controller is not mounted on this host:"
            f" mkdir -p {mount} && mount -t cgroup -o {controller} cgroup {mount}")
