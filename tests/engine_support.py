"""An engine with busybox:latest in it, fresh for each test and cheap to make.

Making the busybox image and unpacking its layer takes a moment, so it is
done once per session in a template root; each test gets a copy of that
root made of hard links (`cp -al`: the unpacked layer is only ever a
read-only lower layer, so sharing its inodes is safe) and its own Engine.
At the end of a test every container it left is removed, and the test fails
if there was one: a test must clean up what it makes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


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


def copy_root(template: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-al", str(template), str(dest)], check=True)
    return dest


@pytest.fixture
def engine_root(engine_template, tmp_path) -> Path:
    return copy_root(engine_template, tmp_path / "root")


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
