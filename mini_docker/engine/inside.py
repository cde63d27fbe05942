"""Inside a running container: attach, logs, exec, top and stats.

The engine's lifecycle (engine.py) changes a container's state; these
operations leave it alone and look or reach inside. Each finds what it
needs where Docker finds it:

    attach, exec   the shim's socket (shimclient.py): the shim holds the stdio,
                   and an exec'd process is the shim's child, like the init
    logs           the json-file log the shim writes (logs.py)
    top, stats     the container's cgroup, named in the runtime's state (top.py, stats.py)

They are a mixin of Engine, written against its lock, records and helpers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mini_docker.engine.record import ContainerRecord
from mini_docker.errors import Conflict, InvalidArgument, NotFound


class Inside:
    """Engine's operations on a running container's inside."""

    def attach(self, ref: str, *, stdin: bool = False, stdout: bool = True,
               stderr: bool = True):
        """`docker attach`: the running container's stdio from now on, as an Attachment."""
        from mini_docker.engine.shimclient import ShimClient

        with self._lock:
            record = self.record(ref)
            if record.State.Status != "running":
                raise Conflict("You cannot attach to a stopped container, start it first"
                               if not record.State.running else
                               "You cannot attach to a paused container, unpause it first")
            socket = self._shim_socket(record)
        with ShimClient(socket) as client:
            return client.attach(stdin=stdin, stdout=stdout, stderr=stderr)

    def logs(self, ref: str, *, timestamps: bool = False, **options: Any) -> Iterator[bytes]:
        """`docker logs`: the container's output, line by line, from its json-file log.

        options: stdout, stderr, tail, since, until, follow, as log_entries takes them.
        """
        from mini_docker.engine.logs import format_entry

        return (format_entry(entry, timestamps) for entry in self.log_entries(ref, **options))

    def log_entries(self, ref: str, *, stdout: bool = True, stderr: bool = True,
                    tail: int | str | None = None, since: Any = None, until: Any = None,
                    follow: bool = False):
        """The log entries themselves (stream, time, data), for callers that keep streams apart.

        tail: the last N entries ("all" or None: every one); since, until: unix
        seconds, RFC 3339 or a duration ago ("10m"); follow: wait for more
        until the container stops.
        """
        from mini_docker.engine.logs import parse_time, read_logs

        record = self.record(ref)
        if not record.LogPath:
            raise InvalidArgument('configured logging driver does not support reading: "none"')
        if tail in (None, "all"):
            count = None
        else:
            try:
                count = int(tail)
            except (TypeError, ValueError):
                raise InvalidArgument(f"invalid tail value {tail!r}: a number or 'all'") from None
            count = None if count < 0 else count
        def running() -> bool:
            return self._is_running(record.Id)

        def pause(seconds: float) -> None:  # a poll's wait, cut short by the container's exit
            with self._changed:
                self._changed.wait_for(lambda: not running(), timeout=seconds)

        return read_logs(record.LogPath, stdout=stdout, stderr=stderr,
                         since=parse_time(since) if since else None,
                         until=parse_time(until) if until else None, tail=count,
                         follow=follow, is_running=running, pause=pause)

    def exec_create(self, ref: str, cmd: str | Sequence[str], *, stdout: bool = True,
                    stderr: bool = True, stdin: bool = False, tty: bool = False,
                    user: str = "", environment: Any = None, workdir: str | None = None,
                    privileged: bool = False) -> str:
        """POST /containers/{id}/exec: an exec instance for `cmd`; returns its ID.

        user, environment, workdir: as `docker exec -u -e -w`, on top of the
        container's own; privileged: every capability.
        """
        from mini_docker.engine import names
        from mini_docker.engine.config import as_list
        from mini_docker.engine.config import environment as env_list
        from mini_docker.engine.execs import ExecInstance

        with self._lock:
            record = self._running_record(ref)
            args = as_list(cmd, "cmd")
            if not args:
                raise InvalidArgument("No exec command specified")
            process = self._exec_process(record, args, user, env_list(environment), workdir,
                                         tty, privileged)
            instance = ExecInstance(names.new_id(), record.Id, process, tty=tty, stdin=stdin,
                                    stdout=stdout, stderr=stderr)
            self._execs[instance.id] = instance
            self._emit(record, f"exec_create: {' '.join(args)}", execID=instance.id)
        return instance.id

    def exec_start(self, exec_id: str, *, detach: bool = False):
        """POST /exec/{id}/start: run it; an ExecStream of its output, or None if detached.

        A detached exec's output is read and dropped here, so that its exit
        code still reaches exec_inspect.
        """
        from mini_docker.engine.execs import ExecStream, drain
        from mini_docker.engine.shimclient import ShimClient

        with self._lock:
            instance = self._exec_instance(exec_id)
            with instance.lock:
                if instance.started:
                    raise Conflict(f"exec {exec_id} has already been started")
                instance.started = True
            record = self._running_record(instance.container_id)
            socket = self._shim_socket(record)
        client = ShimClient(socket)
        try:
            session = client.exec(instance.process, tty=instance.tty, stdin=instance.stdin)
        except BaseException:
            client.close()
            raise
        instance.running, instance.pid = True, session.pid
        command = " ".join(instance.process["args"])
        self._emit(record, f"exec_start: {command}", execID=instance.id)

        def ended(done) -> None:
            self._emit(record, "exec_die", execID=done.id, exitCode=str(done.exit_code))

        stream = instance.stream = ExecStream(instance, client, session, ended)
        if detach:
            drain(stream)
            return None
        return stream

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        """GET /exec/{id}/json: whether it runs, and its exit code once it has ended."""
        with self._lock:
            return self._exec_instance(exec_id).inspect()

    def exec_resize(self, exec_id: str, height: int, width: int) -> None:
        """POST /exec/{id}/resize: the size of the exec's terminal."""
        with self._lock:
            instance = self._exec_instance(exec_id)
            if not instance.running:
                raise Conflict(f"exec {exec_id} is not running")
            if not instance.tty:
                raise Conflict(f"exec {exec_id} has no terminal to resize")
            stream = instance.stream
        stream.resize(height, width)  # a control frame on the exec's own connection

    def exec_run(self, ref: str, cmd: str | Sequence[str], *, detach: bool = False,
                 **options: Any):
        """exec_create and exec_start in one: the stream, or None when detached."""
        return self.exec_start(self.exec_create(ref, cmd, **options), detach=detach)

    def _exec_instance(self, exec_id: str):
        instance = self._execs.get(exec_id)
        if instance is None:
            raise NotFound(f"No such exec instance: {exec_id}")
        return instance

    def _running_record(self, ref: str) -> ContainerRecord:
        record = self.record(ref)
        if record.State.Status == "paused":
            raise Conflict(f"Container {record.Id} is paused, unpause the container before exec")
        if record.State.Status != "running":
            raise Conflict(f"Container {record.Id} is not running")
        return record

    def top(self, ref: str, ps_args: str | None = None) -> dict[str, Any]:
        """`docker top`: the container's processes."""
        from mini_docker.engine.top import container_top

        with self._lock:
            record = self.record(ref)
            if not record.State.running:
                raise Conflict(f"Container {record.Id} is not running")
            state = self._runtime_state(record)
        return container_top(state, ps_args or "-ef")

    def stats(self, ref: str, *, stream: bool = True, one_shot: bool = False,
              interval: float = 1.0) -> Iterator[dict[str, Any]]:
        """`docker stats`: readings of the container's cgroup, every `interval` seconds.

        stream=False gives one reading; like dockerd, it is the second of two
        taken `interval` apart, so that it has a CPU percentage, unless
        one_shot asks for a single quick reading (with no precpu_stats).
        """
        from mini_docker.engine.stats import container_stats, stats_stream

        with self._lock:
            record = self.record(ref)
            if not record.State.running:
                raise Conflict(f"Container {record.Id} is not running")
            group = self._runtime_state(record).cgroup_path
        if not stream and one_shot:
            return iter([container_stats(group, container_id=record.Id, name=record.Name)])
        if not stream:
            first = container_stats(group, container_id=record.Id, name=record.Name)
            time.sleep(interval)
            return iter([container_stats(group, container_id=record.Id, name=record.Name,
                                         previous=first)])
        return stats_stream(group, container_id=record.Id, name=record.Name, interval=interval,
                            is_running=lambda: self._is_running(record.Id))

    def _exec_process(self, record: ContainerRecord, args: list[str], user: str,
                      env: list[str], workdir: str | None, tty: bool,
                      privileged: bool) -> dict[str, Any]:
        """The OCI process for an exec: the container's, with the exec's changes."""
        import json

        from mini_docker.image.container import capabilities, merge_env, resolve_user

        process = json.loads(Path(record.Bundle, "config.json").read_text())["process"]
        process["args"], process["terminal"] = args, tty
        process["env"] = merge_env(process["env"], env)
        if workdir:
            if not workdir.startswith("/"):
                raise InvalidArgument(f"the working directory '{workdir}' is invalid, it needs "
                                      "to be an absolute path")
            process["cwd"] = workdir
        if user:
            identity = resolve_user(Path(record.Bundle, "merged"), user)
            process["user"] = {"uid": identity.uid, "gid": identity.gid,
                               **({"additionalGids": identity.additional_gids}
                                  if identity.additional_gids else {})}
            process["capabilities"] = capabilities(identity.uid)
        if privileged:
            from mini_docker.kernel.capabilities import CAPABILITIES, last_cap

            caps = [name for name, number in CAPABILITIES.items() if number <= last_cap()]
            process["capabilities"] = {k: list(caps) for k in
                                       ("bounding", "effective", "permitted")}
        return process

    def _shim_socket(self, record: ContainerRecord) -> str:
        from mini_docker.engine.shim import read_shim

        shim = read_shim(str(self.records.directory(record.Id)))
        if shim is None:
            raise Conflict(f"Container {record.Id} is not running")
        return shim.socket

    def _runtime_state(self, record: ContainerRecord):
        from mini_docker.runtime.state import StateDir

        try:
            return StateDir(self.runtime_root).load(record.Id)
        except NotFound:
            raise Conflict(f"Container {record.Id} is not running") from None

