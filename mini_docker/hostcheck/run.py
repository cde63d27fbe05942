"""Running every section of the report, in order, on a real or a fake host."""

from __future__ import annotations

import os
from typing import Callable

from mini_docker.hostcheck.cgroups import CgroupLayout, _cgroup_checks, cgroup_layout
from mini_docker.hostcheck.host import Host, default_path, kernel_release
from mini_docker.hostcheck.report import Check, HostReport
from mini_docker.hostcheck.sections import (
    _filesystem_checks,
    _kernel_checks,
    _namespace_checks,
    _network_checks,
    _security_checks,
    _tool_checks,
)


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
