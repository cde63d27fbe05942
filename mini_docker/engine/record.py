"""A container's record: what the engine knows about it, kept on disk.

The engine can be killed at any moment (SIGKILL, a power cut, a bug) and
must come back knowing every container it had. So everything about a
container lives in one JSON file, `$ROOT/containers/<id>/config.v2.json`
(dockerd's name for it), and the file is replaced whole: written to a
temporary name, flushed to the disk with fsync, then renamed over the old
one. rename(2) within a directory is atomic, so a reader, or the engine
starting after a crash, sees the old record or the new one, never half of
each.

The record is Docker's own vocabulary, so `inspect` is the record itself:

    Config       what to run, chosen by the image and the user (Cmd, Env, User, Tty...)
    HostConfig   how to run it on this host (limits, restart policy, auto-remove, logging)
    State        where it is in its life: created, running, paused, restarting,
                 exited, dead; its pid, exit code, OOM kill, start and finish times
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RECORD = "config.v2.json"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: how Docker says "never"
STATUSES = ("created", "running", "paused", "restarting", "removing", "exited", "dead")


def now_rfc3339() -> str:
    """UTC now with nanoseconds, as Docker writes times."""
    ns = time.time_ns()
    stamp = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000:09d}Z"


@dataclass
class State:
    """Where a container is in its life, as `docker inspect` shows State."""

    Status: str = "created"
    Pid: int = 0
    ExitCode: int = 0
    Error: str = ""
    OOMKilled: bool = False
    StartedAt: str = ZERO_TIME
    FinishedAt: str = ZERO_TIME

    @property
    def running(self) -> bool:
        """Running in Docker's sense: a process exists (paused and restarting count)."""
        return self.Status in ("running", "paused")

    def inspect(self) -> dict[str, Any]:
        return {"Status": self.Status, "Running": self.running,
                "Paused": self.Status == "paused", "Restarting": self.Status == "restarting",
                "OOMKilled": self.OOMKilled, "Dead": self.Status == "dead", "Pid": self.Pid,
                "ExitCode": self.ExitCode, "Error": self.Error, "StartedAt": self.StartedAt,
                "FinishedAt": self.FinishedAt}


@dataclass
class ContainerRecord:
    """One container: the engine's whole knowledge of it."""

    Id: str
    Name: str  # without the leading "/" Docker shows
    Created: str
    Image: str  # the image ID (config digest) it was made from
    ImageRef: str  # the manifest digest its rootfs is built from
    Config: dict[str, Any]
    HostConfig: dict[str, Any]
    State: State = field(default_factory=State)
    RestartCount: int = 0
    ManuallyStopped: bool = False  # stopped by the user: a restart policy leaves it alone
    LogPath: str = ""
    Bundle: str = ""

    @property
    def path(self) -> str:
        return self.Config["Cmd"][0] if not self.Config.get("Entrypoint") else \
            self.Config["Entrypoint"][0]

    @property
    def args(self) -> list[str]:
        argv = [*(self.Config.get("Entrypoint") or []), *(self.Config.get("Cmd") or [])]
        return argv[1:]

    def inspect(self) -> dict[str, Any]:
        """The record as `docker inspect` prints it."""
        argv = [*(self.Config.get("Entrypoint") or []), *(self.Config.get("Cmd") or [])]
        return {"Id": self.Id, "Created": self.Created, "Path": argv[0] if argv else "",
                "Args": argv[1:], "State": self.State.inspect(), "Image": self.Image,
                "ResolvConfPath": "", "HostnamePath": "", "HostsPath": "",
                "LogPath": self.LogPath, "Name": "/" + self.Name,
                "RestartCount": self.RestartCount, "Driver": "overlay2", "Platform": "linux",
                "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "",
                "HostConfig": self.HostConfig,
                "GraphDriver": {"Name": "overlay2", "Data": {"MergedDir": f"{self.Bundle}/merged",
                                                            "UpperDir": f"{self.Bundle}/upper",
                                                            "WorkDir": f"{self.Bundle}/work"}},
                "Mounts": [], "Config": self.Config, "NetworkSettings": {}}

    def to_json(self) -> dict[str, Any]:
        """The record as JSON values. (Not dataclasses.asdict: that deep-copies Config and
        HostConfig, a third of a millisecond at every save, for json.dumps to read once.)"""
        return {**vars(self), "State": dict(vars(self.State))}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ContainerRecord:
        doc = dict(doc)
        doc["State"] = State(**doc.get("State", {}))
        return cls(**doc)


class RecordStore:
    """The records under `$ROOT/containers`, one directory per container."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def directory(self, container_id: str) -> Path:
        return self.root / container_id

    def save(self, record: ContainerRecord) -> None:
        """Replace the record on disk, atomically and durably."""
        directory = self.directory(record.Id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(directory / RECORD, json.dumps(record.to_json()).encode())

    def load_all(self) -> Iterator[ContainerRecord]:
        """Every record on disk; a directory without a readable record is skipped."""
        if not self.root.is_dir():
            return
        for entry in sorted(self.root.iterdir()):
            try:
                doc = json.loads((entry / RECORD).read_bytes())
                yield ContainerRecord.from_json(doc)
            except (OSError, ValueError, TypeError):
                continue  # a create that died before its first save: nothing to know

    def delete(self, container_id: str,
               dispose: Callable[[str], None] | None = None) -> None:
        """Remove the container's directory: the record first (one rename), then the rest,
        now or, given `dispose` (Janitor.dispose), later."""
        directory = self.directory(container_id)
        if not directory.exists():
            return
        doomed = self.root / f".removing-{container_id}"
        os.rename(directory, doomed)
        if dispose is not None:
            dispose(str(doomed))
        else:
            shutil.rmtree(doomed, ignore_errors=True)

    def clear_leftovers(self) -> None:
        """Finish removals a crash interrupted, and drop directories that never got a record."""
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.name.startswith(".removing-") or not (entry / RECORD).exists():
                shutil.rmtree(entry, ignore_errors=True)


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves the old content or the new, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
