"""The shim: one small process per container, from its create to its exit.

dockerd does not run containers itself, and neither does containerd: for
each container, a small process is started that runs the runtime and then
stays (containerd-shim-runc-v2; podman's is conmon). This is ours. Why a
process of its own, between the engine and the container?

* Somebody must be the container's parent. A process's exit status goes to
  its parent and to nobody else. If the engine were the parent, an engine
  that is restarted (upgraded, crashed, killed) would lose every exit status,
  or take the containers down with it. The shim is the parent instead, so
  the engine can come and go and the containers run on (Docker's "live
  restore").
* Somebody must read the container's stdout and stderr, always. They are
  pipes; a pipe holds 64 KiB, and a program whose output nobody reads blocks
  in write(2). The shim reads them and writes the log, attached or not.
* Somebody must hold the container's stdin and terminal, so that a client
  can attach later and type into it.

The shim is a *child subreaper* (PR_SET_CHILD_SUBREAPER). With a PID
namespace, the container's init is forked by the runtime's stage 1 process,
which then exits; an orphan is handed to its nearest subreaper ancestor, or
else to the host's PID 1, which would reap it and throw the status away. An
exec'd process reaches the shim the same way. SIGCHLD wakes the loop through
signal.set_wakeup_fd, and the loop, never a signal handler, reaps.

It listens on an *abstract* unix socket: a name that starts with a NUL byte
and lives in no directory. A socket file's path is limited to 108 bytes,
too few for a state root deep in a temporary directory, and an abstract name
disappears with the process that holds it, so a killed shim leaves no file
to clean up. Abstract names belong to a network namespace, though, and a
container that shares the host's network could connect to one (containerd's
CVE-2020-15257): the shim serves only peers in its own mount namespace,
which no container shares.

In order: become "mini-shim", make the stdio (pipes, or a terminal received
over a console socket), runtime.create with them as fds 0-2, report ready,
then loop: output to the log and to attached clients, requests (start,
attach, exec, resize), SIGCHLD. When the init exits: drain its output,
flush the log, note whether the OOM killer struck, runtime.delete, write
exit.json atomically, give the exit code to attached clients, and exit.

How a shim is born is zygote.py's story; how to talk to one, shimclient.py's.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import termios
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import NoReturn

from mini_docker.engine.shimclient import (
    CONTROL,
    STDIN,
    STREAM_NUMBERS,
    FrameReader,
    ShimClient,
    control_frame,
    error_message,
    frame,
)
from mini_docker.errors import Conflict, InvalidArgument, MiniDockerError
from mini_docker.kernel import constants as C
from mini_docker.kernel import prctl, reap_children
from mini_docker.runtime import spec as oci
from mini_docker.runtime.console import ConsoleListener
from mini_docker.runtime.create import create
from mini_docker.runtime.delete import delete
from mini_docker.runtime.exec import exec_in
from mini_docker.runtime.start import start
from mini_docker.runtime.state import (
    ContainerState,
    StateDir,
    now_rfc3339,
    process_start_time,
    process_state_letter,
)

DRAIN = 1.0  # seconds to wait for the last output after a process has exited
MAX_REQUEST = 1 * 2**20
MAX_BUFFERED = 8 * 2**20  # a client this far behind is dropped, not waited for
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
PYTHON_IGNORES = (signal.SIGPIPE, signal.SIGXFSZ)  # set to SIG_IGN by the interpreter at start-up


@dataclass
class ShimSpec:
    """What a shim is to do; crosses from the engine to the zygote as JSON."""

    container_id: str
    bundle: str  # the OCI bundle directory
    runtime_root: str
    state_dir: str  # the engine's directory for the container: shim.json, exit.json
    log_path: str | None  # json-file log; None: no log
    log_max_size: int | None = None  # bytes; None: no rotation
    log_max_file: int = 1
    tty: bool = False
    open_stdin: bool = False
    stdin_once: bool = False  # close the stdin when the first client attached to it leaves


@dataclass
class ShimProcess:
    pid: int  # the shim's
    init_pid: int  # the container's init, on the host
    socket: str  # abstract socket name, without the leading NUL


@dataclass
class ExitStatus:
    """exit.json: how the container's init ended."""

    exit_code: int
    oom_killed: bool = False
    finished_at: str = ""  # RFC 3339, nanoseconds
    error: str = ""  # what went wrong in the shim itself, if anything


def socket_name(state_dir: str, container_id: str) -> str:
    digest = hashlib.sha256(os.fspath(state_dir).encode()).hexdigest()[:16]
    return f"mini-docker/{digest}/{container_id[:12]}"


def read_shim(state_dir: str) -> ShimProcess | None:
    """The container's shim, from shim.json, if that process is still the one alive."""
    doc = _read_json(os.path.join(state_dir, "shim.json"))
    if doc is None or process_start_time(doc["pid"]) != doc["start_time"]:
        return None
    if process_state_letter(doc["pid"]) in (None, "Z", "X"):
        return None
    return ShimProcess(doc["pid"], doc["init_pid"], doc["socket"])


def read_exit(state_dir: str) -> ExitStatus | None:
    """How the container ended, from exit.json; None if the shim has not said."""
    doc = _read_json(os.path.join(state_dir, "exit.json"))
    if doc is None:
        return None
    return ExitStatus(**{f.name: doc[f.name] for f in fields(ExitStatus) if f.name in doc})


def name_process(name: str) -> None:
    """Set our comm (what ps and /proc/PID/stat show) with PR_SET_NAME."""
    import ctypes

    buffer = ctypes.create_string_buffer(name.encode()[:15])
    prctl(C.PR_SET_NAME, ctypes.addressof(buffer))


def warm_up() -> None:
    """Run, to no effect, the code a new shim runs first (a spare shim does, in zygote.py).

    A forked process shares its parent's memory until it writes to a page,
    and the first write to each page copies it: a page fault of a few
    microseconds. Python writes to every object it touches (its reference
    count), so a brand-new shim pays for a thousand such faults in its first
    milliseconds. Paid in advance, while a spare waits for work, they are off
    the path of `docker start`.
    """
    import pwd

    from mini_docker.runtime import cgroup
    from mini_docker.runtime.sync import SyncPipe

    config = oci.parse(oci.default_spec(["sh"], terminal=False))
    cgroup.resources(config)
    cgroup.open_group(cgroup.group_path(config, "warm-up")).exists()
    state = ContainerState(id="warm-up", bundle="/", rootfs="/", pid=os.getpid(),
                           start_time=process_start_time(os.getpid()) or 0, created=now_rfc3339())
    json.loads(json.dumps(asdict(state)))
    StateDir("/nonexistent").path(state.id)
    process_state_letter(os.getpid())
    pwd.getpwuid(os.geteuid())
    socket_name("/nonexistent", state.id)
    FrameReader().feed(control_frame(error_message(Conflict("warm-up"))) + frame(1, b""))
    sync = SyncPipe.open()
    sync.parent_side()
    sync.close_parent()
    sync.child_side()
    with selectors.DefaultSelector():
        pair = socket.socketpair()
    for sock in pair:
        sock.close()


def main(spec: ShimSpec, ready: int) -> NoReturn:
    """The shim process, from its fork to its exit; reports on `ready`, one JSON line each:
    {"pid": n} at once, then {"init_pid": n, "socket": name} or {"error": ..., "kind": ...}."""
    status = 1
    try:
        name_process("mini-shim")
        prctl(C.PR_SET_CHILD_SUBREAPER, 1)
        _report(ready, {"pid": os.getpid()})
        shim = Shim(spec)
        try:
            shim.create()
            shim.write_record()
            _report(ready, {"init_pid": shim.state.pid, "socket": shim.socket_name})
        except BaseException as err:
            with suppress(OSError):
                _report(ready, error_message(err))
            shim.abandon()
            raise
        os.close(ready)
        shim.serve()
        status = 0
    finally:
        os._exit(status)


class Shim:
    def __init__(self, spec: ShimSpec) -> None:
        self.spec = spec
        self.socket_name = socket_name(spec.state_dir, spec.container_id)
        self.selector = selectors.DefaultSelector()
        self.null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for fd in (0, 1, 2):  # the zygote's stdio is the engine's: let go of it
            os.dup2(self.null, fd)
        self.state: ContainerState | None = None
        self.outputs: dict[int, str] = {}  # the container's output fds -> stream
        self.stdin: _Sink | None = None
        self.master: int | None = None  # the container's terminal
        self.logger = None
        self.started = False
        self.exit_code: int | None = None
        self.finished_at = ""
        self.deadline = 0.0
        self.conns: set[_Conn] = set()
        self.execs: dict[int, _Exec] = {}  # pid -> session
        self.exec_count = 0
        self.mount_ns = os.readlink("/proc/self/ns/mnt")

    # -- birth --

    def create(self) -> None:
        """Listen, then runtime.create with our stdio ends as the container's fds 0-2."""
        spec = self.spec
        os.makedirs(spec.state_dir, exist_ok=True)
        self._catch_sigchld()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            self.listener.bind("\0" + self.socket_name)
        except OSError as err:
            raise Conflict(f"cannot listen on @{self.socket_name}: {err.strerror}") from None
        self.listener.listen(16)
        theirs: list[int] = []
        console = ConsoleListener() if spec.tty else None
        try:
            stdio = [self.null] * 3
            if not spec.tty:
                if spec.open_stdin:
                    stdio[0], write_end = os.pipe()
                    theirs.append(stdio[0])
                    self.stdin = _Sink(self.selector, write_end)
                for target, stream in ((1, "stdout"), (2, "stderr")):
                    read_end, stdio[target] = os.pipe()
                    theirs.append(stdio[target])
                    self.outputs[read_end] = stream
            with self._as_stdio(stdio):
                self.state = create(spec.container_id, spec.bundle, root=spec.runtime_root,
                                    console_socket=console.path if console else None)
            if console:
                self.master = console.receive()
                self.outputs[self.master] = "stdout"
                if spec.open_stdin:
                    self.stdin = _Sink(self.selector, os.dup(self.master), tty=True)
            if spec.log_path:
                from mini_docker.engine.logs import JsonFileLogger

                self.logger = JsonFileLogger(spec.log_path, max_size=spec.log_max_size,
                                             max_file=spec.log_max_file)
        finally:
            for fd in theirs:
                os.close(fd)
            if console:
                console.close()

    def write_record(self) -> None:
        _write_json(os.path.join(self.spec.state_dir, "shim.json"), {
            "pid": os.getpid(), "start_time": process_start_time(os.getpid()),
            "socket": self.socket_name, "init_pid": self.state.pid})

    def abandon(self) -> None:
        """Set-up failed after all: leave nothing behind."""
        if self.state is not None:
            with suppress(MiniDockerError, OSError):
                delete(self.spec.container_id, force=True, root=self.spec.runtime_root)
        with suppress(OSError):
            os.unlink(os.path.join(self.spec.state_dir, "shim.json"))

    def _catch_sigchld(self) -> None:
        self.wake, self._wake_w = socket.socketpair()
        self.wake.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd hears it

    @contextmanager
    def _as_stdio(self, fds: list[int]):
        """Make `fds` our 0, 1 and 2 while the runtime forks: its children inherit them.

        Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays
        ignored across exec. The container's programs expect the defaults
        (`yes | head` ends by SIGPIPE), so those are put back around the fork.
        """
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        ignored = {sig: signal.signal(sig, signal.SIG_DFL) for sig in PYTHON_IGNORES}
        try:
            yield
        finally:
            for sig, handler in ignored.items():
                signal.signal(sig, handler)
            for target in (0, 1, 2):
                os.dup2(self.null, target)

    # -- life --

    def serve(self) -> None:
        """The loop, until the init has exited and its output is drained; then the end."""
        self.selector.register(self.listener, READ, self._accept)
        self.selector.register(self.wake, READ, self._on_sigchld)
        for fd in self.outputs:
            os.set_blocking(fd, False)
            self.selector.register(fd, READ, partial(self._read_container, fd))
        error = ""
        try:
            self._reap()
            while not self._over():
                for key, mask in self.selector.select(self._timeout()):
                    key.data(mask)
                self._settle_execs()
        except Exception as err:  # noqa: BLE001  (a bug here must still end in exit.json)
            error = f"the shim failed: {type(err).__name__}: {err}"
        self._finish(error)

    def _over(self) -> bool:
        return self.exit_code is not None and (not self.outputs or time.monotonic() >= self.deadline)

    def _timeout(self) -> float | None:
        deadlines = [s.deadline for s in self.execs.values() if s.exit_code is not None]
        if self.exit_code is not None:
            deadlines.append(self.deadline)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _on_sigchld(self, mask: int) -> None:
        with suppress(BlockingIOError):
            while self.wake.recv(256):
                pass
        self._reap()

    def _reap(self) -> None:
        for pid, code in reap_children():
            if self.state and pid == self.state.pid and self.exit_code is None:
                self.exit_code, self.finished_at = code, now_rfc3339()
                self.deadline = time.monotonic() + DRAIN
            elif pid in self.execs:
                self.execs[pid].exit_code = code
                self.execs[pid].deadline = time.monotonic() + DRAIN

    def _read_container(self, fd: int, mask: int = READ) -> bool:
        stream = self.outputs[fd]
        data = _read(fd)
        if data is None:
            return False
        if not data:
            self._close_output(self.outputs, fd)
            return False
        if self.logger is not None:
            with suppress(OSError):  # a full disk must not stop the container
                self.logger.log(stream, data)
        chunk = frame(STREAM_NUMBERS[stream], data)
        for conn in list(self.conns):
            if conn.mode == "attach" and stream in conn.streams:
                self._send_raw(conn, chunk)
        return True

    def _close_output(self, outputs: dict[int, str], fd: int) -> None:
        self.selector.unregister(fd)
        os.close(fd)
        del outputs[fd]
        if fd == self.master:
            self.master = None

    # -- clients --

    def _accept(self, mask: int) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            if not self._same_mount_namespace(sock):
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock)
            self.conns.add(conn)
            self.selector.register(sock, READ, partial(self._on_conn, conn))

    def _same_mount_namespace(self, sock: socket.socket) -> bool:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        try:
            return os.readlink(f"/proc/{pid}/ns/mnt") == self.mount_ns
        except OSError:
            return False

    def _on_conn(self, conn: _Conn, mask: int) -> None:
        try:
            if mask & WRITE:
                self._flush(conn)
            if mask & READ and conn in self.conns:
                self._receive(conn)
        except (OSError, ValueError, MiniDockerError):
            self._drop(conn)

    def _receive(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            self._drop(conn)
            return
        if conn.mode == "request":
            conn.inbuf += data
            while conn.mode == "request" and b"\n" in conn.inbuf and conn in self.conns:
                line, _, rest = bytes(conn.inbuf).partition(b"\n")
                conn.inbuf = bytearray(rest)
                self._request(conn, line)
            if conn.mode == "request":
                if len(conn.inbuf) > MAX_REQUEST:
                    self._send(conn, error_message(InvalidArgument("request line too long")))
                    self._close_when_sent(conn)
                return
            data, conn.inbuf = bytes(conn.inbuf), bytearray()
        for stream, payload in conn.reader.feed(data):
            self._on_frame(conn, stream, payload)

    def _on_frame(self, conn: _Conn, stream: int, payload: bytes) -> None:
        session = conn.session
        sink = session.stdin if session else (self.stdin if conn.stdin else None)
        if stream == STDIN and sink is not None:
            sink.write(payload)
        elif stream == CONTROL:
            message = json.loads(payload)
            if "resize" in message:
                master = session.master if session else self.master
                if master is not None:
                    _set_size(master, *message["resize"])
            if message.get("close_stdin") and sink is not None:
                sink.close()

    def _request(self, conn: _Conn, line: bytes) -> None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise TypeError("not an object")
            handler = getattr(self, f"_do_{request.get('type')}", None)
            if handler is None:
                raise InvalidArgument(f"unknown request {request.get('type')!r}: start, attach, "
                                      "exec, resize or close_stdin")
            answer = handler(conn, request)
        except (ValueError, TypeError) as err:
            answer = error_message(InvalidArgument(f"a request is one line of JSON: {err}"))
        except Exception as err:  # noqa: BLE001  (one bad request must not end the shim)
            answer = error_message(err)
        self._send(conn, answer)
        if conn.closing:
            self._close_when_sent(conn)

    def _running(self) -> None:
        if not self.started or self.exit_code is not None:
            raise Conflict(f"container {self.spec.container_id} is not running")

    def _do_start(self, conn: _Conn, request: dict) -> dict:
        if self.exit_code is not None:
            raise Conflict(f"container {self.spec.container_id} has exited")
        start(self.spec.container_id, root=self.spec.runtime_root)
        self.started = True
        return {"ok": True}

    def _do_attach(self, conn: _Conn, request: dict) -> dict:
        if self.exit_code is not None:
            raise Conflict(f"container {self.spec.container_id} is not running")
        conn.mode = "attach"
        conn.streams = {s for s in ("stdout", "stderr") if request.get(s, True)}
        conn.stdin = bool(request.get("stdin")) and self.stdin is not None
        return {"ok": True}

    def _do_resize(self, conn: _Conn, request: dict) -> dict:
        if self.master is None:
            raise Conflict(f"container {self.spec.container_id} has no terminal")
        _set_size(self.master, int(request["height"]), int(request["width"]))
        return {"ok": True}

    def _do_close_stdin(self, conn: _Conn, request: dict) -> dict:
        if self.stdin is not None:
            self.stdin.close()
        return {"ok": True}

    def _do_exec(self, conn: _Conn, request: dict) -> dict:
        self._running()
        if not isinstance(request.get("process"), dict):
            raise InvalidArgument("exec needs a process object")
        detach = bool(request.get("detach"))
        session = self._spawn_exec(request["process"], tty=bool(request.get("tty")) and not detach,
                                   stdin=bool(request.get("stdin")) and not detach, detach=detach)
        if detach:
            conn.closing = True
        else:
            conn.mode, conn.session, session.conn = "exec", session, conn
        return {"ok": True, "pid": session.pid}

    def _send(self, conn: _Conn, message: dict) -> None:
        self._send_raw(conn, control_frame(message))

    def _send_raw(self, conn: _Conn, data: bytes) -> None:
        if conn not in self.conns:
            return
        if not conn.outbuf:
            try:
                data = data[conn.sock.send(data):]
            except BlockingIOError:
                pass
            except OSError:
                self._drop(conn)
                return
        if data:
            conn.outbuf += data
            if len(conn.outbuf) > MAX_BUFFERED:
                self._drop(conn)
            else:
                self.selector.modify(conn.sock, READ | WRITE, partial(self._on_conn, conn))

    def _flush(self, conn: _Conn) -> None:
        with suppress(BlockingIOError):
            del conn.outbuf[:conn.sock.send(conn.outbuf)]
        if not conn.outbuf:
            self.selector.modify(conn.sock, READ, partial(self._on_conn, conn))
            if conn.closing:
                self._drop(conn)

    def _close_when_sent(self, conn: _Conn) -> None:
        conn.closing = True
        if not conn.outbuf:
            self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        """A client left (or is sent away): the container runs on."""
        if conn not in self.conns:
            return
        self.conns.discard(conn)
        self.selector.unregister(conn.sock)
        conn.sock.close()
        if conn.session is not None:
            conn.session.conn = None  # the exec'd process runs on; its output is dropped
        if conn.mode == "attach" and conn.stdin and self.spec.stdin_once and self.stdin:
            self.stdin.close()

    # -- exec --

    def _spawn_exec(self, doc: dict, *, tty: bool, stdin: bool, detach: bool) -> _Exec:
        """runtime.exec_in, detached, with our stdio ends; we reap the process ourselves."""
        process = oci._parse_process({**doc, "terminal": tty})
        self.exec_count += 1
        # exec_in reports a detached process's pid only through a pid file.
        pid_file = os.path.join(self.spec.state_dir, f".exec-{self.exec_count}.pid")
        session, theirs, stdio = _Exec(), [], [self.null] * 3
        mine = console = None
        try:
            if tty:
                mine, console = socket.socketpair()
            elif not detach:
                if stdin:
                    stdio[0], write_end = os.pipe()
                    theirs.append(stdio[0])
                    session.stdin = _Sink(self.selector, write_end)
                for target, stream in ((1, "stdout"), (2, "stderr")):
                    read_end, stdio[target] = os.pipe()
                    theirs.append(stdio[target])
                    session.outputs[read_end] = stream
            with self._as_stdio(stdio):
                exec_in(self.spec.container_id, process, root=self.spec.runtime_root,
                        detach=True, pid_file=pid_file, console=console.fileno() if console else None)
            with open(pid_file) as f:
                session.pid = int(f.read())
            if mine is not None:
                mine.settimeout(5)
                session.master = socket.recv_fds(mine, 1024, 1)[1][0]
                session.outputs[session.master] = "stdout"
                if stdin:
                    session.stdin = _Sink(self.selector, os.dup(session.master), tty=True)
        except BaseException:
            session.close_all()
            raise
        finally:
            for fd in theirs:
                os.close(fd)
            for sock in (mine, console):
                if sock is not None:
                    sock.close()
            with suppress(FileNotFoundError):
                os.unlink(pid_file)
        for fd in session.outputs:
            os.set_blocking(fd, False)
            self.selector.register(fd, READ, partial(self._read_exec, session, fd))
        self.execs[session.pid] = session
        return session

    def _read_exec(self, session: _Exec, fd: int, mask: int = READ) -> bool:
        data = _read(fd)
        if data is None:
            return False
        if not data:
            self._close_output(session.outputs, fd)
            return False
        if session.conn is not None:
            self._send_raw(session.conn, frame(STREAM_NUMBERS[session.outputs[fd]], data))
        return True

    def _settle_execs(self) -> None:
        now = time.monotonic()
        for session in list(self.execs.values()):
            if session.exit_code is not None and (not session.outputs or now >= session.deadline):
                self._end_exec(session)

    def _end_exec(self, session: _Exec) -> None:
        for fd in list(session.outputs):
            while self._read_exec(session, fd):
                pass
            if fd in session.outputs:
                self._close_output(session.outputs, fd)
        if session.stdin is not None:
            session.stdin.discard()
        del self.execs[session.pid]
        if session.conn is not None:
            self._send(session.conn, {"exit": session.exit_code})
            self._close_when_sent(session.conn)

    # -- death --

    def _finish(self, error: str) -> None:
        """The init has exited: log, runtime state, exit.json, clients; in that order."""
        spec = self.spec
        self.selector.unregister(self.listener)
        self.listener.close()  # from now on a client is refused: the container is not running
        for fd in list(self.outputs):
            while self._read_container(fd):
                pass
        if self.logger is not None:
            with suppress(OSError):
                self.logger.close()
        oom_killed = self._oom_killed()
        try:  # before exit.json: once it exists, the id can be created again
            delete(spec.container_id, force=True, root=spec.runtime_root)
        except (MiniDockerError, OSError) as err:
            error = error or f"runtime delete failed: {err}"
        self._reap()
        for session in list(self.execs.values()):
            if session.exit_code is None:
                session.exit_code = 137  # killed with the container
            self._end_exec(session)
        status = ExitStatus(exit_code=255 if self.exit_code is None else self.exit_code,
                            oom_killed=oom_killed, finished_at=self.finished_at or now_rfc3339(),
                            error=error)
        _write_json(os.path.join(spec.state_dir, "exit.json"), asdict(status))
        with suppress(FileNotFoundError):
            os.unlink(os.path.join(spec.state_dir, "shim.json"))
        deadline = time.monotonic() + 2
        for conn in list(self.conns):
            if conn.mode == "attach":
                conn.outbuf += control_frame({"exit": status.exit_code})
            with suppress(OSError):
                conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
                conn.sock.sendall(conn.outbuf)
            conn.sock.close()

    def _oom_killed(self) -> bool:
        """Whether the kernel's OOM killer struck in the container's cgroup (read before delete)."""
        try:
            group = StateDir.group(self.state)
            return bool(group is not None and group.exists() and group.oom_events())
        except (OSError, MiniDockerError):
            return False


@dataclass(eq=False)
class _Conn:
    """One client connection: a request, then (for attach and exec) frames both ways."""

    sock: socket.socket
    mode: str = "request"  # then "attach" or "exec"
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    reader: FrameReader = field(default_factory=FrameReader)
    streams: set[str] = field(default_factory=set)
    stdin: bool = False
    session: _Exec | None = None
    closing: bool = False  # close once outbuf is sent


@dataclass(eq=False)
class _Exec:
    """An exec'd process: its pid, output fds and stdin, and who waits for it."""

    pid: int = 0
    outputs: dict[int, str] = field(default_factory=dict)
    stdin: _Sink | None = None
    master: int | None = None
    conn: _Conn | None = None
    exit_code: int | None = None
    deadline: float = 0.0

    def close_all(self) -> None:
        for fd in self.outputs:
            os.close(fd)
        self.outputs.clear()
        if self.stdin is not None:
            self.stdin.discard()


class _Sink:
    """A process's stdin (a pipe, or a terminal's master): written without ever blocking the shim."""

    def __init__(self, selector: selectors.BaseSelector, fd: int, tty: bool = False) -> None:
        os.set_blocking(fd, False)
        self.selector, self.fd, self.tty = selector, fd, tty
        self.buffer = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        if self.fd is not None and not self.closing:
            self.buffer += data
            self._flush()

    def close(self) -> None:
        """End of input: close the pipe once written; on a terminal, type ^D."""
        if self.tty:
            self.write(b"\x04")
        else:
            self.closing = True
            self._flush()

    def discard(self) -> None:
        if self.fd is not None:
            self._watch(False)
            os.close(self.fd)
            self.fd = None
        self.buffer.clear()

    def _flush(self, mask: int = WRITE) -> None:
        try:
            while self.buffer:
                del self.buffer[:os.write(self.fd, self.buffer)]
        except BlockingIOError:
            pass
        except OSError:  # the reader is gone (EPIPE), or the terminal (EIO)
            self.buffer.clear()
        self._watch(bool(self.buffer))
        if self.closing and not self.buffer:
            os.close(self.fd)
            self.fd = None

    def _watch(self, on: bool) -> None:
        """Wait for room in the pipe only while something is waiting to be written."""
        try:
            self.selector.get_key(self.fd)
            if not on:
                self.selector.unregister(self.fd)
        except KeyError:
            if on:
                self.selector.register(self.fd, WRITE, self._flush)


def _read(fd: int) -> bytes | None:
    """A chunk, b"" at the end (EOF, or EIO from a terminal whose other side closed), None for now."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError as err:
        if err.errno == errno.EIO:
            return b""
        raise


def _set_size(master: int, height: int, width: int) -> None:
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def _report(fd: int, message: dict) -> None:
    os.write(fd, json.dumps(message).encode() + b"\n")


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: str, doc: dict) -> None:
    """Write to a temporary name, then rename: a reader sees all of it or none of it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


__all__ = ["ExitStatus", "ShimClient", "ShimProcess", "ShimSpec", "main", "read_exit", "read_shim",
           "socket_name"]
