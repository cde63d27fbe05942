"""Talking to a shim: one request, then frames, over its unix socket.

A shim (shim.py) listens on an abstract unix socket. A client connects and
sends one request, a line of JSON:

    {"type": "start"}
    {"type": "attach", "stdin": true, "stdout": true, "stderr": true}
    {"type": "exec", "process": {...}, "tty": false, "stdin": false, "detach": false}
    {"type": "resize", "height": 24, "width": 80}
    {"type": "close_stdin"}

From then on, both directions carry frames in the framing of Docker's attach
endpoint, an 8-byte header and the payload:

    byte 0      the stream: 0 stdin, 1 stdout, 2 stderr, 3 control
    bytes 1-3   zero
    bytes 4-7   the payload's length, big-endian

Docker's own streams are 0 to 2; stream 3 carries small JSON control
messages: the shim's answer to the request ({"ok": true} or
{"error": "...", "kind": "Conflict"}), the exit code at the end
({"exit": 0}), and the client's {"resize": [h, w]} or {"close_stdin": true}.
Keeping Docker's framing means the API server can pass stdout and stderr
frames on to a Docker client unchanged.

`start`, `resize` and `close_stdin` are answered and the connection takes
the next request. `attach` and `exec` turn the connection into a stream, so
each gets a connection of its own: a `ShimClient` opens one for them, and
keeps its first connection for the short requests.
"""

from __future__ import annotations

import json
import socket
import struct
from collections import deque
from collections.abc import Iterator
from typing import Self

from mini_docker.errors import Conflict, InvalidArgument, MiniDockerError, NotFound

HEADER = struct.Struct(">BxxxI")
STDIN, STDOUT, STDERR, CONTROL = 0, 1, 2, 3
STREAM_NAMES = {STDOUT: "stdout", STDERR: "stderr"}
STREAM_NUMBERS = {"stdout": STDOUT, "stderr": STDERR}
MAX_FRAME = 16 * 2**20
CHUNK = 1 * 2**20  # larger stdin data is sent as several frames

ERRORS: dict[str, type[MiniDockerError]] = {
    "InvalidArgument": InvalidArgument, "NotFound": NotFound, "Conflict": Conflict}


def frame(stream: int, data: bytes) -> bytes:
    return HEADER.pack(stream, len(data)) + data


def control_frame(message: dict) -> bytes:
    return frame(CONTROL, json.dumps(message).encode())


def error_message(err: BaseException) -> dict:
    """A control message for an error, with the class the other side should raise."""
    if isinstance(err, MiniDockerError):
        return {"error": str(err), "kind": type(err).__name__}
    return {"error": f"{type(err).__name__}: {err}", "kind": "MiniDockerError"}


def raise_error(message: dict) -> None:
    """Raise the error a control message carries, if it carries one."""
    if "error" in message:
        raise ERRORS.get(message.get("kind", ""), MiniDockerError)(message["error"])


class FrameReader:
    """Turns bytes, as they arrive, into (stream, payload) frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER.size:
            stream, size = HEADER.unpack_from(self._buffer)
            if stream > CONTROL or size > MAX_FRAME:
                raise InvalidArgument(f"not a frame: stream {stream}, {size} bytes")
            end = HEADER.size + size
            if len(self._buffer) < end:
                break
            frames.append((stream, bytes(self._buffer[HEADER.size:end])))
            del self._buffer[:end]
        return frames


def connect(socket_name: str, timeout: float | None) -> socket.socket:
    """A connection to the shim at abstract address `socket_name`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect("\0" + socket_name)
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        raise Conflict(f"the container is not running: no shim listens on @{socket_name}") from None
    except BaseException:
        sock.close()
        raise
    return sock


class _Connection:
    """A socket, read frame by frame."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._reader = FrameReader()
        self._frames: deque[tuple[int, bytes]] = deque()

    def send(self, stream: int, data: bytes) -> None:
        self.sock.sendall(frame(stream, data))

    def request(self, request: dict) -> dict:
        """Send a request line; return the shim's answer, or raise its error."""
        try:
            self.sock.sendall(json.dumps(request).encode() + b"\n")
            answer = self.next_control()
        except TimeoutError:
            raise MiniDockerError(f"the shim did not answer a {request['type']} request "
                                  f"within {self.sock.gettimeout()} s") from None
        raise_error(answer)
        return answer

    def next_frame(self) -> tuple[int, bytes] | None:
        """The next frame, or None once the shim has closed the connection."""
        while not self._frames:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self._frames.extend(self._reader.feed(data))
        return self._frames.popleft()

    def next_control(self) -> dict:
        while (got := self.next_frame()) is not None:
            if got[0] == CONTROL:
                return json.loads(got[1])
        raise MiniDockerError("the shim closed the connection without an answer")

    def close(self) -> None:
        self.sock.close()


class Stream:
    """An attached stream: iterate for ("stdout" | "stderr", bytes); a tty gives only stdout."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.exit_code: int | None = None

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        self._connection.sock.settimeout(None)  # output may be minutes apart
        while (got := self._connection.next_frame()) is not None:
            stream, data = got
            if stream in STREAM_NAMES:
                yield STREAM_NAMES[stream], data
            elif stream == CONTROL:
                message = json.loads(data)
                raise_error(message)
                if "exit" in message:
                    self.exit_code = message["exit"]
                    break

    def output(self) -> tuple[bytes, bytes]:
        """Read to the end; stdout and stderr, each joined."""
        chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        for stream, data in self:
            chunks[stream].append(data)
        return b"".join(chunks["stdout"]), b"".join(chunks["stderr"])

    def send(self, data: bytes) -> None:
        """Write to the process's stdin."""
        for start in range(0, len(data), CHUNK):
            self._connection.send(STDIN, data[start:start + CHUNK])

    def close_stdin(self) -> None:
        """End of input: the process reads EOF (on a terminal, a ^D)."""
        self._connection.send(CONTROL, json.dumps({"close_stdin": True}).encode())

    def resize(self, height: int, width: int) -> None:
        """Resize the process's terminal (the kernel sends it SIGWINCH)."""
        self._connection.send(CONTROL, json.dumps({"resize": [height, width]}).encode())

    def detach(self) -> None:
        """Leave: the process runs on."""
        self._connection.close()

    close = detach

    def fileno(self) -> int:
        return self._connection.sock.fileno()

    @property
    def buffered(self) -> bool:
        """Whether frames already read from the socket wait here: select() would not say so."""
        return bool(self._connection._frames)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


class Attachment(Stream):
    """The container's stdio; exit_code is its exit code if it exited while attached."""


class ExecSession(Stream):
    """An exec'd process's stdio; exit_code is set once the iteration ends."""

    def __init__(self, connection: _Connection, pid: int) -> None:
        super().__init__(connection)
        self.pid = pid  # on the host


class ShimClient:
    """A connection to one container's shim; a context manager."""

    def __init__(self, socket_name: str, timeout: float | None = 10) -> None:
        self.socket_name = socket_name
        self.timeout = timeout
        self._connection = _Connection(connect(socket_name, timeout))

    def start(self) -> None:
        """Let the created container run (the runtime's start); an error if it was started."""
        self._connection.request({"type": "start"})

    def resize(self, height: int, width: int) -> None:
        """Resize the container's terminal."""
        self._connection.request({"type": "resize", "height": height, "width": width})

    def close_stdin(self) -> None:
        """Close the container's stdin: it reads EOF."""
        self._connection.request({"type": "close_stdin"})

    def attach(self, *, stdin: bool = False, stdout: bool = True, stderr: bool = True) -> Attachment:
        """Attach to the container's stdio from now on (what was printed before is in the log)."""
        connection, _ = self._request({"type": "attach", "stdin": stdin, "stdout": stdout,
                                       "stderr": stderr})
        return Attachment(connection)

    def exec(self, process: dict, *, tty: bool = False, stdin: bool = False,
             detach: bool = False) -> ExecSession:
        """Run `process` (a runtime-spec process object) in the container.

        Detached, the output is discarded and the session ends at once.
        """
        connection, answer = self._request({"type": "exec", "process": process, "tty": tty,
                                            "stdin": stdin, "detach": detach})
        return ExecSession(connection, answer["pid"])

    def _request(self, request: dict) -> tuple[_Connection, dict]:
        """A request that turns a connection into a stream: a new connection for it."""
        connection = _Connection(connect(self.socket_name, self.timeout))
        try:
            return connection, connection.request(request)
        except BaseException:
            connection.close()
            raise

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
