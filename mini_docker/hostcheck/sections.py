"""The checks, section by section: kernel, namespaces, filesystems, networking, tools, security.

Each section is one function from a `Host` (where to look) to a list of
`Check`s, in the order the report prints them. None of them trusts the
kernel's build configuration; each asks the running system:

- a namespace kind exists if /proc/self/ns/<kind> does;
- a filesystem can be mounted if it is in /proc/filesystems, or if its module
  is on disk for the kernel to load;
- veth pairs and bridges are proven by making them (see `netprobe`), and only
  when the probe cannot run do the module lists speak for them;
- busybox is static if its ELF file asks for no program interpreter;
- the capabilities are the bounding set in /proc/self/status.

The cgroups section lives with the cgroup layout it judges, in `cgroups`.
"""

from __future__ import annotations

import os

from mini_docker.hostcheck.host import (
    Host,
    _read,
    _read_int,
    _status_fields,
    elf_interpreter,
    kernel_module,
    kernel_version,
    which,
)
from mini_docker.hostcheck.netprobe import NetProbe, probe_veth_bridge
from mini_docker.hostcheck.report import Check

NAMESPACES = {  # kind -> required?  (the first five make a container; the rest refine it)
    "mnt": True, "uts": True, "ipc": True, "pid": True, "net": True,
    "user": False, "cgroup": False, "time": False,
}
NAMESPACE_CONFIG = {
    "mnt": "CONFIG_NAMESPACES", "uts": "CONFIG_UTS_NS", "ipc": "CONFIG_IPC_NS",
    "pid": "CONFIG_PID_NS", "net": "CONFIG_NET_NS", "user": "CONFIG_USER_NS",
    "cgroup": "CONFIG_CGROUPS (kernel 4.6+)", "time": "CONFIG_TIME_NS (kernel 5.6+)",
}
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
