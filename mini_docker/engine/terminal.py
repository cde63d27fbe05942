"""`docker run -it`: your terminal, lent to a container.

With a TTY, the container's stdio is one pseudo-terminal, made by the
runtime and held by the shim. What the container prints comes back over the
attach stream; what you type goes in as stdin frames. For that to feel like
a local shell, three things are needed on this side:

* Raw mode. Normally your terminal's line discipline collects a line,
  echoes it and turns Ctrl-C into SIGINT for *this* process. In raw mode
  (cfmakeraw) every key goes through as a byte, and the container's own
  terminal does the echoing, the line editing and the signals: Ctrl-C
  interrupts the program in the container, not us. The old mode is put
  back however we leave.
* The window size. The container's terminal starts with ours, and every
  SIGWINCH (our window changed) is passed on as a resize, which the kernel
  turns into a SIGWINCH inside the container.
* The detach keys. Ctrl-P Ctrl-Q leaves the container running and returns.
  The two bytes are held back while they might be the start of that
  sequence, and sent on if they turn out not to be.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import signal
import struct
import termios
import tty
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mini_docker.engine.shimclient import Attachment

DETACH_KEYS = b"\x10\x11"  # Ctrl-P Ctrl-Q, Docker's default


def parse_detach_keys(spec: str) -> bytes:
    """Docker's --detach-keys syntax, "ctrl-p,ctrl-q" or "a,ctrl-@", as bytes."""
    from mini_docker.errors import InvalidArgument

    keys = bytearray()
    for key in spec.split(","):
        key = key.strip().lower()
        if len(key) == 1:
            keys.append(ord(key))
        elif key.startswith("ctrl-") and len(key) == 6 and key[5] in "abcdefghijklmnopqrstuvwxyz@[\\]^_":
            keys.append(ord(key[5].upper()) & 0x1F)
        else:
            raise InvalidArgument(f"invalid detach keys ({spec}): use letters or ctrl-<letter>, "
                                  "separated by commas")
    return bytes(keys)


def window_size(fd: int) -> tuple[int, int] | None:
    """(rows, columns) of the terminal on `fd`, or None if it is not a terminal."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    except OSError:
        return None
    return rows, cols


def relay(attachment: "Attachment", *, stdin: int = 0, stdout: int = 1,
          detach_keys: bytes = DETACH_KEYS) -> bool:
    """Connect our terminal to the container's until it exits (False) or we detach (True)."""
    is_tty = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if is_tty else None
    previous = None
    size = window_size(stdin)
    if size:
        attachment.resize(*size)
    if is_tty:
        previous = signal.signal(signal.SIGWINCH, lambda *_: _resize(attachment, stdin))
        tty.setraw(stdin, termios.TCSANOW)
    try:
        return _pump(attachment, stdin, stdout, detach_keys)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)


def _resize(attachment: "Attachment", fd: int) -> None:
    size = window_size(fd)
    if size:
        try:
            attachment.resize(*size)
        except OSError:
            pass  # the container has gone; the loop will notice


def _pump(attachment: "Attachment", stdin: int, stdout: int, detach_keys: bytes) -> bool:
    output = iter(attachment)
    selector = selectors.DefaultSelector()
    selector.register(stdin, selectors.EVENT_READ, "in")
    selector.register(attachment.fileno(), selectors.EVENT_READ, "out")
    held = b""  # a possible start of the detach sequence
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "out":
                    while True:  # every frame that has arrived, not just the first
                        try:
                            _, data = next(output)
                        except StopIteration:
                            return False  # the container exited
                        os.write(stdout, data)
                        if not attachment.buffered:
                            break
                    continue
                data = os.read(stdin, 4096)
                if not data:  # our stdin ended: so does the container's
                    selector.unregister(stdin)
                    attachment.close_stdin()
                    continue
                data, held, detach = _watch_for(held + data, detach_keys)
                if data:
                    attachment.send(data)
                if detach:
                    return True
    finally:
        selector.close()


def _watch_for(data: bytes, keys: bytes) -> tuple[bytes, bytes, bool]:
    """Split typed bytes into (to send, to hold back, detach now?)."""
    at = data.find(keys)
    if at >= 0:
        return data[:at], b"", True
    for n in range(min(len(keys) - 1, len(data)), 0, -1):
        if data.endswith(keys[:n]):  # perhaps the sequence's start: wait for the next byte
            return data[:-n], data[-n:], False
    return data, b"", False
