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
its controllers. `run.run_checks` runs the sections in the report's order.
"""

from __future__ import annotations

import importlib

# public name -> the module that defines it. Loaded on first use (PEP 562):
# the cgroups layer needs `cgroup_layout`, not the whole report.
_EXPORTS: dict[str, str] = {}
for _module, _names in {
    "cgroups": ["CGROUP_ROOT", "CONTROLLERS", "V1_CONTROLLERS", "CgroupLayout", "Controller",
                "Mount", "cgroup_layout", "cgroup_mode", "parse_mountinfo"],
    "host": ["PT_INTERP", "STANDARD_DIRS", "Host", "default_path", "elf_interpreter",
             "kernel_module", "kernel_release", "kernel_version", "which"],
    "netprobe": ["NetProbe", "probe_veth_bridge"],
    "report": ["SECTIONS", "Check", "HostReport", "Status"],
    "sections": ["CAPABILITIES", "DOCKER_DEFAULT_CAPS", "ENGINE_CAPS", "FILESYSTEMS",
                 "NAMESPACE_CONFIG", "NAMESPACES"],
    "run": ["run_checks"],
}.items():
    _EXPORTS.update(dict.fromkeys(_names, _module))
_EXPORTS.update({"CLONE_NEWNET": "kernel", "CLONE_NEWUSER": "kernel"})

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mini_docker.hostcheck' has no attribute {name!r}")
    package = "mini_docker.kernel" if module == "kernel" else f"mini_docker.hostcheck.{module}"
    value = getattr(importlib.import_module(package), name)
    globals()[name] = value
    return value
