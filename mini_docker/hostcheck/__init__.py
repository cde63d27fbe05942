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
have dropped a capability. So every check here asks the running system itself,
and the package is laid out by what it asks about:

- `host`: the readers (files under /proc and /sys, the PATH, ELF headers) and
  `Host`, the roots they read under;
- `cgroups`: where the cgroup controllers are mounted, from mountinfo;
- `netprobe`: veth pairs and bridges, proven by making them in a throwaway
  network namespace;
- `sections`: every other section of the report, one function each;
- `report`: the verdicts, `Check` and `HostReport`.

Every path is read under roots that a caller may replace (`proc`, `sys`, the
search `path`, the modules directory, the effective uid), so the tests build a
fake host in a temporary directory and check the verdicts. The result is plain
data (`Check`, `CgroupLayout`, `HostReport`): the command line prints it, the
daemon's /info serves it, and the cgroups layer reads `cgroup_layout()` to find
its controllers. `run_checks` below runs the sections in the report's order.
"""

from __future__ import annotations

import os
from typing import Callable

from mini_docker.kernel import CLONE_NEWNET, CLONE_NEWUSER  # noqa: F401  (as before the split)
from mini_docker.hostcheck.cgroups import (
    CGROUP_ROOT,
    CONTROLLERS,
    V1_CONTROLLERS,
    CgroupLayout,
    Controller,
    Mount,
    _cgroup_checks,
    cgroup_layout,
    cgroup_mode,
    parse_mountinfo,
)
from mini_docker.hostcheck.host import (
    PT_INTERP,
    STANDARD_DIRS,
    Host,
    default_path,
    elf_interpreter,
    kernel_module,
    kernel_release,
    kernel_version,
    which,
)
from mini_docker.hostcheck.netprobe import NetProbe, probe_veth_bridge
from mini_docker.hostcheck.report import SECTIONS, Check, HostReport, Status
from mini_docker.hostcheck.sections import (
    CAPABILITIES,
    DOCKER_DEFAULT_CAPS,
    ENGINE_CAPS,
    FILESYSTEMS,
    NAMESPACE_CONFIG,
    NAMESPACES,
    _filesystem_checks,
    _kernel_checks,
    _namespace_checks,
    _network_checks,
    _security_checks,
    _tool_checks,
)

__all__ = [
    "CAPABILITIES", "CGROUP_ROOT", "CLONE_NEWNET", "CLONE_NEWUSER", "CONTROLLERS",
    "DOCKER_DEFAULT_CAPS", "ENGINE_CAPS", "FILESYSTEMS", "NAMESPACES", "NAMESPACE_CONFIG",
    "PT_INTERP", "SECTIONS", "STANDARD_DIRS", "V1_CONTROLLERS",
    "CgroupLayout", "Check", "Controller", "Host", "HostReport", "Mount", "NetProbe", "Status",
    "cgroup_layout", "cgroup_mode", "default_path", "elf_interpreter", "kernel_module",
    "kernel_release", "kernel_version", "parse_mountinfo", "probe_veth_bridge", "run_checks",
    "which",
]


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
