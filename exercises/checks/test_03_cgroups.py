"""Checks for exercises/03-cgroups.ipynb, run against the real kernel with this host's driver."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from mini_docker import cgroups
from mini_docker.cgroups import Resources, V1Cgroup, V2Cgroup

NOTEBOOK = "03-cgroups"
MiB = 1 << 20
PARENT = "mini-docker-exercises"  # every group the exercises make lives below it


def _left_behind() -> list[str]:
    """The directories of mini-docker-exercises/ that still exist, in any hierarchy."""
    return [d for d in cgroups.open_cgroup(PARENT).directories() if os.path.isdir(d)]


@pytest.fixture(autouse=True)
def no_leak():
    """Remove whatever a wrong answer left behind, so that one failure does not cause others."""
    yield
    for directory in _left_behind():
        for root, _, _ in os.walk(directory, topdown=False):  # deepest first
            path = os.path.relpath(root, os.path.dirname(directory))
            cgroups.open_cgroup(path).destroy()


# Task 1

def test_task1_cpu_max_for_common_values(exercise):
    assert exercise.cpu_max(1.5) == "150000 100000"
    assert exercise.cpu_max(0.25) == "25000 100000"
    assert exercise.cpu_max(0.5, 50000) == "25000 50000"


def test_task1_no_limit_is_max(exercise):
    assert exercise.cpu_max(None) == "max 100000"
    assert exercise.cpu_max(None, 50000) == "max 50000"


def test_task1_the_quota_is_rounded_to_the_nearest_microsecond(exercise):
    # 0.29 * 100000 is 28999.999999999996 in floating point
    assert exercise.cpu_max(0.29) == "29000 100000", "round the quota, do not truncate it"
    assert exercise.cfs_quota_period(0.57) == (57000, 100000), "round the quota, do not truncate it"


def test_task1_the_v1_pair(exercise):
    assert exercise.cfs_quota_period(0.25) == (25000, 100000)
    assert exercise.cfs_quota_period(0.5, 50000) == (25000, 50000)
    assert exercise.cfs_quota_period(None) == (-1, 100000)


def test_task1_agrees_with_mini_dockers_drivers(exercise):
    v1 = V1Cgroup("mini-docker/check", {"cpu": "/sys/fs/cgroup/cpu"})
    v2 = V2Cgroup("mini-docker/check")
    for cpus in (0.01, 0.1, 0.25, 1.0, 2.0):
        limits = Resources(cpus=cpus)
        v1_writes = {w.file: int(w.value) for w in v1.plan(limits)[0]}
        [v2_write] = v2.plan(limits)[0]
        assert exercise.cpu_max(cpus) == v2_write.value, f"cpus={cpus}"
        assert exercise.cfs_quota_period(cpus) == (v1_writes["cpu.cfs_quota_us"],
                                                  v1_writes["cpu.cfs_period_us"]), f"cpus={cpus}"


# Task 2

# A hog that gives up at 512 MiB, so that an answer without a limit fails instead of
# filling the machine.
HOG = "chunks = []\nfor _ in range(512):\n    chunks.append(b'x' * (1 << 20))\n"


def test_task2_a_hog_is_oom_killed(exercise):
    result = exercise.run_limited([sys.executable, "-c", HOG], 32 * MiB)
    assert result == (-signal.SIGKILL, True), f"expected (-9, True) for a hog at 32 MiB, got {result}"


def test_task2_a_small_program_runs_to_its_end(exercise):
    result = exercise.run_limited(["sh", "-c", "exit 3"], 32 * MiB)
    assert result == (3, False), f"expected (3, False) for 'exit 3', got {result}"


def test_task2_a_kill_is_not_an_oom_kill(exercise):
    result = exercise.run_limited(["sh", "-c", "kill -9 $$"], 32 * MiB)
    assert result == (-signal.SIGKILL, False), (
        f"a process that killed itself with SIGKILL is reported as {result}: "
        "the exit status cannot tell an OOM kill, the group's OOM count can")


def test_task2_the_command_starts_inside_the_group(exercise, tmp_path):
    out = tmp_path / "cgroup"
    exercise.run_limited(["sh", "-c", f"cat /proc/self/cgroup > {out}"], 32 * MiB)
    if cgroups.host_driver() is V1Cgroup:  # the line of the memory hierarchy
        lines = [l for l in out.read_text().splitlines() if "memory" in l.split(":")[1].split(",")]
    else:
        lines = [l for l in out.read_text().splitlines() if l.startswith("0::")]
    assert lines and lines[0].split(":", 2)[2].startswith(f"/{PARENT}/"), (
        f"the command was not in a group below {PARENT}/ when it ran: {lines}")


def test_task2_leaves_no_cgroup_behind(exercise):
    exercise.run_limited([sys.executable, "-c", HOG], 32 * MiB)
    exercise.run_limited(["true"], 32 * MiB)
    assert _left_behind() == [], "cgroups left behind"


# Task 3

# Two counters: the parent writes its count at offset 0, its child at offset 12. They
# give up after 10 s, so that an answer that does not end them leaves nothing for long.
COUNTERS = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
offset = 0 if os.fork() else 12
n = 0
end = time.monotonic() + 10
while time.monotonic() < end:
    n += 1
    os.pwrite(fd, b"%012d" % n, offset)
    time.sleep(0.005)
"""
SECONDS = 0.3


class Counters:
    """The counters' file, and a thread that reads it every 5 ms while the exercise runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_bytes(b"0" * 24)
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch)

    def read(self) -> tuple[int, int]:
        data = self.path.read_bytes()
        return int(data[:12]), int(data[12:24])

    def total(self) -> int:
        return sum(self.read())

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), *self.read()))
            time.sleep(0.005)

    def run(self, exercise) -> dict:
        self._thread.start()
        try:
            return exercise.paused_progress([sys.executable, "-c", COUNTERS, str(self.path)],
                                            self.total, SECONDS)
        finally:
            self._stop.set()
            self._thread.join()

    def longest_pause(self, which: int) -> tuple[float, bool]:
        """The longest time counter `which` (0: parent, 1: child) stood still, and whether it
        counted again afterwards."""
        longest, resumed, start = 0.0, False, 0
        values = [(s[0], s[1 + which]) for s in self.samples]
        for i in range(1, len(values) + 1):
            if i == len(values) or values[i][1] != values[start][1]:
                span = values[i - 1][0] - values[start][0]
                if values[start][1] > 0 and span > longest:  # 0: not started yet
                    longest, resumed = span, i < len(values)
                start = i
        return longest, resumed


def test_task3_reports_no_progress_while_frozen(exercise, tmp_path):
    progress = Counters(tmp_path / "counts").run(exercise)
    assert progress["frozen"] == 0, f"the command counted while frozen: {progress}"
    assert progress["running"] > 0 and progress["thawed"] > 0, (
        f"the command should count while running and after the thaw: {progress}")


def test_task3_every_process_in_the_group_stops(exercise, tmp_path):
    counters = Counters(tmp_path / "counts")
    counters.run(exercise)
    for which, name in enumerate(("the parent", "its child")):
        pause, resumed = counters.longest_pause(which)
        assert pause >= 0.8 * SECONDS, (
            f"{name} never stood still for {SECONDS} s (longest: {pause:.3f} s): was the whole"
            " group frozen?")
        assert resumed, f"{name} did not count again after the pause: was the group thawed?"


def test_task3_leaves_nothing_running(exercise, tmp_path):
    counters = Counters(tmp_path / "counts")
    counters.run(exercise)
    after = counters.read()
    time.sleep(0.1)
    assert counters.read() == after, "the counters still count after paused_progress returned"
    assert _left_behind() == [], "cgroups left behind"
