"""The cgroups layer: limits the kernel really enforces, with the driver this host uses.

Three kinds of test:

* Real limits (memory, CPU, pids, freezer, destroy) go through `cgroups.create()`,
  which picks the host's driver: V1 on a v1 or hybrid host (this one), V2 on a v2
  host such as the lab VM. Their ids say which, e.g. [v1-driver-on-hybrid-host].
* The V2 driver's core features (groups, freeze, cgroup.kill, cpu.stat, pressure)
  on the real cgroup2 mount, wherever it is (/sys/fs/cgroup/unified here).
* What the V2 driver writes and reads, against a fake tree in the kernel's formats
  (fake_cgroup2.py: this host's v2 tree has no controllers), and plain checks of
  parsing and validation.

Every group is named mini-docker-test-... and removed; every process started is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from fake_cgroup2 import FakeCgroup2
from mini_docker import cgroups
from mini_docker.cgroups import (Cgroup, CgroupError, DeviceRule, Resources, Stats,
                                 ThrottleDevice, V1Cgroup, V2Cgroup, base, parse_cpus,
                                 parse_memory, validate_pids_limit)
from mini_docker.cgroups.v2 import blkio_to_io_weight, shares_to_weight, swap_max
from mini_docker.errors import Conflict, InvalidArgument
from mini_docker.hostcheck.cgroups import CgroupLayout, cgroup_layout

MiB = 1 << 20
LAYOUT = cgroup_layout()
try:
    HOST_DRIVERS: list[type[Cgroup]] = [cgroups.host_driver(LAYOUT)]
except CgroupError:
    HOST_DRIVERS = []  # no cgroups mounted: the real-limit tests are skipped


def _driver_id(driver: type[Cgroup]) -> str:
    return f"{driver.driver}-driver-on-{LAYOUT.mode}-host"


on_host_driver = pytest.mark.parametrize("driver", HOST_DRIVERS, ids=_driver_id)
v1_host = pytest.mark.skipif(V1Cgroup not in HOST_DRIVERS, reason="needs a v1 or hybrid host")

# Each program waits for a byte on stdin, so it does its work only once it is in its group.
GATE = "import sys; sys.stdin.buffer.read(1)\n"
PROGRAMS = {
    "hog": "chunks = []\nwhile True:\n    chunks.append(b'x' * (1 << 20))\n",
    "busy": "while True:\n    pass\n",
    "sleep": "import time\ntime.sleep(60)\n",
    "counter": ("import os, time\nfd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\nn = 0\n"
                "while True:\n    n += 1\n    os.pwrite(fd, b'%012d' % n, 0)\n    time.sleep(0.005)\n"),
    "forkbomb": ("import os, time\nmade = 0\nwhile True:\n    try:\n        pid = os.fork()\n"
                 "    except BlockingIOError:\n        break\n    if pid == 0:\n"
                 "        time.sleep(60)\n        os._exit(0)\n    made += 1\n"
                 "print(made, flush=True)\ntime.sleep(60)\n"),
    "devices": ("import errno\nfor dev in ('/dev/null', '/dev/zero'):\n    try:\n"
                "        open(dev, 'rb').close()\n        print(dev, 'ok')\n"
                "    except PermissionError:\n        print(dev, 'EPERM')\n"),
}


@pytest.fixture
def groups() -> Callable[..., Cgroup]:
    """Makes groups with the host's driver, as mini-docker-test-<pid>-<n>/c; destroys them after."""
    made: list[Cgroup] = []

    def make(resources: Resources | None = None) -> Cgroup:
        group = cgroups.create(f"mini-docker-test-{os.getpid()}-{len(made)}/c", resources)
        made.append(group)
        return group
    yield make
    for group in made:
        group.destroy()


@pytest.fixture
def spawn() -> Callable[..., subprocess.Popen]:
    """Starts one of PROGRAMS, puts it in a group, then lets it go; kills what is left after."""
    started: list[subprocess.Popen] = []

    def start(group: Cgroup, program: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", GATE + PROGRAMS[program], *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        started.append(proc)
        group.add(proc.pid)
        proc.stdin.write("go")
        proc.stdin.close()
        return proc
    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def _gone(group: Cgroup) -> bool:
    return not any(os.path.exists(d) for d in group.directories())


# --- real limits, on the driver this host supports ------------------------------------


@on_host_driver
def test_a_memory_limit_gets_a_hog_oom_killed(driver, groups, spawn):
    swap = 32 * MiB if driver is V2Cgroup or os.path.exists(
        f"{LAYOUT.v1.get('memory')}/memory.memsw.limit_in_bytes") else None
    group = groups(Resources(memory=32 * MiB, memory_swap=swap))  # no swap to escape into
    assert type(group) is driver

    hog = spawn(group, "hog")  # allocates 1 MiB after another, without end
    assert hog.wait(timeout=20) == -signal.SIGKILL
    stats = group.stats()
    assert group.oom_events() == 1 == stats.oom_kills
    assert stats.memory_limit == 32 * MiB
    if stats.memory_max_usage is not None:  # v2 has memory.peak from kernel 5.19
        assert 28 * MiB <= stats.memory_max_usage <= 32 * MiB


@on_host_driver
@pytest.mark.parametrize("cpus", [0.25, 0.5, 1.0])
def test_a_cpu_quota_throttles_busy_loops(driver, cpus, groups, spawn, record_property):
    group = groups(Resources(cpus=cpus))
    for _ in range(2):  # two loops, so that even 1.0 of the 2 CPUs is a real limit
        spawn(group, "busy")
    time.sleep(0.3)
    used, started = group.stats().cpu_usage_ns, time.monotonic()
    time.sleep(1.0)
    stats, elapsed = group.stats(), time.monotonic() - started
    ratio = (stats.cpu_usage_ns - used) / 1e9 / elapsed
    record_property("cpu_ratio", round(ratio, 3))
    print(f"cpus={cpus}: {ratio:.3f} CPU-seconds per second, "
          f"throttled in {stats.cpu_throttled_periods} of {stats.cpu_periods} periods")
    assert 0.6 * cpus <= ratio <= 1.4 * cpus
    assert stats.cpu_throttled_periods > 0
    assert stats.cpu_throttled_ns > 0


@on_host_driver
def test_a_pids_limit_stops_a_fork_bomb(driver, groups, spawn):
    group = groups(Resources(pids_limit=10))
    bomb = spawn(group, "forkbomb")  # forks until fork fails, then says how many it made
    assert bomb.stdout.readline().strip() == "9"  # 9 children + itself = 10
    stats = group.stats()
    assert stats.pids_current == 10 == stats.pids_limit
    peak = Path(group.file_path("pids", "pids.peak"))
    if peak.exists():
        assert int(peak.read_text()) == 10
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork
    group.kill_all()
    assert group.procs() == [] and bomb.wait(timeout=5) == -signal.SIGKILL


@on_host_driver
def test_freezing_stops_progress_and_thawing_resumes_it(driver, groups, spawn, tmp_path):
    group = groups()
    count = tmp_path / "count"
    spawn(group, "counter", str(count))

    def read() -> int:
        return int(count.read_bytes() or b"0")
    base.wait_until(lambda: count.exists() and read() > 5, 5, "the counter to start")
    group.freeze()
    assert group.frozen()
    before = read()
    time.sleep(0.3)
    assert read() == before
    group.thaw()
    assert not group.frozen()
    time.sleep(0.3)
    assert read() > before + 10


@on_host_driver
def test_stats_follow_what_the_group_does(driver, groups, spawn):
    group = groups()
    sleepers = [spawn(group, "sleep") for _ in range(3)]
    assert group.procs() == sorted(p.pid for p in sleepers)
    assert group.stats().pids_current == 3
    busy = spawn(group, "busy")
    first = group.stats()
    time.sleep(0.4)
    second = group.stats()
    assert second.cpu_usage_ns - first.cpu_usage_ns > 0.1e9
    assert second.cpu_user_ns >= first.cpu_user_ns
    assert second.memory_usage > 0 and second.pids_current == 4
    assert busy.pid in group.procs()


@on_host_driver
def test_destroy_kills_what_runs_and_removes_every_directory(driver, groups, spawn):
    group = groups(Resources(memory=64 * MiB, pids_limit=50))
    running = [spawn(group, "sleep"), spawn(group, "busy")]
    parent = [os.path.dirname(d) for d in group.directories()]
    group.destroy()
    assert [p.wait(timeout=5) for p in running] == [-signal.SIGKILL] * 2
    assert _gone(group) and not any(os.path.exists(d) for d in parent)
    assert not group.exists()
    group.destroy()  # twice is fine


@on_host_driver
def test_a_group_cannot_be_created_twice(driver, groups):
    group = groups()
    with pytest.raises(Conflict, match="already exists"):
        cgroups.create(group.path)


@on_host_driver
def test_a_forked_child_joins_the_group_itself_and_its_children_follow(driver, groups):
    group = groups()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # one thread, as a container's first process is
        try:
            group.join()
            grandchild = os.fork()
            if grandchild == 0:
                os.read(done_r, 1)
                os._exit(0)
            os.read(done_r, 1)
            os.waitpid(grandchild, 0)
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + 5
        while len(group.procs()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pid in group.procs() and len(group.procs()) == 2
    finally:
        os.write(done_w, b"xx")
        os.waitpid(pid, 0)
        os.close(done_r), os.close(done_w)


BAD_LIMITS = {
    "memory 10x": (lambda: Resources(memory=parse_memory("10x")), "invalid memory size '10x'"),
    "negative memory": (lambda: Resources(memory=-5), "invalid memory -5"),
    "too many cpus": (lambda: Resources(cpus=parse_cpus(str((os.cpu_count() or 1) * 2))),
                      f"is more than the {os.cpu_count()} CPUs this machine has"),
    "pids 0": (lambda: Resources(pids_limit=0), "a pids limit must be positive, or -1 for none"),
    "oci pids 0": (lambda: Resources.from_oci({"pids": {"limit": 0}}), "must be positive"),
}


@pytest.mark.parametrize("case", BAD_LIMITS, ids=str)
def test_bad_limits_fail_before_anything_is_made(case):
    make, message = BAD_LIMITS[case]
    path = f"mini-docker-test-{os.getpid()}-bad/c"
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(")):
        cgroups.create(path, make())
    group = cgroups.open_cgroup(path)
    assert _gone(group)
    assert not any(os.path.exists(os.path.dirname(d)) for d in group.directories())


@on_host_driver
def test_a_limit_the_kernel_refuses_leaves_nothing_behind(driver):
    # /dev/null (1:3) is no block device: the kernel refuses to throttle it
    path = f"mini-docker-test-{os.getpid()}-refused/c"
    limits = Resources(memory=64 * MiB, throttle_read_bps=(ThrottleDevice(1, 3, 1000),))
    with pytest.raises(CgroupError):
        cgroups.create(path, limits)
    group = cgroups.open_cgroup(path)
    assert _gone(group)
    assert not any(os.path.exists(os.path.dirname(d)) for d in group.directories())


@v1_host
def test_v1_a_missing_controller_is_named_with_its_fix_before_anything_is_made():
    without_pids = CgroupLayout("v1", None, {c: m for c, m in LAYOUT.v1.items() if c != "pids"})
    path = f"mini-docker-test-{os.getpid()}-nopids/c"
    with pytest.raises(CgroupError, match="pids cgroup controller is not mounted.*mount -t cgroup -o pids"):
        cgroups.create(path, Resources(pids_limit=10), layout=without_pids)
    assert _gone(cgroups.open_cgroup(path))


@v1_host
def test_v1_device_rules_deny_all_but_the_allowed(groups, spawn):
    only_null = (DeviceRule(allow=False), DeviceRule(True, "c", 1, 3, "rwm"))
    group = groups(Resources(devices=only_null))
    assert Path(group.file_path("devices", "devices.list")).read_text().split("\n")[0] == "c 1:3 rwm"
    proc = spawn(group, "devices")
    assert proc.stdout.read().splitlines() == ["/dev/null ok", "/dev/zero EPERM"]


@v1_host
def test_v1_every_limit_lands_in_its_file(groups):
    disks = sorted(Path("/sys/block").glob("*/dev"))
    major, minor = map(int, disks[0].read_text().split(":")) if disks else (None, None)
    throttle = (ThrottleDevice(major, minor, 1048576),) if disks else ()
    bfq = any("bfq" in p.read_text() for p in Path("/sys/block").glob("*/queue/scheduler"))
    group = groups(Resources(memory=64 * MiB, memory_reservation=16 * MiB, cpu_shares=512,
                             cpu_quota=20000, cpu_period=50000, cpuset_cpus="0", pids_limit=20,
                             blkio_weight=500 if bfq else None, throttle_read_bps=throttle))
    expected = {("memory", "memory.limit_in_bytes"): "67108864",
                ("memory", "memory.soft_limit_in_bytes"): "16777216",
                ("cpu", "cpu.shares"): "512", ("cpu", "cpu.cfs_quota_us"): "20000",
                ("cpu", "cpu.cfs_period_us"): "50000", ("cpuset", "cpuset.cpus"): "0",
                ("pids", "pids.max"): "20"}
    if bfq:  # the weight of BFQ, the only scheduler with one since CFQ went in 5.0
        expected["blkio", "blkio.bfq.weight"] = "500"
    if disks:
        expected["blkio", "blkio.throttle.read_bps_device"] = f"{major}:{minor} 1048576"
    assert {key: Path(group.file_path(*key)).read_text().strip() for key in expected} == expected


@v1_host
def test_v1_cpuset_of_a_new_group_is_filled_from_its_parent(groups):
    group = groups()
    cpuset = Path(group.file_path("cpuset", "cpuset.cpus"))
    assert cpuset.read_text().strip() == Path(LAYOUT.v1["cpuset"], "cpuset.cpus").read_text().strip()


def test_v1_memory_and_swap_are_written_in_an_order_the_kernel_accepts(tmp_path):
    (tmp_path / "memory/g").mkdir(parents=True)
    group = V1Cgroup("g", {"memory": str(tmp_path / "memory")})
    limit = tmp_path / "memory/g/memory.limit_in_bytes"
    (tmp_path / "memory/g/memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")

    def order(resources: Resources) -> list[tuple[str, str]]:
        return [(w.file, w.value) for w in group.plan(resources)[0]]
    limit.write_text("9223372036854771712\n")  # no limit yet: lower memory first
    assert order(Resources(memory=64 * MiB, memory_swap=128 * MiB)) == [
        ("memory.limit_in_bytes", "67108864"), ("memory.memsw.limit_in_bytes", "134217728")]
    limit.write_text("67108864\n")  # raising both: memsw first
    assert order(Resources(memory=256 * MiB, memory_swap=512 * MiB)) == [
        ("memory.memsw.limit_in_bytes", "536870912"), ("memory.limit_in_bytes", "268435456")]
    assert order(Resources(memory=-1)) == [
        ("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", "-1")]


def test_v1_a_blkio_weight_without_bfq_is_refused_with_the_reason(tmp_path):
    (tmp_path / "blkio/g").mkdir(parents=True)
    (tmp_path / "blkio/g/blkio.throttle.read_bps_device").write_text("")
    group = V1Cgroup("g", {"blkio": str(tmp_path / "blkio")})
    with pytest.raises(CgroupError, match="needs the BFQ I/O scheduler"):
        group.set(Resources(blkio_weight=500, throttle_read_bps=(ThrottleDevice(8, 0, 100),)))
    assert (tmp_path / "blkio/g/blkio.throttle.read_bps_device").read_text() == ""  # untouched


# --- the V2 driver on the real cgroup2 mount --------------------------------------------


@pytest.mark.skipif(not LAYOUT.unified, reason="no cgroup2 mount on this host")
def test_v2_driver_on_the_real_unified_tree(spawn, tmp_path, monkeypatch):
    group = V2Cgroup(f"mini-docker-test-{os.getpid()}-v2/c", root=LAYOUT.unified)
    try:
        group.create()
        assert group.exists() and group.directories() == [f"{LAYOUT.unified}/{group.path}"]
        count = tmp_path / "count"
        proc = spawn(group, "counter", str(count))
        assert group.procs() == [proc.pid]
        assert f"0::/{group.path}\n" in Path(f"/proc/{proc.pid}/cgroup").read_text()
        base.wait_until(lambda: count.exists() and int(count.read_bytes() or b"0") > 5, 5, "counting")

        group.freeze()
        assert "frozen 1" in Path(group.dir, "cgroup.events").read_text() and group.frozen()
        before = count.read_bytes()
        time.sleep(0.3)
        assert count.read_bytes() == before
        group.thaw()
        assert not group.frozen()
        base.wait_until(lambda: count.read_bytes() != before, 2, "counting again")

        stats = group.stats()
        assert stats.cpu_usage_ns > 0 and stats.cpu_user_ns is not None
        if os.path.exists("/proc/pressure/cpu"):  # a kernel with pressure stall information
            pressure = group.pressure()
            assert {"cpu", "memory", "io"} <= set(pressure)
            assert pressure["cpu"].some.total_us >= 0 and pressure["memory"].full is not None

        if "memory" not in LAYOUT.v2:  # a hybrid host: the v1 hierarchy holds memory
            with pytest.raises(CgroupError, match="memory cgroup controller is not available"):
                group.set(Resources(memory=64 * MiB))

        monkeypatch.setattr(base, "kill_each", lambda pids: None)  # only cgroup.kill may kill
        group.kill_all()
        assert proc.wait(timeout=5) == -signal.SIGKILL and group.procs() == []
    finally:
        group.destroy()
    assert not group.exists() and not os.path.exists(os.path.dirname(group.dir))


@pytest.mark.skipif(not LAYOUT.unified, reason="no cgroup2 mount on this host")
def test_a_child_is_born_in_a_v2_group_and_stage_1_then_joins_nothing():
    """clone3(CLONE_INTO_CGROUP): no move into the group, so no wait for the kernel's lock."""
    from mini_docker.kernel import fork_into_cgroup
    from mini_docker.runtime.create import _fork_stage1
    from mini_docker.runtime.init import InitContext

    group = V2Cgroup(f"mini-docker-test-{os.getpid()}-born/c", root=LAYOUT.unified)
    group.create()
    try:
        ours = Path("/proc/self/cgroup").read_text()
        directory = group.directory_fd()
        read, write = os.pipe()
        try:
            pid = fork_into_cgroup(directory)
            if pid == 0:
                os.write(write, Path("/proc/self/cgroup").read_bytes())
                os._exit(0)
        finally:
            os.close(directory)
        os.close(write)
        assert f"0::/{group.path}\n" in os.read(read, 4096).decode()
        os.close(read)
        assert os.waitpid(pid, 0)[1] == 0 and Path("/proc/self/cgroup").read_text() == ours
        ctx = InitContext(spec=None, bundle="", rootfs="", fifo="", sync=None, cgroup=group)
        read, write = os.pipe()
        pid = _fork_stage1(ctx)
        if pid == 0:  # what stage 1 finds: in the group, with nothing left to join
            os.write(write, b"%d" % (ctx.cgroup is None and group.procs() == [os.getpid()]))
            os._exit(0)
        os.close(write)
        assert os.read(read, 16) == b"1"
        os.close(read)
        assert os.waitpid(pid, 0)[1] == 0 and ctx.cgroup is group  # the parent's is untouched
    finally:
        group.destroy()
    with pytest.raises(OSError):  # a v1 hierarchy's directory: the kernel refuses
        v1_dir = os.open(next(iter(LAYOUT.v1.values())), os.O_RDONLY | os.O_DIRECTORY)
        try:
            fork_into_cgroup(v1_dir)
        finally:
            os.close(v1_dir)
    assert V1Cgroup("x", dict(LAYOUT.v1)).directory_fd() is None if LAYOUT.v1 else True


# --- the V2 driver against a fake tree in the kernel's formats -----------------------------


@pytest.fixture
def fake(tmp_path) -> FakeCgroup2:
    return FakeCgroup2(tmp_path / "cgroup2")


def _fake_group(fake: FakeCgroup2, path: str = "mini-docker/c1") -> V2Cgroup:
    fake.mkdir(path)  # the kernel's part: a group comes with its files
    group = V2Cgroup(path, root=str(fake.root))
    group.create()
    return group


@pytest.mark.parametrize("thawing", [True, False])
def test_a_group_removed_while_it_is_thawed_or_frozen_ends_the_wait_at_once(fake, thawing):
    """A container killed as it is thawed (`rm -f` of a paused one) exits, and its shim
    removes the group, maybe before the thaw has been seen: nothing is left to thaw, so
    the wait is over. A freeze of a group that goes fails at once, not after 5 s."""
    import shutil
    import threading

    group = _fake_group(fake)
    fake.write("mini-docker/c1/cgroup.events", f"populated 1\nfrozen {int(thawing)}\n")
    timer = threading.Timer(0.1, shutil.rmtree, [fake.root / "mini-docker" / "c1"])
    timer.start()
    started = time.monotonic()
    try:
        if thawing:
            group.thaw()  # the fake never says thawed: only the removal ends it
        else:
            with pytest.raises(CgroupError, match="removed while it was being frozen"):
                group.freeze()
    finally:
        timer.join()
    assert time.monotonic() - started < 2


def test_v2_create_hands_controllers_down_from_the_root(fake):
    _fake_group(fake)
    assert fake.read("cgroup.subtree_control") == "+cpuset +cpu +io +memory +pids"
    assert fake.read("mini-docker/cgroup.subtree_control") == "+cpuset +cpu +io +memory +pids"
    assert fake.read("mini-docker/c1/cgroup.subtree_control") == ""  # a leaf hands nothing down


def test_v2_create_enables_only_what_is_there_and_not_yet_enabled(tmp_path):
    fake = FakeCgroup2(tmp_path / "cgroup2", controllers=("cpu", "memory", "hugetlb"))
    fake.write("cgroup.subtree_control", "memory\n")  # enabled already (as the kernel lists it)
    _fake_group(fake)
    assert fake.read("cgroup.subtree_control") == "+cpu"
    assert fake.read("mini-docker/cgroup.subtree_control") == "+cpu +memory"


def test_v2_set_writes_each_limit_in_the_kernels_format(fake):
    group = _fake_group(fake)
    warnings = group.set(Resources(
        memory=512 * MiB, memory_reservation=256 * MiB, memory_swap=1024 * MiB,
        cpu_shares=512, cpus=0.5, cpuset_cpus="0", cpuset_mems="0", pids_limit=100,
        blkio_weight=500, throttle_read_bps=(ThrottleDevice(8, 16, 2097152),),
        throttle_write_iops=(ThrottleDevice(8, 16, 120),)))
    assert warnings == []
    written = {name: fake.read(f"mini-docker/c1/{name}") for name in (
        "memory.max", "memory.low", "memory.swap.max", "cpu.weight", "cpu.max", "cpuset.cpus",
        "cpuset.mems", "pids.max", "io.weight", "io.max")}
    assert written == {
        "memory.max": "536870912", "memory.low": "268435456",
        "memory.swap.max": "536870912",  # v2 counts swap alone: 1 GiB total - 512 MiB
        "cpu.weight": "20", "cpu.max": "50000 100000", "cpuset.cpus": "0", "cpuset.mems": "0",
        "pids.max": "100", "io.weight": "default 4950", "io.max": "8:16 rbps=2097152 wiops=120"}


def test_v2_no_limit_is_written_as_max(fake):
    group = _fake_group(fake)
    group.set(Resources(memory=-1, cpu_quota=-1, pids_limit=-1))
    assert [fake.read(f"mini-docker/c1/{f}") for f in
            ("memory.max", "memory.swap.max", "cpu.max", "pids.max")] == ["max", "max", "max 100000", "max"]
    group.set(Resources(memory=64 * MiB, memory_swap=64 * MiB, cpu_quota=50000, cpu_period=200000))
    assert [fake.read(f"mini-docker/c1/{f}") for f in ("memory.swap.max", "cpu.max")] == ["0", "50000 200000"]


def test_v2_blkio_weight_goes_to_bfq_unscaled_when_bfq_is_there(fake):
    group = _fake_group(fake)
    fake.write("mini-docker/c1/io.bfq.weight", "default 100\n")
    group.set(Resources(blkio_weight=500))
    assert fake.read("mini-docker/c1/io.bfq.weight") == "500"
    assert fake.read("mini-docker/c1/io.weight") == "default 100\n"


def test_v2_device_rules_are_accepted_with_a_warning(fake):
    group = _fake_group(fake)
    warnings = group.set(Resources(devices=(DeviceRule(allow=False),)))
    assert len(warnings) == 1 and "eBPF" in warnings[0] and group.warnings == warnings


def test_v2_a_missing_file_fails_before_any_write(fake):
    group = _fake_group(fake)
    (fake.root / "mini-docker/c1/memory.swap.max").unlink()  # swap accounting off
    with pytest.raises(CgroupError, match="swapaccount=1"):
        group.set(Resources(memory=64 * MiB, memory_swap=128 * MiB, pids_limit=5))
    assert fake.read("mini-docker/c1/memory.max") == "max\n"
    assert fake.read("mini-docker/c1/pids.max") == "max\n"
    group.set(Resources(memory=64 * MiB, memory_swap=64 * MiB))  # "no swap" needs no file
    assert fake.read("mini-docker/c1/memory.max") == "67108864"


def test_v2_a_missing_controller_is_named_with_its_fix(tmp_path):
    fake = FakeCgroup2(tmp_path / "cgroup2", controllers=("cpu", "hugetlb"))
    layout = CgroupLayout("v2", str(fake.root), {}, ("cpu", "hugetlb"))
    with pytest.raises(CgroupError, match="memory cgroup controller is not available.*cgroup_no_v1"):
        cgroups.create("mini-docker/c1", Resources(memory=64 * MiB), layout=layout)
    assert not (fake.root / "mini-docker").exists()
    fake = FakeCgroup2(tmp_path / "other", controllers=("cpu", "memory"))
    group = V2Cgroup("mini-docker/c1", root=str(fake.root))
    fake.mkdir("mini-docker/c1", controllers=("cpu",))  # its parent never handed memory down
    with pytest.raises(CgroupError, match=r"echo \+memory > <parent>/cgroup.subtree_control"):
        group.set(Resources(memory=64 * MiB))


def test_v2_stats_read_the_kernels_formats(fake):
    group = _fake_group(fake)
    for name, text in {
        "memory.current": "4321280\n", "memory.max": "536870912\n", "memory.peak": "8388608\n",
        "memory.stat": "anon 2097152\nfile 1048576\nkernel 262144\nsock 0\nshmem 0\n",
        "memory.events": "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
        "cpu.stat": ("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnr_periods 20\n"
                     "nr_throttled 5\nthrottled_usec 250000\nnr_bursts 0\nburst_usec 0\n"),
        "pids.current": "3\n", "pids.max": "max\n",
        "io.stat": ("8:0 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n"
                    "8:16 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n"),
    }.items():
        fake.write(f"mini-docker/c1/{name}", text)
    assert group.stats() == Stats(
        memory_usage=4321280, memory_limit=536870912, memory_max_usage=8388608,
        memory_cache=1048576, memory_anon=2097152, oom_kills=1,
        cpu_usage_ns=1_500_000_000, cpu_user_ns=1_000_000_000, cpu_system_ns=500_000_000,
        cpu_periods=20, cpu_throttled_periods=5, cpu_throttled_ns=250_000_000,
        pids_current=3, pids_limit=None, io_read_bytes=1463296, io_write_bytes=314773504)
    assert group.oom_events() == 1


def test_v2_pressure_reads_some_and_full(fake):
    group = _fake_group(fake)
    fake.write("mini-docker/c1/memory.pressure",
               "some avg10=1.50 avg60=0.75 avg300=0.10 total=123456\n"
               "full avg10=0.50 avg60=0.25 avg300=0.00 total=6543\n")
    memory = group.pressure()["memory"]
    assert (memory.some.avg10, memory.some.total_us, memory.full.avg60) == (1.5, 123456, 0.25)


# --- choosing the driver ---------------------------------------------------------------


def test_the_driver_follows_the_hosts_cgroup_mode():
    v1 = {"memory": "/sys/fs/cgroup/memory", "cpu": "/sys/fs/cgroup/cpu"}
    assert cgroups.host_driver(CgroupLayout("v1", None, v1)) is V1Cgroup
    assert cgroups.host_driver(CgroupLayout("hybrid", "/sys/fs/cgroup/unified", v1, ("hugetlb",))) is V1Cgroup
    assert cgroups.host_driver(CgroupLayout("v2", "/sys/fs/cgroup", {}, ("memory",))) is V2Cgroup
    with pytest.raises(CgroupError, match="mount -t cgroup2"):
        cgroups.host_driver(CgroupLayout("none"))
    group = cgroups.open_cgroup("/mini-docker/abc", CgroupLayout("v2", "/sys/fs/cgroup", {}, ()))
    assert group.directories() == ["/sys/fs/cgroup/mini-docker/abc"]
    group = cgroups.open_cgroup("mini-docker/abc", CgroupLayout("hybrid", "/u", v1))
    assert group.directories() == ["/sys/fs/cgroup/cpu/mini-docker/abc",
                                   "/sys/fs/cgroup/memory/mini-docker/abc"]


def test_this_host_gets_the_driver_its_mode_calls_for():
    expected = {"v1": V1Cgroup, "hybrid": V1Cgroup, "v2": V2Cgroup}.get(LAYOUT.mode)
    assert HOST_DRIVERS == ([expected] if expected else [])


@pytest.mark.parametrize("path", ["", "/", "a/../b", "system.slice:docker:abc"])
def test_a_bad_cgroup_path_is_refused(path):
    with pytest.raises(InvalidArgument, match="invalid cgroup path"):
        V2Cgroup(path)


# --- parsing and validation --------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("512m", 512 * MiB), ("512M", 512 * MiB), ("512mb", 512 * MiB), ("512MiB", 512 * MiB),
    ("1.5g", 1536 * MiB), ("64k", 65536), ("100", 100), ("100b", 100), ("1t", 1 << 40),
    (4096, 4096),
])
def test_parse_memory_takes_dockers_units(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["10x", "", "-1", "m", "1.2.3g", "12 gb extra"])
def test_parse_memory_refuses_what_docker_refuses(text):
    with pytest.raises(InvalidArgument, match=f"invalid memory size '{text}'"):
        parse_memory(text)


def test_parse_cpus_is_between_a_hundredth_and_the_machines_count():
    assert parse_cpus("1") == 1.0 and parse_cpus(0.25) == 0.25
    count = os.cpu_count()
    too_many = f"cpus {count + 2} is more than the {count} CPUs this machine has"
    with pytest.raises(InvalidArgument, match=too_many):
        parse_cpus(str(count + 2))
    for bad, message in (("0", "must be more than 0"), ("-1", "must be more than 0"),
                         ("abc", "invalid cpus value 'abc'"), ("0.001", "less than 0.01")):
        with pytest.raises(InvalidArgument, match=message):
            parse_cpus(bad)


def test_a_pids_limit_is_positive_or_minus_one():
    assert validate_pids_limit(100) == 100 and validate_pids_limit(-1) == -1
    for bad in (0, -2):
        with pytest.raises(InvalidArgument, match="a pids limit must be positive, or -1 for none"):
            validate_pids_limit(bad)


@pytest.mark.parametrize("fields, message", [
    ({"memory": 1 * MiB}, "Minimum memory limit allowed is 6MB"),
    ({"memory_swap": 64 * MiB}, "always set the Memory limit"),
    ({"memory": 64 * MiB, "memory_swap": 32 * MiB}, "memoryswap limit should be larger"),
    ({"memory": 64 * MiB, "memory_reservation": 128 * MiB}, "less than memory reservation"),
    ({"cpus": 0.5, "cpu_quota": 50000}, "Conflicting options"),
    ({"cpu_shares": 1}, "cpu shares 1 is out of range"),
    ({"cpu_quota": 10}, "cpu quota 10 is out of range"),
    ({"cpuset_cpus": "0-x"}, "invalid cpuset cpus '0-x'"),
    ({"cpuset_cpus": "0-511"}, "Requested CPUs are not available"),
    ({"cpuset_mems": "7"}, "Requested memory nodes are not available"),
    ({"blkio_weight": 5}, "blkio weight 5 is out of range"),
])
def test_resources_refuse_what_the_kernel_or_docker_would(fields, message):
    with pytest.raises(InvalidArgument, match=message):
        Resources(**fields)


def test_resources_turn_cpus_into_a_quota_over_dockers_period():
    assert Resources(cpus=0.25).cpu_max() == (25000, 100000)
    assert Resources(cpu_quota=50000, cpu_period=200000).cpu_max() == (50000, 200000)
    assert Resources().is_empty() and not Resources(pids_limit=5).is_empty()


def test_device_rules_are_written_as_v1_reads_them():
    assert DeviceRule(allow=False).rule() == "a *:* rwm"
    assert DeviceRule(True, "c", 1, 3, "rw").rule() == "c 1:3 rw"
    assert DeviceRule(True, "c", 136, None, "rwm").rule() == "c 136:* rwm"
    with pytest.raises(InvalidArgument, match="invalid device access 'rwx'"):
        DeviceRule(True, "c", 1, 3, "rwx")


def test_from_oci_reads_linux_resources():
    resources = Resources.from_oci({
        "devices": [{"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 136, "minor": -1, "access": "rwm"}],
        "memory": {"limit": 536870912, "reservation": 268435456, "swap": 1073741824,
                   "disableOOMKiller": False, "swappiness": None},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
        "pids": {"limit": 100},
        "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]},
    })
    assert resources == Resources(
        memory=536870912, memory_reservation=268435456, memory_swap=1073741824, cpu_shares=512,
        cpu_quota=50000, cpu_period=100000, cpuset_cpus="0", cpuset_mems="0", pids_limit=100,
        blkio_weight=500, throttle_read_bps=(ThrottleDevice(8, 0, 1048576),),
        devices=(DeviceRule(False), DeviceRule(True, "c", 1, 3), DeviceRule(True, "c", 136, None)))
    # runc's defaults say nothing: zeros are "not set"
    assert Resources.from_oci({"devices": [{"allow": False, "access": "rwm"}],
                               "cpu": {"shares": 0}, "memory": {"limit": 0}}).cpu_shares is None


@pytest.mark.parametrize("doc, message", [
    ({"memory": {"limit": "512m"}}, r"linux.resources.memory.limit: must be an integer, not '512m'"),
    ({"memory": {"swappiness": 60}}, r"linux.resources.memory.swappiness: is not supported"),
    ({"cpu": {"realtimeRuntime": 950000}}, r"linux.resources.cpu.realtimeRuntime: is not supported"),
    ({"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]},
     r"linux.resources.hugepageLimits: is not supported"),
    ({"memroy": {}}, r"linux.resources.memroy: unknown key"),
    ({"cpu": []}, r"linux.resources.cpu: must be an object, not list"),
    ({"devices": [{"access": "rwm"}]},
     r"linux.resources.devices\[0\]: must be an object with a boolean 'allow'"),
    ({"blockIO": {"throttleReadBpsDevice": [{"major": 8}]}},
     r"throttleReadBpsDevice\[0\]: needs major, minor and rate"),
    ({"pids": {"limit": 0}}, r"linux.resources.pids.limit: a pids limit must be positive"),
])
def test_from_oci_errors_name_the_json_path(doc, message):
    with pytest.raises(InvalidArgument, match=message):
        Resources.from_oci(doc)


def test_v2_conversions_are_runcs():
    assert [shares_to_weight(s) for s in (2, 1024, 262144)] == [1, 39, 10000]
    assert [blkio_to_io_weight(w) for w in (10, 500, 1000)] == [1, 4950, 10000]
    assert swap_max(64 * MiB, 128 * MiB) == str(64 * MiB)
    assert swap_max(64 * MiB, 64 * MiB) == "0"
    assert swap_max(64 * MiB, -1) == swap_max(-1, None) == "max"
    assert swap_max(64 * MiB, None) is None
