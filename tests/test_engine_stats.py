"""`docker stats` and `docker top` against a real cgroup with real processes in it.

Each test makes a group with the host's driver (mini-docker-test-<pid>-<n>/c),
puts a small Python program in it, reads the group as the Engine API would,
and checks the numbers with the docker CLI's own arithmetic. Every group is
destroyed and every process killed afterwards. The formulas themselves are
also checked on hand-made documents, where the expected answer is exact.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from fake_cgroup2 import FakeCgroup2
from test_cgroups import groups  # noqa: F401 (the fixture that makes and destroys groups)

from mini_docker import cgroups
from mini_docker.cgroups import Cgroup, CgroupError, Resources, V2Cgroup
from mini_docker.engine import stats, top
from mini_docker.errors import Conflict, InvalidArgument, NotFound
from mini_docker.runtime.state import ContainerState, process_start_time

MiB = 1 << 20
try:
    cgroups.host_driver()
    HAS_CGROUPS = True
except CgroupError:
    HAS_CGROUPS = False
needs_cgroups = pytest.mark.skipif(not HAS_CGROUPS, reason="needs a cgroup hierarchy")

# Each program waits for a byte on stdin, so that all it does is counted in its group.
GATE = "import sys; sys.stdin.buffer.read(1)\n"
BUSY = GATE + "ballast = b'x' * (16 << 20)\nwhile True:\n    pass\n"
SLEEP = GATE + "import time\ntime.sleep(60)\n"


@pytest.fixture
def spawn() -> Callable[..., subprocess.Popen]:
    started: list[subprocess.Popen] = []

    def start(group: Cgroup, program: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE)
        started.append(proc)
        group.add(proc.pid)
        proc.stdin.write(b"g")
        proc.stdin.close()
        return proc
    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def two_readings(group: Cgroup, seconds: float = 1.0) -> dict:
    first = stats.container_stats(group, container_id="c0ffee", name="busy")
    time.sleep(seconds)
    return stats.container_stats(group, container_id="c0ffee", name="busy", previous=first)


def settle(group: Cgroup, usage: int) -> None:
    """Wait until the program has put its ballast in memory."""
    deadline = time.monotonic() + 5
    while group.stats().memory_usage < usage and time.monotonic() < deadline:
        time.sleep(0.05)


# --- stats ---------------------------------------------------------------------------------


@needs_cgroups
def test_a_busy_process_under_half_a_cpu_reads_about_fifty_percent(groups, spawn):
    group = groups(Resources(memory=64 * MiB, cpus=0.5, pids_limit=50))
    spawn(group, BUSY)
    spawn(group, SLEEP)
    settle(group, 16 * MiB)
    reading = two_readings(group)
    assert 5 < stats.cpu_percent(reading) <= 60
    throttling = reading["cpu_stats"]["throttling_data"]
    assert throttling["throttled_periods"] > 0 and throttling["throttled_time"] > 0
    memory = reading["memory_stats"]
    assert memory["limit"] == 64 * MiB
    assert 16 * MiB <= memory["usage"] <= 64 * MiB
    assert 16 * MiB <= stats.memory_usage(reading) <= memory["usage"]
    assert 25 <= stats.memory_percent(reading) <= 100
    assert reading["pids_stats"] == {"current": 2, "limit": 50}
    assert reading["id"] == "c0ffee" and reading["name"] == "/busy"


@needs_cgroups
def test_one_busy_process_without_limits_reads_about_one_cpu(groups, spawn):
    group = groups()
    spawn(group, BUSY)
    settle(group, 16 * MiB)
    reading = two_readings(group)
    cpu = reading["cpu_stats"]
    assert cpu["online_cpus"] == stats.host_cpu()[1] >= 1
    assert 20 < stats.cpu_percent(reading) <= 100 * cpu["online_cpus"] + 5
    usage = cpu["cpu_usage"]
    assert usage["total_usage"] > reading["precpu_stats"]["cpu_usage"]["total_usage"]
    if "percpu_usage" in usage:  # v1 only
        assert len(usage["percpu_usage"]) >= cpu["online_cpus"]
    assert reading["memory_stats"]["limit"] == stats.host_memory()  # no limit: the host's memory
    assert "limit" not in reading["pids_stats"]


@needs_cgroups
def test_a_reading_has_the_engine_apis_shape(groups, spawn):
    group = groups(Resources(memory=64 * MiB))
    spawn(group, SLEEP)
    first = stats.container_stats(group.path, container_id="c0ffee")
    assert first["preread"] == "0001-01-01T00:00:00Z"
    assert first["precpu_stats"]["cpu_usage"]["total_usage"] == 0
    read = datetime.strptime(first["read"][:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
    assert abs(read.timestamp() - time.time()) < 5
    assert set(first) >= {"read", "preread", "pids_stats", "blkio_stats", "cpu_stats",
                          "precpu_stats", "memory_stats", "name", "id"}
    assert set(first["cpu_stats"]) == {"cpu_usage", "system_cpu_usage", "online_cpus",
                                       "throttling_data"}
    assert isinstance(first["memory_stats"]["stats"], dict) and first["memory_stats"]["stats"]
    for entry in first["blkio_stats"]["io_service_bytes_recursive"]:
        assert set(entry) == {"major", "minor", "op", "value"} and entry["op"] in ("read", "write")


@needs_cgroups
def test_the_stream_carries_each_reading_into_the_next_and_ends_with_the_container(groups, spawn):
    group = groups()
    proc = spawn(group, BUSY)
    stream = stats.stats_stream(group, container_id="c0ffee", interval=0.2,
                                is_running=lambda: proc.poll() is None)
    first, second, third = next(stream), next(stream), next(stream)
    assert second["preread"] == first["read"] and third["preread"] == second["read"]
    assert third["precpu_stats"] == second["cpu_stats"]
    assert stats.cpu_percent(third) > 0
    proc.kill()
    proc.wait()
    assert list(stream) == []


@needs_cgroups
def test_the_stream_ends_when_the_group_is_gone(groups, spawn):
    group = groups()
    spawn(group, SLEEP)
    stream = stats.stats_stream(group, interval=0.05)
    next(stream)
    group.destroy()
    assert list(stream) == []
    with pytest.raises(NotFound):
        stats.container_stats(group)


def test_a_v2_group_is_read_into_the_same_shape(tmp_path):
    fake = FakeCgroup2(tmp_path / "cgroup2")  # this host's v2 tree has no controllers
    fake.mkdir("mini-docker/c1")
    group = V2Cgroup("mini-docker/c1", root=str(fake.root))
    group.create()
    for name, text in {
        "memory.current": "41943040\n", "memory.max": "max\n",
        "memory.stat": "anon 20971520\nfile 20971520\ninactive_file 10485760\n",
        "cpu.stat": ("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n"
                     "nr_periods 20\nnr_throttled 5\nthrottled_usec 250000\n"),
        "pids.current": "3\n", "pids.max": "100\n",
        "io.stat": "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
    }.items():
        fake.write(f"mini-docker/c1/{name}", text)
    doc = stats.container_stats(group, container_id="c1", name="/web")
    assert doc["name"] == "/web"
    assert doc["cpu_stats"]["cpu_usage"] == {"total_usage": 1_500_000_000,
                                             "usage_in_kernelmode": 500_000_000,
                                             "usage_in_usermode": 1_000_000_000}
    assert doc["cpu_stats"]["throttling_data"] == {"periods": 20, "throttled_periods": 5,
                                                   "throttled_time": 250_000_000}
    assert doc["memory_stats"]["limit"] == stats.host_memory()
    assert doc["memory_stats"]["stats"]["inactive_file"] == 10 * MiB
    assert stats.memory_usage(doc) == 30 * MiB
    assert doc["pids_stats"] == {"current": 3, "limit": 100}
    assert doc["blkio_stats"]["io_service_bytes_recursive"] == [
        {"major": 8, "minor": 0, "op": "read", "value": 4096},
        {"major": 8, "minor": 0, "op": "write", "value": 8192}]


def reading(total: int, system: int, pre_total: int, pre_system: int, cpus: int = 2,
            percpu: list[int] | None = None) -> dict:
    usage = {"total_usage": total}
    if percpu is not None:
        usage["percpu_usage"] = percpu
    return {"cpu_stats": {"cpu_usage": usage, "system_cpu_usage": system, "online_cpus": cpus},
            "precpu_stats": {"cpu_usage": {"total_usage": pre_total},
                             "system_cpu_usage": pre_system}}


def test_cpu_percent_is_the_clis_formula():
    # 0.5 s of CPU while the 2-CPU host counted 2 s: a quarter of the machine, half a CPU
    assert stats.cpu_percent(reading(1_500_000_000, 12_000_000_000, 1_000_000_000,
                                     10_000_000_000)) == pytest.approx(50.0)
    assert stats.cpu_percent(reading(5, 100, 5, 50)) == 0.0  # idle
    assert stats.cpu_percent(reading(10, 50, 5, 50)) == 0.0  # no host time passed
    no_count = reading(1_500_000_000, 12_000_000_000, 1_000_000_000, 10_000_000_000, cpus=0,
                       percpu=[1, 2, 3, 4])  # older daemons: count the per-CPU entries
    assert stats.cpu_percent(no_count) == pytest.approx(100.0)


def test_memory_leaves_out_inactive_page_cache_as_the_cli_does():
    v1 = {"memory_stats": {"usage": 100 * MiB, "limit": 400 * MiB,
                           "stats": {"total_inactive_file": 20 * MiB, "inactive_file": 1}}}
    v2 = {"memory_stats": {"usage": 100 * MiB, "limit": 200 * MiB,
                           "stats": {"inactive_file": 50 * MiB}}}
    odd = {"memory_stats": {"usage": 10, "limit": 0, "stats": {"inactive_file": 20}}}
    assert stats.memory_usage(v1) == 80 * MiB
    assert stats.memory_percent(v1) == pytest.approx(20.0)
    assert stats.memory_usage(v2) == 50 * MiB
    assert stats.memory_percent(v2) == pytest.approx(25.0)
    assert stats.memory_usage(odd) == 10 and stats.memory_percent(odd) == 0.0
    assert stats.memory_usage({"memory_stats": {}}) == 0


def test_host_cpu_time_is_the_first_seven_columns_of_proc_stat_in_ns(tmp_path):
    proc_stat = tmp_path / "stat"
    proc_stat.write_text("cpu  100 1 50 1000 10 0 5 7 0 0\ncpu0 50 1 25 500 5 0 3 4 0 0\n"
                         "cpu1 50 0 25 500 5 0 2 3 0 0\nintr 12345\nctxt 99\n")
    system, cpus = stats.host_cpu(str(proc_stat))
    assert system == 1166 * 1_000_000_000 // os.sysconf("SC_CLK_TCK")  # steal (7) not counted
    assert cpus == 2
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684084 kB\nMemFree:  1 kB\n")
    assert stats.host_memory(str(meminfo)) == 24684084 * 1024


# --- top -----------------------------------------------------------------------------------


def state_of(group: Cgroup, proc: subprocess.Popen) -> ContainerState:
    return ContainerState(id="c0ffee", bundle="/nonexistent", rootfs="/nonexistent", pid=proc.pid,
                          start_time=process_start_time(proc.pid), created="",
                          cgroup_path=group.path)


@needs_cgroups
def test_top_lists_the_groups_processes_as_ps_ef_does(groups, spawn):
    group = groups()
    init = spawn(group, SLEEP)
    busy = spawn(group, BUSY)
    table = top.container_top(state_of(group, init))
    assert table["Titles"] == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    rows = {int(row[1]): row for row in table["Processes"]}
    assert sorted(rows) == sorted([init.pid, busy.pid])
    uid, _, ppid, c, stime, tty, cpu_time, cmd = rows[init.pid]
    assert uid == "root" and ppid == str(os.getpid()) and tty == "?"
    assert cmd.startswith(f"{sys.executable} -c import sys") and "time.sleep(60)" in cmd
    assert "\n" not in cmd  # control characters shown as ?, as ps does
    assert 0 <= int(c) <= 99 and len(stime) == 5 and cpu_time.count(":") == 2


@needs_cgroups
def test_top_aux_gives_bsd_columns(groups, spawn):
    group = groups()
    busy = spawn(group, BUSY)
    settle(group, 16 * MiB)
    table = top.top(group.procs(), "aux")
    assert table["Titles"] == ["USER", "PID", "%CPU", "%MEM", "VSZ", "RSS", "TTY", "STAT",
                               "START", "TIME", "COMMAND"]
    [row] = table["Processes"]
    user, pid, cpu, mem, vsz, rss, tty, stat, start, cpu_time, command = row
    assert (user, pid, tty) == ("root", str(busy.pid), "?")
    assert float(cpu) > 0 and float(mem) >= 0
    assert int(rss) >= 16 * 1024 and int(vsz) >= int(rss)
    assert stat[0] in "RS" and len(start) == 5 and ":" in cpu_time
    assert command.startswith(sys.executable)


def test_top_leaves_out_pids_that_are_gone_and_refuses_other_ps_options():
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert top.top([proc.pid])["Processes"] == []
    assert [row[1] for row in top.top([os.getpid()], "-ef")["Processes"]] == [str(os.getpid())]
    for args in ("-o pid,comm", "x", "-e -f -L"):
        with pytest.raises(InvalidArgument, match="unsupported ps options"):
            top.top([os.getpid()], args)


@needs_cgroups
def test_top_of_a_stopped_container_is_a_conflict(groups, spawn):
    group = groups()
    init = spawn(group, SLEEP)
    state = state_of(group, init)
    init.kill()
    init.wait()
    with pytest.raises(Conflict, match="not running"):
        top.container_top(state)
