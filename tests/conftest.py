import os
import subprocess
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


# --- an engine with busybox:latest in it ------------------------------------------------
#
# Making the busybox image and unpacking its layer takes a moment, so it is done
# once per session in a template root; each test gets a copy of that root made of
# hard links (`cp -al`: the unpacked layer is only ever a read-only lower layer, so
# sharing its inodes is safe) and its own Engine. At the end of a test every
# container it left is removed, and the test fails if there was one.


@pytest.fixture(scope="session")
def engine_template(tmp_path_factory, busybox_rootfs) -> Path:
    import tempfile

    from mini_docker.image.bootstrap import rootfs_tar
    from mini_docker.image.oci import image_from_rootfs_tar
    from mini_docker.image.snapshot import Snapshotter
    from mini_docker.image.store import ImageStore

    root = tmp_path_factory.mktemp("engine-template")
    store = ImageStore(root / "image")
    with tempfile.TemporaryFile() as tar:
        rootfs_tar(busybox_rootfs, tar)
        tar.seek(0)
        image_from_rootfs_tar(store, tar, {"Cmd": ["sh"]}, "busybox:latest")
    Snapshotter(store).prepare("busybox:latest")
    return root


@pytest.fixture
def engine_root(engine_template, tmp_path) -> Path:
    root = tmp_path / "root"
    subprocess.run(["cp", "-al", str(engine_template), str(root)], check=True)
    return root


@pytest.fixture
def engine(engine_root):
    from mini_docker.engine import Engine

    eng = Engine(engine_root)
    yield eng
    left = [r.Name for r in eng.list(all=True)]
    for record in eng.list(all=True):
        eng.remove(record.Id, force=True)
    eng.close()
    assert left == [], f"the test left containers behind: {left}"
