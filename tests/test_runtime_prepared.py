"""An init prepared in advance (runtime/prepared.py), against the real kernel.

The prepared init's mount namespace is a copy taken when it was made, so
each test mounts what the container needs *after* preparing it: the rootfs
and a bind mount's source reach the init as detached mounts (open_tree), or
the container would see empty directories.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from mini_docker.errors import MiniDockerError
from mini_docker.kernel import constants as C
from mini_docker.kernel import mount, prctl, umount2
from mini_docker.runtime import cgroup
from mini_docker.runtime import spec as oci
from mini_docker.runtime.create import create
from mini_docker.runtime.delete import delete
from mini_docker.runtime.prepared import InitMaker, PreparedInit
from mini_docker.runtime.start import start
from runtime_support import all_pids, base_config, make_bundle, parent_of, proc_stat


@pytest.fixture(autouse=True)
def subreaper():
    """The init's parent once stage 1 exits, as a shim is (so that we can wait for it)."""
    prctl(C.PR_SET_CHILD_SUBREAPER, 1)
    yield
    prctl(C.PR_SET_CHILD_SUBREAPER, 0)


@contextmanager
def mounted_later(source: Path, where: Path):
    """Bind `source` at `where` (made now), and take it away afterwards."""
    where.mkdir()
    mount(str(source), str(where), None, C.MS_BIND | C.MS_REC)
    try:
        yield where
    finally:
        umount2(str(where), C.MNT_DETACH)


def run_to_end(root: Path, bundle: Path, prepared: PreparedInit | None, cid: str = "p") -> tuple[int, str]:
    """create (with `prepared`), start, wait, delete; the exit status and the output."""
    with tempfile.TemporaryFile() as out:
        saved = [os.dup(fd) for fd in (1, 2)]
        try:
            for fd in (1, 2):  # what the container gets as its stdout and stderr
                os.dup2(out.fileno(), fd)
            state = create(cid, bundle, root=root, prepared=prepared)
        finally:
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
        try:
            start(cid, root=root)
            _, status = os.waitpid(state.pid, 0)
        finally:
            delete(cid, force=True, root=root)
        out.seek(0)
        return os.waitstatus_to_exitcode(status), out.read().decode()


MOUNTS_SEEN = ("awk '$5 != \"/\" {print $5, $6, $9, $10, $11}' /proc/self/mountinfo; "
               "ls -l /dev | awk '{print $1, $NF}'; ls /dev/pts; ps -o pid,comm | head -2")


def test_a_prepared_init_builds_the_same_mounts_as_one_forked_at_create(runtime_root, tmp_path,
                                                                      busybox_rootfs):
    """Two ways to the same container: the mounts, /dev and PID 1 seen from inside."""
    config = base_config("sh", "-c", MOUNTS_SEEN)
    with mounted_later(busybox_rootfs, tmp_path / "rootfs") as rootfs:
        bundle = make_bundle(tmp_path / "bundle", rootfs, config)
        forked = run_to_end(runtime_root, bundle, None, cid="forked")
        prepared = run_to_end(runtime_root, bundle, PreparedInit(), cid="prepared")
    assert forked[0] == prepared[0] == 0, (forked, prepared)
    assert prepared[1] == forked[1]
    lines = [line.strip() for line in prepared[1].splitlines()]
    assert "/dev/pts rw,nosuid,noexec,relatime devpts rw,gid=5,mode=620,ptmxmode=666" in lines
    assert "/sys ro,nosuid,nodev,noexec,relatime sysfs ro" in lines
    assert "crw-rw-rw- null" in lines and "ptmx" in lines and lines[-1].split() == ["1", "sh"]


def test_a_prepared_init_sees_the_rootfs_and_binds_mounted_after_it(runtime_root, tmp_path,
                                                                    busybox_rootfs):
    data = tmp_path / "data"
    data.mkdir()
    prepared = PreparedInit()
    with mounted_later(busybox_rootfs, tmp_path / "rootfs") as rootfs:
        mount("tmpfs", str(data), "tmpfs", 0, "size=1m")  # a bind source that is a new mount
        try:
            (data / "marker").write_text("from the host\n")
            config = base_config("sh", "-c", "echo pid $$; hostname; cat /home/marker; touch "
                                 "/home/x 2>/dev/null || echo read-only; grep memory /proc/self/cgroup")
            config["mounts"].append({"destination": "/home", "type": "bind",  # busybox has /home
                                     "source": str(data), "options": ["rbind", "ro"]})
            config["hostname"] = "prepared"
            bundle = make_bundle(tmp_path / "bundle", rootfs, config)
            assert prepared.fits(oci.load(bundle))
            code, output = run_to_end(runtime_root, bundle, prepared)
        finally:
            umount2(str(data), C.MNT_DETACH)
    lines = output.splitlines()
    assert code == 0, output
    assert lines[:4] == ["pid 1", "prepared", "from the host", "read-only"], output
    assert lines[4].endswith(":memory:/mini-docker/p"), output  # it joined its own cgroup
    assert not (data / "x").exists()


def test_on_cgroup_v1_its_group_is_renamed_to_the_containers(runtime_root, tmp_path,
                                                             busybox_rootfs):
    prepared = PreparedInit()
    if prepared.group is None:
        prepared.discard()
        pytest.skip("cgroup v2 does not rename groups: the init joins the container's instead")
    prepared.wait_until_made()
    pool = prepared.group
    waiting = pool.procs()  # the init (and stage 1, if it has not exited yet)
    bundle = make_bundle(tmp_path / "bundle", busybox_rootfs, base_config("sleep", "10"))
    state = create("p", bundle, root=runtime_root, prepared=prepared)
    try:
        group = cgroup.open_group("mini-docker/p")
        assert group.procs() == [state.pid] and state.pid in waiting
        assert not any(os.path.exists(d) for d in pool.directories())
    finally:
        delete("p", force=True, root=runtime_root)
        os.waitpid(state.pid, 0)  # killed; ours to reap, as its subreaper
    assert not group.exists()


def test_a_group_is_renamed_only_beside_itself_and_only_on_v1(tmp_path):
    from mini_docker.cgroups import CgroupError, V2Cgroup

    with pytest.raises(CgroupError, match="v2 does not rename"):
        V2Cgroup("mini-docker/a", str(tmp_path)).renamed("mini-docker/b")
    group = cgroup.open_group("mini-docker/rename-a")
    if group.driver != "v1":
        pytest.skip("this host's cgroups are v2")
    group.create()
    try:
        with pytest.raises(CgroupError, match="not a sibling"):
            group.renamed("elsewhere/rename-b")
        moved = group.renamed("mini-docker/rename-b")
        assert moved.exists() and not group.exists()
    finally:
        cgroup.remove("mini-docker/rename-b")
        cgroup.remove("mini-docker/rename-a")


def test_a_cgroup_namespace_is_made_after_joining_the_group(runtime_root, tmp_path, busybox_rootfs):
    config = base_config("grep", "memory", "/proc/self/cgroup")
    config["linux"]["namespaces"].append({"type": "cgroup"})
    bundle = make_bundle(tmp_path / "bundle", busybox_rootfs, config)
    prepared = PreparedInit()
    assert prepared.fits(oci.load(bundle))
    code, output = run_to_end(runtime_root, bundle, prepared)
    assert (code, output.split(":")[-1]) == (0, "/\n")  # its own group is its root


@pytest.mark.parametrize("change", ["host network", "user namespace", "namespace by path",
                                    "rslave propagation"])
def test_a_config_it_does_not_fit_is_created_the_usual_way(runtime_root, tmp_path, busybox_rootfs,
                                                           change):
    config = base_config("sh", "-c", "echo pid $$")
    namespaces = config["linux"]["namespaces"]
    if change == "host network":
        namespaces.remove({"type": "network"})
    elif change == "user namespace":
        namespaces.append({"type": "user"})
        config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        config["root"]["readonly"] = False
    elif change == "namespace by path":
        namespaces[namespaces.index({"type": "ipc"})] = {"type": "ipc",
                                                         "path": "/proc/self/ns/ipc"}
    else:
        config["linux"]["rootfsPropagation"] = "rslave"
    bundle = make_bundle(tmp_path / "bundle", busybox_rootfs, config)
    prepared = PreparedInit()
    assert not prepared.fits(oci.load(bundle))
    if change == "user namespace":
        prepared.discard()  # fits() is the point; running one needs a rootfs of the mapped ids
        return
    code, output = run_to_end(runtime_root, bundle, prepared)
    assert (code, output) == (0, "pid 1\n")
    with pytest.raises(ChildProcessError):  # used up: its init was reaped
        os.waitpid(prepared.init_pid, os.WNOHANG)


def test_it_does_not_fit_a_group_it_cannot_become(tmp_path, busybox_rootfs):
    """Its own group is renamed to the container's: not into another parent, nor over a
    group that exists (dockerd may reuse a path)."""
    prepared = PreparedInit()
    try:
        spec = oci.load(make_bundle(tmp_path / "bundle", busybox_rootfs, base_config()))
        if prepared.stage0:  # v2: it makes the init in whatever group the container has
            assert prepared.fits(spec, 0, "elsewhere/p")
            return
        assert prepared.fits(spec, 0, "mini-docker/p")
        assert not prepared.fits(spec, 0, "elsewhere/p")
        taken = cgroup.open_group("mini-docker/taken")
        taken.create()
        try:
            assert not prepared.fits(spec, 0, "mini-docker/taken")
        finally:
            taken.destroy()
    finally:
        prepared.discard()


def test_discarded_it_leaves_no_process(runtime_root):
    prepared = PreparedInit()
    prepared.discard()
    prepared.discard()  # twice is harmless
    with pytest.raises(ChildProcessError):
        os.waitpid(prepared.init_pid, os.WNOHANG)
    # and the autouse leak check finds no process left in another PID namespace


def test_a_failure_inside_is_reported_and_nothing_is_left(runtime_root, tmp_path, busybox_rootfs):
    bundle = make_bundle(tmp_path / "bundle", busybox_rootfs, base_config("/no/such/program"))
    with pytest.raises(MiniDockerError, match="no/such/program"):
        run_to_end(runtime_root, bundle, PreparedInit())
    assert not any(runtime_root.iterdir())


def test_it_refuses_namespaces_it_cannot_make_in_advance():
    with pytest.raises(ValueError, match="user or cgroup"):
        PreparedInit(C.CLONE_NEWNS | C.CLONE_NEWUSER)


def test_the_engine_keeps_a_prepared_init_with_each_idle_shim(engine):
    """After a container, each idle shim (the zygote's next spare, and the container's
    own shim, back) waits with an init in new namespaces."""
    engine.containers.run("busybox", ["true"], remove=True)
    kinds = ("mnt", "uts", "ipc", "pid", "net")
    own = {k: os.readlink(f"/proc/self/ns/{k}") for k in kinds}
    deadline = time.monotonic() + 10
    while True:
        zygotes = [pid for pid in all_pids()  # live ones: a used stage 1 waits as a zombie
                   if proc_stat(pid)[0] == "mini-zygote" and proc_stat(pid)[1][0] not in "ZX"]
        idle = [pid for pid in zygotes if pid != engine._zygote.pid
                and os.readlink(f"/proc/{pid}/ns/pid") == own["pid"]]
        inits = {shim: [pid for pid in zygotes if parent_of(pid) == shim] for shim in idle}
        theirs = {init: {k: os.readlink(f"/proc/{init}/ns/{k}") for k in kinds}
                  for found in inits.values() for init in found}
        if len(idle) == 2 and all(len(found) == 1 for found in inits.values()) and all(
                ns[k] != own[k] for ns in theirs.values() for k in kinds):
            break  # the shim back from the container has made its init, and it its namespaces
        assert time.monotonic() < deadline, (zygotes, inits, theirs)
        time.sleep(0.01)
    assert all(parent_of(shim) == engine._zygote.pid for shim in idle)


def test_a_shim_back_from_a_container_has_a_maker_fork_its_next_inits(engine):
    """The shim that ran a container forks an init maker once; the maker forks each next
    init as the shim's child, container after container."""
    def shim_with_maker() -> tuple[int, int, int]:
        deadline = time.monotonic() + 10
        while True:
            live = [pid for pid in all_pids() if proc_stat(pid)[1][0] not in "ZX"]
            makers = [pid for pid in live if proc_stat(pid)[0] == "mini-initmaker"]
            for maker in makers:
                shim = parent_of(maker)
                inits = [pid for pid in live if parent_of(pid) == shim and pid != maker]
                if parent_of(shim) == engine._zygote.pid and len(inits) == 1:
                    return shim, maker, inits[0]
            assert time.monotonic() < deadline, f"no shim with a maker and an init: {makers}"
            time.sleep(0.01)

    engine.containers.run("busybox", ["true"], remove=True)
    shim, maker, init = shim_with_maker()
    assert proc_stat(init)[0] == "mini-zygote"
    assert os.readlink(f"/proc/{init}/ns/pid") != os.readlink("/proc/self/ns/pid")
    assert engine.containers.run("busybox", ["sh", "-c", "echo $$"], remove=True) == b"1\n"
    again = shim_with_maker()
    assert again[:2] == (shim, maker) and again[2] != init


def test_the_group_of_a_killed_maker_is_swept_by_the_next_zygote(engine):
    """A spare killed outright cannot discard its init's group; the next zygote removes it."""
    if cgroup.open_group("mini-docker/x").driver != "v1":
        pytest.skip("a prepared init has a group of its own on cgroup v1 hosts only")
    dead = subprocess_pid_that_exited()
    stale = cgroup.open_group(f"mini-docker/.prepared-{dead}-1")
    stale.create()
    busy = cgroup.open_group(f"mini-docker/.prepared-{dead}-2")  # not empty: left alone
    busy.create()
    sleeper = os.fork()
    if sleeper == 0:
        busy.join()
        os.execv("/bin/sleep", ["sleep", "30"])
    try:
        engine.containers.run("busybox", ["true"], remove=True)  # starts the zygote
        assert not stale.exists() and busy.exists()
    finally:
        os.kill(sleeper, 9)
        os.waitpid(sleeper, 0)
        cgroup.remove(busy.path)
        cgroup.remove(stale.path)


def test_killed_idle_shims_are_replaced_and_the_next_start_goes_on(engine):
    """Idle shims killed outright (the spare, and the last container's shim, back) fail
    the zygote's hand-overs; the zygote forks another at once, and it takes the
    container."""
    from mini_docker.runtime.prepared import sweep

    engine.containers.run("busybox", ["true"], remove=True)  # the next spare is forked
    zygote = engine._zygote.pid
    deadline = time.monotonic() + 10
    while len(idle := [pid for pid in all_pids() if parent_of(pid) == zygote
                       and proc_stat(pid)[0] == "mini-zygote" and proc_stat(pid)[1][0] not in "ZX"]) < 2:
        assert time.monotonic() < deadline, f"idle shims: {idle}"
        time.sleep(0.01)
    # A shim looks idle (its name) only once it has tidied its last container away.
    assert not any(engine.runtime_root.iterdir())
    for shim in idle:
        os.kill(shim, signal.SIGKILL)
    while any(os.path.exists(f"/proc/{shim}") for shim in idle):  # dead, their sockets
        assert time.monotonic() < deadline  # closed (one killed in the middle of a
        time.sleep(0.01)                    # hand-over fails that start)
    try:
        assert engine.containers.run("busybox", ["echo", "hi"], remove=True) == b"hi\n"
    finally:
        # What the killed shims had below them (a prepared init, which reads EOF and
        # exits; an init maker, killed with its shim) comes to us, a subreaper: reap it.
        while orphans := [pid for pid in all_pids() if parent_of(pid) == os.getpid()
                          and proc_stat(pid)[0] in ("mini-zygote", "mini-initmaker")
                          and pid != zygote]:
            for pid in orphans:
                if proc_stat(pid)[1][:1] == ["Z"]:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)
            assert time.monotonic() < deadline + 10, f"orphans left: {orphans}"
            time.sleep(0.01)
        sweep()  # the group it leaves (see above)


def subprocess_pid_that_exited() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


@pytest.mark.parametrize("prepare", [False, True], ids=["stage 1", "prepared stage 0"])
def test_on_a_v2_tree_the_init_is_born_in_its_group(runtime_root, tmp_path, busybox_rootfs,
                                                    monkeypatch, prepare):
    """The runtime pointed at this host's real cgroup2 tree, as on a v2 host. Stage 1 is
    born in the container's group (clone3); a prepared init is a stage 0 there, which
    forks the init into it when handed the container."""
    from mini_docker.hostcheck.cgroups import CgroupLayout, cgroup_layout

    unified = cgroup_layout().unified
    if not unified:
        pytest.skip("no cgroup2 tree on this host")
    monkeypatch.setattr(cgroup, "_layout", CgroupLayout("v2", unified))
    prepared = PreparedInit() if prepare else None
    assert prepared is None or prepared.stage0 and prepared.init_pid is None
    config = base_config("sh", "-c", "echo pid $$; grep '^0::' /proc/self/cgroup")
    config["linux"]["cgroupsPath"] = f"/mini-docker-test-{os.getpid()}/v2"
    bundle = make_bundle(tmp_path / "bundle", busybox_rootfs, config)
    if prepared:
        assert prepared.fits(oci.load(bundle), 0, "mini-docker-test/v2")
    code, output = run_to_end(runtime_root, bundle, prepared)
    assert (code, output) == (0, f"pid 1\n0::/mini-docker-test-{os.getpid()}/v2\n")
    assert not os.path.exists(f"{unified}/mini-docker-test-{os.getpid()}")  # deleted, parent too


def test_an_init_made_by_a_maker_is_our_child_and_runs_the_container(runtime_root, tmp_path,
                                                                     busybox_rootfs):
    """The maker forks the init with CLONE_PARENT: we are its parent, we wait for it."""
    maker = InitMaker()
    try:
        prepared = PreparedInit(maker=maker)
        assert parent_of(prepared.pid) == os.getpid() and prepared.pid != maker.pid
        assert proc_stat(maker.pid)[0] == "mini-initmaker"
        with mounted_later(busybox_rootfs, tmp_path / "rootfs") as rootfs:
            bundle = make_bundle(tmp_path / "bundle", rootfs,
                                 base_config("sh", "-c", "echo $$; exit 3"))
            assert run_to_end(runtime_root, bundle, prepared) == (3, "1\n")
    finally:
        maker.close()
    assert not any(runtime_root.iterdir())


def test_our_pages_are_not_shared_with_an_init_a_maker_forks():
    """Pages we write after the maker's fork are ours alone: an init that the maker forks
    does not share them, so writing them again costs no copy-on-write fault; with an
    init forked by us, each page written is a fault (a copy)."""
    maker = InitMaker()
    pages = 2048
    buffer = bytearray(pages * resource.getpagesize())  # touched now: ours, after the fork

    def faults_writing_every_page() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for offset in range(0, len(buffer), resource.getpagesize()):
            buffer[offset] = (buffer[offset] + 1) % 256
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    try:
        faults_writing_every_page()
        for make, expected in ((lambda: PreparedInit(maker=maker), False),
                               (PreparedInit, True)):
            prepared = make()
            try:
                faults = faults_writing_every_page()
            finally:
                prepared.discard()
            assert (faults >= pages) is expected, (faults, pages)
    finally:
        maker.close()


def test_a_maker_that_is_gone_fails_with_a_reason_and_leaves_nothing(tmp_path):
    maker = InitMaker()
    os.kill(maker.pid, signal.SIGKILL)
    os.waitpid(maker.pid, 0)
    groups_before = cgroup_children("mini-docker")
    fds_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(MiniDockerError, match="the init maker cannot fork"):
        PreparedInit(maker=maker)
    assert maker.broken
    assert set(os.listdir("/proc/self/fd")) == fds_before
    assert cgroup_children("mini-docker") == groups_before
    maker.close()  # reaped already: harmless


def test_a_maker_that_dies_before_it_answers_leaves_an_init_that_fits_nothing(
        tmp_path, busybox_rootfs):
    """Asked, the maker is killed before it forks: the prepared init fits no container
    (create then forks its own), says why if asked for its pid, and leaves nothing."""
    maker = InitMaker()
    groups_before = cgroup_children("mini-docker")
    fds_before = set(os.listdir("/proc/self/fd"))
    os.kill(maker.pid, signal.SIGSTOP)
    prepared = PreparedInit(maker=maker)  # the request waits in the stopped maker's socket
    os.kill(maker.pid, signal.SIGKILL)
    os.waitpid(maker.pid, 0)
    spec = oci.parse(base_config("true"))
    assert not prepared.fits(spec)
    with pytest.raises(MiniDockerError, match="could not fork"):
        prepared.pid  # noqa: B018
    prepared.discard()
    assert maker.broken
    assert set(os.listdir("/proc/self/fd")) == fds_before
    assert cgroup_children("mini-docker") == groups_before
    maker.close()


def cgroup_children(path: str) -> set[str]:
    """The groups below `path` in each hierarchy where it exists."""
    try:
        directories = cgroup.open_group(path).directories()
    except MiniDockerError:
        return set()
    return {name for d in directories if os.path.isdir(d) for name in os.listdir(d)
            if os.path.isdir(os.path.join(d, name))}
