"""The system calls that make containers, reached from Python with ctypes.

A container is not a thing the kernel knows about. It is an ordinary process
that was given its own view of the machine with a handful of system calls:
`unshare` and `setns` to enter namespaces, `mount`, `umount2` and `pivot_root`
to build it a filesystem, `sethostname` to name it, `prctl` to set what it may
do. Python 3.11's `os` module has none of them (`os.unshare` and `os.setns`
arrive in 3.12), so we call the C library directly.

Each wrapper does three things, and nothing else:

1. converts Python values to the C types the call takes (paths become bytes),
2. calls the C function with `use_errno=True`, so errno is captured safely,
3. turns a failure (-1) into a `SyscallError` that names the call and its
   arguments, so that "Invalid argument" comes with the flags that caused it.

Nothing above this package calls libc directly.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterable

from mini_docker.kernel import constants as C



def _load_libc() -> ctypes.CDLL:
    # find_library runs ldconfig in a subprocess (tens of milliseconds): try
    # glibc's and musl's usual names first.
    for name in ("libc.so.6", "libc.so"):
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    from ctypes.util import find_library

    return ctypes.CDLL(find_library("c"), use_errno=True)


_libc = _load_libc()
_libc.syscall.restype = ctypes.c_long

Path = str | bytes | os.PathLike


class SyscallError(OSError):
    """A system call failed. Carries errno, the call's name and its arguments.

    It is an `OSError`, and for the common errnos also the matching builtin
    subclass (`PermissionError` for EPERM, `FileNotFoundError` for ENOENT...),
    so `except PermissionError` works just as it does for the `os` module.
    """

    def __init__(self, errno: int, call: str, args: str = ""):
        super().__init__(errno, os.strerror(errno))
        self.syscall = call
        self.call_args = args

    def __str__(self) -> str:
        return f"{self.syscall}({self.call_args}): {self.strerror} [errno {self.errno}]"


def _specialised(base: type[OSError]) -> type[SyscallError]:
    return type(f"Syscall{base.__name__}", (SyscallError, base), {"__module__": __name__})


_PERMISSION = _specialised(PermissionError)
_BY_ERRNO: dict[int, type[SyscallError]] = {
    errno.EPERM: _PERMISSION,
    errno.EACCES: _PERMISSION,
    errno.ENOENT: _specialised(FileNotFoundError),
    errno.EEXIST: _specialised(FileExistsError),
    errno.ENOTDIR: _specialised(NotADirectoryError),
    errno.ESRCH: _specialised(ProcessLookupError),
    errno.EINTR: _specialised(InterruptedError),
    errno.EAGAIN: _specialised(BlockingIOError),
}


def syscall_error(err: int, call: str, args: str = "") -> SyscallError:
    """The `SyscallError` for errno `err`, of the builtin subclass that errno implies."""
    return _BY_ERRNO.get(err, SyscallError)(err, call, args)


def flag_names(flags: int, prefix: str) -> str:
    """Spell `flags` as the OR of constants starting with `prefix` ("CLONE_NEW", "MS_").

    >>> flag_names(C.CLONE_NEWUTS | C.CLONE_NEWPID, "CLONE_")
    'CLONE_NEWUTS|CLONE_NEWPID'
    """
    names, rest = [], flags
    for name, value in vars(C).items():
        if name.startswith(prefix) and isinstance(value, int) and value and value & rest == value:
            if value & (value - 1) == 0:  # single bits only: no aliases of combinations
                names.append(name)
                rest &= ~value
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


def _path(p: Path | None) -> bytes | None:
    return None if p is None else os.fsencode(p)


def _check(result: int, call: str, args: Iterable[object] | Callable[[], Iterable[object]]) -> int:
    """`result`, or a SyscallError if it is -1. `args` may be a function that spells
    the arguments: mounts and prctls are many, and only a failure needs the words."""
    if result == -1:
        err = ctypes.get_errno()
        raise syscall_error(err, call, ", ".join(map(str, args() if callable(args) else args)))
    return result


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces of the kinds in `flags`.

    `flags` is an OR of CLONE_NEW* constants. A new PID namespace applies to the
    caller's children, not to the caller: the next child forked is its PID 1.
    CLONE_NEWUSER requires a single-threaded caller.
    """
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare", lambda: [flag_names(flags, "CLONE_")])


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that `fd` (an open /proc/PID/ns/KIND) refers to.

    `nstype` is 0 (any kind) or the CLONE_NEW* constant the caller expects.
    """
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns",
           lambda: [fd, flag_names(nstype, "CLONE_")])


def mount(source: Path | None, target: Path, fstype: str | None = None,
          flags: int = 0, data: str | None = None) -> None:
    """Attach a filesystem, or change a mount's flags or propagation.

    `source` is a device, a directory (with MS_BIND) or a name for virtual
    filesystems ("proc", "tmpfs"); `fstype` is the filesystem type, or None for
    a bind mount, a remount or a propagation change; `flags` an OR of MS_*;
    `data` the filesystem's own options ("mode=755,size=65536k").
    """
    result = _libc.mount(_path(source), _path(target), fstype and fstype.encode(),
                         ctypes.c_ulong(flags), data and data.encode())
    _check(result, "mount", lambda: [repr(source), repr(os.fsdecode(target)), repr(fstype),
                                      flag_names(flags, "MS_"), repr(data)])


def umount2(target: Path, flags: int = 0) -> None:
    """Detach the filesystem mounted at `target`; `flags` may be MNT_DETACH (lazy)."""
    _check(_libc.umount2(_path(target), ctypes.c_int(flags)), "umount2",
           lambda: [repr(os.fsdecode(target)), flag_names(flags, "MNT_")])


def pivot_root(new_root: Path, put_old: Path) -> None:
    """Make `new_root` the root of this mount namespace, moving the old root to `put_old`.

    `new_root` must be a mount point, and `put_old` must be at or under it.
    glibc has no wrapper for this call, so it goes through syscall(2).
    """
    machine = os.uname().machine
    number = C.SYS_PIVOT_ROOT.get(machine)
    if number is None:
        raise OSError(f"pivot_root: unknown system call number on {machine}")
    _check(_libc.syscall(ctypes.c_long(number), _path(new_root), _path(put_old)), "pivot_root",
           [repr(os.fsdecode(new_root)), repr(os.fsdecode(put_old))])


def open_tree(path: Path, flags: int = C.OPEN_TREE_CLONE | C.AT_RECURSIVE) -> int:
    """A copy of the mount tree at `path`, detached, as a file descriptor (close-on-exec).

    Part of the newer mount API (Linux 5.2): a mount made this way belongs to
    no namespace until move_mount attaches it, and the descriptor can be sent
    to a process in another mount namespace, which then attaches it there.
    A bind mount with mount(2) cannot cross namespaces: its source must be a
    mount of the caller's own namespace.
    """
    return _check(_libc.syscall(ctypes.c_long(C.SYS_OPEN_TREE), ctypes.c_int(C.AT_FDCWD),
                                _path(path), ctypes.c_uint(flags | C.OPEN_TREE_CLOEXEC)),
                  "open_tree", lambda: [repr(os.fsdecode(path)), hex(flags)])


def move_mount(tree: int, target: Path) -> None:
    """Attach the detached mount tree `tree` (from open_tree) at `target`."""
    _check(_libc.syscall(ctypes.c_long(C.SYS_MOVE_MOUNT), ctypes.c_int(tree), b"",
                         ctypes.c_int(C.AT_FDCWD), _path(target),
                         ctypes.c_uint(C.MOVE_MOUNT_F_EMPTY_PATH)),
           "move_mount", lambda: [tree, repr(os.fsdecode(target))])


def sethostname(name: str) -> None:
    """Set the hostname of the calling process's UTS namespace."""
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname", [repr(name)])


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """Operate on the calling process (PR_* options); returns the call's result."""
    args = [ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5)]
    return _check(_libc.prctl(ctypes.c_int(option), *args), "prctl",
                  lambda: [_prctl_name(option), arg2, arg3, arg4, arg5])


def _prctl_name(option: int) -> str:
    for name, value in vars(C).items():
        if name.startswith("PR_") and value == option and not name.startswith("PR_CAP_AMBIENT_"):
            return name
    return str(option)


def _reduce_syscall_error(self: SyscallError):
    # Errors travel from a container's process to its parent through a pipe,
    # pickled; rebuild them through the factory so the subclass survives.
    return (syscall_error, (self.errno, self.syscall, self.call_args))


SyscallError.__reduce__ = _reduce_syscall_error  # type: ignore[method-assign]
