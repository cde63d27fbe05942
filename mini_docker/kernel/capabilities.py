"""Linux capabilities: root's power cut into pieces a container may keep or lose.

For most of Unix's history a process was either root, which the kernel let do
anything, or not root. Since Linux 2.2 root's power is split into about forty
*capabilities*: CAP_CHOWN to give a file away, CAP_NET_BIND_SERVICE to listen
on a port below 1024, CAP_SYS_ADMIN to mount (and a great deal more). When a
process makes a privileged call, the kernel checks for the one capability that
call needs, not for uid 0.

A container's process is usually root, and without a user namespace that is
the host's root. What stops it from remounting the host's disks, changing the
clock or loading kernel modules is that the runtime takes most capabilities
away before it runs the container's program. Docker keeps fourteen of them
(`DOCKER_DEFAULT_CAPS`); runc applies whatever `process.capabilities` in
config.json lists, and this module is what our runtime calls to do it.

Every thread carries five sets of capabilities:

* bounding: the ceiling. A capability outside it can never be gained again,
  not even by executing a setuid-root program. It can only shrink.
* permitted: what the thread may hold; capset(2) can only remove from it.
* effective: what the kernel checks right now; always a part of permitted.
* inheritable: what may pass through execve to a program whose file grants it.
* ambient: what passes through execve to *any* ordinary program. It is how a
  non-root process keeps a capability across exec.

What execve(2) does to them, for a program with no file capabilities and no
setuid bit (P is the set before, P' after, F the file's capability sets):

    P'(ambient)     = P(ambient)
    P'(permitted)   = (P(inheritable) & F(inheritable)) | (F(permitted) & P(bounding)) | P'(ambient)
    P'(effective)   = F(effective) ? P'(permitted) : P'(ambient)
    P'(inheritable) = P(inheritable)        P'(bounding) = P(bounding)

A non-root program's F sets are empty, so it keeps only its ambient
capabilities. For root (unless SECBIT_NOROOT is set) the kernel pretends F is
full, so root's program gets permitted = effective = P(inheritable) |
P(bounding): for a root container the bounding set *is* the capability set.

Two rules about this module's calls:

* Capabilities belong to a thread. capset(2) and prctl(2) change the calling
  thread only, so call them in a single-threaded process: the forked child
  that will exec the container, as runc's init does.
* Names are spelled as in capabilities(7) and the OCI spec ("CAP_CHOWN"). A
  name we have never heard of is a ValueError. A name we know that this
  kernel does not (its number is above /proc/sys/kernel/cap_last_cap, on an
  older kernel) cannot be held here, so, as runc does, it is skipped, and
  `apply_process_capabilities` returns the skipped names for the caller to warn
  about.

CapSets and Credentials are plain classes, not dataclasses: importing
dataclasses costs the mini-runc command 7 ms of its ~30, and runc's speed is
the target.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable, Iterable

from mini_docker.kernel import constants as C
from mini_docker.kernel.syscalls import SyscallError, _check, _libc, prctl, syscall_error
from mini_docker.records import Value

# prctl(2) options that constants.py does not have, from <linux/prctl.h>.
PR_CAP_AMBIENT_IS_SET = 1
PR_GET_KEEPCAPS = 7
PR_SET_KEEPCAPS = 8

# capget(2) / capset(2) ABI version 3: 64 bits per set, passed as two 32-bit halves.
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"

# Every capability, as capabilities(7) and <linux/capability.h> number them.
CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}
_NAMES: dict[int, str] = {number: name for name, number in CAPABILITIES.items()}

# What `docker run` keeps unless told otherwise: moby's oci/caps/defaults.go, in its order.
DOCKER_DEFAULT_CAPS: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)


class CapSets(Value):
    """The capability sets of one thread, as sets of names.

    `bounding` and `ambient` can only be read for the calling process (with
    prctl); for another process they are None (its /proc/PID/status shows them).
    """

    __slots__ = ("effective", "permitted", "inheritable", "bounding", "ambient")  # noqa: RUF023

    def __init__(self, effective: frozenset[str], permitted: frozenset[str],
                 inheritable: frozenset[str], bounding: frozenset[str] | None = None,
                 ambient: frozenset[str] | None = None) -> None:
        self.effective = effective
        self.permitted = permitted
        self.inheritable = inheritable
        self.bounding = bounding
        self.ambient = ambient

    def __repr__(self) -> str:
        # Sets print in a random order; by number they print the same every run.
        fields = ("effective", "permitted", "inheritable", "bounding", "ambient")
        shown = ", ".join(f"{f}={_by_number(getattr(self, f))}" for f in fields)
        return f"CapSets({shown})"


class Credentials(Value):
    """Who a process becomes: a uid, a primary gid and supplementary gids."""

    __slots__ = ("uid", "gid", "additional_gids")  # noqa: RUF023

    def __init__(self, uid: int, gid: int, additional_gids: tuple[int, ...] = ()) -> None:
        self.uid = uid
        self.gid = gid
        self.additional_gids = additional_gids


# --- names, numbers and masks ------------------------------------------------------------


def cap_number(name: str) -> int:
    """The number of capability `name` ("CAP_NET_ADMIN" -> 12); ValueError if unknown."""
    try:
        return CAPABILITIES[name]
    except KeyError:
        guess = f"CAP_{name.upper()}"
        hint = f" (did you mean {guess!r}?)" if guess in CAPABILITIES else ""
        raise ValueError(f"unknown capability {name!r}{hint}") from None


def to_mask(names: Iterable[str]) -> int:
    """The bit mask of `names`, as /proc/PID/status prints it (CapEff, CapBnd...)."""
    mask = 0
    for name in names:
        mask |= 1 << cap_number(name)
    return mask


def from_mask(mask: int) -> frozenset[str]:
    """The names of the bits set in `mask` (bits beyond our table are left out)."""
    return frozenset(name for number, name in _NAMES.items() if mask >> number & 1)


@functools.cache
def last_cap() -> int:
    """The highest capability number this kernel knows (40 on Linux 5.9 and later).

    Read once: it is fixed when the kernel is built.
    """
    with open(_LAST_CAP_FILE) as f:
        return int(f.read())


def unsupported_caps(names: Iterable[str], last: int | None = None) -> frozenset[str]:
    """The names in `names` that this kernel (or one whose last cap is `last`) lacks."""
    last = last_cap() if last is None else last
    return frozenset(name for name in names if cap_number(name) > last)


def _supported_numbers(names: Iterable[str]) -> list[int]:
    """Numbers of `names`, validated, leaving out those this kernel lacks."""
    last = last_cap()
    return sorted(n for n in {cap_number(name) for name in names} if n <= last)


def _by_number(names: Iterable[str] | None) -> list[str] | None:
    return None if names is None else sorted(names, key=cap_number)


def _spell(mask: int) -> str:
    """A mask spelled for an error message: CAP_CHOWN|CAP_KILL, or 0."""
    return "|".join(_by_number(from_mask(mask)) or ["0"])


# --- capget(2) and capset(2): effective, permitted, inheritable ---------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    # One per 32 capabilities: data[0] holds 0..31, data[1] holds 32..63.
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _join(data: ctypes.Array, field: str) -> int:
    return getattr(data[0], field) | getattr(data[1], field) << 32


def capget(pid: int = 0) -> CapSets:
    """The capability sets of process `pid` (0: the calling thread).

    Effective, permitted and inheritable come from capget(2). Bounding and
    ambient have no such call; for the caller they are read one capability at
    a time with prctl (PR_CAPBSET_READ, PR_CAP_AMBIENT_IS_SET).
    """
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget", [f"pid={pid}"])
    sets = {f: from_mask(_join(data, f)) for f in ("effective", "permitted", "inheritable")}
    if pid not in (0, os.getpid()):
        return CapSets(**sets)
    return CapSets(**sets, bounding=_read_each(C.PR_CAPBSET_READ),
                   ambient=_read_each(C.PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET))


def _read_each(option: int, *before: int) -> frozenset[str]:
    """Ask prctl(option, *before, cap) for every cap this kernel has; the ones that say 1."""
    return frozenset(_NAMES[n] for n in range(last_cap() + 1)
                     if n in _NAMES and prctl(option, *before, n) == 1)


def capset(effective: Iterable[str], permitted: Iterable[str], inheritable: Iterable[str]) -> None:
    """Replace the calling thread's effective, permitted and inheritable sets.

    The kernel refuses (EPERM, a PermissionError) to add to permitted, to put
    in effective what is not permitted, or to add to inheritable a capability
    outside the bounding set or, without CAP_SETPCAP effective, outside
    permitted. Only removing is ever free.
    """
    sets = [sum(1 << n for n in _supported_numbers(s)) for s in (effective, permitted, inheritable)]
    data = (_CapData * 2)()
    for half in (0, 1):
        low = 32 * half
        data[half] = _CapData(*(mask >> low & 0xFFFFFFFF for mask in sets))
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    args = [f"{f}={_spell(m)}" for f, m in zip(("effective", "permitted", "inheritable"), sets)]
    _check(_libc.capset(ctypes.byref(header), data), "capset", args)


# --- the bounding and ambient sets, and keep-caps: prctl(2) -------------------------------


def _prctl(spelled: str, option: int, *args: int) -> int:
    """prctl, with the error spelled as the caller knows it (`spelled`), not as numbers."""
    try:
        return prctl(option, *args)
    except SyscallError as err:
        raise syscall_error(err.errno, "prctl", spelled) from None


def drop_bounding(keep: Iterable[str]) -> None:
    """Drop from the bounding set every capability not in `keep`.

    Needs CAP_SETPCAP in the effective set, so it must come before capset
    takes CAP_SETPCAP away (Docker's default set keeps it; many do not).
    Dropping is forever: nothing, not even exec of a setuid-root binary,
    brings a capability back into the bounding set.
    """
    kept = set(_supported_numbers(keep))
    for number in range(last_cap() + 1):
        if number not in kept:
            _prctl(f"PR_CAPBSET_DROP, {_NAMES.get(number, number)}", C.PR_CAPBSET_DROP, number)


def set_ambient(names: Iterable[str]) -> None:
    """Make `names` the calling thread's ambient set: clear it, then raise each.

    The kernel raises an ambient capability only if it is both permitted and
    inheritable (EPERM otherwise), so call this after `capset`. setuid(2)
    from root to non-root clears the ambient set, so call it after the user
    change too.
    """
    _prctl("PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL", C.PR_CAP_AMBIENT, C.PR_CAP_AMBIENT_CLEAR_ALL)
    for number in _supported_numbers(names):
        _prctl(f"PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, {_NAMES[number]}",
               C.PR_CAP_AMBIENT, C.PR_CAP_AMBIENT_RAISE, number)


def keep_caps_across_setuid(on: bool = True) -> None:
    """Whether a setuid from root to non-root keeps the permitted set (PR_SET_KEEPCAPS).

    Without it, the kernel empties permitted and effective when a process
    stops being root. With it, permitted survives but effective is still
    emptied, and ambient is always emptied: re-apply both after the setuid.
    execve turns the flag off again.
    """
    _prctl(f"PR_SET_KEEPCAPS, {int(on)}", PR_SET_KEEPCAPS, int(on))


# --- changing user, and the whole sequence a runtime performs -----------------------------


def _as_syscall_error(call: str, args: str, fn: Callable[..., object], *fn_args: object) -> None:
    """Run an `os` call, turning its OSError into the kernel layer's SyscallError."""
    try:
        fn(*fn_args)
    except OSError as err:
        raise syscall_error(err.errno, call, args) from None


def change_user(uid: int, gid: int, additional_gids: Iterable[int] = ()) -> None:
    """Become `uid`:`gid` with exactly `additional_gids`, keeping the capability sets.

    The order matters:

    1. keep-caps on, so that setuid leaves the permitted set alone;
    2. setgroups, then setgid: both need CAP_SETGID, and a process that is no
       longer root has no effective capabilities left to use;
    3. setuid last, which (root -> non-root) empties effective and ambient;
    4. capset and set_ambient put back what the process held before step 1;
    5. keep-caps off again.

    Call it while CAP_SETUID and CAP_SETGID are still effective: before a
    capset that removes them (`apply_process_capabilities(user=...)` does so).
    The user change also clears the parent-death signal (PR_SET_PDEATHSIG):
    a runtime that relies on it sets it again afterwards, as runc does.
    """
    groups = list(additional_gids)
    # Becoming (or staying) root changes no capability: the dance is for leaving root.
    held = capget() if uid != 0 else None
    if held:
        keep_caps_across_setuid(True)
    _as_syscall_error("setgroups", repr(groups), os.setgroups, groups)
    _as_syscall_error("setgid", str(gid), os.setgid, gid)
    _as_syscall_error("setuid", str(uid), os.setuid, uid)
    if held:
        capset(held.effective, held.permitted, held.inheritable)
        set_ambient(held.ambient or ())
        keep_caps_across_setuid(False)


def apply_process_capabilities(bounding: Iterable[str], effective: Iterable[str],
                               permitted: Iterable[str], inheritable: Iterable[str],
                               ambient: Iterable[str], *,
                               user: Credentials | None = None) -> frozenset[str]:
    """Give the calling thread an OCI process's capabilities, ready for execve.

    Returns the names skipped because this kernel lacks them (warn about them,
    as runc does). The steps come in the only order that works, runc's:

    1. drop the bounding set, while CAP_SETPCAP is still effective;
    2. change to `user`, if given (see `change_user`: keep-caps makes the
       setuid keep permitted), while CAP_SETUID and CAP_SETGID are still held;
    3. capset effective, permitted and inheritable: the narrowing itself;
    4. raise the ambient set last, for it needs each capability already in
       permitted and inheritable, and setuid would have emptied it.

    Then execve recomputes the sets (see the module's docstring): a root
    program gets the bounding set, a non-root one only its ambient set.
    """
    bounding, effective, permitted, inheritable, ambient = (
        frozenset(s) for s in (bounding, effective, permitted, inheritable, ambient))
    skipped = unsupported_caps(bounding | effective | permitted | inheritable | ambient)
    drop_bounding(bounding)
    if user is not None:
        change_user(user.uid, user.gid, user.additional_gids)
    capset(effective, permitted, inheritable)
    set_ambient(ambient)
    return skipped
