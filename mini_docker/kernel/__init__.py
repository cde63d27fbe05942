"""The kernel layer: system calls and namespaces (chapter 1).

Everything above this package reaches the kernel through these names.
"""

from mini_docker.kernel.constants import *  # noqa: F401,F403  (CLONE_*, MS_*, MNT_*, PR_*)
from mini_docker.kernel.namespaces import (  # noqa: F401
    ALL_FLAGS,
    CONTAINER_FLAGS,
    NAMESPACES,
    NamespaceKind,
    namespace_id,
    namespace_ids,
    shared_with,
)
from mini_docker.kernel.process import (  # noqa: F401
    ChildError,
    exit_status,
    fork,
    make_mounts_private,
    mount_proc,
    reap_children,
    run_isolated,
)
from mini_docker.kernel.syscalls import (  # noqa: F401
    SyscallError,
    flag_names,
    mount,
    pivot_root,
    prctl,
    sethostname,
    setns,
    syscall_error,
    umount2,
    unshare,
)
from mini_docker.kernel.capabilities import (  # noqa: F401
    CAPABILITIES,
    DOCKER_DEFAULT_CAPS,
    CapSets,
    Credentials,
    apply_process_capabilities,
    cap_number,
    capget,
    capset,
    change_user,
    drop_bounding,
    from_mask,
    keep_caps_across_setuid,
    last_cap,
    set_ambient,
    to_mask,
    unsupported_caps,
)
