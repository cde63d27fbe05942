"""Reading the host: files under /proc and /sys, programs on the PATH, ELF headers.

Every check asks the running system rather than the kernel's build
configuration, and it asks through the small readers here. Each one takes the
place to look as a parameter (the `Host` record gathers them: where procfs
and sysfs are, the search path, the modules directory, the effective uid), so
a test can point them all at a fake tree in a temporary directory.

Reading never raises for a missing or unreadable file: `_read` gives None,
and the check that asked decides what an absence means.

`Host` is a plain class, not a dataclass: the mini-runc command imports this
module, importing dataclasses costs it 7 ms of its ~30, and runc's speed is
the target.
"""

from __future__ import annotations

import os
import re
import struct

from mini_docker.records import Value

STANDARD_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
PT_INTERP = 3


class Host(Value):
    """Where to look. The defaults are this machine; tests point them at a fake tree.

    proc, sys: where procfs and sysfs are mounted.
    path: directories searched for programs, ':'-separated as in $PATH.
    euid: the effective user id the engine would run with.
    modules: the kernel modules directory (holds <release>/modules.dep).
    probe_network: create a veth pair and a bridge in a throwaway namespace.
    """

    __slots__ = ("proc", "sys", "path", "euid", "modules", "probe_network")  # noqa: RUF023

    def __init__(self, proc: str = "/proc", sys: str = "/sys", path: str = "", euid: int = 0,
                 modules: str = "/lib/modules", probe_network: bool = True) -> None:
        self.proc = proc
        self.sys = sys
        self.path = path
        self.euid = euid
        self.modules = modules
        self.probe_network = probe_network

    def sys_path(self, absolute: str) -> str:
        """Map a path the kernel reports (e.g. a mount point under /sys) into this host's tree."""
        if self.sys != "/sys" and (absolute == "/sys" or absolute.startswith("/sys/")):
            return self.sys + absolute[len("/sys"):]
        return absolute


def _read(path: str) -> str | None:
    """The text of `path`, or None if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _status_fields(host: Host) -> dict[str, str]:
    """/proc/self/status as a dict: "Seccomp" -> "0", "CapBnd" -> "000001ff..."."""
    fields = {}
    for line in (_read(f"{host.proc}/self/status") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields


def which(name: str, path: str) -> str | None:
    """The first executable called `name` in the ':'-separated directories of `path`."""
    for directory in path.split(":"):
        candidate = os.path.join(directory, name)
        if directory and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def default_path() -> str:
    """$PATH plus the standard system directories (sbin is often off a user's PATH)."""
    dirs = [d for d in os.environ.get("PATH", "").split(":") if d]
    return ":".join(dict.fromkeys(dirs + list(STANDARD_DIRS)))


def kernel_release(proc: str = "/proc") -> str:
    """The kernel's release string, e.g. "6.18.44-fc-v669"; proc: where procfs is."""
    text = _read(f"{proc}/sys/kernel/osrelease")
    return text.strip() if text else (os.uname().release if proc == "/proc" else "unknown")


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a release string, (0, 0) if it has none."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def kernel_module(name: str, release: str, sys: str = "/sys",
                  modules: str = "/lib/modules") -> str | None:
    """How kernel module `name` is available: "loaded", "builtin", "loadable" or None.

    release: the kernel release whose modules to look at.
    sys, modules: where sysfs and the modules directory are.

    /sys/module/<name> lists loaded modules (and built-in ones that have
    parameters); modules.builtin and modules.dep list the rest, by file name.
    """
    if os.path.isdir(f"{sys}/module/{name}"):
        return "loaded"
    pattern = re.compile(rf"(^|/){re.escape(name)}\.ko(\.\w+)?:?$")
    for listing, how in (("modules.builtin", "builtin"), ("modules.dep", "loadable")):
        for line in (_read(f"{modules}/{release}/{listing}") or "").splitlines():
            if pattern.search(line.split(" ", 1)[0]):
                return how
    return None


def elf_interpreter(path: str) -> str | None:
    """The program interpreter an ELF executable asks for, or None if it is static.

    A dynamically linked program carries a PT_INTERP program header naming the
    loader (/lib64/ld-linux-x86-64.so.2) that the kernel starts first; a static
    one has none. Raises ValueError if `path` is not an ELF file, OSError if it
    cannot be read.
    """
    with open(path, "rb") as f:
        ident = f.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2):
            raise ValueError("not an ELF executable")
        is64, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
        header = f.read(48 if is64 else 36)
        # after e_type, e_machine, e_version, e_entry: e_phoff; then e_shoff, e_flags,
        # e_ehsize; then e_phentsize and e_phnum
        layout = "16xQ14xHH" if is64 else "12xI10xHH"
        phoff, entsize, count = struct.unpack_from(order + layout, header)
        for i in range(count):
            f.seek(phoff + i * entsize)
            entry = f.read(entsize)
            if len(entry) < (56 if is64 else 32):
                raise ValueError("truncated ELF program header")
            p_type = struct.unpack_from(order + "I", entry)[0]
            if p_type == PT_INTERP:  # p_offset, (p_vaddr, p_paddr), p_filesz
                offset, size = (struct.unpack_from(order + "Q16xQ", entry, 8) if is64
                                else struct.unpack_from(order + "I8xI", entry, 4))
                f.seek(offset)
                return f.read(size).rstrip(b"\0").decode(errors="replace") or "?"
    return None
