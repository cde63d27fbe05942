"""What the runtime remembers about a container between two commands.

`mini-runc create` and `mini-runc start` are separate processes, minutes
apart, so whatever `start` needs must be on disk. Each container has a
directory under the runtime root (`--root`, /run/mini-docker/runtime by
default, on tmpfs so that a reboot forgets every container, as it kills them):

    <root>/<id>/state.json   who the container is: its init's pid, its bundle
    <root>/<id>/exec.fifo    the FIFO its init blocks on until `start`

state.json is written to a temporary name and renamed into place, so a reader
sees the old record or the new one, never half of one.

The *status* is never stored; it is worked out from the init process each
time, the way the runtime spec describes it: "created" while the init waits
on the FIFO, "running" once it has gone on, "stopped" once it has exited.
A pid can be reused after a process exits, so the record also keeps the init's
start time (field 22 of /proc/PID/stat), and a pid whose start time differs is
a different process.

The record here is a plain class, not a dataclass: importing dataclasses costs
the mini-runc command 7 ms of its ~30, and runc's speed is the target.
"""

from __future__ import annotations

import json
import os
import re
import time

from mini_docker.errors import Conflict, InvalidArgument, NotFound
from mini_docker.records import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the cost of importing typing
if TYPE_CHECKING:
    from typing import Any

DEFAULT_ROOT = "/run/mini-docker/runtime"
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,1023}$")


# ruff: noqa: RUF023 - a record's __slots__ list its fields in their order, not sorted


class ContainerState(Record):
    """The record in state.json (the runtime spec's state, plus what we need)."""

    __slots__ = ("id", "bundle", "rootfs", "pid", "start_time", "created", "owner", "oci_version",
                 "annotations", "cgroup_path", "terminal")

    def __init__(self, id: str, bundle: str, rootfs: str, pid: int, start_time: int, created: str,
                 owner: str = "", oci_version: str = "1.0.2-dev",
                 annotations: dict[str, str] | None = None, cgroup_path: str = "",
                 terminal: bool = False) -> None:
        self.id = id
        self.bundle = bundle
        self.rootfs = rootfs
        self.pid = pid
        self.start_time = start_time  # the init's, in ticks since boot: tells a reused pid apart
        self.created = created
        self.owner = owner
        self.oci_version = oci_version
        self.annotations = {} if annotations is None else annotations
        self.cgroup_path = cgroup_path  # below each hierarchy's root, e.g. "mini-docker/<id>"
        self.terminal = terminal

    def to_dict(self) -> dict[str, Any]:
        """Every field by name, as state.json holds them (`ContainerState(**d)` reads one back)."""
        return {name: getattr(self, name) for name in self.__slots__}


def check_id(container_id: str) -> str:
    if not ID_PATTERN.match(container_id or ""):
        raise InvalidArgument(f"invalid container id {container_id!r}: use letters, digits and _.+-")
    return container_id


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in ticks), or None if there is no such process."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def process_state_letter(pid: int) -> str | None:
    """Field 3 of /proc/PID/stat (R, S, Z...), or None if there is no such process."""
    fields = _stat_fields(pid)
    return None if fields is None else fields[0]


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 on (after the name, which may hold spaces and ")"), or
    None if there is no such process (ESRCH: it was reaped between the open and the read)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


class StateDir:
    """The runtime root: one directory per container."""

    def __init__(self, root: str | os.PathLike = DEFAULT_ROOT):
        self.root = os.fspath(root)

    def path(self, container_id: str) -> str:
        return os.path.join(self.root, check_id(container_id))

    def fifo(self, container_id: str) -> str:
        return os.path.join(self.path(container_id), "exec.fifo")

    def reserve(self, container_id: str) -> str:
        """Make the container's directory; an existing one means the id is taken."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        path = self.path(container_id)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            raise Conflict(f"container with id {container_id!r} already exists") from None
        return path

    def save(self, state: ContainerState) -> None:
        path = os.path.join(self.path(state.id), "state.json")
        with open(f"{path}.tmp", "w") as f:
            json.dump(state.to_dict(), f)
        os.replace(f"{path}.tmp", path)  # no fsync: the root is a tmpfs, and a reboot ends containers

    def load(self, container_id: str) -> ContainerState:
        path = os.path.join(self.path(container_id), "state.json")
        try:
            with open(path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            raise NotFound(f"container {container_id!r} does not exist") from None
        return ContainerState(**doc)

    def remove(self, container_id: str) -> None:
        path = self.path(container_id)
        if not os.path.exists(path):
            return
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)

    def ids(self) -> list[str]:
        if not os.path.isdir(self.root):
            return []
        return sorted(name for name in os.listdir(self.root)
                      if os.path.exists(os.path.join(self.root, name, "state.json")))

    def status(self, state: ContainerState) -> str:
        """created, running, paused or stopped: worked out from the init process."""
        if not self.alive(state):
            return "stopped"
        if os.path.exists(self.fifo(state.id)):
            return "created"
        if self.frozen(state):
            return "paused"
        return "running"

    @staticmethod
    def alive(state: ContainerState) -> bool:
        if process_start_time(state.pid) != state.start_time:
            return False  # gone, or the pid now names another process
        return process_state_letter(state.pid) not in (None, "Z", "X")

    def report(self, state: ContainerState) -> dict[str, Any]:
        """The runtime spec's state document, as `state` prints it (with runc's extras)."""
        status = self.status(state)
        report = {
            "ociVersion": state.oci_version,
            "id": state.id,
            "pid": state.pid if status != "stopped" else 0,
            "status": status,
            "bundle": state.bundle,
            "rootfs": state.rootfs,
            "created": state.created,
            "owner": state.owner,
        }
        if state.annotations:  # runc leaves out an empty object
            report["annotations"] = state.annotations
        group = self.group(state)
        if group is not None and group.exists() and group.oom_events():
            report["oomKilled"] = True  # the kernel's OOM killer struck in its cgroup
        return report

    @staticmethod
    def group(state: ContainerState):
        """The container's cgroup, or None if it has none."""
        if not state.cgroup_path:
            return None
        from mini_docker.runtime.cgroup import open_group

        return open_group(state.cgroup_path)

    def frozen(self, state: ContainerState) -> bool:
        group = self.group(state)
        return bool(group and group.exists() and group.frozen())


def now_rfc3339() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"
