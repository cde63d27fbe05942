"""Running a Python function in a child process with namespaces of its own.

There are two ways to give a process new namespaces. clone(2) creates the
child directly inside them; unshare(2) moves the caller into them. Python
offers fork but not clone, so we fork first and unshare in the child:

    parent ──fork──▶ child ──unshare(flags)──▶ child in new namespaces

Three details make this correct rather than merely working:

* A new PID namespace does not move the caller, only its future children: the
  first child forked after `unshare(CLONE_NEWPID)` is PID 1 there. (A new time
  namespace behaves the same way.) So with CLONE_NEWPID or CLONE_NEWTIME the
  child forks once more and waits for that grandchild, passing on its exit
  status.
* Some set-up must be done from outside, by the parent, after the child has
  unshared and before it goes on: writing the UID map of a new user namespace
  is the classic case. The two sides wait for each other over a pair of pipes,
  as runc does with its "sync pipe".
* A forked child of a Jupyter kernel must never print or return through the
  kernel's machinery. It sends its result back through a third pipe, pickled,
  and leaves with `os._exit`, so no clean-up code of the parent runs twice.

The child also asks the kernel to kill it if the parent dies (PR_SET_PDEATHSIG),
so nothing is left running when a notebook's kernel is stopped.
"""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Callable

from mini_docker.kernel import constants as C
from mini_docker.kernel.syscalls import mount, prctl, unshare

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the cost of importing typing
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

# Namespaces that unshare(2) creates for the caller's future children only.
FOR_CHILDREN_ONLY = C.CLONE_NEWPID | C.CLONE_NEWTIME


class ChildError(RuntimeError):
    """The function failed in the child in a way that could not be sent back as is."""


def fork() -> int:
    """os.fork, quiet about threads.

    Python 3.12 warns when a process with threads forks (a Jupyter kernel has
    several). The child here only runs our code and then calls exec or
    _exit, which is the pattern that is safe, so the warning is noise.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def name_process(name: str) -> None:
    """Set our comm (what ps and /proc/PID/stat show) with PR_SET_NAME."""
    import ctypes

    buffer = ctypes.create_string_buffer(name.encode()[:15])
    prctl(C.PR_SET_NAME, ctypes.addressof(buffer))


def fork_into_cgroup(directory: int) -> int:
    """fork, the child born in the cgroup v2 group whose directory `directory` is open.

    clone3(2) with CLONE_INTO_CGROUP (Linux 5.7), as crun does. A process
    that *moves* into a group (a write to cgroup.procs) takes a lock that
    every fork in the system also takes, and waits for the readers of it to
    drain: an RCU grace period, 5 ms or more on a quiet machine. A child born
    in the group never moves. Python has no clone3, so this is os.fork done
    by hand: the same hooks before and after (PyOS_BeforeFork and the
    AfterFork pair: locks, threads, at-fork callbacks), around the raw call.
    OSError (ENOSYS, EINVAL...) where the kernel cannot: use fork() then.
    """
    return _clone3(C.CLONE_INTO_CGROUP, signal.SIGCHLD, cgroup=directory)


def fork_as_sibling(new_pid_namespace: bool = False) -> int:
    """fork, the child being our parent's child, not ours: clone3 with CLONE_PARENT.

    Our parent is told of its exit (SIGCHLD) and reaps it, as of any child of
    its own. `new_pid_namespace`: the child is PID 1 of a new PID namespace.
    """
    flags = C.CLONE_PARENT | (C.CLONE_NEWPID if new_pid_namespace else 0)
    return _clone3(flags, 0)  # with CLONE_PARENT, the exit signal is our own one


def _clone3(flags: int, exit_signal: int, cgroup: int = 0) -> int:
    """clone3(2) as os.fork does fork: the interpreter's hooks around the raw call."""
    import ctypes

    from mini_docker.kernel.syscalls import _libc

    args = _clone_args()(flags=flags, exit_signal=exit_signal, cgroup=cgroup)
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = _libc.syscall(ctypes.c_long(C.SYS_CLONE3), ctypes.byref(args),
                        ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:  # as little as can be before the hooks: each page written is copied
        api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno() if pid < 0 else 0
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone3: {os.strerror(err)}")
    return pid


_CloneArgs = None


def _clone_args():
    """struct clone_args of <linux/sched.h>, up to its cgroup field; made on first use, so
    that ctypes is not imported for nothing."""
    global _CloneArgs
    if _CloneArgs is None:
        import ctypes

        class CloneArgs(ctypes.Structure):
            _fields_ = [(name, ctypes.c_uint64) for name in (
                "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
                "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")]

        _CloneArgs = CloneArgs
    return _CloneArgs


def exit_status(wait_status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def reap_children() -> list[tuple[int, int]]:
    """Collect every child that has already exited, without blocking.

    Returns (pid, exit status) pairs. A process that does not do this leaves
    its dead children as zombies; for PID 1 that includes every orphan of the
    namespace, since orphans are handed to it.
    """
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # no children at all
            break
        if pid == 0:  # children remain, but none has exited
            break
        reaped.append((pid, exit_status(status)))
    return reaped


def make_mounts_private() -> None:
    """Stop mount events propagating between this mount namespace and the host's.

    A new mount namespace starts as a copy whose mounts are still *shared*
    with the host's (systemd makes / shared), so a mount made inside would
    appear outside too. Marking everything private, recursively, cuts that tie.
    """
    mount(None, "/", None, C.MS_REC | C.MS_PRIVATE)


def mount_proc(target: str = "/proc") -> None:
    """Mount a fresh procfs at `target`, showing this process's PID namespace."""
    mount("proc", target, "proc", C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC)


def run_isolated(fn: Callable[..., T], *args: Any, flags: int = 0,
                 parent_setup: Callable[[int], None] | None = None, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a child process in new namespaces; return its result.

    `flags` is an OR of CLONE_NEW* constants. `parent_setup(pid)`, if given,
    runs in the parent after the child has unshared and before it goes on
    (e.g. to write a user namespace's ID maps). The result, or the exception
    `fn` raised, comes back pickled; an exception is re-raised here.
    """
    result_r, result_w = os.pipe()
    ready_r, ready_w = os.pipe()  # child -> parent: "I have unshared"
    go_r, go_w = os.pipe()  # parent -> child: "carry on"
    pid = fork()
    if pid == 0:
        os.close(result_r), os.close(ready_r), os.close(go_w)
        _child(fn, args, kwargs, flags, ready_w, go_r, result_w)  # never returns
    os.close(result_w), os.close(ready_w), os.close(go_r)
    try:
        if os.read(ready_r, 1) and parent_setup is not None:
            parent_setup(pid)
        try:
            os.write(go_w, b"1")
        except BrokenPipeError:  # the child failed to unshare and has gone
            pass
        data = _read_all(result_r)
    finally:
        for fd in (result_r, ready_r, go_w):
            os.close(fd)
        _, status = os.waitpid(pid, 0)
    return _unpack(data, status)


def _child(fn: Callable[..., Any], args: tuple, kwargs: dict, flags: int,
           ready_w: int, go_r: int, result_w: int) -> None:
    status = 1
    try:
        prctl(C.PR_SET_PDEATHSIG, signal.SIGKILL)
        unshare(flags)
        os.write(ready_w, b"1")
        os.read(go_r, 1)
        if flags & FOR_CHILDREN_ONLY:
            pid1 = fork()  # the first child in the new namespaces (PID 1 in a new PID one)
            if pid1 == 0:
                prctl(C.PR_SET_PDEATHSIG, signal.SIGKILL)
                _report(fn, args, kwargs, result_w)
            os.close(result_w)
            _, wait_status = os.waitpid(pid1, 0)
            status = exit_status(wait_status)
        else:
            _report(fn, args, kwargs, result_w)
    except BaseException as err:  # unshare failed: say so, then leave
        _send(result_w, ("error", err, _traceback_text()))
    finally:
        os._exit(status)


def _report(fn: Callable[..., Any], args: tuple, kwargs: dict, result_w: int) -> None:
    """Run fn and send back its result or its exception; then leave the process."""
    status = 0
    try:
        message = ("ok", fn(*args, **kwargs), "")
    except BaseException as err:
        message, status = ("error", err, _traceback_text()), 1
    _send(result_w, message)
    os._exit(status)


def _traceback_text() -> str:
    """The current exception's traceback, if the traceback module can still be imported.

    It is imported here, on the error path only; after a pivot_root the host's
    Python library may be out of reach, and then there is no traceback to give.
    """
    try:
        import traceback
    except ImportError:
        return ""
    return traceback.format_exc()


def _send(fd: int, message: tuple) -> None:
    import pickle  # only run_isolated needs it: runtime commands do not pay for it

    try:
        data = pickle.dumps(message)
    except Exception as err:  # an unpicklable result or exception: say what it was
        kind, value, tb = message
        what = "result" if kind == "ok" else f"exception {type(value).__name__}: {value}"
        failure = ChildError(f"the {what} could not be sent back from the child: {err}")
        data = pickle.dumps(("error", failure, tb))
    with os.fdopen(fd, "wb") as pipe:
        pipe.write(data)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _unpack(data: bytes, wait_status: int) -> Any:
    import pickle

    if not data:
        raise ChildError(f"the child exited without a result (exit status {exit_status(wait_status)})")
    kind, value, child_traceback = pickle.loads(data)
    if kind == "error":
        value.add_note("raised in the isolated child process")
        raise value
    return value
