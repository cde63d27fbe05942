"""What a test could leave behind on the host, captured so it can be compared.

A container engine that leaks a mount, a process or a network link on every
run breaks the machine it runs on slowly. Every test is bracketed by two
snapshots of the host, and a difference fails the test.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def _mount_points() -> frozenset[str]:
    with open("/proc/self/mountinfo") as f:
        return frozenset(line.split()[4] for line in f)


def _children() -> frozenset[int]:
    return frozenset(p.pid for p in psutil.Process().children(recursive=True))


def _namespaced_processes() -> frozenset[int]:
    """Live processes in another PID namespace than ours: containers, wherever re-parented.

    A dead one waiting for the host's init to reap it (a zombie) is not counted.
    """
    mine = os.readlink("/proc/self/ns/pid")
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == mine:
                    continue
                with open(f"/proc/{entry}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                        found.add(int(entry))
            except OSError:
                continue
    return frozenset(found)


def _engine_processes() -> frozenset[int]:
    """Live shims and zygotes (comm "mini-shim", "mini-zygote"), wherever re-parented."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            comm, rest = stat.partition("(")[2].rpartition(")")[::2]
            if comm in ENGINE_COMMS and rest.split()[0] not in ("Z", "X"):
                found.add(int(entry))
    return frozenset(found)


ENGINE_COMMS = ("mini-shim", "mini-zygote")


def _links() -> frozenset[str]:
    return frozenset(name for _, name in socket.if_nameindex())


def _netns() -> frozenset[str]:
    run = Path("/run/netns")
    return frozenset(os.listdir(run)) if run.is_dir() else frozenset()


def _cgroups() -> frozenset[str]:
    found = set()
    root = Path("/sys/fs/cgroup")
    for hierarchy in (root, *root.iterdir()) if root.is_dir() else ():
        if hierarchy.is_dir():
            found.update(str(p) for p in hierarchy.glob("*mini*") if p.is_dir())
    return frozenset(found)


@dataclass(frozen=True)
class HostSnapshot:
    mounts: frozenset[str] = field(default_factory=_mount_points)
    children: frozenset[int] = field(default_factory=_children)
    containers: frozenset[int] = field(default_factory=_namespaced_processes)
    shims: frozenset[int] = field(default_factory=_engine_processes)
    links: frozenset[str] = field(default_factory=_links)
    netns: frozenset[str] = field(default_factory=_netns)
    cgroups: frozenset[str] = field(default_factory=_cgroups)

    def leaked_since(self, before: "HostSnapshot") -> dict[str, list]:
        """What exists now that did not exist in `before`, by kind."""
        leaks = {}
        for kind in ("mounts", "children", "containers", "shims", "links", "netns", "cgroups"):
            new = sorted(getattr(self, kind) - getattr(before, kind))
            if new:
                leaks[kind] = new
        return leaks
