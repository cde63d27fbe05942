import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from leaks import HostSnapshot  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail any test that leaves a mount, a process, a link, a netns or a cgroup behind."""
    if os.geteuid() != 0:
        pytest.skip("mini_docker's tests run as root: they create real namespaces and mounts")
    before = HostSnapshot()
    yield
    leaks = HostSnapshot().leaked_since(before)
    assert not leaks, f"the test left these behind: {leaks}"


@pytest.fixture
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory) -> Path:
    """One busybox root filesystem for the whole session (containers see it read-only)."""
    from mini_docker.image.bootstrap import busybox_rootfs as build

    return build(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture
def runtime_root(tmp_path) -> Path:
    """A private runtime state root; any container left in it fails the test."""
    root = tmp_path / "runtime-root"
    yield root
    leftovers = sorted(p.name for p in root.iterdir()) if root.exists() else []
    assert leftovers == [], f"containers left in the runtime root: {leftovers}"
