"""What a shim serves: requests, attached streams and exec sessions.

The shim (shim.py) is one process with one thread, and it has many things
to watch at once: the container's stdout and stderr, its listening socket,
every client connection, every exec'd process's output, SIGCHLD. So it is
an event loop: one `selectors` selector (epoll) over all of those file
descriptors, every one of them non-blocking, and a callback for each.

Nothing may block the loop, because a blocked shim is a blocked container:
its pipes fill up and its writes stop. Hence two rules. Writing to a client
goes through a buffer of its own, sent as the socket takes it; a client that
falls megabytes behind is dropped, not waited for. Writing to a process's
stdin (a pipe or a terminal) goes through a `Sink`, for the same reason.

A connection starts with one JSON request line (shimclient.py has the wire
format). `start`, `resize` and `close_stdin` are answered, and the
connection may ask again. `attach` and `exec` make it a stream of frames:
output goes out as stdout and stderr frames, stdin and control frames come in.

An exec'd process is started with the runtime's exec_in, detached, with
pipes (or a terminal) that the shim holds as its fds 0-2, the same trick as
for the container itself. It is then a child of the shim, a subreaper, which
reaps it and sends its exit code to the client: it outlives the engine too.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import termios
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial

from mini_docker.engine.shimclient import (
    CONTROL,
    STDIN,
    STREAM_NUMBERS,
    FrameReader,
    control_frame,
    error_message,
    frame,
)
from mini_docker.errors import Conflict, InvalidArgument, MiniDockerError
from mini_docker.runtime import spec as oci
from mini_docker.runtime.exec import exec_in
from mini_docker.runtime.start import start

DRAIN = 1.0  # seconds to wait for the last output after a process has exited
MAX_REQUEST = 1 * 2**20
MAX_BUFFERED = 8 * 2**20  # a client this far behind is dropped, not waited for
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
PYTHON_IGNORES = (signal.SIGPIPE, signal.SIGXFSZ)  # set to SIG_IGN by the interpreter at start-up


class ShimServer:
    """The shim's dealings with clients and exec'd processes; shim.Shim is the rest.

    The attributes it relies on are set by Shim.__init__ and Shim.create.
    """

    spec: object  # shim.ShimSpec
    selector: selectors.BaseSelector
    listener: socket.socket
    null: int  # /dev/null, for stdio nobody needs
    mount_ns: str
    conns: set[Connection]
    execs: dict[int, ExecProcess]  # pid -> session
    exec_count: int
    stdin: Sink | None
    master: int | None
    started: bool
    exit_code: int | None

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
            conn = Connection(sock)
            self.conns.add(conn)
            self.selector.register(sock, READ, partial(self._on_conn, conn))

    def _same_mount_namespace(self, sock: socket.socket) -> bool:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        try:
            return os.readlink(f"/proc/{pid}/ns/mnt") == self.mount_ns
        except OSError:
            return False

    def _on_conn(self, conn: Connection, mask: int) -> None:
        try:
            if mask & WRITE:
                self._flush(conn)
            if mask & READ and conn in self.conns:
                self._receive(conn)
        except (OSError, ValueError, MiniDockerError):
            self._drop(conn)

    def _receive(self, conn: Connection) -> None:
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

    def _on_frame(self, conn: Connection, stream: int, payload: bytes) -> None:
        session = conn.session
        sink = session.stdin if session else (self.stdin if conn.stdin else None)
        if stream == STDIN and sink is not None:
            sink.write(payload)
        elif stream == CONTROL:
            message = json.loads(payload)
            if "resize" in message:
                master = session.master if session else self.master
                if master is not None:
                    set_size(master, *message["resize"])
            if message.get("close_stdin") and sink is not None:
                sink.close()

    def _request(self, conn: Connection, line: bytes) -> None:
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

    def _do_start(self, conn: Connection, request: dict) -> dict:
        if self.exit_code is not None:
            raise Conflict(f"container {self.spec.container_id} has exited")
        start(self.spec.container_id, root=self.spec.runtime_root)
        self.started = True
        return {"ok": True}

    def _do_attach(self, conn: Connection, request: dict) -> dict:
        if self.exit_code is not None:
            raise Conflict(f"container {self.spec.container_id} is not running")
        conn.mode = "attach"
        conn.streams = {s for s in ("stdout", "stderr") if request.get(s, True)}
        conn.stdin = bool(request.get("stdin")) and self.stdin is not None
        return {"ok": True}

    def _do_resize(self, conn: Connection, request: dict) -> dict:
        if self.master is None:
            raise Conflict(f"container {self.spec.container_id} has no terminal")
        set_size(self.master, int(request["height"]), int(request["width"]))
        return {"ok": True}

    def _do_close_stdin(self, conn: Connection, request: dict) -> dict:
        if self.stdin is not None:
            self.stdin.close()
        return {"ok": True}

    def _do_exec(self, conn: Connection, request: dict) -> dict:
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

    def _send(self, conn: Connection, message: dict) -> None:
        self._send_raw(conn, control_frame(message))

    def _send_raw(self, conn: Connection, data: bytes) -> None:
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

    def _flush(self, conn: Connection) -> None:
        with suppress(BlockingIOError):
            del conn.outbuf[:conn.sock.send(conn.outbuf)]
        if not conn.outbuf:
            self.selector.modify(conn.sock, READ, partial(self._on_conn, conn))
            if conn.closing:
                self._drop(conn)

    def _close_when_sent(self, conn: Connection) -> None:
        conn.closing = True
        if not conn.outbuf:
            self._drop(conn)

    def _drop(self, conn: Connection) -> None:
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

    def _pipes(self, stdio: list[int], theirs: list[int], outputs: dict[int, str], *,
               stdin: bool) -> Sink | None:
        """Pipes for a process's stdio: its ends go in `stdio` (0-2) and `theirs` (to close
        once it has them), ours in `outputs` (read end -> stream); the Sink of its stdin."""
        sink = None
        if stdin:
            stdio[0], write_end = os.pipe()
            theirs.append(stdio[0])
            sink = Sink(self.selector, write_end)
        for target, stream in ((1, "stdout"), (2, "stderr")):
            read_end, stdio[target] = os.pipe()
            theirs.append(stdio[target])
            outputs[read_end] = stream
        return sink

    # -- exec --

    def _spawn_exec(self, doc: dict, *, tty: bool, stdin: bool, detach: bool) -> ExecProcess:
        """runtime.exec_in, detached, with our stdio ends; we reap the process ourselves."""
        process = oci._parse_process({**doc, "terminal": tty})
        self.exec_count += 1
        # exec_in reports a detached process's pid only through a pid file.
        pid_file = os.path.join(self.spec.state_dir, f".exec-{self.exec_count}.pid")
        session, theirs, stdio = ExecProcess(), [], [self.null] * 3
        mine = console = None
        try:
            if tty:
                mine, console = socket.socketpair()
            elif not detach:
                session.stdin = self._pipes(stdio, theirs, session.outputs, stdin=stdin)
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
                    session.stdin = Sink(self.selector, os.dup(session.master), tty=True)
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

    def _read_exec(self, session: ExecProcess, fd: int, mask: int = READ) -> bool:
        data = read_output(fd)
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

    def _end_exec(self, session: ExecProcess) -> None:
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


@dataclass(eq=False)
class Connection:
    """One client connection: a request, then (for attach and exec) frames both ways."""

    sock: socket.socket
    mode: str = "request"  # then "attach" or "exec"
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    reader: FrameReader = field(default_factory=FrameReader)
    streams: set[str] = field(default_factory=set)
    stdin: bool = False
    session: ExecProcess | None = None
    closing: bool = False  # close once outbuf is sent


@dataclass(eq=False)
class ExecProcess:
    """An exec'd process: its pid, output fds and stdin, and who waits for it."""

    pid: int = 0
    outputs: dict[int, str] = field(default_factory=dict)
    stdin: Sink | None = None
    master: int | None = None
    conn: Connection | None = None
    exit_code: int | None = None
    deadline: float = 0.0

    def close_all(self) -> None:
        for fd in self.outputs:
            os.close(fd)
        self.outputs.clear()
        if self.stdin is not None:
            self.stdin.discard()


class Sink:
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


def read_output(fd: int) -> bytes | None:
    """A chunk, b"" at the end (EOF, or EIO from a terminal whose other side closed), None for now."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError as err:
        if err.errno == errno.EIO:
            return b""
        raise


def set_size(master: int, height: int, width: int) -> None:
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
