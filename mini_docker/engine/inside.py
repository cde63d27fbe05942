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

    def exec_run(self, ref: str, cmd: str | Sequence[str], *, stdout: bool = True,
                 stderr: bool = True, stdin: bool = False, tty: bool = False,
                 user: str = "", detach: bool = False, environment: Any = None,
                 workdir: str | None = None, privileged: bool = False):
        """Start `cmd` in the running container; the session streams its output and exit code."""
        from mini_docker.engine.config import as_list
        from mini_docker.engine.config import environment as env_list
        from mini_docker.engine.shimclient import ShimClient

        with self._lock:
            record = self.record(ref)
            if record.State.Status == "paused":
                raise Conflict(f"Container {record.Id} is paused, unpause the container before "
                               "exec")
            if record.State.Status != "running":
                raise Conflict(f"Container {record.Id} is not running")
            args = as_list(cmd, "cmd")
            if not args:
                raise InvalidArgument("No exec command specified")
            process = self._exec_process(record, args, user, env_list(environment), workdir,
                                         tty, privileged)
            socket = self._shim_socket(record)
            self._emit(record, f"exec_create: {' '.join(args)}")
        client = ShimClient(socket)
        try:
            session = client.exec(process, tty=tty, stdin=stdin, detach=detach)
        except BaseException:
            client.close()
            raise
        self._emit(record, f"exec_start: {' '.join(args)}")
        return client, session

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

