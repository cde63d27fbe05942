"""Exec instances: `docker exec` in two steps, as the Engine API has it.

`docker exec web ls` looks like one call, but the Engine API makes it three:
POST /containers/web/exec creates an *exec instance* (what to run, how) and
returns its ID; POST /exec/ID/start runs it and streams its output; GET
/exec/ID/json tells whether it still runs and how it ended. The split lets
a client attach to the stream before anything runs, resize the exec's
terminal by ID, and ask for the exit code later, even of a detached exec.

The instance lives in the engine's memory, as in dockerd, and goes with its
container. The process itself is the shim's child (shimserver.py), so it
survives the engine like the container's init; only the bookkeeping here
does not.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mini_docker.engine.shimclient import ExecSession, ShimClient


@dataclass
class ExecInstance:
    """One `docker exec`: what to run (an OCI process) and what became of it."""

    id: str
    container_id: str
    process: dict[str, Any]  # the runtime-spec process object
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True
    running: bool = False
    exit_code: int | None = None
    pid: int = 0
    started: bool = False
    stream: ExecStream | None = field(default=None, repr=False)  # while it runs
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def inspect(self) -> dict[str, Any]:
        """GET /exec/{id}/json."""
        args = self.process["args"]
        return {"ID": self.id, "Running": self.running, "ExitCode": self.exit_code,
                "ProcessConfig": {"tty": self.tty, "entrypoint": args[0],
                                  "arguments": args[1:], "privileged": False,
                                  "user": _user(self.process)},
                "OpenStdin": self.stdin, "OpenStderr": self.stderr, "OpenStdout": self.stdout,
                "CanRemove": False, "ContainerID": self.container_id, "DetachKeys": "",
                "Pid": self.pid}


class ExecStream:
    """A started exec's stdio: iterate for ("stdout" | "stderr", bytes).

    When the iteration ends with the process, its exit code is recorded in
    the instance and `on_exit` is called (the engine announces exec_die).
    """

    def __init__(self, instance: ExecInstance, client: ShimClient, session: ExecSession,
                 on_exit) -> None:
        self.instance = instance
        self._client, self._session, self._on_exit = client, session, on_exit

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        try:
            yield from self._session
        finally:
            self._finish()

    @property
    def exit_code(self) -> int | None:
        return self._session.exit_code

    def send(self, data: bytes) -> None:
        self._session.send(data)

    def close_stdin(self) -> None:
        self._session.close_stdin()

    def resize(self, height: int, width: int) -> None:
        self._session.resize(height, width)

    def fileno(self) -> int:
        return self._session.fileno()

    @property
    def buffered(self) -> bool:
        return self._session.buffered

    def close(self) -> None:
        """Leave: the process runs on, and its end is no longer recorded."""
        self._session.close()
        self._client.close()

    def _finish(self) -> None:
        code = self._session.exit_code
        if code is not None:
            with self.instance.lock:
                self.instance.running, self.instance.exit_code = False, code
            self._on_exit(self.instance)
        self.close()

    def __enter__(self) -> ExecStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def drain(stream: ExecStream) -> None:
    """Read a detached exec to its end on a thread of its own, so its exit code is known."""
    def run() -> None:
        for _ in stream:
            pass

    threading.Thread(target=run, name=f"exec-{stream.instance.id[:12]}", daemon=True).start()


def _user(process: dict[str, Any]) -> str:
    user = process.get("user") or {}
    return f"{user.get('uid', 0)}:{user.get('gid', 0)}"
