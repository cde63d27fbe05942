"""The cgroups layer: limits and accounting for a group of processes (chapter 3).

Namespaces decide what a process can see; control groups decide how much
it can use. A cgroup is a directory in a special filesystem. Writing a
process id into its cgroup.procs file puts the process, and every child it
will ever have, in the group; writing numbers into its other files sets
limits (memory.max, pids.max...) and reading them gives the accounts
(memory.current, cpu.stat...). The kernel enforces the limits: a group that
goes over its memory limit has a process killed by the out-of-memory
killer, one that has used its CPU quota waits for the next period, one at
its pids limit sees fork() fail. `docker run -m`, `--cpus` and
`--pids-limit` are, in the end, a few writes to such files.

cgroup v1 (2008) gave every controller (memory, cpu, pids, freezer...) a
hierarchy of its own, mounted at /sys/fs/cgroup/<controller>. A container
is then a directory with the same name in each of them, and its process is
written into each one. The files have one name per controller and a few
quirks of their own (a new cpuset group has no CPUs until you give it
some; memory and memory+swap limits must be written in the right order).

cgroup v2 (the unified hierarchy, the default since about 2021) has a single
tree, usually at /sys/fs/cgroup, and a container is one directory in it.
A parent switches controllers on for its children in cgroup.subtree_control.
Freezing and killing a group became core features (cgroup.freeze,
cgroup.kill); device access became an eBPF program; the files were renamed
and some numbers rescaled (cpu.weight instead of cpu.shares).

The engine should not care which one the host has, so this package is one
interface, `Cgroup` (base.py), with two drivers, `V1Cgroup` (v1.py) and
`V2Cgroup` (v2.py), as crun has one interface with its cgroupfs and
systemd managers. `open_cgroup()` picks the driver from how the host mounts
cgroups (a hybrid host, with v1 controllers beside an empty v2 tree, gets
the v1 driver); `create()` also makes the group and applies `Resources`.

    from mini_docker import cgroups
    limits = cgroups.Resources(memory=cgroups.parse_memory("256m"), cpus=0.5, pids_limit=100)
    with cgroups.create("mini-docker/demo", limits) as group:
        group.add(pid)
        print(group.stats().memory_usage)
    # leaving the block killed what was inside and removed the directories
"""

from __future__ import annotations

from mini_docker.cgroups.base import Cgroup, CgroupError, Write  # noqa: F401
from mini_docker.cgroups.resources import (DeviceRule, Resources, ThrottleDevice,  # noqa: F401
                                           parse_cpus, parse_memory, validate_pids_limit)
from mini_docker.cgroups.stats import Pressure, PressureLine, Stats  # noqa: F401
from mini_docker.cgroups.v1 import V1Cgroup
from mini_docker.cgroups.v2 import V2Cgroup
from mini_docker.errors import Conflict
from mini_docker.hostcheck.cgroups import CgroupLayout, cgroup_layout


def host_driver(layout: CgroupLayout | None = None) -> type[Cgroup]:
    """The driver for this host: V1Cgroup on a v1 or hybrid host, V2Cgroup on a v2 one."""
    layout = layout or cgroup_layout()
    if layout.mode in ("v1", "hybrid") and layout.v1:
        return V1Cgroup
    if layout.mode == "v2" and layout.unified:
        return V2Cgroup
    raise CgroupError(f"cgroups: {layout.describe()}: mount -t cgroup2 cgroup2 /sys/fs/cgroup")


def open_cgroup(path: str, layout: CgroupLayout | None = None) -> Cgroup:
    """A handle on the group at `path` ("mini-docker/<id>") with this host's driver.

    Nothing is created: call `create()` on it, or use the module's `create()`.
    """
    layout = layout or cgroup_layout()
    if host_driver(layout) is V1Cgroup:
        return V1Cgroup(path, layout.v1)
    return V2Cgroup(path, layout.unified or "/sys/fs/cgroup")


def create(path: str, resources: Resources | None = None,
           layout: CgroupLayout | None = None) -> Cgroup:
    """Make the group at `path` and apply `resources`; return it.

    A controller the host lacks is reported before anything is made, and if
    applying a limit fails the group is removed again: either the group
    exists with every limit, or nothing is left. Its `warnings` list what
    the driver accepted but cannot enforce (device rules on v2).
    """
    resources = resources or Resources()
    group = open_cgroup(path, layout)
    if group.exists():
        raise Conflict(f"cgroup {group.path} already exists")
    group.require(resources)
    try:
        group.create()
        group.set(resources)
    except BaseException:
        group.destroy()
        raise
    return group
