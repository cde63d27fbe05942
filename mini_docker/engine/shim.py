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
over a console socket), runtime.create with them as fds 0-2 (and
runtime.start at once, unless a client is to attach first), report ready,
then loop: output to the log and to attached clients, requests (start,
attach, exec, resize), SIGCHLD. When the init exits: drain its output,
flush the log, note whether the OOM killer struck, write exit.json
atomically, tell the engine (a last line on the pipe it reported on, then
EOF) and give the exit code to attached clients, then runtime.delete, and
exit, or close all that was the container's and wait for the next one
(zygote.py says when a shim stays).

How a shim is born is zygote.py's story; what it serves, shimserver.py's;
how to talk to one, shimclient.py's.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import signal
import socket
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import TYPE_CHECKING

from mini_docker.engine.shimclient import (
    STREAM_NUMBERS,
    FrameReader,
    ShimClient,
    control_frame,
    error_message,
    frame,
)
from mini_docker.engine.shimserver import (
    DRAIN,
    READ,
    Connection,
    ExecProcess,
    ShimServer,
    Sink,
    read_output,
)
from mini_docker.errors import Conflict, MiniDockerError
from mini_docker.kernel import constants as C
from mini_docker.kernel import name_process, prctl, reap_children
from mini_docker.runtime import spec as oci
from mini_docker.runtime.console import ConsoleListener
from mini_docker.runtime.create import create
from mini_docker.runtime.delete import delete
from mini_docker.runtime.prepared import PreparedInit
from mini_docker.runtime.start import start
from mini_docker.runtime.state import (
    ContainerState,
    StateDir,
    now_rfc3339,
    process_start_time,
    process_state_letter,
)

if TYPE_CHECKING:
    from collections.abc import Callable


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
    start: bool = False  # start it as soon as it is created: nobody attaches in between


@dataclass
class ShimProcess:
    pid: int  # the shim's
    init_pid: int  # the container's init, on the host
    socket: str  # abstract socket name, without the leading NUL
    report: int | None = None  # the pipe it reported on, if kept: EOF once the container exits
    said: bytes = b""  # what came on that pipe after the ready line, read along with it


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
    json.loads(json.dumps(state.to_dict()))
    StateDir("/nonexistent").status(state)  # what runtime.start asks first
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


def main(spec: ShimSpec, ready: int, prepared: PreparedInit | None = None,
         zygote: socket.socket | None = None, own: tuple[int, ...] = (),
         meanwhile: Callable[[], object] | None = None) -> bool:
    """One container's shim, from its create to its exit; reports on `ready`, one JSON
    line each: {"pid": n} at once, then {"init_pid": n, "socket": name} or {"error": ...,
    "kind": ...}, and once the container has exited, {"exit": {...}, "stays": bool}.

    `prepared`: the container's init, made in advance (zygote.py). `zygote`: the
    socket to the zygote, for a shim that may serve another container after this
    one. True if it does: everything of this container's is closed, and the zygote,
    told that the shim is free, has said to stay; the caller waits for the next.
    `meanwhile` is called then, before the container's runtime state and cgroup are
    deleted: for the caller's preparations for the next. `own`: descriptors of the
    caller's, which may be open then. False: the caller exits. A set-up that fails
    raises, after it has reported why.
    """
    name_process("mini-shim")
    prctl(C.PR_SET_CHILD_SUBREAPER, 1)
    _report(ready, {"pid": os.getpid()})
    shim = Shim(spec, may_stay=zygote is not None)
    try:
        shim.create(prepared)
        if spec.start:  # one message from the engine instead of two
            start(spec.container_id, root=spec.runtime_root, state=shim.state)
            shim.started = True
        shim.write_record()
        _report(ready, {"init_pid": shim.state.pid, "socket": shim.socket_name})
        shim.report = ready  # closed once the container has exited: EOF says so
    except BaseException as err:
        with suppress(OSError):
            _report(ready, error_message(err))
        if prepared is not None:
            prepared.discard()  # unless create used it up
        shim.abandon()
        raise
    shim.serve()
    if not shim.stays or zygote is None:
        return False
    stays = False
    try:
        shim.release()
        if _open_fds() - {0, 1, 2, zygote.fileno(), *own}:
            return False  # something of the container's is still open: leave, not keep it
        try:
            zygote.send(b"free")
            if zygote.recv(16) != b"keep":
                return False  # dismissed: enough shims wait already
        except OSError:
            return False  # the zygote has gone
        if meanwhile is not None:
            meanwhile()
        stays = True
        return True
    finally:
        shim.tidy()
        if stays:
            name_process("mini-zygote")  # idle, as a spare is, once all is tidied up


class Shim(ShimServer):
    """One container's shim: its birth (create), its loop (serve) and its end (_finish)."""

    def __init__(self, spec: ShimSpec, may_stay: bool = False) -> None:
        self.spec = spec
        self.may_stay = may_stay  # for another container, once this one has exited
        self.stays = False  # it will: the engine that started it still listens
        self.socket_name = socket_name(spec.state_dir, spec.container_id)
        self.selector = selectors.DefaultSelector()
        self.null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for fd in (0, 1, 2):  # the zygote's stdio is the engine's: let go of it
            os.dup2(self.null, fd)
        self.state: ContainerState | None = None
        self.outputs: dict[int, str] = {}  # the container's output fds -> stream
        self.stdin: Sink | None = None
        self.master: int | None = None  # the container's terminal
        self.logger = None
        self.started = False
        self.exit_code: int | None = None
        self.finished_at = ""
        self.deadline = 0.0
        self.conns: set[Connection] = set()
        self.execs: dict[int, ExecProcess] = {}  # pid -> session
        self.exec_count = 0
        self.mount_ns = os.readlink("/proc/self/ns/mnt")
        self.report: int | None = None
        self.ended: ExitStatus | None = None  # how the container ended, once it has

    # -- birth --

    def create(self, prepared: PreparedInit | None = None) -> None:
        """runtime.create with our stdio ends as the container's fds 0-2; we listen (and
        catch SIGCHLD) while its init builds the container."""
        spec = self.spec
        os.makedirs(spec.state_dir, exist_ok=True)
        theirs: list[int] = []
        console = ConsoleListener() if spec.tty else None
        try:
            stdio = [self.null] * 3
            if not spec.tty:
                self.stdin = self._pipes(stdio, theirs, self.outputs, stdin=spec.open_stdin)
            with self._as_stdio(stdio):
                self.state = create(spec.container_id, spec.bundle, root=spec.runtime_root,
                                    console_socket=console.path if console else None,
                                    prepared=prepared, meanwhile=self._listen)
            if console:
                self.master = console.receive()
                self.outputs[self.master] = "stdout"
                if spec.open_stdin:
                    self.stdin = Sink(self.selector, os.dup(self.master), tty=True)
            if spec.log_path:
                from mini_docker.engine.logs import JsonFileLogger

                self.logger = JsonFileLogger(spec.log_path, max_size=spec.log_max_size,
                                             max_file=spec.log_max_file)
        finally:
            for fd in theirs:
                os.close(fd)
            if console:
                console.close()

    def _listen(self) -> None:
        self._catch_sigchld()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            self.listener.bind("\0" + self.socket_name)
        except OSError as err:
            raise Conflict(f"cannot listen on @{self.socket_name}: {err.strerror}") from None
        self.listener.listen(16)

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
        data = read_output(fd)
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

    # -- death --

    def _finish(self, error: str) -> None:
        """The init has exited: log, exit.json, the engine and clients told, then the
        runtime state and cgroup deleted (tidy); in that order.

        Telling first takes the deleting (a millisecond: a cgroup directory in
        each hierarchy) off the path of `docker run --rm`. A shim that stays
        deletes them after it has prepared for its next container (main). The
        engine waits for the runtime state to be gone before it starts the
        container again.
        """
        spec = self.spec
        self.selector.unregister(self.listener)
        self.listener.close()  # from now on a client is refused: the container is not running
        for fd in list(self.outputs):
            while self._read_container(fd):
                pass
        if self.logger is not None:
            with suppress(OSError):
                self.logger.close()
        oom_killed = self._oom_killed()  # read before the cgroup goes
        self._reap()
        for session in list(self.execs.values()):
            if session.exit_code is None:
                session.exit_code = 137  # killed with the container
            self._end_exec(session)
        status = ExitStatus(exit_code=255 if self.exit_code is None else self.exit_code,
                            oom_killed=oom_killed, finished_at=self.finished_at or now_rfc3339(),
                            error=error)
        exit_json = os.path.join(spec.state_dir, "exit.json")
        _write_json(exit_json, asdict(status))
        if self.report is not None:
            # The engine that started us reads how the container ended in this line (as
            # exit.json, there already, says), then EOF. If it has gone (EPIPE), whoever
            # comes next watches our pid: we must exit then, and not stay for another
            # container.
            stays = self.may_stay and not error
            try:
                _report(self.report, {"exit": asdict(status), "stays": stays})
                self.stays = stays
            except OSError:
                pass
            os.close(self.report)
        deadline = time.monotonic() + 2
        for conn in list(self.conns):
            if conn.mode == "attach":
                conn.outbuf += control_frame({"exit": status.exit_code})
            with suppress(OSError):
                conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
                conn.sock.sendall(conn.outbuf)
            conn.sock.close()
        self.ended = status
        if not self.stays:  # else once it has prepared for the next container (main)
            self.tidy()

    def tidy(self) -> None:
        """Delete the runtime state and cgroup of the container, which has ended."""
        spec, status = self.spec, self.ended
        try:
            delete(spec.container_id, force=True, root=spec.runtime_root)
        except (MiniDockerError, OSError) as err:
            if not status.error:  # say so, late as it is
                status.error = f"runtime delete failed: {err}"
                with suppress(OSError):
                    _write_json(os.path.join(spec.state_dir, "exit.json"), asdict(status))
        self._reap()
        with suppress(FileNotFoundError):
            os.unlink(os.path.join(spec.state_dir, "shim.json"))

    def release(self) -> None:
        """Close what is left of this container's (its output is closed by now), for a
        shim that stays for the next one."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in list(self.outputs):
            self._close_output(self.outputs, fd)
        if self.stdin is not None:
            self.stdin.discard()
        self.selector.close()
        self.wake.close()
        self._wake_w.close()
        os.close(self.null)

    def _oom_killed(self) -> bool:
        """Whether the kernel's OOM killer struck in the container's cgroup (read before delete)."""
        try:
            group = StateDir.group(self.state)
            return bool(group is not None and group.exists() and group.oom_events())
        except (OSError, MiniDockerError):
            return False


def _open_fds() -> set[int]:
    """This process's open descriptors (not the one that listed them, closed by then)."""
    import fcntl

    found = set()
    for name in os.listdir("/proc/self/fd"):
        with suppress(OSError):
            fcntl.fcntl(int(name), fcntl.F_GETFD)
            found.add(int(name))
    return found


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
