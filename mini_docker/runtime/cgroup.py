"""Where the runtime puts a container's processes: its control group.

config.json names the group (`linux.cgroupsPath`, "/docker/<id>" from
dockerd) and the limits (`linux.resources`). The runtime makes the group
and writes the limits before it forks; the container's first process joins
the group itself (`Cgroup.join`, the cheap way in) *before* it enters its
namespaces or runs anything: every process of the container descends from
it and inherits the group, and a new cgroup namespace then shows the group
as its root. On delete the group goes too.

The spec's device list usually starts by denying everything; like runc, we
then allow the few devices every container needs, or the container could not
even open its own /dev/null.
"""

from __future__ import annotations

import os

from mini_docker.runtime.spec import Spec

# Devices every container may use, whatever its config says (runc's default list).
ALWAYS_ALLOWED = [
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},     # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},     # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},     # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},     # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},     # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},     # tty
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},     # console
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},     # ptmx
    {"allow": True, "type": "c", "major": 136, "minor": -1, "access": "rwm"},  # pts/*
]


def group_path(spec: Spec, container_id: str) -> str:
    """The group's path below each hierarchy's root.

    "/docker/<id>" (cgroupfs style) is used as it is; systemd's
    "slice:prefix:name" becomes "slice/prefix-name.scope", as runc lays it
    out; no path at all puts the container in "mini-docker/<id>".
    """
    path = spec.linux.cgroups_path
    if not path:
        return f"mini-docker/{container_id}"
    if ":" in path:
        slice_, prefix, name = path.split(":", 2)
        return f"{slice_}/{prefix}-{name}.scope"
    return path.strip("/")


def resources(spec: Spec):
    """The config's limits, checked: a bad value is an error before anything is made."""
    from mini_docker.cgroups import Resources

    doc = dict(spec.linux.resources)
    if doc.get("devices"):
        doc["devices"] = list(doc["devices"]) + ALWAYS_ALLOWED
    return Resources.from_oci(doc)


_layout = None


def host_layout():
    """Where this host's hierarchies are: read once per process (mountinfo is not small)."""
    global _layout
    if _layout is None:
        from mini_docker.hostcheck.cgroups import cgroup_layout

        _layout = cgroup_layout()
    return _layout


def make(path: str, limits):
    """Create (or join) the group at `path` with `limits`; return it."""
    from mini_docker import cgroups

    group = cgroups.open_cgroup(path, host_layout())
    if group.exists():  # dockerd may reuse a path: apply the limits to it
        group.set(limits)
        return group
    return cgroups.create(path, limits, host_layout())


def fork_into(group) -> tuple[int, bool]:
    """fork, the child born in `group` where the kernel can do that: (pid, born there).

    On cgroup v2, clone3 with CLONE_INTO_CGROUP (kernel.fork_into_cgroup): a
    process that moves into a group instead waits for an RCU grace period,
    5 ms and more. On v1 (or a kernel before 5.7) a plain fork, and the child
    joins the group itself, through `tasks`, which does not wait.
    """
    from mini_docker.kernel import fork, fork_into_cgroup

    try:
        directory = group.directory_fd() if group is not None else None
    except OSError:  # gone: the child's join will say so
        directory = None
    if directory is None:
        return fork(), False
    try:
        return fork_into_cgroup(directory), True
    except OSError:
        return fork(), False
    finally:
        os.close(directory)


def open_group(path: str):
    from mini_docker import cgroups

    return cgroups.open_cgroup(path, host_layout()) if path else None


def remove(path: str) -> None:
    """Destroy the group, then the parents it leaves empty ("mini-docker/")."""
    group = open_group(path)
    if group is None:
        return
    directories = group.directories()
    group.destroy()
    for directory in directories:
        root = directory[: -len(group.path) - 1]  # the hierarchy's mount point
        parent = os.path.dirname(directory)
        while parent != root and parent.startswith(root + "/"):
            try:
                os.rmdir(parent)
            except OSError:  # still in use by another container
                break
            parent = os.path.dirname(parent)
