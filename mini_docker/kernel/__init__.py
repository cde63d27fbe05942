"""The kernel layer: system calls, namespaces and capabilities (chapter 1).

Everything above this package reaches the kernel through these names. They
are loaded on first use (PEP 562's module __getattr__): a runtime command
that needs `mount` should not pay for importing what explains namespaces.
"""

from __future__ import annotations

import importlib

from mini_docker.kernel.constants import *  # noqa: F401,F403  (CLONE_*, MS_*, MNT_*, PR_*)

# public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {}
for _module, _names in {
    "namespaces": ["ALL_FLAGS", "CONTAINER_FLAGS", "NAMESPACES", "NamespaceKind", "namespace_id",
                   "namespace_ids", "shared_with"],
    "process": ["ChildError", "exit_status", "fork", "fork_as_sibling", "fork_into_cgroup",
                "make_mounts_private", "mount_proc", "name_process", "reap_children",
                "run_isolated"],
    "syscalls": ["SyscallError", "flag_names", "mount", "pivot_root", "prctl", "sethostname",
                 "setns", "syscall_error", "umount2", "unshare", "open_tree", "move_mount"],
    "capabilities": ["CAPABILITIES", "DOCKER_DEFAULT_CAPS", "CapSets", "Credentials",
                     "apply_process_capabilities", "cap_number", "capget", "capset",
                     "change_user", "drop_bounding", "from_mask", "keep_caps_across_setuid",
                     "last_cap", "set_ambient", "to_mask", "unsupported_caps"],
}.items():
    _EXPORTS.update(dict.fromkeys(_names, _module))


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mini_docker.kernel' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mini_docker.kernel.{module}"), name)
    globals()[name] = value  # found once, then an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
