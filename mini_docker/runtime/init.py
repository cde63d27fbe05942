"""The container's side of `create`: from fork to the blocked init.

After the runtime forks, the child (stage 1) makes the namespaces:

    stage 1: setns into the namespaces the config names by path
             unshare(CLONE_NEWUSER); ask the runtime to write the ID maps
             unshare(every other new namespace)
             fork  ──────────────▶ init, PID 1 of the new PID namespace
             report the init's pid, exit

A new PID namespace takes effect for children only, hence the second fork.
The init then builds the container:

    init:    setsid; the rootfs (mounts, /dev, pivot_root, masks)
             hostname, sysctls, the terminal
             report "ready"             ── `create` returns here
             limits, user, capabilities, cwd, close fds
             open exec.fifo for writing  ── blocks until `start` opens it
             execve

The steps between "ready" and the FIFO are done while the runtime writes
its state and `start` is on its way, as runc does them before its FIFO too:
what is left once `start` comes is one write and the execve.

Everything the init needs must be imported before pivot_root: afterwards
the host's Python library is out of reach, and a lazy import fails.

Any failure before "ready" goes back to the runtime as a message and the
runtime removes the container; after it, it is printed on the container's
stderr and the init exits 127 (not found) or 126 (could not run), as a shell.
A failure before the FIFO is also written into it, for `start` to fail with.

InitContext is a plain class, not a dataclass: importing dataclasses costs the
mini-runc command 7 ms of its ~30, and runc's speed is the target.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import termios

from mini_docker.kernel import constants as C
from mini_docker.kernel import SyscallError, fork, mount, sethostname, setns, unshare
from mini_docker.records import Record
from mini_docker.runtime import reaper
from mini_docker.runtime import rootfs as rootfs_setup
from mini_docker.runtime.process import (enter_cwd, environment, exec_process, find_executable,
                                        prepare_exec)
from mini_docker.runtime.spec import NAMESPACE_TYPES, Spec
from mini_docker.runtime.sync import SyncPipe

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the cost of importing typing
if TYPE_CHECKING:
    from mini_docker.cgroups import Cgroup

# ioctls of <asm-generic/ioctls.h> that Python's termios lacks: unlockpt and ptsname.
TIOCSPTLCK = 0x40045431
TIOCGPTN = 0x80045430


class InitContext(Record):
    """Everything the forked side needs, decided by the runtime before fork."""

    __slots__ = ("spec", "bundle", "rootfs", "fifo", "sync", "console", "cgroup",  # noqa: RUF023
                 "preserve_fds", "propagated", "bind_trees")

    def __init__(self, spec: Spec, bundle: str, rootfs: str, fifo: str | int, sync: SyncPipe,
                 console: int | None = None, cgroup: Cgroup | None = None,
                 preserve_fds: int = 0, propagated: bool = False,
                 bind_trees: list[int] | None = None) -> None:
        self.spec = spec
        self.bundle = bundle
        self.rootfs = rootfs
        self.fifo = fifo  # its path, or an O_PATH descriptor of it
        self.sync = sync
        self.console = console  # a connected socket to send the pty master over
        self.cgroup = cgroup  # made by the runtime; stage 1 joins it first of all
        self.preserve_fds = preserve_fds
        self.propagated = propagated  # every mount made private already (a prepared init)
        self.bind_trees = bind_trees  # the bind mounts' sources, from open_tree (a prepared init)


def new_namespace_flags(spec: Spec) -> int:
    flags = 0
    for ns in spec.linux.namespaces:
        if ns.path is None:
            flags |= NAMESPACE_TYPES[ns.type][0]
    return flags


def stage1(ctx: InitContext) -> None:
    """The forked child: enter the namespaces, fork the init. Never returns."""
    status = 1
    try:
        ctx.sync.child_side()
        if ctx.cgroup is not None:  # first: every process of the container descends from us
            ctx.cgroup.join()
        linux = ctx.spec.linux
        for ns in sorted((n for n in linux.namespaces if n.path), key=lambda n: n.type != "user"):
            fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
            setns(fd, NAMESPACE_TYPES[ns.type][0])
            os.close(fd)
        flags = new_namespace_flags(ctx.spec)
        if flags & C.CLONE_NEWUSER:
            unshare(C.CLONE_NEWUSER)
            ctx.sync.send("userns")
            ctx.sync.wait_go()
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        unshare(flags & ~C.CLONE_NEWUSER)
        pid_ns = linux.namespace("pid")
        if flags & (C.CLONE_NEWPID | C.CLONE_NEWTIME) or (pid_ns and pid_ns.path):
            init_pid = fork()
            if init_pid == 0:
                run_init(ctx)
            ctx.sync.send("pid", pid=init_pid)
            status = 0
        else:
            ctx.sync.send("pid", pid=os.getpid())
            run_init(ctx)
    except BaseException as err:
        report_failure(ctx.sync, err)
    os._exit(status)


def run_init(ctx: InitContext) -> None:
    """The container's init: build it, report ready, wait for start, exec. Never returns."""
    spec, process = ctx.spec, ctx.spec.process
    ready = False
    try:
        os.setsid()
        # The FIFO lives on the host; keep a handle on it across pivot_root.
        fifo = ctx.fifo if isinstance(ctx.fifo, int) else os.open(ctx.fifo,
                                                                  os.O_PATH | os.O_CLOEXEC)
        if spec.linux.namespace("mount") is None:
            raise ValueError("this runtime needs a mount namespace (linux.namespaces: mount)")
        rootfs_setup.prepare(spec, ctx.rootfs, ctx.bundle, propagated=ctx.propagated,
                             bind_trees=ctx.bind_trees)
        rootfs_setup.enter(ctx.rootfs)
        if spec.hostname:
            if spec.linux.namespace("uts") is None:
                raise ValueError("hostname is set, but the container has no UTS namespace")
            sethostname(spec.hostname)
        for key, value in spec.linux.sysctl.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)
        rootfs_setup.finish(spec)
        if process.terminal:
            set_up_terminal(ctx.console, process.console_size)
        env = environment(process)
        enter_cwd(process.cwd)
        executable = find_executable(process.args[0], env)
        supervised = reaper.wanted(spec.annotations)
        if supervised:  # from "created" on, a signal waits for the init's loop
            reaper.hold_signals()
        ctx.sync.send("ready")
        ctx.sync.close_child()
        ready = True
        if supervised:
            await_start(fifo)
            reaper.supervise(lambda: exec_process(process, ctx.preserve_fds, executable))
        try:  # all but the execve, while `start` is on its way
            path, env = prepare_exec(process, ctx.preserve_fds, executable, keep=(fifo,))
        except BaseException as err:
            try:
                await_start(fifo, failure=err)
            except OSError:
                raise err from None  # then at least the container's stderr says why
            os._exit(exit_code(err))  # start fails with the reason: it is said once
        await_start(fifo)
        os.execve(path, process.args, env)
    except BaseException as err:
        if not ready:
            report_failure(ctx.sync, err)
            os._exit(1)
        try:
            os.write(2, f"mini-runc: {_describe(err)}\n".encode())
        finally:
            os._exit(exit_code(err))


def set_up_terminal(console: int, size: tuple[int, int] | None = None, *,
                    console_device: bool = True) -> None:
    """Make a pty inside the container, send its master to the console socket.

    The pty comes from the container's own devpts (its /dev/ptmx), so the
    slave is a device of the container. The slave becomes the controlling
    terminal and fds 0-2; the master travels over the unix socket the caller
    named, as SCM_RIGHTS ancillary data: that is how a process hands an open
    file to another one.

    Only the init's terminal becomes the container's /dev/console. An exec'd
    process passes `console_device=False`, as runc's does: a bind mount there
    would stack up in the container's mount namespace at every `exec -t`, and
    outlive the pty it shows (the next `exec -t` then fails with ENOENT).
    """
    # Already loaded: `console` came from create._connect, before fork and pivot_root.
    import socket

    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, b"\0\0\0\0")  # unlockpt
    number = int.from_bytes(fcntl.ioctl(master, TIOCGPTN, b"\0\0\0\0"), "little")
    slave_path = f"/dev/pts/{number}"
    slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY)
    if size:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    with socket.socket(fileno=console) as sock:
        socket.send_fds(sock, [slave_path.encode()], [master])
    os.close(master)
    if console_device:
        if not os.path.exists("/dev/console"):
            open("/dev/console", "a").close()
        mount(slave_path, "/dev/console", None, C.MS_BIND)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def exit_code(err: BaseException) -> int:
    """A shell's: 127 for a program not found, 126 for one that could not run."""
    return 127 if isinstance(err, (FileNotFoundError, ValueError)) else 126


def await_start(fifo: int, failure: BaseException | None = None) -> None:
    """Block until `start` opens exec.fifo (`fifo`: an O_PATH descriptor of it), then
    tell it "0", or why the program cannot run."""
    writer = os.open(f"/proc/self/fd/{fifo}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        word = b"0" if failure is None else b"!" + _describe(failure).encode()[:select.PIPE_BUF - 1]
        os.write(writer, word)  # at most PIPE_BUF bytes: never split, start reads it whole
    finally:
        os.close(writer)
        os.close(fifo)


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and not isinstance(err, SyscallError) and err.filename:
        return f"{err.filename}: {err.strerror}"
    return str(err) or type(err).__name__


def report_failure(sync: SyncPipe, err: BaseException) -> None:
    """Tell the runtime why set-up failed (unless it has stopped listening)."""
    try:
        sync.send("error", message=_describe(err), errno=getattr(err, "errno", None))
    except OSError as pipe_err:
        if pipe_err.errno != errno.EPIPE:
            raise
