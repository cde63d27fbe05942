"""What this host can do for containers, and what it lacks.

A container is not one kernel feature but a dozen of them working together:
namespaces, cgroups, overlayfs, veth pairs and bridges, a packet filter,
seccomp, capabilities. When one is missing, the failure shows up far from its
cause ("mount: invalid argument" three layers down), so Docker ships
contrib/check-config.sh and LXC ships lxc-checkconfig to ask first.

Both of those read the kernel's build configuration. That file is often absent
(a cloud kernel without /proc/config.gz or /boot/config-*), and even when it is
there it says what was compiled, not what works now: a module may be missing
from disk, a controller may be switched off on the command line, a sandbox may
have dropped a capability. So every check here asks the running system itself:

- a namespace kind exists if /proc/self/ns/<kind> does;
- a filesystem can be mounted if it is in /proc/filesystems, or if its module
  is on disk for the kernel to load;
- cgroup controllers are wherever /proc/self/mountinfo says they are mounted;
- veth pairs and bridges are proven by making them, inside a throwaway network
  namespace that vanishes with the child process that made it;
- busybox is static if its ELF file asks for no program interpreter.

Every path is read under roots that a caller may replace (`proc`, `sys`, the
search `path`, the modules directory, the effective uid), so the tests build a
fake host in a temporary directory and check the verdicts. The result is plain
data (`Check`, `CgroupLayout`, `HostReport`): the command line prints it, the
daemon's /info serves it, and the cgroups layer reads `cgroup_layout()` to find
its controllers.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import struct
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal

Status = Literal["ok", "missing", "warning", "info"]
"""ok: present. missing: required and absent. warning: optional and absent. info: a fact."""

SECTIONS = ("Kernel", "Namespaces", "cgroups", "Filesystems", "Networking", "Tools", "Security")

NAMESPACES = {  # kind -> required?  (the first five make a container; the rest refine it)
    "mnt": True, "uts": True, "ipc": True, "pid": True, "net": True,
    "user": False, "cgroup": False, "time": False,
}
NAMESPACE_CONFIG = {
    "mnt": "CONFIG_NAMESPACES", "uts": "CONFIG_UTS_NS", "ipc": "CONFIG_IPC_NS",
    "pid": "CONFIG_PID_NS", "net": "CONFIG_NET_NS", "user": "CONFIG_USER_NS",
    "cgroup": "CONFIG_CGROUPS (kernel 4.6+)", "time": "CONFIG_TIME_NS (kernel 5.6+)",
}


@dataclass(frozen=True)
class Controller:
    """A cgroup controller the engine uses: its name in v1 and in v2 (only the
    block I/O one differs), whether it is required, and the kernel option behind it."""

    shown: str
    v1: str
    v2: str
    required: bool
    config: str


CONTROLLERS = (
    Controller("memory", "memory", "memory", True, "CONFIG_MEMCG"),
    Controller("cpu", "cpu", "cpu", True, "CONFIG_CGROUP_SCHED"),
    Controller("pids", "pids", "pids", True, "CONFIG_CGROUP_PIDS"),
    Controller("freezer", "freezer", "freezer", True, "CONFIG_CGROUP_FREEZER"),
    Controller("cpuset", "cpuset", "cpuset", False, "CONFIG_CPUSETS"),
    Controller("blkio/io", "blkio", "io", False, "CONFIG_BLK_CGROUP"),
    Controller("devices", "devices", "devices", False, "CONFIG_CGROUP_DEVICE"),
)
V1_CONTROLLERS = ("cpuset", "cpu", "cpuacct", "blkio", "memory", "devices", "freezer",
                  "net_cls", "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc")
CGROUP_ROOT = "/sys/fs/cgroup"

FILESYSTEMS = {"overlay": True, "tmpfs": True, "proc": True, "sysfs": True,
               "devpts": True, "mqueue": False}

# Bit n of a capability mask is capability n (linux/capability.h).
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
    "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
    "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)
ENGINE_CAPS = ("SYS_ADMIN", "NET_ADMIN", "SYS_CHROOT")  # mount/unshare, links, pivot_root
DOCKER_DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW",
                       "SETGID", "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE",
                       "SYS_CHROOT", "KILL", "AUDIT_WRITE")

STANDARD_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
PT_INTERP = 3


@dataclass(frozen=True)
class Check:
    """One verdict: `section` and `name` say what was checked, `detail` what was
    found, `fix` the one command or step that would turn a problem into ok."""

    section: str
    name: str
    status: Status
    detail: str = ""
    fix: str = ""


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo, the fields this module needs."""

    mount_point: str
    fstype: str
    source: str
    options: tuple[str, ...]  # the superblock options: for cgroup v1, its controllers


@dataclass(frozen=True)
class CgroupLayout:
    """Where the cgroup controllers live on this host.

    mode: "v1", "v2" (cgroup2 mounted on /sys/fs/cgroup), "hybrid" (v1
    controllers plus a cgroup2 mount elsewhere) or "none".
    unified: where cgroup2 is mounted, or None.
    v1: v1 controller name -> mount point of its hierarchy.
    v2: the controllers listed in the cgroup2 root's cgroup.controllers.
    enabled: /proc/cgroups, controller name -> enabled by the kernel.
    """

    mode: str
    unified: str | None = None
    v1: dict[str, str] = field(default_factory=dict)
    v2: tuple[str, ...] = ()
    enabled: dict[str, bool] = field(default_factory=dict)

    def where(self, controller: str) -> str | None:
        """"v1: <mount point>" or "v2: <mount point>" for `controller`, or None."""
        if controller in self.v1:
            return f"v1: {self.v1[controller]}"
        if controller in self.v2:
            return f"v2: {self.unified}"
        return None

    def describe(self) -> str:
        """One line for people, e.g. "hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified)"."""
        return {
            "v1": f"v1 (controllers under {CGROUP_ROOT})",
            "v2": f"v2 (unified at {self.unified})",
            "hybrid": f"hybrid (v1 controllers, v2 at {self.unified})",
        }.get(self.mode, f"{self.mode}: no cgroup filesystem mounted")


@dataclass(frozen=True)
class NetProbe:
    """What a throwaway network namespace let us build.

    ready: the namespace and a netlink socket in it were made, so `veth` and
    `bridge` are the kernel's verdict; when False, `error` says what stopped
    the probe before it could ask.
    """

    ready: bool
    veth: bool = False
    bridge: bool = False
    error: str = ""


@dataclass(frozen=True)
class Host:
    """Where to look. The defaults are this machine; tests point them at a fake tree.

    proc, sys: where procfs and sysfs are mounted.
    path: directories searched for programs, ':'-separated as in $PATH.
    euid: the effective user id the engine would run with.
    modules: the kernel modules directory (holds <release>/modules.dep).
    probe_network: create a veth pair and a bridge in a throwaway namespace.
    """

    proc: str = "/proc"
    sys: str = "/sys"
    path: str = ""
    euid: int = 0
    modules: str = "/lib/modules"
    probe_network: bool = True

    def sys_path(self, absolute: str) -> str:
        """Map a path the kernel reports (e.g. a mount point under /sys) into this host's tree."""
        if self.sys != "/sys" and (absolute == "/sys" or absolute.startswith("/sys/")):
            return self.sys + absolute[len("/sys"):]
        return absolute


@dataclass
class HostReport:
    """Every check, in order, plus the cgroup layout they were judged against."""

    checks: list[Check]
    cgroups: CgroupLayout

    @property
    def missing(self) -> list[Check]:
        return [c for c in self.checks if c.status == "missing"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warning"]

    @property
    def ok(self) -> bool:
        """True when nothing required is missing."""
        return not self.missing

    def get(self, section: str, name: str) -> Check | None:
        """The check called `name` in `section`, or None."""
        return next((c for c in self.checks if (c.section, c.name) == (section, name)), None)

    def summary(self) -> str:
        """The last line of the report: counts, and the names of what is missing."""
        names = ", ".join(c.name for c in self.missing)
        missing = f"{len(self.missing)} required missing" + (f" ({names})" if names else "")
        count = len(self.warnings)
        return f"Summary: {missing}, {count} warning{'' if count == 1 else 's'}"

    def to_dict(self) -> dict:
        """A JSON-ready dict: sections -> check name -> {status, detail, fix}."""
        sections: dict[str, dict[str, dict[str, str]]] = {}
        for c in self.checks:
            sections.setdefault(c.section, {})[c.name] = {
                "status": c.status, "detail": c.detail, "fix": c.fix}
        return {"ok": self.ok, "summary": self.summary(),
                "missing": [f"{c.section}/{c.name}" for c in self.missing],
                "warnings": [f"{c.section}/{c.name}" for c in self.warnings],
                "cgroups": asdict(self.cgroups), "sections": sections}


# --- reading the host -------------------------------------------------------

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


# --- cgroups ----------------------------------------------------------------

def _unescape(field_text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field_text)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts in the text of /proc/<pid>/mountinfo (see proc(5)).

    Each line is: id parent major:minor root mount-point options [optional...]
    - fstype source super-options. The optional fields vary in number, so the
    lone "-" is what separates the two halves.
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        dash = fields.index("-", 6)
        if len(fields) < dash + 3:
            continue
        options = tuple(fields[dash + 3].split(",")) if len(fields) > dash + 3 else ()
        mounts.append(Mount(_unescape(fields[4]), fields[dash + 1], fields[dash + 2], options))
    return mounts


def _proc_cgroups(host: Host) -> dict[str, bool]:
    """/proc/cgroups: controller -> enabled (the last column)."""
    enabled = {}
    for line in (_read(f"{host.proc}/cgroups") or "").splitlines():
        fields = line.split()
        if len(fields) == 4 and not line.startswith("#"):
            enabled[fields[0]] = fields[3] == "1"
    return enabled


def cgroup_layout(proc: str = "/proc", sys: str = "/sys") -> CgroupLayout:
    """Find the cgroup mode and each controller's place from `proc`/self/mountinfo.

    proc, sys: where procfs and sysfs are (a fake tree in tests).
    """
    host = Host(proc=proc, sys=sys)
    enabled = _proc_cgroups(host)
    known = set(V1_CONTROLLERS) | set(enabled)
    mounts = parse_mountinfo(_read(f"{proc}/self/mountinfo") or "")
    v1: dict[str, str] = {}
    for m in mounts:
        if m.fstype == "cgroup":
            for name in m.options:
                if name in known:
                    v1.setdefault(name, m.mount_point)
    cgroup2 = [m.mount_point for m in mounts if m.fstype == "cgroup2"]
    unified = next((p for p in cgroup2 if p == CGROUP_ROOT),
                   next((p for p in cgroup2 if p == f"{CGROUP_ROOT}/unified"),
                        cgroup2[0] if cgroup2 else None))
    v2: tuple[str, ...] = ()
    if unified:
        v2 = tuple((_read(host.sys_path(f"{unified}/cgroup.controllers")) or "").split())
    if unified == CGROUP_ROOT or (unified and not v1):
        mode = "v2"
    elif v1:
        mode = "hybrid" if unified else "v1"
    else:
        mode = "none"
    return CgroupLayout(mode, unified, v1, v2, enabled)


def cgroup_mode(proc: str = "/proc", sys: str = "/sys") -> str:
    """"v1", "v2", "hybrid" or "none": how this host mounts cgroups."""
    return cgroup_layout(proc, sys).mode


def _controller_check(layout: CgroupLayout, controller: Controller, release: str) -> Check:
    """Where `controller` is mounted, or why it is not and how to get it."""
    c = controller
    where = layout.where(c.v1) or layout.where(c.v2)
    if where is None and layout.mode == "v2":
        # v2 has no freezer or devices controller: freezing is core (cgroup.freeze,
        # kernel 5.2+) and device access is an eBPF program attached to the cgroup
        if c.v2 == "freezer" and kernel_version(release) >= (5, 2):
            where = f"v2: cgroup.freeze, core since 5.2, at {layout.unified}"
        elif c.v2 == "devices":
            where = f"v2: an eBPF program per cgroup, at {layout.unified}"
    if where:
        return Check("cgroups", c.shown, "ok", where)
    if layout.enabled.get(c.v1) is False:
        fix = f"boot with cgroup_enable={c.v1} on the kernel command line"
    elif c.v1 not in layout.enabled and c.v2 not in layout.v2:
        fix = f"use a kernel built with {c.config}=y"
    elif layout.mode == "v2":
        fix = f"{c.v1} is held by a cgroup v1 hierarchy: unmount it or boot with cgroup_no_v1=all"
    elif layout.mode == "none":
        fix = f"mount -t cgroup2 cgroup2 {CGROUP_ROOT}"
    else:
        target = f"{CGROUP_ROOT}/{c.v1}"
        fix = f"mkdir -p {target} && mount -t cgroup -o {c.v1} cgroup {target}"
    return Check("cgroups", c.shown, "missing" if c.required else "warning", "not mounted", fix)


def _cgroup_checks(layout: CgroupLayout, release: str) -> list[Check]:
    if layout.mode == "none":
        mode = Check("cgroups", "mode", "missing", layout.describe(),
                     f"mount -t cgroup2 cgroup2 {CGROUP_ROOT}")
    else:
        mode = Check("cgroups", "mode", "info", layout.describe())
    checks = [mode] + [_controller_check(layout, c, release) for c in CONTROLLERS]
    listed = {name for c in CONTROLLERS for name in (c.v1, c.v2)}
    others = [n for n in dict.fromkeys([*layout.enabled, *layout.v1, *layout.v2])
              if n not in listed]
    mounted = ", ".join(f"{n} ({where[:2]})" for n in others if (where := layout.where(n)))
    # in v1 a controller works only once mounted; v2 has no place for v1-only ones
    unmounted = ", ".join(n for n in others if not layout.where(n)) \
        if layout.mode in ("v1", "hybrid") else ""
    text = "; ".join(filter(None, [mounted, unmounted and f"not mounted: {unmounted}"]))
    if text:
        checks.append(Check("cgroups", "other", "info", text))
    return checks


# --- the sections -----------------------------------------------------------

def _kernel_checks(host: Host, release: str) -> list[Check]:
    if kernel_version(release) >= (3, 18):
        version = Check("Kernel", "version", "ok", release)
    elif release == "unknown":
        version = Check("Kernel", "version", "warning",
                        f"unreadable: no {host.proc}/sys/kernel/osrelease",
                        "mount procfs: mount -t proc proc /proc")
    else:
        version = Check("Kernel", "version", "missing", f"{release}: older than 3.18",
                        "upgrade to a kernel 3.18 or newer (overlayfs arrived in 3.18)")
    if host.euid == 0:
        root = Check("Kernel", "root", "ok", "euid 0")
    else:
        root = Check("Kernel", "root", "missing", f"euid {host.euid}",
                     "run as root: sudo mini-docker check-config")
    return [version, root]


def _namespace_checks(host: Host) -> list[Check]:
    checks = []
    for kind, required in NAMESPACES.items():
        if os.path.lexists(f"{host.proc}/self/ns/{kind}"):
            checks.append(Check("Namespaces", kind, "ok"))
        else:
            checks.append(Check("Namespaces", kind, "missing" if required else "warning",
                                f"no {host.proc}/self/ns/{kind}",
                                f"use a kernel built with {NAMESPACE_CONFIG[kind]}"))
    limit = _read_int(f"{host.proc}/sys/user/max_user_namespaces")
    if limit == 0:
        checks.append(Check("Namespaces", "max_user_namespaces", "warning", "0: disabled",
                            "sysctl -w user.max_user_namespaces=15000"))
    elif limit is not None:
        checks.append(Check("Namespaces", "max_user_namespaces", "ok", str(limit)))
    clone = _read_int(f"{host.proc}/sys/kernel/unprivileged_userns_clone")
    if clone is not None:
        text = f"kernel.unprivileged_userns_clone={clone}"
        checks.append(Check("Namespaces", "unprivileged_userns", "info",
                            text if clone else f"{text}: only root may create user namespaces"))
    restrict = _read_int(f"{host.proc}/sys/kernel/apparmor_restrict_unprivileged_userns")
    if restrict:
        checks.append(Check("Namespaces", "apparmor_userns", "info",
                            "1: AppArmor confines unprivileged user namespaces"))
    return checks


def _filesystem_checks(host: Host, release: str) -> list[Check]:
    text = _read(f"{host.proc}/filesystems") or ""
    present = {line.split()[-1] for line in text.splitlines() if line.split()}
    checks = []
    for name, required in FILESYSTEMS.items():
        if name in present:
            checks.append(Check("Filesystems", name, "ok"))
            continue
        module = kernel_module(name, release, host.sys, host.modules)
        if module in ("builtin", "loadable"):
            checks.append(Check("Filesystems", name, "warning",
                                f"{module} module, not loaded yet", f"modprobe {name}"))
        else:
            config = {"overlay": "CONFIG_OVERLAY_FS", "mqueue": "CONFIG_POSIX_MQUEUE"}.get(
                name, f"{name} support")
            checks.append(Check(
                "Filesystems", name, "missing" if required else "warning",
                f"not in {host.proc}/filesystems and no {name}.ko module",
                f"use a kernel built with {config} (modprobe {name} if it is a module)"))
    return checks


def probe_veth_bridge(timeout: float = 10.0) -> NetProbe:
    """Create a veth pair and a bridge, and plug one into the other, where no one can see.

    A forked child unshares a new network namespace (CLONE_NEWNET) and makes
    the links there with pyroute2 (a child that is not root first unshares a
    user namespace too, in which it is root). The namespace belongs to the
    child alone, so when the child exits the kernel destroys it and every link
    in it: there is nothing to clean up and nothing can leak into the host's
    namespace. The child reports back as one JSON line through a pipe.

    timeout: seconds to wait for the child before killing it.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: it must never return into the caller's code
        try:
            os.close(read_fd)
            os.write(write_fd, json.dumps(_links_in_new_netns()).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks: list[bytes] = []
    try:
        while select.select([read_fd], [], [], timeout)[0]:
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    try:
        return NetProbe(**json.loads(b"".join(chunks)))
    except (ValueError, TypeError):
        return NetProbe(False, error=f"the probe gave no answer within {timeout:g}s")


def _links_in_new_netns() -> dict:
    """In the child: unshare a network namespace, then add a veth pair and a bridge."""
    result = {"ready": False, "veth": False, "bridge": False, "error": ""}
    try:
        import ctypes  # the probe needs exactly one syscall; Python 3.11 has no os.unshare

        libc = ctypes.CDLL(None, use_errno=True)
        flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWNET | CLONE_NEWUSER
        if libc.unshare(flags) != 0:
            result["error"] = f"unshare: {os.strerror(ctypes.get_errno())}"
            return result
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            result["ready"] = True
            ipr.link("add", ifname="probe-veth0", kind="veth", peer="probe-veth1")
            result["veth"] = True
            ipr.link("add", ifname="probe-br0", kind="bridge")
            bridge = ipr.link_lookup(ifname="probe-br0")[0]
            ipr.link("set", index=ipr.link_lookup(ifname="probe-veth1")[0], master=bridge)
            result["bridge"] = True
    except BaseException as err:  # the child reports every failure instead of dying with it
        result["error"] = f"{type(err).__name__}: {err}"
    return result


def _link_check(host: Host, release: str, kind: str, probe: NetProbe | None) -> Check:
    """veth or bridge: the probe's verdict when it ran, else what the module lists say."""
    module = kernel_module(kind, release, host.sys, host.modules)
    config = "CONFIG_VETH" if kind == "veth" else "CONFIG_BRIDGE"
    if probe is not None and probe.ready:
        if getattr(probe, kind):
            return Check("Networking", kind, "ok", "created in a throwaway network namespace")
        fix = f"modprobe {kind}" if module in ("builtin", "loadable") else \
            f"use a kernel built with {config}"
        return Check("Networking", kind, "missing", probe.error or "could not be created", fix)
    if module:
        return Check("Networking", kind, "ok", f"{module} module")
    why = f"not probed: {probe.error}" if probe else "not probed"
    return Check("Networking", kind, "warning", f"no {kind} module found; {why}",
                 f"modprobe {kind}, or use a kernel built with {config}")


def _network_checks(host: Host, release: str) -> list[Check]:
    probe = probe_veth_bridge() if host.probe_network else None
    checks = [_link_check(host, release, kind, probe) for kind in ("veth", "bridge")]
    forward = _read_int(f"{host.proc}/sys/net/ipv4/ip_forward")
    checks.append(Check("Networking", "ip_forward", "info",
                        {1: "1 (on)", 0: "0 (off)"}.get(forward, "unknown")))
    found = [f"{name}: {where}" for name in ("iptables", "nft")
             if (where := which(name, host.path))]
    if found:
        checks.append(Check("Networking", "iptables/nft", "ok", ", ".join(found)))
    else:
        checks.append(Check("Networking", "iptables/nft", "missing",
                            "neither iptables nor nft found", "apt-get install iptables nftables"))
    return checks


def _busybox_check(host: Host) -> Check:
    fix = "apt-get install busybox-static"
    path = which("busybox", host.path)
    if path is None:
        return Check("Tools", "busybox", "missing", "not found on PATH", fix)
    try:
        interpreter = elf_interpreter(path)
    except (OSError, ValueError) as err:
        return Check("Tools", "busybox", "missing", f"{path}: {err}", fix)
    if interpreter:
        return Check("Tools", "busybox", "missing",
                     f"{path} is dynamically linked (needs {interpreter})", fix)
    return Check("Tools", "busybox", "ok", f"{path}, static")


def _tool_checks(host: Host) -> list[Check]:
    checks = [_busybox_check(host)]
    ip = which("ip", host.path)
    checks.append(Check("Tools", "ip", "ok", ip) if ip else
                  Check("Tools", "ip", "warning", "not found", "apt-get install iproute2"))
    for peer in ("runc", "crun", "skopeo", "umoci"):
        checks.append(Check("Tools", peer, "info", which(peer, host.path) or "not installed"))
    return checks


def _capability_check(host: Host, status: dict[str, str]) -> Check:
    try:
        mask = int(status["CapBnd"], 16)
    except (KeyError, ValueError):
        return Check("Security", "capabilities", "warning", f"no CapBnd in {host.proc}/self/status",
                     "use a kernel 2.6.25 or newer")
    last = _read_int(f"{host.proc}/sys/kernel/cap_last_cap")
    last = last if last is not None else max(mask.bit_length() - 1, 0)
    names = CAPABILITIES[:last + 1]
    lacking = [n for i, n in enumerate(names) if not mask >> i & 1]
    detail = f"bounding set: {len(names) - len(lacking)} of {len(names)}"
    if lacking:
        detail += ", lacks " + ", ".join(f"CAP_{n}" for n in lacking)
    fix = "run on the host itself, or in a container started with --privileged"
    if any(n in lacking for n in ENGINE_CAPS):
        return Check("Security", "capabilities", "missing", detail, fix)
    if any(n in lacking for n in DOCKER_DEFAULT_CAPS):
        return Check("Security", "capabilities", "warning", detail, fix)
    return Check("Security", "capabilities", "ok", detail)


def _security_checks(host: Host) -> list[Check]:
    status = _status_fields(host)
    if "Seccomp" in status:
        actions = (_read(f"{host.proc}/sys/kernel/seccomp/actions_avail") or "").split()
        seccomp = Check("Security", "seccomp", "ok",
                        "actions: " + " ".join(actions) if actions else "")
    else:
        seccomp = Check("Security", "seccomp", "warning", f"no Seccomp in {host.proc}/self/status",
                        "use a kernel built with CONFIG_SECCOMP_FILTER")
    if "NoNewPrivs" in status:
        nnp = Check("Security", "no_new_privs", "ok")
    else:
        nnp = Check("Security", "no_new_privs", "warning",
                    f"no NoNewPrivs in {host.proc}/self/status", "use a kernel 4.10 or newer")
    apparmor = (_read(f"{host.sys}/module/apparmor/parameters/enabled") or "").strip() == "Y"
    selinux = {1: "enforcing", 0: "permissive"}.get(_read_int(f"{host.sys}/fs/selinux/enforce"))
    checks = [seccomp, _capability_check(host, status), nnp,
              Check("Security", "apparmor", "info", "enabled" if apparmor else "not enabled"),
              Check("Security", "selinux", "info", selinux or "not enabled")]
    lsm = (_read(f"{host.sys}/kernel/security/lsm") or "").strip()
    if lsm:
        checks.append(Check("Security", "lsm", "info", lsm))
    return checks


def _failed(section: str, err: Exception) -> Check:
    return Check(section, "error", "warning", f"{type(err).__name__}: {err}",
                 "report this host's layout as a mini-docker bug")


def _guarded(section: str, run: Callable[[], list[Check]]) -> list[Check]:
    """Run one section; a host odd enough to break it yields a warning, not a traceback."""
    try:
        return run()
    except Exception as err:  # noqa: BLE001 - the report must finish on any host
        return [_failed(section, err)]


def run_checks(proc: str = "/proc", sys: str = "/sys", path: str | None = None,
               euid: int | None = None, modules: str = "/lib/modules",
               probe_network: bool | None = None) -> HostReport:
    """Check this host (or a fake one) for everything mini-docker needs.

    proc, sys: where procfs and sysfs are; point them at a fake tree to simulate a host.
    path: ':'-separated directories to search for programs; default $PATH plus
        the standard bin and sbin directories.
    euid: the effective uid to judge; default this process's.
    modules: the kernel modules directory, holding <release>/modules.dep.
    probe_network: create a veth pair and a bridge in a throwaway network
        namespace; default only when proc and sys are the real ones.
    """
    if probe_network is None:
        probe_network = (proc, sys) == ("/proc", "/sys")
    host = Host(proc, sys, default_path() if path is None else path,
                os.geteuid() if euid is None else euid, modules, probe_network)
    release = kernel_release(proc)
    try:
        layout = cgroup_layout(proc, sys)
        cgroup_checks = _guarded("cgroups", lambda: _cgroup_checks(layout, release))
    except Exception as err:  # noqa: BLE001 - the report must finish on any host
        layout, cgroup_checks = CgroupLayout("unknown"), [_failed("cgroups", err)]
    checks = (_guarded("Kernel", lambda: _kernel_checks(host, release))
              + _guarded("Namespaces", lambda: _namespace_checks(host))
              + cgroup_checks
              + _guarded("Filesystems", lambda: _filesystem_checks(host, release))
              + _guarded("Networking", lambda: _network_checks(host, release))
              + _guarded("Tools", lambda: _tool_checks(host))
              + _guarded("Security", lambda: _security_checks(host)))
    return HostReport(checks, layout)
