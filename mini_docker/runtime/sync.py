"""The pipe over which a container's set-up process reports to the runtime.

The runtime forks, and everything after that happens in the child: it enters
namespaces, mounts, pivots. The parent has to learn three things from it: the
host pid of the container's init, whether set-up succeeded (and if not, why,
in words), and when to do its own part (writing a user namespace's ID maps).
runc calls this its sync pipe; ours carries one JSON object per line one way,
and single bytes the other way ("go on").

SyncPipe is a plain class, not a dataclass: importing dataclasses costs the
mini-runc command 7 ms of its ~30, and runc's speed is the target.
"""

from __future__ import annotations

import json
import os


class SyncPipe:
    """Both directions; each side closes the ends it does not use."""

    # the four descriptors, and the parent's bytes received that are not yet a whole line
    __slots__ = ("report_r", "report_w", "go_r", "go_w", "_buffer")  # noqa: RUF023 - in order

    def __init__(self, report_r: int, report_w: int, go_r: int, go_w: int) -> None:
        self.report_r = report_r
        self.report_w = report_w
        self.go_r = go_r
        self.go_w = go_w

    @classmethod
    def open(cls) -> "SyncPipe":
        report_r, report_w = os.pipe()
        go_r, go_w = os.pipe()
        return cls(report_r, report_w, go_r, go_w)

    # the child's side

    def child_side(self) -> None:
        self._close("report_r", "go_w")

    def send(self, kind: str, **fields: object) -> None:
        data = json.dumps({"type": kind, **fields}).encode() + b"\n"
        os.write(self.report_w, data)

    def wait_go(self) -> None:
        if os.read(self.go_r, 1) != b"1":
            raise RuntimeError("the runtime went away during set-up")

    def close_child(self) -> None:
        self._close("report_w", "go_r")

    # the parent's side

    def parent_side(self) -> None:
        self._close("report_w", "go_r")
        self._buffer = b""

    def receive(self) -> dict | None:
        """The next message, or None when every writer has closed the pipe."""
        while b"\n" not in self._buffer:
            chunk = os.read(self.report_r, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def go(self) -> None:
        os.write(self.go_w, b"1")

    def close_parent(self) -> None:
        self._close("report_r", "go_w")

    def _close(self, *ends: str) -> None:
        """Close each end once: closed twice, its number could be another file's by then."""
        for end in ends:
            fd = getattr(self, end)
            if fd >= 0:
                setattr(self, end, -1)
                try:
                    os.close(fd)
                except OSError:
                    pass
