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
The spare also holds the next container's init, already in its namespaces
(on a cgroup v1 host, in its cgroup too: runtime/prepared.py). And before it
forks anything, the zygote runs the code its children run (warm_up below),
so that they inherit that code already specialised by the interpreter.

Cheaper still is not to fork at all. A shim whose container has exited has
done its work, but it is a warm process: its pages are its own by now, and
its code has run. So it offers itself back: it closes everything of the
container's, tells the zygote "free", prepares the next container's init
and waits for work, as a spare does. The zygote hands the next request to
such a shim first, and to the spare only if none is back; the spare is
replaced only once it is used. One `docker run --rm` after another then
forks no shim at all, and the CPU a container costs drops by a fifth. Nor
does a shim that is back fork the next init itself: that would share its
pages with the init again, and it would pay a page copy for each page it
writes while it creates the next container. It forks, once, an *init
maker* (runtime/prepared.py), which forks each init as the shim's child
(CLONE_PARENT). A
shim stays only if the engine that started it is still there to hear of its
container's exit (an engine started later watches the shim's pid, and must
see it exit), and serves at most MAX_CONTAINERS_PER_SHIM containers, so that
whatever one container leaves behind in it cannot add up.

The engine sends a request as one datagram on a SOCK_SEQPACKET socket pair:
the ShimSpec as JSON, with the write end of a pipe attached as SCM_RIGHTS
ancillary data (the way one process hands an open file to another). The
zygote passes both on to an idle shim the same way, on the socket pair it
keeps with each of its shims. The shim reports on that pipe straight to the
engine, and the zygote waits for no shim, so spawns can overlap. When the
engine closes its end, or dies, the zygote reads EOF, dismisses its idle
shims and exits.
"""

from __future__ import annotations

import json
import os
import select
import selectors
import signal
import socket
import sys
from contextlib import suppress
from typing import TYPE_CHECKING, NoReturn, Self

from mini_docker.engine.shim import ShimProcess, ShimSpec
from mini_docker.engine.shimclient import raise_error
from mini_docker.errors import MiniDockerError

if TYPE_CHECKING:
    from mini_docker.runtime.prepared import InitMaker, PreparedInit

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
                if "socket" in message:  # a quick container's exit may have come with it
                    return ShimProcess(pid, message["init_pid"], message["socket"], said=buffer)
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

MAX_IDLE_SHIMS = 1  # shims back from a container, kept for the next (beyond the spare)
MAX_CONTAINERS_PER_SHIM = 100  # then it exits: what one container leaves behind cannot add up


def serve(control: socket.socket) -> None:
    """Hand each request to an idle shim, until `control` reads EOF.

    The idle shims: one back from its last container if there is one (the
    first choice), and the spare, forked in advance; once the spare is
    handed work, the next is forked. A shim's socket to us stays open while
    it serves its container: it says "free" on it once it is back, or it
    closes (it has exited). A shim back is told "keep", or dismissed (its
    socket closed) if enough are idle, before it prepares another init.
    """
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    spare, idle = _Worker(control), []
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is control:
                    if not _serve_request(control, selector, idle, spare):
                        return
                    if spare.busy:
                        spare = _Worker(control)
                else:
                    worker = key.data
                    selector.unregister(worker.sock)
                    if worker.back() and len(idle) < MAX_IDLE_SHIMS and worker.keep():
                        idle.append(worker)
                    else:  # not needed: it exits before it prepares another init
                        worker.dismiss(wait=False)  # the kernel reaps it (see above)
    finally:
        for worker in [spare, *idle]:
            worker.dismiss()
        with suppress(OSError):  # for an engine that is a subreaper: they were its children
            os.write(1, b"".join(b"%d\n" % w.pid for w in [spare, *idle]))


def _serve_request(control: socket.socket, selector: selectors.BaseSelector,
                   idle: list[_Worker], spare: _Worker) -> bool:
    """Receive one request and hand it over; False once the engine has gone."""
    try:
        message, fds, _, _ = socket.recv_fds(control, 1 << 20, 1)
    except ConnectionResetError:
        return False
    if not message and not fds:
        return False  # EOF: the engine has gone
    if not fds:
        return True  # nowhere to report to
    try:
        ShimSpec(**json.loads(message))  # a bad request must not use up a shim
        while idle:  # a shim back from a container first: no fork for this one
            worker = idle.pop()
            try:
                worker.hand_over(message, fds[0])
                break
            except OSError:  # killed while it waited
                worker.dismiss()
        else:
            worker = spare
            try:
                worker.hand_over(message, fds[0])
            except OSError:  # the spare was killed: another, at once
                worker.dismiss()
                worker = spare.replace(control)
                worker.hand_over(message, fds[0])
        selector.register(worker.sock, selectors.EVENT_READ, worker)
    except Exception as err:  # noqa: BLE001  (say so on its pipe, serve the next)
        os.write(fds[0], json.dumps({"error": f"zygote: {err}"}).encode() + b"\n")
    finally:
        os.close(fds[0])
    return True


class _Worker:
    """A shim of ours: forked in advance, or back from a container; waits for a ShimSpec."""

    def __init__(self, control: socket.socket) -> None:
        self.busy = False
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            try:
                from mini_docker.runtime.process import close_inherited_fds

                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it waits for its own children
                control.close()
                self.sock.close()
                # The zygote's descriptors are the zygote's alone: the engine's requests,
                # and the sockets to the other shims, whose closing each of them must see.
                close_inherited_fds(keep=(theirs.fileno(),))
                os.setpgid(0, 0)
                _serve_containers(theirs)  # never returns
            finally:
                os._exit(1)
        theirs.close()

    def replace(self, control: socket.socket) -> _Worker:
        """A new spare in place of this one (killed); this one marked busy, so that the
        zygote forks yet another spare after the hand-over."""
        self.busy = True
        return _Worker(control)

    def hand_over(self, message: bytes, ready: int) -> None:
        socket.send_fds(self.sock, [message], [ready])
        self.busy = True

    def back(self) -> bool:
        """Read what the busy shim said: True if it is back and waits for work."""
        try:
            word = self.sock.recv(16)
        except OSError:
            word = b""
        self.busy = word != b"free"
        return not self.busy

    def keep(self) -> bool:
        """Tell a shim that is back to stay; False if it has gone meanwhile."""
        try:
            self.sock.send(b"keep")
        except OSError:
            return False
        return True

    def dismiss(self, wait: bool = True) -> None:
        """Close its socket (an idle shim reads EOF and exits); `wait` until it has."""
        self.sock.close()
        if wait and not self.busy:
            _wait_gone(self.pid, timeout=2)


def _serve_containers(sock: socket.socket) -> NoReturn:
    """A shim's life: container after container, until it is dismissed, or leaves."""
    from mini_docker.engine import shim

    status, served, ahead = 1, 0, _NextInit()
    try:
        while (work := _wait_for_work(sock, ahead, fresh=served == 0)) is not None:
            served += 1
            if not shim.main(*work, zygote=sock if served < MAX_CONTAINERS_PER_SHIM else None,
                             own=ahead.fds(), meanwhile=ahead.prepare):
                break  # it has left
        status = 0
    finally:
        ahead.close()
        os._exit(status)


class _NextInit:
    """A shim's next container's init, prepared while it waits, or while it tidies up
    after its last container: forked by the shim itself when it is new, and once it
    is back from a container, by its init maker (runtime/prepared.py)."""

    def __init__(self) -> None:
        self.maker: InitMaker | None = None
        self.prepared: PreparedInit | None = None

    def prepare(self, own_fork: bool = False) -> None:
        from mini_docker.runtime.prepared import InitMaker, PreparedInit

        if self.maker is not None and self.maker.broken:  # killed: another one
            self.maker.close()
            self.maker = None
        if self.maker is None and not own_fork:
            with suppress(Exception):  # without it, the shim forks its inits itself
                self.maker = InitMaker()
        with suppress(Exception):  # without it, create forks as usual
            self.prepared = PreparedInit(maker=self.maker)

    def take(self) -> PreparedInit | None:
        prepared, self.prepared = self.prepared, None
        return prepared

    def fds(self) -> tuple[int, ...]:
        """What is open for it in the shim between two containers: the maker's socket."""
        return () if self.maker is None else (self.maker.fileno(),)

    def close(self) -> None:
        if self.prepared is not None:
            self.prepared.discard()
        if self.maker is not None:
            self.maker.close()


def _wait_for_work(sock: socket.socket, ahead: _NextInit,
                   fresh: bool) -> tuple[ShimSpec, int, object] | None:
    """An idle shim: with the next container's init prepared (`fresh`: a new shim
    prepares it now, and warms up), wait for a ShimSpec and a pipe to report on.
    None: dismissed."""
    from mini_docker.engine import shim
    from mini_docker.kernel import constants as C
    from mini_docker.kernel import prctl

    if fresh:
        prctl(C.PR_SET_CHILD_SUBREAPER, 1)  # the prepared init's parent, once stage 1 exits
        ahead.prepare(own_fork=True)
        with suppress(Exception):  # after the fork above, which shares our pages with the init
            shim.warm_up()
    message, fds, _, _ = socket.recv_fds(sock, 1 << 20, 1)
    if not (message and fds):
        return None  # the caller discards the prepared init
    os.set_inheritable(fds[0], False)
    return ShimSpec(**json.loads(message)), fds[0], ahead.take()


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

    from mini_docker.kernel import name_process
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
