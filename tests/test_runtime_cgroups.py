"""The runtime puts containers in cgroups: limits from config.json, OOM, pause, clean-up."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runtime_support import base_config, make_bundle, mini_runc


def config_with(args: list[str], resources: dict, **process_changes) -> dict:
    config = base_config(*args)
    config["linux"]["resources"] = {**config["linux"]["resources"], **resources}
    config["process"].update(process_changes)
    return config


@pytest.fixture
def bundle(tmp_path, busybox_rootfs):
    def make(args: list[str], resources: dict, name: str = "b", **changes) -> Path:
        return make_bundle(tmp_path / name, busybox_rootfs, config_with(args, resources, **changes))
    return make


def test_the_container_sees_its_own_cgroup_and_limits(runtime_root, bundle):
    from mini_docker.cgroups import host_driver, V1Cgroup

    resources = {"memory": {"limit": 64 * 2**20}, "pids": {"limit": 20},
                 "cpu": {"quota": 50000, "period": 100000}}
    if host_driver() is V1Cgroup:
        script = ("grep -c mini-docker/lim /proc/self/cgroup; "
                  "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max "
                  "/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        expected_tail = [str(64 * 2**20), "20", "50000"]
    else:
        script = ("grep -c mini-docker/lim /proc/self/cgroup; "
                  "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; cut -d' ' -f1 /sys/fs/cgroup/cpu.max")
        expected_tail = [str(64 * 2**20), "20", "50000"]
    result = mini_runc(runtime_root, "run", "--bundle", str(bundle(["sh", "-c", script], resources)), "lim")
    count, *values = result.stdout.split()
    assert int(count) >= 1, result.stdout + result.stderr
    assert values == expected_tail


def test_default_devices_still_work_under_a_deny_all_rule(runtime_root, bundle):
    script = "echo x > /dev/null && head -c 3 /dev/zero | wc -c && head -c 1 /dev/kmsg 2>&1 | grep -c -i 'not permitted\\|no such'"
    result = mini_runc(runtime_root, "run", "--bundle", str(bundle(["sh", "-c", script], {})), "dev")
    assert result.stdout.split() == ["3", "1"]


def test_out_of_memory_is_exit_137_and_reported_in_state(runtime_root, bundle):
    # tail keeps the last line in memory; /dev/zero has no newline, so it grows until killed
    b = bundle(["tail", "-n", "1", "/dev/zero"], {"memory": {"limit": 32 * 2**20, "swap": 32 * 2**20}})
    result = mini_runc(runtime_root, "run", "--keep", "--bundle", str(b), "oom", timeout=60)
    try:
        assert result.returncode == 137
        state = json.loads(mini_runc(runtime_root, "state", "oom").stdout)
        assert state["status"] == "stopped" and state.get("oomKilled") is True
    finally:
        assert mini_runc(runtime_root, "delete", "oom").returncode == 0


def test_a_normal_exit_is_not_an_oom(runtime_root, bundle):
    b = bundle(["true"], {"memory": {"limit": 32 * 2**20}})
    assert mini_runc(runtime_root, "run", "--keep", "--bundle", str(b), "fine").returncode == 0
    try:
        assert "oomKilled" not in json.loads(mini_runc(runtime_root, "state", "fine").stdout)
    finally:
        mini_runc(runtime_root, "delete", "fine")


def test_pids_limit_stops_a_fork_bomb(runtime_root, bundle):
    from mini_docker.runtime.state import StateDir

    b = bundle(["sleep", "30"], {"pids": {"limit": 10}})
    assert mini_runc(runtime_root, "run", "-d", "--bundle", str(b), "bomb").returncode == 0
    try:
        # the bomb forks until the kernel refuses; its sleeps stay, held by PID 1
        bomb = mini_runc(runtime_root, "exec", "bomb", "sh", "-c", "while true; do sleep 30 & done")
        assert "can't fork" in bomb.stderr and bomb.returncode != 0
        states = StateDir(runtime_root)
        stats = states.group(states.load("bomb")).stats()
        # sleep 30 and the bomb's sleeps: the limit, less the bomb's shell, which died
        assert (stats.pids_current, stats.pids_limit) == (9, 10)
        assert mini_runc(runtime_root, "state", "bomb").returncode == 0  # the host still forks
    finally:
        mini_runc(runtime_root, "delete", "--force", "bomb")


def test_pause_freezes_and_resume_thaws(runtime_root, bundle, tmp_path):
    counter = tmp_path / "count"
    counter.mkdir()
    # each count written whole, then renamed over the last: a reader never sees it half-done
    b = bundle(["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /out/t; mv /out/t /out/n; "
                "sleep 0.02; done"], {}, name="p")
    config = json.loads((b / "config.json").read_text())
    config["mounts"].append({"destination": "/out", "type": "bind", "source": str(counter),
                             "options": ["rbind", "rw"]})
    (b / "config.json").write_text(json.dumps(config))
    assert mini_runc(runtime_root, "run", "-d", "--bundle", str(b), "p").returncode == 0
    try:
        time.sleep(0.3)
        assert mini_runc(runtime_root, "pause", "p").returncode == 0
        assert json.loads(mini_runc(runtime_root, "state", "p").stdout)["status"] == "paused"
        frozen_at = (counter / "n").read_text()
        time.sleep(0.3)
        assert (counter / "n").read_text() == frozen_at, "it counted while paused"
        assert mini_runc(runtime_root, "pause", "p").returncode == 1  # not twice
        assert mini_runc(runtime_root, "resume", "p").returncode == 0
        time.sleep(0.3)
        assert int((counter / "n").read_text()) > int(frozen_at)
        assert json.loads(mini_runc(runtime_root, "state", "p").stdout)["status"] == "running"
    finally:
        mini_runc(runtime_root, "delete", "--force", "p")


def test_exec_joins_the_containers_cgroup(runtime_root, bundle):
    assert mini_runc(runtime_root, "run", "-d", "--bundle", str(bundle(["sleep", "30"], {})), "ex").returncode == 0
    try:
        result = mini_runc(runtime_root, "exec", "ex", "cat", "/proc/self/cgroup")
        assert "mini-docker/ex" in result.stdout
        ps = json.loads(mini_runc(runtime_root, "ps", "--format", "json", "ex").stdout)
        assert len(ps) == 1
    finally:
        mini_runc(runtime_root, "delete", "--force", "ex")


def test_cgroups_path_from_the_config_is_used(runtime_root, bundle, busybox_rootfs, tmp_path):
    config = config_with(["cat", "/proc/self/cgroup"], {})
    config["linux"]["cgroupsPath"] = "/mini-docker-test-parent/custom"
    b = make_bundle(tmp_path / "custom", busybox_rootfs, config)
    result = mini_runc(runtime_root, "run", "--bundle", str(b), "custom")
    assert "/mini-docker-test-parent/custom" in result.stdout


@pytest.mark.parametrize("resources, message", [
    ({"memory": {"limit": -5}}, "memory"),
    ({"memory": {"limit": "512m"}}, "must be an integer"),
    ({"pids": {"limit": 0}}, "pids"),
    ({"cpu": {"quota": 500, "period": 100}}, "period"),
])
def test_bad_resources_are_one_line_errors_before_anything_exists(runtime_root, bundle, resources, message):
    result = mini_runc(runtime_root, "create", "--bundle", str(bundle(["true"], resources)), "bad")
    assert result.returncode == 1
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_events_stats_reads_the_cgroup_while_it_runs(runtime_root, bundle):
    b = bundle(["sh", "-c", "sleep 30 & sleep 30 & while true; do :; done"],
               {"memory": {"limit": 64 * 2**20}, "pids": {"limit": 50}}, name="st")
    assert mini_runc(runtime_root, "run", "-d", "--bundle", str(b), "st").returncode == 0
    try:
        time.sleep(0.3)
        first = json.loads(mini_runc(runtime_root, "events", "--stats", "st").stdout)["data"]
        time.sleep(0.3)
        second = json.loads(mini_runc(runtime_root, "events", "--stats", "st").stdout)["data"]
        assert first["pids"] == {"current": 3, "limit": 50}
        assert first["memory"]["usage"]["limit"] == 64 * 2**20
        assert 0 < first["memory"]["usage"]["usage"] < 64 * 2**20
        busy_ns = second["cpu"]["usage"]["total"] - first["cpu"]["usage"]["total"]
        assert busy_ns > 0.1e9  # the busy loop used CPU between the two readings
    finally:
        mini_runc(runtime_root, "delete", "--force", "st")
    assert mini_runc(runtime_root, "events", "--stats", "st").returncode == 1
