"""`run -it` through a real pseudo-terminal: prompt, commands, resize, detach, re-attach."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import textwrap
import time

import pytest

from mini_docker.engine import Engine
from mini_docker.engine.terminal import _watch_for, parse_detach_keys
from mini_docker.errors import Conflict, InvalidArgument

RUN_IT = textwrap.dedent("""
    import sys
    from mini_docker.engine import Engine
    from mini_docker.engine.terminal import relay

    with Engine(sys.argv[1]) as engine:
        if sys.argv[2] == "run":
            c = engine.containers.create("busybox", ["sh"], tty=True, stdin_open=True,
                                         name="shell")
            stream = engine.start(c.id, attach={"stdin": True, "stdout": True, "stderr": True})
        else:
            stream = engine.attach("shell", stdin=True)
        if relay(stream):
            print("DETACHED", flush=True)
        else:
            print(f"EXITED {engine.wait('shell')['StatusCode']}", flush=True)
""")


class Terminal:
    """A process on the slave side of a new pty, and its master side for the test."""

    def __init__(self, args: list[str]) -> None:
        self.master, slave = os.openpty()
        self._set_size(slave, 24, 80)

        def controlling_terminal() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True, preexec_fn=controlling_terminal)
        os.close(slave)
        self.seen = b""

    @staticmethod
    def _set_size(fd: int, rows: int, cols: int) -> None:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def resize(self, rows: int, cols: int) -> None:
        self._set_size(self.master, rows, cols)  # the kernel sends SIGWINCH to the process

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def expect(self, wanted: bytes, timeout: float = 15) -> bytes:
        deadline = time.monotonic() + timeout
        while wanted not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.master], [], [], left)[0]:
                raise AssertionError(f"never saw {wanted!r}; the terminal showed {self.seen!r}")
            try:
                self.seen += os.read(self.master, 4096)
            except OSError:  # EIO: the process closed the terminal
                raise AssertionError(f"the terminal closed before {wanted!r}: {self.seen!r}")
        found, self.seen = self.seen, self.seen[self.seen.index(wanted) + len(wanted):]
        return found

    def close(self) -> int:
        try:
            code = self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.master)
        return code


def test_an_interactive_shell_with_resize_detach_and_reattach(engine_root):
    shell = Terminal([sys.executable, "-c", RUN_IT, str(engine_root), "run"])
    try:
        shell.expect(b"# ")
        shell.type(b"echo hel''lo\r")
        shell.expect(b"hello\r\n")
        shell.type(b"stty size\r")
        shell.expect(b"24 80")  # our terminal's size, from the start
        shell.resize(33, 101)
        time.sleep(0.3)
        shell.type(b"stty size\r")
        shell.expect(b"33 101")
        shell.type(b"\x03")  # Ctrl-C goes to the container's shell, not to us
        shell.expect(b"# ")
        shell.type(b"\x10\x11")  # Ctrl-P Ctrl-Q
        shell.expect(b"DETACHED")
    finally:
        assert shell.close() == 0
    with Engine(engine_root) as engine:
        assert engine.inspect("shell")["State"]["Status"] == "running"
    again = Terminal([sys.executable, "-c", RUN_IT, str(engine_root), "attach"])
    try:
        again.type(b"\r")
        again.expect(b"# ")
        again.type(b"exit 5\r")
        again.expect(b"EXITED 5")
    finally:
        assert again.close() == 0
    with Engine(engine_root) as engine:
        engine.remove("shell")


def test_stdin_without_a_tty_reaches_the_container_and_ends_with_eof(engine):
    c = engine.containers.create("busybox", ["sh", "-c", "cat; echo done"], stdin_open=True)
    stream = engine.start(c.id, attach={"stdin": True, "stdout": True, "stderr": True})
    stream.send(b"first line\nsecond")
    stream.close_stdin()
    got = stream.output()
    stream.close()
    assert got == (b"first line\nseconddone\n", b"")
    assert c.wait(timeout=10)["StatusCode"] == 0
    assert c.logs() == b"first line\nseconddone\n"
    c.remove()
    with pytest.raises(Conflict, match="cannot attach to a stopped container"):
        engine.attach(engine.containers.create("busybox", name="idle").id)
    engine.remove("idle")


def test_detach_keys_are_held_back_until_they_are_known():
    keys = b"\x10\x11"
    assert _watch_for(b"ls\x10", keys) == (b"ls", b"\x10", False)
    assert _watch_for(b"\x10\x11", keys) == (b"", b"", True)
    assert _watch_for(b"\x10x", keys) == (b"\x10x", b"", False)
    assert parse_detach_keys("ctrl-p,ctrl-q") == keys
    assert parse_detach_keys("a,ctrl-@") == b"a\x00"
    with pytest.raises(InvalidArgument, match="invalid detach keys"):
        parse_detach_keys("ctrl-12")


def test_frames_that_arrive_together_are_all_shown_before_any_typing():
    import socket
    import threading

    from mini_docker.engine.shimclient import STDOUT, Attachment, _Connection, frame
    from mini_docker.engine.terminal import relay

    ours, theirs = socket.socketpair()
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    theirs.sendall(frame(STDOUT, b"one ") + frame(STDOUT, b"prompt> "))  # one recv gets both
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        detached=relay(Attachment(_Connection(ours)), stdin=stdin_r, stdout=out_w)))
    worker.start()
    try:
        assert select.select([out_r], [], [], 5)[0]
        time.sleep(0.2)
        assert os.read(out_r, 100) == b"one prompt> "  # nobody typed anything yet
    finally:
        theirs.close()
        worker.join(5)
        for fd in (stdin_r, stdin_w, out_r, out_w):
            os.close(fd)
        ours.close()
    assert result == {"detached": False}
