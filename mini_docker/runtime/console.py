"""Receiving a container's terminal, and relaying it to ours.

With process.terminal set, the container's init makes a pseudo-terminal
inside the container and sends the master side over a unix socket (the
"console socket"), as an open file descriptor in SCM_RIGHTS ancillary data.
Whoever listens on that socket (containerd's shim, `mini-runc run`) then owns
the container's terminal: what it writes to the master, the container reads
from its stdin; what the container prints, it reads from the master.
"""

from __future__ import annotations

import os
import select
import socket
import tempfile
from pathlib import Path


class ConsoleListener:
    """A unix socket at a temporary path that receives one pty master."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="mini-runc-console-")
        self.path = str(Path(self._dir, "console.sock"))
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(1)

    def receive(self, timeout: float = 10) -> int:
        """Accept the runtime's connection and return the master fd it sends."""
        self._sock.settimeout(timeout)
        conn, _ = self._sock.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        if not fds:
            raise OSError("the console socket received no file descriptor")
        return fds[0]

    def close(self) -> None:
        self._sock.close()
        Path(self.path).unlink(missing_ok=True)
        os.rmdir(self._dir)

    def __enter__(self) -> "ConsoleListener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def copy_window_size(source: int, master: int) -> None:
    """Give the container's terminal the size of ours (`source` a tty fd).

    The kernel then sends SIGWINCH to the container's foreground process, as
    it would on any terminal that is resized.
    """
    import fcntl
    import termios

    try:
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:  # not a terminal: leave the size alone
        return
    fcntl.ioctl(master, termios.TIOCSWINSZ, size)


def relay(master: int, stdin: int = 0, stdout: int = 1, done: int | None = None) -> None:
    """Copy stdin to the master and the master to stdout, until the master closes.

    If stdin is a terminal it is put in raw mode meanwhile, so that keys
    (Ctrl-C included) reach the container's terminal, which interprets them.
    `done`, if given, is a fd that becomes readable when the container exits.
    """
    import termios
    import tty

    saved = None
    if os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
    watch = [master, stdin] + ([done] if done is not None else [])
    try:
        while True:
            readable, _, _ = select.select(watch, [], [])
            if master in readable:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave side is closed
                    data = b""
                if not data:
                    break
                os.write(stdout, data)
            if stdin in readable:
                data = os.read(stdin, 65536)
                if data:
                    os.write(master, data)
                else:
                    watch.remove(stdin)
            if done is not None and done in readable:
                break
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
