"""The zygote: a fork server that makes shims.

A shim could be started as any program is, `python -m ...shim`. But a fresh
Python interpreter costs 40 to 100 ms before it does any work: the
interpreter starts, then imports the runtime, the cgroup drivers, json,
ctypes. Paid at every `docker start`, that would be most of the time a
container takes to start. The SOCK paper (Oakes et al., USENIX ATC 2018)
found the same for serverless Python and borrowed the remedy from Android: a
*zygote*, one process that has paid for the interpreter and the imports
once, and forks a copy of itself for each new process. Forking a warm
process takes about a millisecond, and the copy shares the zygote's memory
pages until one of them writes to a page. (gc.freeze() moves the imported
objects out of the garbage collector's sight, so that a collection in a
shim does not write to, and so copy, every page they live on.)

Why not fork from the engine itself? The engine has threads (its monitor,
the API server's), and fork copies only the calling thread: a lock that
another thread held at that moment stays held, forever, in the child. The
zygote has one thread and does nothing but fork, so it is safe to fork.

Each shim is forked twice:

    zygote ──fork──▶ intermediate ──setsid, fork──▶ shim
                       └─ exits at once; the zygote reaps it

When the intermediate exits, the shim is an orphan, and the kernel gives it
to the host's init (or the nearest subreaper): it is no longer anybody's
child here, so it outlives the zygote and the engine. setsid puts it in a
session of its own, away from the engine's terminal: a Ctrl-C there goes to
the terminal's foreground process group, not to the shims. The second fork
leaves the shim a member of that session but not its leader, and only a
session leader can acquire a controlling terminal by opening one (a shim
opens terminals: its containers' pty masters).

The engine sends a request as one datagram on a SOCK_SEQPACKET socket pair:
the ShimSpec as JSON, with the write end of a pipe attached as SCM_RIGHTS
ancillary data (the way one process hands an open file to another). The
shim reports on that pipe straight to the engine, and the zygote waits for
no shim, so spawns can overlap. When the engine closes its end, or dies, the
zygote reads EOF and exits.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
from dataclasses import asdict
from typing import Self

from mini_docker.engine.shim import ShimProcess, ShimSpec
from mini_docker.engine.shimclient import raise_error
from mini_docker.errors import MiniDockerError

# What a shim needs beyond what shim.py imports itself: loaded once, here.
PRELOAD = ("mini_docker.engine.logs", "mini_docker.runtime.init", "mini_docker.runtime.rootfs",
           "mini_docker.runtime.cgroup", "mini_docker.cgroups", "mini_docker.hostcheck.cgroups")


class Zygote:
    """The engine's side: start the fork server, ask it for shims."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()  # one request on the control socket at a time
        self._control: socket.socket | None = None
        self._start()

    def _start(self) -> None:
        import subprocess

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # The zygote runs this very copy of mini_docker, wherever it was imported from.
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "mini_docker.engine.zygote", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                cwd="/",  # shims inherit it: they must not keep a directory busy
                env=env, start_new_session=True)
        self._control = ours

    @property
    def pid(self) -> int:
        return self._process.pid

    def spawn(self, spec: ShimSpec) -> ShimProcess:
        """A shim for `spec`, with its container created (not started) when this returns."""
        read_end, write_end = os.pipe()
        try:
            with self._lock:
                if self._control is None:
                    raise MiniDockerError("the zygote is closed")
                if self._process.poll() is not None:  # killed: start another
                    self._control.close()
                    self._start()
                try:
                    socket.send_fds(self._control, [json.dumps(asdict(spec)).encode()], [write_end])
                except OSError as err:
                    raise MiniDockerError(f"cannot reach the zygote: {err.strerror}") from None
            os.close(write_end)
            write_end = -1
            return self._await_shim(read_end, spec.container_id)
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)

    def _await_shim(self, fd: int, container_id: str) -> ShimProcess:
        """Read the shim's report: its pid at once, then ready or the reason it is not."""
        buffer, pid = b"", None
        while True:
            if b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                message = json.loads(line)
                raise_error(message)
                if "socket" in message:
                    return ShimProcess(pid, message["init_pid"], message["socket"])
                pid = message["pid"]
                continue
            if select.select([fd], [], [], 0.5)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buffer += chunk
            elif pid is not None and not _alive(pid) or pid is None and self._process.poll() is not None:
                break  # a shim that died without a word (the container's init may hold the pipe)
        if self._process.poll() is not None:
            raise MiniDockerError(f"the zygote exited with status {self._process.returncode}")
        raise MiniDockerError(f"the shim of container {container_id} died during set-up")

    def close(self) -> None:
        """Stop the zygote (it reads EOF); the shims it made run on."""
        import subprocess

        with self._lock:
            if self._control is None:
                return
            self._control.close()
            self._control = None
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _alive(pid: int) -> bool:
    from mini_docker.runtime.state import process_state_letter

    return process_state_letter(pid) not in (None, "Z", "X")


# -- the zygote process --

def serve(control: socket.socket) -> None:
    """Fork a shim per request, until the engine's end of `control` closes."""
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1 << 20, 1)
        except ConnectionResetError:
            return
        if not message and not fds:
            return  # EOF: the engine has gone
        for fd in fds:
            os.set_inheritable(fd, False)
        if not fds:
            continue  # nowhere to report to
        try:
            spec = ShimSpec(**json.loads(message))
            _fork_shim(spec, fds[0], control)
        except Exception as err:  # noqa: BLE001  (a bad request: say so on its pipe, serve the next)
            os.write(fds[0], json.dumps({"error": f"zygote: {err}"}).encode() + b"\n")
        finally:
            os.close(fds[0])


def _fork_shim(spec: ShimSpec, ready: int, control: socket.socket) -> None:
    from mini_docker.engine import shim

    intermediate = os.fork()
    if intermediate == 0:
        try:
            control.close()
            os.setsid()
            if os.fork() == 0:
                shim.main(spec, ready)  # never returns
        finally:
            os._exit(0)
    os.waitpid(intermediate, 0)


def main(argv: list[str]) -> None:
    import gc
    import importlib

    from mini_docker.engine.shim import name_process
    from mini_docker.runtime.cgroup import host_layout

    name_process("mini-zygote")
    control = socket.socket(fileno=int(argv[0]))
    for module in PRELOAD:
        importlib.import_module(module)
    host_layout()  # mountinfo, read once here rather than in every shim
    gc.freeze()
    serve(control)


if __name__ == "__main__":
    main(sys.argv[1:])
