"""`features`: what this runtime implements, in the runtime spec's features format."""

from __future__ import annotations

from mini_docker.runtime.rootfs import MOUNT_FLAGS, PROPAGATION
from mini_docker.runtime.spec import NAMESPACE_TYPES, OCI_VERSION


def features() -> dict:
    from mini_docker.kernel.capabilities import CAPABILITIES

    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": [],
        "mountOptions": sorted(set(MOUNT_FLAGS) | set(PROPAGATION)),
        "linux": {
            "namespaces": sorted(NAMESPACE_TYPES),
            "capabilities": sorted(CAPABILITIES),
            "cgroup": {"v1": True, "v2": True, "systemd": False},
            "seccomp": {"enabled": False},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {"org.opencontainers.runtime-spec.features.mini-docker": "true"},
    }
