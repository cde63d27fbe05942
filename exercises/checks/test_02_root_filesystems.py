"""Checks for exercises/02-root-filesystems.ipynb, run against the real kernel."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mini_docker import kernel
from mini_docker.image.bootstrap import busybox_rootfs

NOTEBOOK = "02-root-filesystems"


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory) -> str:
    return str(busybox_rootfs(tmp_path_factory.mktemp("ex2") / "rootfs"))


# Task 1

def _escape_attempt(enter_root, rootfs: str, marker: str) -> dict:
    enter_root(rootfs)
    seen = {"busybox": os.path.exists("/bin/busybox"), "root": sorted(os.listdir("/"))}
    os.makedirs("/escape", exist_ok=True)
    os.chroot("/escape")
    for _ in range(64):
        os.chdir("..")
    os.chroot(".")
    seen["escaped"] = os.path.exists(marker)
    return seen


@pytest.fixture
def host_marker():
    fd, path = tempfile.mkstemp(prefix="ex2-host-only-")
    os.close(fd)
    yield path
    os.unlink(path)


def test_task1_the_root_is_the_rootfs(exercise, rootfs, host_marker):
    seen = kernel.run_isolated(_escape_attempt, exercise.enter_root, rootfs, host_marker,
                               flags=kernel.CLONE_NEWNS)
    assert seen["busybox"], "after enter_root, /bin/busybox is not there: / is not the rootfs"
    assert "etc" in seen["root"] and "bin" in seen["root"]


def test_task1_no_way_back_to_the_host(exercise, rootfs, host_marker):
    try:
        seen = kernel.run_isolated(_escape_attempt, exercise.enter_root, rootfs, host_marker,
                                   flags=kernel.CLONE_NEWNS)
    finally:
        escape = Path(rootfs, "escape")
        if escape.exists():
            escape.rmdir()
    assert not seen["escaped"], "the chroot escape reached the host's files"


# Task 2

EXPECTED_DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
                    "urandom": (1, 9), "tty": (5, 0)}


def _populate_on_tmpfs(populate_dev) -> dict:
    dev = tempfile.mkdtemp(prefix="ex2-dev-")
    kernel.make_mounts_private()
    kernel.mount("tmpfs", dev, "tmpfs", 0, "mode=755")
    populate_dev(dev)
    found = {}
    for name in sorted(os.listdir(dev)):
        st = os.lstat(os.path.join(dev, name))
        if stat.S_ISLNK(st.st_mode):
            found[name] = ("link", os.readlink(os.path.join(dev, name)))
        else:
            found[name] = ("char" if stat.S_ISCHR(st.st_mode) else "other",
                           os.major(st.st_rdev), os.minor(st.st_rdev), stat.S_IMODE(st.st_mode))
    with open(os.path.join(dev, "zero"), "rb") as f:
        found["zero bytes"] = f.read(4)
    return found


def test_task2_the_six_devices(exercise):
    found = kernel.run_isolated(_populate_on_tmpfs, exercise.populate_dev, flags=kernel.CLONE_NEWNS)
    for name, (major, minor) in EXPECTED_DEVICES.items():
        assert found.get(name) == ("char", major, minor, 0o666), f"/dev/{name}: {found.get(name)}"
    assert found["zero bytes"] == b"\0\0\0\0"


def test_task2_the_symlinks(exercise):
    found = kernel.run_isolated(_populate_on_tmpfs, exercise.populate_dev, flags=kernel.CLONE_NEWNS)
    assert found.get("fd") == ("link", "/proc/self/fd")
    for n, name in enumerate(("stdin", "stdout", "stderr")):
        assert found.get(name) == ("link", f"/proc/self/fd/{n}")


# Task 3

PROBE = ("id -u; id -g; hostname; cat /proc/keys | wc -c; cat /proc/timer_list | wc -c; "
         "touch /etc/x 2>/dev/null && echo etc-writable || echo etc-read-only; "
         "touch /tmp/x 2>/dev/null && echo root-writable || echo root-read-only; "
         "(echo > /sys/kernel/uevent_helper) 2>/dev/null && echo sys-writable || echo sys-read-only; "
         "echo $$; readlink /proc/1/ns/net")


def test_task3_the_config_runs_as_asked(exercise, rootfs, tmp_path):
    config = exercise.make_config(rootfs)
    assert isinstance(config, dict), "make_config must return a dict"
    config = json.loads(json.dumps(config))  # it must be plain JSON
    config["process"]["args"] = ["sh", "-c", PROBE]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with tempfile.TemporaryFile() as out:
        done = subprocess.run([sys.executable, "-m", "mini_docker.runtime.cli", "--root",
                               str(tmp_path / "state"), "run", "--bundle", str(tmp_path), "ex3"],
                              stdout=out, stderr=subprocess.STDOUT, timeout=60)
        out.seek(0)
        text = out.read().decode()
    Path(rootfs, "tmp", "x").unlink(missing_ok=True)
    assert done.returncode == 0, f"the container failed: {text}"
    lines = text.split()
    assert lines[:3] == ["1000", "1000", "exercise"], f"uid, gid, hostname: {lines[:3]}"
    assert lines[3:5] == ["0", "0"], "/proc/keys and /proc/timer_list must be masked (empty)"
    assert lines[5:8] == ["etc-read-only", "root-writable", "sys-read-only"], lines[5:8]
    assert lines[8] == "1", "the process must be PID 1 in a new PID namespace"
    assert lines[9] != os.readlink("/proc/self/ns/net"), "the network namespace must be new"
