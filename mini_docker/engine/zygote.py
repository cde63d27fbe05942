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

Each shim is a child of the zygote, which ignores SIGCHLD: then the kernel
reaps the zygote's children itself as they exit, with no zombies and no
wait, and the zygote never has to stop to collect them. A child outlives its
parent: when the zygote exits, the kernel gives its shims to the host's init
(or the nearest subreaper), so they outlive the zygote and the engine. The
engine starts the zygote in a session of its own (setsid), away from the
engine's terminal: a Ctrl-C there goes to the terminal's foreground process
group, not to the zygote or its shims. A shim is in that session but not its
leader, and only a session leader acquires a controlling terminal by opening
one (a shim opens terminals: its containers' pty masters). Each shim also
makes a process group of its own, so that a signal to the zygote's group
does not reach it.

Forking is cheap, but not free: the fork, and the copy-on-write page
faults of a process that has just been forked (see shim.warm_up), cost a
few milliseconds. So the zygote keeps one shim forked in advance, a
*spare*, that has warmed up and waits for work. A request goes to the spare,
and the zygote forks the next spare while the shim creates its container.
On a cgroup v1 host the spare also holds the next container's init,
already in its namespaces and cgroup (runtime/prepared.py). And before it
forks anything, the zygote runs the code its children run (warm_up below),
so that they inherit that code already specialised by the interpreter.

The engine sends a request as one datagram on a SOCK_SEQPACKET socket pair:
the ShimSpec as JSON, with the write end of a pipe attached as SCM_RIGHTS
ancillary data (the way one process hands an open file to another). The
zygote passes both on to the spare the same way. The shim reports on that
pipe straight to the engine, and the zygote waits for no shim, so spawns can
overlap. When the engine closes its end, or dies, the zygote reads EOF,
dismisses its spare and exits.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
from contextlib import suppress
from typing import NoReturn, Self

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
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                cwd="/",  # shims inherit it: they must not keep a directory busy
                env=env, start_new_session=True)
        self._control = ours

    @property
    def pid(self) -> int:
        return self._process.pid

    def spawn(self, spec: ShimSpec, keep_report: bool = False) -> ShimProcess:
        """A shim for `spec`, with its container created when this returns (and started,
        if `spec.start`).

        keep_report: keep the pipe the shim reported on (ShimProcess.report, non-blocking):
        it reads EOF as soon as the container has exited (see monitor.py).
        """
        read_end, write_end = os.pipe()
        try:
            with self._lock:
                if self._control is None:
                    raise MiniDockerError("the zygote is closed")
                if self._process.poll() is not None:  # killed: start another
                    self._control.close()
                    self._process.stdout.close()
                    self._start()
                try:
                    socket.send_fds(self._control, [json.dumps(vars(spec)).encode()], [write_end])
                except OSError as err:
                    raise MiniDockerError(f"cannot reach the zygote: {err.strerror}") from None
            os.close(write_end)
            write_end = -1
            shim = self._await_shim(read_end, spec.container_id)
            if keep_report:
                os.set_blocking(read_end, False)
                shim.report, read_end = read_end, -1
            return shim
        finally:
            if read_end >= 0:
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
                if "error" in message and pid is not None:
                    _wait_gone(pid)  # it has cleaned up and is exiting: let it finish
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
            out, _ = self._process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            out, _ = self._process.communicate()
        for pid in out.split():  # its last spare, a zombie child of ours if we are a subreaper
            with suppress(ChildProcessError):
                os.waitpid(int(pid), os.WNOHANG)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _alive(pid: int) -> bool:
    from mini_docker.runtime.state import process_state_letter

    return process_state_letter(pid) not in (None, "Z", "X")


def _wait_gone(pid: int, timeout: float = 5) -> None:
    import time

    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.001)


# -- the zygote process --

def serve(control: socket.socket) -> None:
    """Hand each request to the spare shim and fork the next, until `control` reads EOF."""
    spare = _Spare(control)
    try:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(control, 1 << 20, 1)
            except ConnectionResetError:
                return
            if not message and not fds:
                return  # EOF: the engine has gone
            if not fds:
                continue  # nowhere to report to
            try:
                ShimSpec(**json.loads(message))  # a bad request must not use up the spare
                try:
                    spare.hand_over(message, fds[0])
                except OSError:  # the spare was killed: another, at once
                    spare.dismiss()
                    spare = _Spare(control)
                    spare.hand_over(message, fds[0])
            except Exception as err:  # noqa: BLE001  (say so on its pipe, serve the next)
                os.write(fds[0], json.dumps({"error": f"zygote: {err}"}).encode() + b"\n")
                continue
            finally:
                os.close(fds[0])
            spare = _Spare(control)
    finally:
        spare.dismiss()
        with suppress(OSError):  # for an engine that is a subreaper: the spare was its child
            os.write(1, b"%d\n" % spare.pid)


class _Spare:
    """A shim forked in advance, warmed up, waiting for its ShimSpec."""

    def __init__(self, control: socket.socket) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it waits for its own children
                control.close()  # the engine's requests are the zygote's alone
                self.sock.close()
                os.setpgid(0, 0)
                _wait_for_work(theirs)  # never returns
            finally:
                os._exit(1)
        theirs.close()

    def hand_over(self, message: bytes, ready: int) -> None:
        socket.send_fds(self.sock, [message], [ready])
        self.sock.close()

    def dismiss(self) -> None:
        """Close its socket (it reads EOF and exits); wait until it has."""
        self.sock.close()
        _wait_gone(self.pid, timeout=2)


def _wait_for_work(sock: socket.socket) -> NoReturn:
    """The spare: warm up, prepare the next container's init, wait for a ShimSpec and a
    pipe to report on, become the shim."""
    status, prepared = 1, None
    try:
        from mini_docker.engine import shim
        from mini_docker.kernel import constants as C
        from mini_docker.kernel import prctl
        from mini_docker.runtime.prepared import PreparedInit

        prctl(C.PR_SET_CHILD_SUBREAPER, 1)  # the prepared init's parent, once stage 1 exits
        with suppress(Exception):  # without it, create forks as usual
            prepared = PreparedInit()
        # After the fork above, which shares our pages with the init once more.
        with suppress(Exception):  # only ever a matter of speed
            shim.warm_up()
        message, fds, _, _ = socket.recv_fds(sock, 1 << 20, 1)
        if message and fds:
            sock.close()
            os.set_inheritable(fds[0], False)
            shim.main(ShimSpec(**json.loads(message)), fds[0], prepared)  # never returns
        status = 0  # dismissed
    finally:
        if prepared is not None:
            prepared.discard()
        os._exit(status)


def warm_up(rounds: int = 10) -> None:
    """Run the code that shims and prepared inits run first, here, several times.

    Python 3.11 rewrites a function's bytecode in place as it runs it: after a
    few calls it specialises each instruction for the types it meets (the
    "adaptive interpreter"), and caches attribute and global lookups in the
    code object itself. Done in each forked shim, that is a write, so a page
    copied, for every code object it runs, and the specialising again each
    time. Done here, in the zygote, before gc.freeze, the forks inherit code
    that is specialised already, and share its pages. Measured: a spare's own
    warm-up then touches 600 pages instead of 1000, in 2 ms instead of 5.
    """
    from mini_docker.engine import shim
    from mini_docker.runtime import prepared

    for _ in range(rounds):
        with suppress(Exception):  # only ever a matter of speed
            shim.warm_up()
            prepared.warm_up()


def main(argv: list[str]) -> None:
    import gc
    import importlib

    from mini_docker.engine.shim import name_process
    from mini_docker.runtime.cgroup import host_layout

    name_process("mini-zygote")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the shims (see above)
    control = socket.socket(fileno=int(argv[0]))
    for module in PRELOAD:
        importlib.import_module(module)
    host_layout()  # mountinfo, read once here rather than in every shim
    with suppress(Exception):  # what killed spares left (runtime/prepared.py)
        from mini_docker.runtime.prepared import sweep

        sweep()
    warm_up()
    gc.freeze()
    serve(control)


if __name__ == "__main__":
    main(sys.argv[1:])
