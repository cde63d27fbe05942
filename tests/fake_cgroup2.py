"""A cgroup v2 tree in a temporary directory, holding what the kernel's files hold.

Why a fake: the machine these tests run on mounts cgroup v2 beside v1
(hybrid), and every controller belongs to a v1 hierarchy, so the real v2
tree at /sys/fs/cgroup/unified has no memory.max, cpu.max, pids.max or io.*
files at all. The V2 driver's core work (groups, cgroup.procs, freezing,
cgroup.kill, cpu.stat, pressure) is tested there for real; what it writes
to the controller files, and how it reads their accounts, is tested
against this tree. On a v2 host the real-limit tests run the V2 driver
against the kernel itself.

What a plain directory cannot do: mkdir does not make interface files, and
a write replaces a file's text instead of being parsed. So `mkdir()` plays
the kernel's part in making a group (the driver then finds it existing),
and a test reads back exactly the text the driver wrote.

The formats follow the kernel's Documentation/admin-guide/cgroup-v2.rst
("Interface Files" and each controller's section) and, for the pressure
files, Documentation/accounting/psi.rst:

  cgroup.controllers, cgroup.subtree_control   space-separated names;
      subtree_control is written as "+memory +cpu" (or "-memory")
  cgroup.events       flat keyed: "populated 0", "frozen 0"
  memory.max, memory.high, memory.swap.max, pids.max
                      single value: bytes (or tasks), or "max"
  memory.low, memory.min, memory.current, memory.peak, pids.current
                      single value: a number
  memory.stat         flat keyed, bytes: "anon 0", "file 0", "kernel 0"...
  memory.events       flat keyed counts: low high max oom oom_kill oom_group_kill
  cpu.weight          single value, 1-10000, default 100
  cpu.max             "$MAX $PERIOD", default "max 100000"
  cpu.stat            flat keyed: usage_usec user_usec system_usec (always), and
                      nr_periods nr_throttled throttled_usec nr_bursts burst_usec
                      (with the cpu controller)
  cpuset.cpus, cpuset.mems   the kernel's list format, "0-1" (empty: inherit)
  io.weight           "default 100", then "$MAJ:$MIN $WEIGHT" overrides
  io.max              "$MAJ:$MIN rbps=2097152 wbps=max riops=max wiops=120"
  io.stat             "$MAJ:$MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N"
  <res>.pressure      "some avg10=0.00 avg60=0.00 avg300=0.00 total=0" and a "full" line
"""

from __future__ import annotations

from pathlib import Path

ALL = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc")
PRESSURE = ("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")

CORE_FILES = {
    "cgroup.procs": "",
    "cgroup.subtree_control": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.freeze": "0\n",
    "cgroup.kill": "",
    "cgroup.type": "domain\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
    "cpu.pressure": PRESSURE,
    "memory.pressure": PRESSURE,
    "io.pressure": PRESSURE,
}
CONTROLLER_FILES = {
    "memory": {
        "memory.current": "0\n", "memory.min": "0\n", "memory.low": "0\n",
        "memory.high": "max\n", "memory.max": "max\n", "memory.peak": "0\n",
        "memory.swap.current": "0\n", "memory.swap.max": "max\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        "memory.stat": "anon 0\nfile 0\nkernel 0\nsock 0\nshmem 0\n",
    },
    "cpu": {
        "cpu.weight": "100\n", "cpu.weight.nice": "0\n", "cpu.max": "max 100000\n",
        "cpu.max.burst": "0\n",
        "cpu.stat": ("usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\nnr_throttled 0\n"
                     "throttled_usec 0\nnr_bursts 0\nburst_usec 0\n"),
    },
    "cpuset": {"cpuset.cpus": "\n", "cpuset.mems": "\n", "cpuset.cpus.effective": "0-1\n",
               "cpuset.mems.effective": "0\n"},
    "io": {"io.weight": "default 100\n", "io.max": "", "io.stat": ""},
    "pids": {"pids.current": "0\n", "pids.max": "max\n", "pids.peak": "0\n",
             "pids.events": "max 0\n"},
}


class FakeCgroup2:
    """A cgroup2 root at `root` whose cgroup.controllers lists `controllers`."""

    def __init__(self, root: Path, controllers: tuple[str, ...] = ALL) -> None:
        self.root = root
        self.controllers = controllers
        root.mkdir(parents=True, exist_ok=True)
        # the root group has no limits of its own, nor freeze/kill/events/type
        for name in ("cgroup.procs", "cgroup.subtree_control", "cpu.stat", "cpu.pressure",
                     "memory.pressure", "io.pressure"):
            (root / name).write_text(CORE_FILES[name])
        (root / "cgroup.controllers").write_text(" ".join(controllers) + "\n")

    def _write_group(self, directory: Path, controllers: tuple[str, ...]) -> None:
        files = dict(CORE_FILES, **{"cgroup.controllers": " ".join(controllers) + "\n"})
        for name in controllers:
            files.update(CONTROLLER_FILES.get(name, {}))
        for name, text in files.items():
            (directory / name).write_text(text)

    def mkdir(self, path: str, controllers: tuple[str, ...] | None = None) -> Path:
        """Make the group at `path` (and its parents) as the kernel would, with `controllers`
        (by default every one the root has, as if each parent had enabled them all)."""
        controllers = self.controllers if controllers is None else controllers
        directory = self.root
        for part in path.split("/"):
            directory = directory / part
            if not directory.exists():
                directory.mkdir()
                self._write_group(directory, controllers)
        return directory

    def read(self, path: str) -> str:
        return (self.root / path).read_text()

    def write(self, path: str, text: str) -> None:
        """Put the kernel's text in a file: the accounts a running group would show."""
        (self.root / path).write_text(text)
