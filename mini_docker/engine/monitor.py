"""The monitor: one thread that notices when a container's shim exits.

The engine is not the parent of its containers, nor of their shims (a
shim is the zygote's child, so that it can outlive the engine), so it cannot
wait(2) for them. Linux gives another way to watch a process that is not
your child: a *pidfd* (pidfd_open(2), Linux 5.3), a file descriptor that
becomes readable when the process exits. One thread polls the pidfds of
every running container's shim with a selector, and calls the engine back
when one fires. The same thread keeps the restart timers of the restart
policies: the next due restart is the selector's timeout.

A pid is only a number, and numbers are reused. The pidfd is opened while
the shim is known to be alive (it waits for its start request), so it
always refers to that process, even if the number is given to another one
later.

A shim says "exited" a little before it is gone: it writes exit.json, then
a last line on the pipe it reported its start on, and closes it, and only
then deletes the container's runtime state and cgroup and exits. The engine
that started it holds the other end of that pipe, and the monitor watches it
too: whichever of the two comes first is the exit, and the other is only
tidied away. An engine started later has no such pipe; for it the pidfd
alone tells. The last line also says whether the shim stays, to serve
another container (zygote.py): then its pidfd is closed at once.
"""

from __future__ import annotations

import heapq
import json
import os
import selectors
import threading
import time
from collections.abc import Callable


class Monitor:
    """Watches shims by pidfd and runs timers, on one thread of its own."""

    def __init__(self, on_exit: Callable[[str, dict | None], None],
                 on_timer: Callable[[str], None]) -> None:
        self._on_exit = on_exit
        self._on_timer = on_timer
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int, int | None, bytes]] = []  # watch's arguments
        self._timers: list[tuple[float, str]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None

    def open(self, pid: int) -> int | None:
        """A pidfd for `pid`, or None if it has exited already."""
        try:
            return os.pidfd_open(pid)
        except ProcessLookupError:
            return None

    def watch(self, container_id: str, pidfd: int, report: int | None = None,
              said: bytes = b"") -> None:
        """Call on_exit(container_id, ended) once the process behind `pidfd` exits, or, if
        sooner, once `report` (a pipe's read end) reads EOF; `ended` is what the shim
        said on it of the container's end, or None; `said`: what was read from it
        already. Both descriptors are ours now."""
        with self._lock:
            self._pending.append((container_id, pidfd, report, said))
        self._wake()

    def busy(self) -> bool:
        """Whether any shim is watched still: one whose exit, or whose word that its
        container has exited, has not come yet (it holds a descriptor of ours)."""
        with self._lock:
            return bool(self._pending) or len(self._selector.get_map()) > 1  # the wake pipe

    def schedule(self, container_id: str, delay: float) -> None:
        """Call on_timer(container_id) in `delay` seconds."""
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + delay, container_id))
        self._wake()

    def cancel(self, container_id: str) -> None:
        with self._lock:
            self._timers = [t for t in self._timers if t[1] != container_id]
            heapq.heapify(self._timers)

    def close(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join()
        for key in list(self._selector.get_map().values()):
            os.close(key.fd)
        self._selector.close()
        for _, pidfd, report, _ in self._pending:
            os.close(pidfd)
            if report is not None:
                os.close(report)
        os.close(self._wake_w)

    def _wake(self) -> None:
        if self._thread is None and not self._stopping:
            self._thread = threading.Thread(target=self._loop, name="mini-docker-monitor",
                                            daemon=True)
            self._thread.start()
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # already awake

    def _loop(self) -> None:
        while not self._stopping:
            with self._lock:
                for container_id, pidfd, report, said in self._pending:
                    watch = _Watch(container_id, pidfd, report, said)
                    self._selector.register(pidfd, selectors.EVENT_READ, watch)
                    if report is not None:
                        self._selector.register(report, selectors.EVENT_READ, watch)
                self._pending.clear()
                timeout = (max(0.0, self._timers[0][0] - time.monotonic())
                           if self._timers else None)
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    while True:
                        try:
                            os.read(self._wake_r, 512)
                        except BlockingIOError:
                            break
                    continue
                watch = key.data
                said = None
                if key.fd == watch.report and (said := _said_exited(watch)) is not None:
                    self._selector.unregister(watch.report)
                    os.close(watch.report)
                    watch.report = None
                    if said.get("stays"):  # the shim serves another container next
                        self._selector.unregister(watch.pidfd)
                        os.close(watch.pidfd)
                        watch.pidfd = None  # and its event in this batch, if any, is stale
                elif key.fd == watch.pidfd:
                    self._selector.unregister(watch.pidfd)
                    if watch.report is not None:
                        said = _said_exited(watch)  # its last word, if it is there
                        self._selector.unregister(watch.report)
                        os.close(watch.report)
                        watch.report = None  # and its event in this batch, if any, is stale
                    _reap(watch.pidfd)
                    os.close(watch.pidfd)
                    watch.pidfd = None
                else:
                    continue  # a stray byte, not the end; or an event of a closed descriptor
                if not watch.told:
                    watch.told = True
                    self._call(self._on_exit, watch.container_id, said and said.get("exit"))
            now = time.monotonic()
            while True:
                with self._lock:
                    if not self._timers or self._timers[0][0] > now:
                        break
                    _, container_id = heapq.heappop(self._timers)
                self._call(self._on_timer, container_id)

    @staticmethod
    def _call(callback: Callable[..., None], container_id: str, *args: object) -> None:
        try:
            callback(container_id, *args)
        except Exception as err:  # the monitor must outlive one container's trouble
            import sys

            print(f"mini-docker: monitor: {container_id[:12]}: {err}", file=sys.stderr)


class _Watch:
    """One shim watched: its pidfd, its report pipe, and whether its exit was told."""

    __slots__ = ("container_id", "pidfd", "report", "said", "told")

    def __init__(self, container_id: str, pidfd: int, report: int | None,
                 said: bytes = b"") -> None:
        self.container_id, self.report, self.told = container_id, report, False
        self.pidfd: int | None = pidfd  # None once closed
        self.said = bytearray(said)  # what came on the report pipe


def _said_exited(watch: _Watch) -> dict | None:
    """Once the shim has closed its report pipe, its last word (read to EOF); None
    before. That word is a line, {"exit": ..., "stays": bool}."""
    try:
        while chunk := os.read(watch.report, 4096):
            watch.said += chunk
    except BlockingIOError:
        return None
    last = bytes(watch.said).strip().rpartition(b"\n")[2]
    try:
        return json.loads(last) if last else {}
    except ValueError:
        return {}


def _reap(pidfd: int) -> None:
    """Reap the exited shim if it is our child.

    It is not, usually: it is the zygote's child, or the host init's.
    But if this process is a child subreaper (PR_SET_CHILD_SUBREAPER, as
    `mini-runc run` makes its caller), orphans come to us, and an exited
    one stays a zombie until we wait for it.
    """
    try:
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        pass
