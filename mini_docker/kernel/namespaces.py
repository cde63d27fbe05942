"""The eight kinds of namespace, and how to tell which ones a process is in.

A namespace wraps one global resource of the kernel so that the processes
inside it see their own instance of it: their own hostname (UTS), their own
process numbers (PID), their own mount table (mount), and so on. Every process
is in exactly one namespace of each kind, and the kernel shows which in
/proc/PID/ns/: one symbolic link per kind, whose target names the namespace
by an inode number, e.g. ``uts:[4026531838]``. Two processes share a namespace
exactly when those numbers are equal. That is all a "container" is, seen from
the kernel: a process whose numbers differ from the host's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mini_docker.kernel import constants as C


@dataclass(frozen=True)
class NamespaceKind:
    """One kind of namespace: its name in /proc/PID/ns, its flag, what it isolates."""

    name: str
    flag: int
    isolates: str


NAMESPACES: tuple[NamespaceKind, ...] = (
    NamespaceKind("mnt", C.CLONE_NEWNS, "the mount table: which filesystems are where"),
    NamespaceKind("uts", C.CLONE_NEWUTS, "the hostname and NIS domain name"),
    NamespaceKind("ipc", C.CLONE_NEWIPC, "System V IPC objects and POSIX message queues"),
    NamespaceKind("pid", C.CLONE_NEWPID, "process IDs: the first process is PID 1"),
    NamespaceKind("net", C.CLONE_NEWNET, "network devices, addresses, routes, ports, firewall"),
    NamespaceKind("user", C.CLONE_NEWUSER, "user and group IDs, and the capabilities they carry"),
    NamespaceKind("cgroup", C.CLONE_NEWCGROUP, "the view of the cgroup tree: its root"),
    NamespaceKind("time", C.CLONE_NEWTIME, "the boot-time and monotonic clocks"),
)

ALL_FLAGS = 0
for _kind in NAMESPACES:
    ALL_FLAGS |= _kind.flag
# Every kind a container usually gets: all but user and time, as Docker does by default.
CONTAINER_FLAGS = ALL_FLAGS & ~(C.CLONE_NEWUSER | C.CLONE_NEWTIME)


def kind(name: str) -> NamespaceKind:
    """The `NamespaceKind` called `name` ("uts", "pid", ...)."""
    for k in NAMESPACES:
        if k.name == name:
            return k
    raise KeyError(f"no namespace kind {name!r}; kinds: {', '.join(k.name for k in NAMESPACES)}")


def namespace_id(pid: int | str, name: str) -> int:
    """The inode number naming the `name` namespace of process `pid` ("self" for us)."""
    target = os.readlink(f"/proc/{pid}/ns/{name}")  # e.g. "uts:[4026531838]"
    return int(target[target.index("[") + 1 : -1])


def namespace_ids(pid: int | str = "self") -> dict[str, int]:
    """The inode numbers of every namespace process `pid` is in, by kind.

    Kinds the running kernel lacks are left out.
    """
    ids = {}
    for k in NAMESPACES:
        try:
            ids[k.name] = namespace_id(pid, k.name)
        except FileNotFoundError:
            continue
    return ids


def shared_with(pid: int | str, other: int | str = "self") -> dict[str, bool]:
    """For each kind: is process `pid` in the same namespace as `other`?"""
    mine, theirs = namespace_ids(pid), namespace_ids(other)
    return {name: mine[name] == theirs.get(name) for name in mine}
