"""Checks for exercises/01-namespaces.ipynb, run against the real kernel."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

from mini_docker import kernel

NOTEBOOK = "01-namespaces"


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


# Task 1

def test_task1_the_child_has_the_new_hostname(exercise):
    assert exercise.hostname_in_container("exercise-box") == "exercise-box"


def test_task1_the_host_keeps_its_hostname(exercise):
    before = socket.gethostname()
    exercise.hostname_in_container("exercise-box-2")
    assert socket.gethostname() == before, "the host was renamed: was the UTS namespace new?"


# Task 2

def test_task2_runs_as_pid_1(exercise):
    assert exercise.orphan_and_reap(5)["pid"] == 1, "the function did not run as PID 1"


def test_task2_the_orphan_is_a_zombie_until_reaped(exercise):
    result = exercise.orphan_and_reap(5)
    assert result["states"] == ["Z"], f"expected one zombie before reaping, saw {result['states']}"


def test_task2_reaping_collects_the_exit_status(exercise):
    result = exercise.orphan_and_reap(42)
    assert result["reaped"] == [42]
    assert result["left"] == [1], f"processes left after reaping: {result['left']}"


# Task 3

@pytest.fixture
def shared_mount():
    """A tmpfs marked shared, as systemd marks /, with an empty directory in it."""
    base = tempfile.mkdtemp(prefix="exercise-shared-")
    kernel.mount("tmpfs", base, "tmpfs", 0, "size=1m")
    kernel.mount(None, base, None, kernel.MS_SHARED)
    target = os.path.join(base, "target")
    os.mkdir(target)
    yield target
    while target in _mount_points():  # a leaked mount would stay: remove it
        kernel.umount2(target, kernel.MNT_DETACH)
    kernel.umount2(base, kernel.MNT_DETACH)
    os.rmdir(base)


def test_task3_the_child_sees_its_mount(exercise, shared_mount):
    assert exercise.mount_tmpfs_privately(shared_mount) is True


def test_task3_the_host_never_sees_it(exercise, shared_mount):
    exercise.mount_tmpfs_privately(shared_mount)
    assert shared_mount not in _mount_points(), "the mount propagated to the host"
    assert os.listdir(shared_mount) == [], "the file written inside is visible on the host"
