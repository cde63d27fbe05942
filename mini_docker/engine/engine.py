"""The engine: containers with names, states and histories, on top of the runtime.

The runtime (chapter 2) runs a bundle and forgets it; the image layer
(chapter 4) makes root filesystems. The engine is what dockerd and
containerd add: a *container* is a thing with a name and a life, created
once, started and stopped many times, remembered until it is removed.

    created --start--> running --(exit)--> exited --start--> running ...
                        |    ^                |
                   pause|    |unpause         +--rm--> (gone)
                        v    |
                        paused

Every change of state goes through one lock, is written to the
container's record on disk (record.py) and is announced as an event
(events.py). Three rules keep the engine honest:

* The engine is not the containers' parent. Each started container gets a
  shim (shim.py), forked by a zygote (zygote.py), which holds its stdio,
  writes its logs and records its exit status. The engine watches the
  shim's pidfd (monitor.py). Kill the engine, and the containers run on;
  start it again, and it finds them through their records and shims.
* What the kernel says wins. At start-up each record marked running is
  checked against its shim: alive, and it is watched again; gone, and the
  exit status the shim left behind is recorded.
* A failed operation leaves the state as it was: a start that fails
  leaves the container created or exited, with the reason in State.Error.

This module is the lifecycle; what happens when a container ends (its exit,
its restart policy, recovery after an engine restart) is in exits.py, and
what reaches inside a running one (attach, logs, exec, top, stats) in
inside.py. Engine is the three together.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from mini_docker.engine import names
from mini_docker.engine.config import make_config, make_spec
from mini_docker.engine.events import EventLog
from mini_docker.engine.exits import Exits
from mini_docker.engine.inside import Inside
from mini_docker.engine.janitor import Janitor
from mini_docker.engine.monitor import Monitor
from mini_docker.engine.record import ContainerRecord, RecordStore, State, now_rfc3339
from mini_docker.errors import Conflict, InvalidArgument, MiniDockerError, NotFound
from mini_docker.image.snapshot import Snapshotter
from mini_docker.image.store import ImageStore

DEFAULT_ROOT = "/var/lib/mini-docker"
DEFAULT_STOP_TIMEOUT = 10  # seconds between the stop signal and SIGKILL
WAIT_CONDITIONS = ("not-running", "next-exit", "removed")
REMEMBER_REMOVED = 256  # removed containers whose last exit `wait` can still report


class NotModified(MiniDockerError):
    """Nothing to do: starting a running container, stopping a stopped one (HTTP 304)."""

    http_status = 304


class Engine(Inside, Exits):
    """Containers and images under one state root, in docker-py's shape.

    root: the state root ($MINI_DOCKER_ROOT, /var/lib/mini-docker by default).
    Only one engine may use a root at a time; a second one is refused.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root or os.environ.get("MINI_DOCKER_ROOT") or DEFAULT_ROOT)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock_root(self.root)
        self.runtime_root = self.root / "runtime"
        self.image_store = ImageStore(self.root / "image")
        self.snapshots = Snapshotter(self.image_store)
        self.records = RecordStore(self.root / "containers")
        self.events = EventLog()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._containers: dict[str, ContainerRecord] = {}
        self._exits: dict[str, int] = {}  # container id -> number of exits seen
        self._backoff: dict[str, float] = {}
        # the last exit of removed containers, so that `run --rm` can still wait for one
        self._removed: dict[str, State] = {}
        self._execs: dict[str, Any] = {}  # exec ID -> ExecInstance (execs.py)
        self._zygote = None
        self._janitor = Janitor()
        self._monitor = Monitor(self._shim_exited, self._restart_due)
        self._closed = False
        from mini_docker.engine.models import ContainerCollection, ImageCollection

        self.containers = ContainerCollection(self)
        self.images = ImageCollection(self)
        self._restore()

    # -- finding containers --

    def resolve(self, ref: str) -> str:
        """The ID of the container `ref` (ID, name or unique ID prefix) means."""
        with self._lock:
            return names.resolve(ref, {r.Name: i for i, r in self._containers.items()},
                                 self._containers)

    def record(self, ref: str) -> ContainerRecord:
        with self._lock:
            return self._containers[self.resolve(ref)]

    def inspect(self, ref: str) -> dict[str, Any]:
        """`docker inspect`: the container's whole record."""
        with self._lock:
            return self.record(ref).inspect()

    def list(self, *, all: bool = False, filters: Mapping[str, Any] | None = None,
             limit: int | None = None) -> list[ContainerRecord]:
        """`docker ps`: running containers (all=True: every one), newest first."""
        from mini_docker.engine.filters import (
            check_container_filters,
            container_matches,
        )

        checked = check_container_filters(filters)
        with self._lock:
            found = sorted(self._containers.values(), key=lambda r: r.Created, reverse=True)
            found = [r for r in found if (all or r.State.running or
                                          checked.keys() & {"status", "exited", "before", "since"})
                     and container_matches(r, checked)]
            for key, keep in (("before", str.__lt__), ("since", str.__gt__)):
                for ref in checked.get(key, []):
                    created = self.record(ref).Created
                    found = [r for r in found if keep(r.Created, created)]
        return found[:limit] if limit and limit > 0 else found

    # -- the life of a container --

    def create(self, image: str, command: str | Sequence[str] | None = None,
               **options: Any) -> ContainerRecord:
        """`docker create`: a container made from `image`, not started."""
        return self._create(image, command, options, save=True)

    def run(self, image: str, command: str | Sequence[str] | None = None, *,
            attach: Mapping[str, bool] | None = None, logs: bool = False,
            remove_on_failure: bool = False, **options: Any):
        """`docker run`, up to the start: (the record, the Attachment if `attach`, or
        if `logs` its log entries, followed until it stops, with none missed even if
        it is auto-removed at once: the log is opened before the start).

        create and start as one step, and one record written, once the
        container runs (or its start has failed, which the record then says).
        An engine that dies between the two leaves a root filesystem without a
        record, which the next one removes, as if the create had not happened.
        A container that fails to start is removed again if `remove_on_failure`
        or auto_remove (as dockerd removes an AutoRemove one).
        """
        with self._lock:
            record = self._create(image, command, options, save=False)
            try:
                if logs and record.LogPath:
                    self.records.directory(record.Id).mkdir(mode=0o700, parents=True, exist_ok=True)
                    Path(record.LogPath).touch()  # the shim appends to it
                    entries = self.log_entries(record.Id, follow=True)
                    self._start(record)
                    return record, entries
                return record, self._start(record, attach)
            except BaseException:
                if remove_on_failure or record.HostConfig.get("AutoRemove"):
                    self.remove(record.Id, force=True)
                raise

    def _create(self, image: str, command: str | Sequence[str] | None,
                options: dict[str, Any], save: bool) -> ContainerRecord:
        from mini_docker.image.container import find_image

        if not isinstance(image, str) or not image:
            raise InvalidArgument("an image is needed: give its name or ID")
        digest = find_image(self.image_store, image)
        manifest = self.image_store.manifest(digest)
        image_config = self.image_store.config(manifest)
        config, host_config = make_config(image, image_config, command, options)
        container_id = names.new_id()
        config["Hostname"] = config["Hostname"] or names.short_id(container_id)
        with self._lock:
            taken = {r.Name: i for i, r in self._containers.items()}
            name = names.check_name(options["name"]) if options.get("name") else \
                names.generate_name(taken)
            if name in taken:
                raise Conflict(f'Conflict. The container name "/{name}" is already in use by '
                               f'container "{taken[name]}". You have to remove (or rename) that '
                               "container to be able to reuse that name.")
            record = ContainerRecord(
                Id=container_id, Name=name, Created=now_rfc3339(),
                Image=manifest.config.digest, ImageRef=digest, Config=config,
                HostConfig=host_config, Bundle=str(self.snapshots.container_dir(container_id)))
            if host_config["LogConfig"]["Type"] == "json-file":
                record.LogPath = str(self.records.directory(container_id)
                                     / f"{container_id}-json.log")
            self._containers[container_id] = record  # holds the name while the rootfs is made
        try:
            # mounted now, so that a bad user or working directory is refused at once;
            # it stays mounted for the start that usually follows
            rootfs = self.snapshots.mount_rootfs(container_id, digest, (manifest, image_config))
            self._write_spec(record, image_config, str(rootfs))
            if save:
                self.records.save(record)
        except BaseException:
            with self._lock:
                del self._containers[container_id]
            if self.snapshots.container_dir(container_id).is_dir():
                self.snapshots.remove(container_id)
            self.records.delete(container_id)
            raise
        self._emit(record, "create")
        return record

    def start(self, ref: str, *, attach: Mapping[str, bool] | None = None):
        """`docker start`: run the container's process, through a new shim.

        attach: {"stdin": True, "stdout": True, "stderr": True} to attach
        before the process starts, so not a byte of its output is missed (as
        `docker run -it` does); the Attachment is returned.
        """
        with self._lock:
            record = self.record(ref)
            status = record.State.Status
            if status == "running":
                raise NotModified(f"container {record.Id[:12]} is already running")
            if status == "paused":
                raise Conflict("cannot start a paused container, try unpause instead")
            if status in ("removing", "dead"):
                raise Conflict(f"container {record.Id[:12]} is marked for removal and cannot "
                               "be started")
            self._monitor.cancel(record.Id)
            record.ManuallyStopped = False
            return self._start(record, attach)

    def _start(self, record: ContainerRecord, attach: Mapping[str, bool] | None = None):
        """Mount, spawn the shim, start; on failure the record says why and nothing runs."""
        from mini_docker.engine.shim import ShimSpec
        from mini_docker.engine.shimclient import ShimClient

        directory = self.records.directory(record.Id)
        attachment, shim, pidfd = None, None, None
        try:
            merged = Path(record.Bundle, "merged")
            if not os.path.ismount(merged):  # as create left it, spec and all; else again
                rootfs = self.snapshots.mount_rootfs(record.Id, record.ImageRef)
                self._write_spec(record, None, str(rootfs))
            self._await_runtime_gone(record.Id)  # the last run's shim may be tidying up
            (directory / "exit.json").unlink(missing_ok=True)
            log_options = record.HostConfig["LogConfig"]["Config"]
            spec = ShimSpec(
                container_id=record.Id, bundle=record.Bundle, runtime_root=str(self.runtime_root),
                state_dir=str(directory), log_path=record.LogPath or None,
                log_max_size=_size(log_options.get("max-size")),
                log_max_file=int(log_options.get("max-file", 1)),
                tty=bool(record.Config["Tty"]), open_stdin=bool(record.Config["OpenStdin"]),
                stdin_once=bool(record.Config["StdinOnce"]), start=not attach)
            # and started, unless attaching first; the time is taken before, so that
            # a container that ends at once never finishes before it started
            started_at = now_rfc3339()
            shim = self._zygote_process().spawn(spec, keep_report=True)
            pidfd = self._monitor.open(shim.pid)
            if attach:
                with ShimClient(shim.socket) as client:
                    attachment = client.attach(**attach)
                    started_at = now_rfc3339()
                    client.start()
        except BaseException as err:
            if attachment is not None:
                attachment.close()
            if shim is not None and shim.report is not None:
                os.close(shim.report)
            if shim is not None:  # spawned but not started: its container goes, and so does it
                self._kill_created(record.Id, pidfd)
            self.snapshots.unmount(record.Id)
            record.State.Error = str(err) if isinstance(err, MiniDockerError) else repr(err)
            if record.State.Status == "restarting":
                record.State.Status = "exited"
            self.records.save(record)
            self._changed.notify_all()
            raise
        state = record.State
        state.Status, state.Pid, state.Error = "running", shim.init_pid, ""
        state.ExitCode, state.OOMKilled, state.StartedAt = 0, False, started_at
        self.records.save(record)
        self._emit(record, "start")
        self._changed.notify_all()
        if pidfd is None:
            os.close(shim.report)
            self._shim_exited(record.Id)
        else:
            self._monitor.watch(record.Id, pidfd, shim.report, shim.said)
        return attachment

    def stop(self, ref: str, timeout: float | None = None) -> None:
        """`docker stop`: the stop signal, then SIGKILL after `timeout` seconds."""
        with self._lock:
            record = self.record(ref)
            if record.State.Status == "restarting":  # between two runs: just cancel the next
                self._monitor.cancel(record.Id)
                record.ManuallyStopped = True
                record.State.Status = "exited"
                self.records.save(record)
                self._changed.notify_all()
                self._emit(record, "stop")
                return
            if not record.State.running:
                raise NotModified(f"container {record.Id[:12]} is not running")
            record.ManuallyStopped = True
            self.records.save(record)
            if timeout is None:
                timeout = record.Config.get("StopTimeout", DEFAULT_STOP_TIMEOUT)
            exits = self._exits.get(record.Id, 0)
            self._signal(record, record.Config.get("StopSignal") or "SIGTERM")
            if record.State.Status == "paused":  # a frozen process cannot act on a signal
                self._runtime_call("resume", record)
            if not self._changed.wait_for(lambda: self._exits.get(record.Id, 0) > exits,
                                          timeout=max(0.0, timeout)):
                self._signal(record, "SIGKILL")
                self._changed.wait_for(lambda: self._exits.get(record.Id, 0) > exits, timeout=30)
            self._emit(record, "stop")

    def kill(self, ref: str, signal: str | int | None = None) -> None:
        """`docker kill`: a signal (SIGKILL by default) to the container's init."""
        with self._lock:
            record = self.record(ref)
            if record.State.Status not in ("running", "paused"):
                raise Conflict(f"Cannot kill container: {ref}: Container {record.Id} is not "
                               "running")
            record.ManuallyStopped = True
            self.records.save(record)
            self._signal(record, signal or "SIGKILL")

    def restart(self, ref: str, timeout: float | None = None) -> None:
        """`docker restart`: stop (if running), then start."""
        with self._lock:
            record = self.record(ref)
            if record.State.running or record.State.Status == "restarting":
                self.stop(record.Id, timeout)
            self.start(record.Id)
            self._emit(record, "restart")

    def pause(self, ref: str) -> None:
        """`docker pause`: freeze every process of the container (the cgroup freezer)."""
        with self._lock:
            record = self.record(ref)
            if record.State.Status == "paused":
                raise Conflict(f"Container {record.Id} is already paused")
            if record.State.Status != "running":
                raise Conflict(f"Container {record.Id} is not running")
            self._runtime_call("pause", record)
            record.State.Status = "paused"
            self.records.save(record)
            self._emit(record, "pause")

    def unpause(self, ref: str) -> None:
        """`docker unpause`: thaw them."""
        with self._lock:
            record = self.record(ref)
            if record.State.Status != "paused":
                raise Conflict(f"Container {record.Id} is not paused")
            self._runtime_call("resume", record)
            record.State.Status = "running"
            self.records.save(record)
            self._emit(record, "unpause")

    def wait(self, ref: str, condition: str = "not-running",
             timeout: float | None = None) -> dict[str, Any]:
        """`docker wait`: block until the condition holds; {"StatusCode": n, "Error": None}.

        not-running: return at once if the container is not running, else at its exit;
        next-exit: at its next exit; removed: once it has been removed.
        """
        if condition not in WAIT_CONDITIONS:
            raise InvalidArgument(f"invalid condition: {condition!r}: use one of "
                                  f"{', '.join(WAIT_CONDITIONS)}")
        with self._lock:
            if ref in self._removed:  # removed already (`--rm`): how it ended
                return _wait_result(self._removed[ref])
            record = self.record(ref)
            exits = self._exits.get(record.Id, 0)

            def done() -> bool:
                if condition == "removed":
                    return record.Id not in self._containers
                if condition == "next-exit":
                    return self._exits.get(record.Id, 0) > exits
                return (self._exits.get(record.Id, 0) > exits
                        or record.State.Status not in ("running", "paused", "restarting"))

            if not self._changed.wait_for(done, timeout=timeout):
                raise MiniDockerError(f"timed out waiting for container {record.Id[:12]}")
            return _wait_result(record.State)

    def remove(self, ref: str, *, force: bool = False) -> None:
        """`docker rm`: forget the container; `force` kills it first if it runs."""
        with self._lock:
            record = self.record(ref)
            if record.State.running and not force:
                raise Conflict(f"You cannot remove a {record.State.Status} container "
                               f"{record.Id}. Stop the container before attempting removal or "
                               "force remove")
            self._monitor.cancel(record.Id)
            if record.State.running:
                record.ManuallyStopped = True
                exits = self._exits.get(record.Id, 0)
                self._signal(record, "SIGKILL")
                if record.State.Status == "paused":
                    self._runtime_call("resume", record)
                if not self._changed.wait_for(lambda: self._exits.get(record.Id, 0) > exits,
                                              timeout=30):
                    raise MiniDockerError(f"container {record.Id[:12]} did not die after SIGKILL")
            self._destroy(record)

    def _destroy(self, record: ContainerRecord) -> None:
        # The record goes first, in one rename: a crash after it leaves only a
        # rootfs without a record, which the next engine removes (_restore).
        # Both are renamed out of the way now and deleted by the janitor (janitor.py).
        self.records.delete(record.Id, dispose=self._janitor.dispose)
        if self.snapshots.container_dir(record.Id).is_dir():
            self.snapshots.remove(record.Id, later=self._janitor.later)
        # Its shim may still be deleting the runtime state and the cgroup (janitor.py).
        self._janitor.later(partial(self._await_runtime_gone, record.Id))
        del self._containers[record.Id]
        self._removed[record.Id] = record.State
        while len(self._removed) > REMEMBER_REMOVED:
            del self._removed[next(iter(self._removed))]  # the oldest first
        self._exits.pop(record.Id, None)
        self._backoff.pop(record.Id, None)
        for exec_id in [i for i, e in self._execs.items() if e.container_id == record.Id]:
            del self._execs[exec_id]
        self._emit(record, "destroy")
        self._changed.notify_all()

    def rename(self, ref: str, new_name: str) -> None:
        """`docker rename`."""
        with self._lock:
            record = self.record(ref)
            name = names.check_name(new_name)
            if name == record.Name:
                raise InvalidArgument("Renaming a container with the same name as its current "
                                      "name")
            for other in self._containers.values():
                if other.Name == name:
                    raise Conflict(f'Conflict. The container name "/{name}" is already in use '
                                   f'by container "{other.Id}". You have to remove (or rename) '
                                   "that container to be able to reuse that name.")
            old, record.Name = record.Name, name
            self.records.save(record)
            self._emit(record, "rename", oldName="/" + old)

    def prune(self, filters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`docker container prune`: remove every stopped container."""
        from mini_docker.engine.filters import (
            check_container_filters,
            container_matches,
        )

        checked = check_container_filters(filters, allowed=("label", "until"))
        deleted, reclaimed = [], 0
        with self._lock:
            for record in list(self._containers.values()):
                if record.State.Status in ("created", "exited", "dead") and \
                        container_matches(record, checked):
                    reclaimed += _tree_size(Path(record.Bundle) / "upper")
                    self._destroy(record)
                    deleted.append(record.Id)
        return {"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    # -- the engine itself --

    def close(self) -> None:
        """Stop watching; the containers run on, and a new Engine will find them."""
        if self._closed:
            return
        self._closed = True
        self._monitor.close()
        self._janitor.close()
        if self._zygote is not None:
            self._zygote.close()
        os.close(self._lock_fd)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers --

    def _zygote_process(self):
        if self._zygote is None:
            from mini_docker.engine.zygote import Zygote

            self._zygote = Zygote()
        return self._zygote

    def _write_spec(self, record: ContainerRecord, image_config, rootfs: str) -> None:
        import json

        if image_config is None:
            image_config = self.image_store.config(self.image_store.manifest(record.ImageRef))
        spec = make_spec(record.Id, image_config, record.Config, record.HostConfig, rootfs)
        Path(record.Bundle, "config.json").write_text(json.dumps(spec))  # compact: C-speed

    def _await_runtime_gone(self, container_id: str, timeout: float = 5) -> None:
        """Wait until the container's runtime state is gone: its shim deletes it just
        after it has reported the exit (shim.py). A shim that died first left it:
        then delete it here."""
        import time

        state = self.runtime_root / container_id
        deadline = time.monotonic() + timeout
        while state.exists():
            if time.monotonic() > deadline:
                from mini_docker import runtime

                try:
                    runtime.delete(container_id, force=True, root=self.runtime_root)
                except MiniDockerError:
                    pass
                return
            time.sleep(0.0005)

    def _kill_created(self, container_id: str, pidfd: int | None) -> None:
        """Undo a spawn: kill the created container and wait for its shim to go."""
        import select

        from mini_docker import runtime

        try:
            runtime.delete(container_id, force=True, root=self.runtime_root)
        except MiniDockerError:
            pass
        if pidfd is not None:
            select.select([pidfd], [], [], 10)
            os.close(pidfd)

    def _runtime_call(self, verb: str, record: ContainerRecord) -> None:
        from mini_docker import runtime

        getattr(runtime, verb)(record.Id, root=self.runtime_root)

    def _signal(self, record: ContainerRecord, signal: str | int) -> None:
        from mini_docker import runtime

        number = runtime.parse_signal(signal)
        try:
            runtime.kill(record.Id, number, root=self.runtime_root)
        except (NotFound, Conflict):
            pass  # exited meanwhile: the monitor records it
        self._emit(record, "kill", signal=str(number))

    def _is_running(self, container_id: str) -> bool:
        with self._lock:
            record = self._containers.get(container_id)
            return record is not None and record.State.Status in ("running", "paused",
                                                                  "restarting")

    def _emit(self, record: ContainerRecord, action: str, **extra: str) -> None:
        attributes = {"image": record.Config["Image"], "name": record.Name,
                      **record.Config.get("Labels", {}), **extra}
        self.events.emit("container", action, record.Id, **attributes)

def _wait_result(state: State) -> dict[str, Any]:
    error = {"Message": state.Error} if state.Error else None
    return {"StatusCode": state.ExitCode, "Error": error}


def _lock_root(root: Path) -> int:
    """An exclusive lock on the state root for this engine's life; the kernel drops it at exit."""
    fd = os.open(root / "engine.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Conflict(f"another engine is using {root}: stop it first, or use another "
                       "MINI_DOCKER_ROOT") from None
    return fd


def _size(text: str | None) -> int | None:
    if not text:
        return None
    from mini_docker.engine.logs import parse_size

    return parse_size(text)


def _tree_size(top: Path) -> int:
    total = 0
    for directory, _, files in os.walk(top):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                pass
    return total


__all__ = ["Engine", "NotModified", "State"]
