"""When a container ends: its exit recorded, its restart policy applied, and recovery.

The monitor (monitor.py) calls `_shim_exited` when a shim's pidfd fires.
The shim has written exit.json (the exit code, whether the kernel's OOM
killer struck, the time), so the engine only reads it, records it and
announces `die`. Then the HostConfig decides what follows: remove the
container (`--rm`), restart it after a back-off (`--restart`), or nothing.

Restart back-off is Docker's: 100 ms before the first restart, doubled at
each one up to a minute, and back to 100 ms once a run has lasted 10
seconds, so a container that crashes at once does not spin the CPU, and
one that crashes once a day restarts at once.

Recovery is the same reading, done for every container at start-up: a
record says "running", and either its shim is still there (watch it again)
or it left an exit.json while no engine ran (record the exit now).

A mixin of Engine, written against its lock, records and monitor.
"""

from __future__ import annotations

from datetime import UTC, datetime

from mini_docker.engine import names
from mini_docker.engine.record import ZERO_TIME, ContainerRecord, now_rfc3339
from mini_docker.errors import MiniDockerError

BACKOFF_START, BACKOFF_MAX, BACKOFF_RESET = 0.1, 60.0, 10.0  # Docker's restart back-off


class Exits:
    """Engine's handling of exits, restarts and recovery."""

    def _shim_exited(self, container_id: str, said: dict | None = None) -> None:
        """The shim is gone, or has said how the container ended (`said`, as in exit.json):
        record it, then apply the container's policies."""
        from mini_docker.engine.shim import ExitStatus, read_exit

        with self._lock:
            record = self._containers.get(container_id)
            if record is None or record.State.Status not in ("running", "paused"):
                return
            try:
                ended = ExitStatus(**said) if said else None
            except TypeError:  # not the shape it should be: the file has it too
                ended = None
            if ended is None:
                ended = read_exit(str(self.records.directory(container_id)))
            state = record.State
            if ended is None:  # the shim died without a word (killed): the container with it
                from mini_docker import runtime

                try:
                    runtime.delete(container_id, force=True, root=self.runtime_root)
                except MiniDockerError:
                    pass
                state.ExitCode, state.OOMKilled = 255, False
                state.FinishedAt, state.Error = now_rfc3339(), "the container's shim died"
            else:
                state.ExitCode, state.OOMKilled = ended.exit_code, ended.oom_killed
                state.FinishedAt, state.Error = ended.finished_at, ended.error or ""
            state.Status, state.Pid = "exited", 0
            if not record.HostConfig.get("AutoRemove"):  # else its removal unmounts it, later
                try:
                    self.snapshots.unmount(container_id)
                except MiniDockerError:
                    pass
            if state.OOMKilled:
                self._emit(record, "oom")
            self._emit(record, "die", exitCode=str(state.ExitCode))
            self._exits[container_id] = self._exits.get(container_id, 0) + 1
            if record.HostConfig.get("AutoRemove"):
                self._destroy(record)
                return
            delay = self._restart_delay(record)
            if delay is not None:
                state.Status = "restarting"
                self._monitor.schedule(container_id, delay)
            self.records.save(record)
            self._changed.notify_all()

    def _restart_delay(self, record: ContainerRecord) -> float | None:
        """Seconds until the restart policy restarts the container, or None for no restart.

        Docker's back-off: 100 ms, doubled at each restart, at most a minute,
        back to 100 ms once a run has lasted 10 seconds.
        """
        policy = record.HostConfig["RestartPolicy"]
        name, state = policy["Name"], record.State
        if record.ManuallyStopped or name == "no":
            return None
        if name == "on-failure":
            limit = policy["MaximumRetryCount"]
            if state.ExitCode == 0 or (limit and record.RestartCount >= limit):
                return None
        ran = _seconds_between(state.StartedAt, state.FinishedAt)
        delay = self._backoff.get(record.Id, 0.0)
        delay = BACKOFF_START if not delay or ran >= BACKOFF_RESET else min(delay * 2,
                                                                             BACKOFF_MAX)
        self._backoff[record.Id] = delay
        return delay

    def _restart_due(self, container_id: str) -> None:
        with self._lock:
            record = self._containers.get(container_id)
            if record is None or record.State.Status != "restarting":
                return
            record.RestartCount += 1
            record.ManuallyStopped = False
            try:
                self._start(record)
            except MiniDockerError:
                pass  # the reason is in State.Error; the container stays exited

    def _restore(self) -> None:
        """Find the containers of an earlier engine: records, shims, exit statuses."""
        from mini_docker.engine.shim import read_shim

        self.records.clear_leftovers()
        restart = []
        for record in self.records.load_all():
            self._containers[record.Id] = record
            if record.State.Status in ("exited", "created") and _restarts_with_engine(record):
                restart.append(record)
                continue
            if record.State.Status not in ("running", "paused", "restarting"):
                continue
            shim = read_shim(str(self.records.directory(record.Id)))
            pidfd = self._monitor.open(shim.pid) if shim is not None else None
            if pidfd is not None:
                self._monitor.watch(record.Id, pidfd)
                continue
            if record.State.Status == "restarting":
                record.State.Status = "exited"
                restart.append(record)
                continue
            self._shim_exited(record.Id)
        self._remove_orphan_rootfs()
        for record in restart:  # interrupted back-offs, and policies that start with the engine
            if record.State.Status == "exited" and _restarts_with_engine(record) or \
                    self._restart_delay(record) is not None:
                record.State.Status = "restarting"
                self._monitor.schedule(record.Id, 0)
            self.records.save(record)


    def _remove_orphan_rootfs(self) -> None:
        """Root filesystems whose container's record is gone: a removal a crash cut short."""
        self.snapshots.clear_removals()
        container_root = self.snapshots.container_root
        for entry in container_root.iterdir() if container_root.is_dir() else ():
            if names.ID_PATTERN.fullmatch(entry.name) and entry.name not in self._containers:
                self.snapshots.remove(entry.name)



def _restarts_with_engine(record: ContainerRecord) -> bool:
    """Whether a stopped container starts again when the engine starts, as dockerd decides.

    always: yes, even one stopped by hand (that is how it differs from
    unless-stopped); unless-stopped: unless stopped by hand; on-failure: if
    it failed and has retries left. A container never started stays so.
    """
    policy, state = record.HostConfig["RestartPolicy"], record.State
    if state.StartedAt == ZERO_TIME:
        return False
    if policy["Name"] == "always":
        return True
    if policy["Name"] == "unless-stopped":
        return not record.ManuallyStopped
    if policy["Name"] == "on-failure":
        limit = policy["MaximumRetryCount"]
        return state.ExitCode != 0 and (not limit or record.RestartCount < limit)
    return False


def _seconds_between(start: str, end: str) -> float:
    if ZERO_TIME in (start, end):
        return 0.0
    return _epoch(end) - _epoch(start)


def _epoch(stamp: str) -> float:
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return seconds.timestamp() + float(f"0.{fraction or 0}")


