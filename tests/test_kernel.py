"""The kernel layer against the real kernel: each namespace kind really isolates."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from mini_docker.kernel import (
    CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWTIME,
    CLONE_NEWUSER, CLONE_NEWUTS, MNT_DETACH, MS_PRIVATE, MS_REC, NAMESPACES, ChildError,
    SyscallError, flag_names, fork_as_sibling, make_mounts_private, mount, mount_proc,
    namespace_ids, pivot_root, prctl, reap_children, run_isolated, sethostname, setns, umount2,
    unshare,
)
from mini_docker.kernel import constants as C


def _mountinfo_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


# --- each kind of namespace, created and compared with the host -----------------------


@pytest.mark.parametrize("kind", NAMESPACES, ids=lambda k: k.name)
def test_unshare_gives_a_new_namespace_of_that_kind_only(kind):
    host = namespace_ids()
    child = run_isolated(namespace_ids, flags=kind.flag)
    assert child[kind.name] != host[kind.name]
    others = {name for name in host if name != kind.name}
    if kind.name == "user":
        others.discard("user")
    assert {n: child[n] for n in others} == {n: host[n] for n in others}


def test_uts_hostname_is_the_childs_own():
    before = socket.gethostname()

    def rename() -> str:
        sethostname("container-1")
        return socket.gethostname()

    assert run_isolated(rename, flags=CLONE_NEWUTS) == "container-1"
    assert socket.gethostname() == before != "container-1"


def test_sethostname_without_uts_namespace_is_refused_in_a_user_namespace():
    # root inside a new user namespace does not own the host's UTS namespace
    with pytest.raises(PermissionError) as err:
        run_isolated(sethostname, "nope", flags=CLONE_NEWUSER)
    assert "sethostname('nope')" in str(err.value)


def test_pid_namespace_child_is_pid_1_and_sees_only_its_processes():
    def inside() -> tuple[int, list[int], int]:
        make_mounts_private()
        mount_proc()
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        return os.getpid(), pids, os.getppid()

    pid, pids, ppid = run_isolated(inside, flags=CLONE_NEWPID | CLONE_NEWNS)
    assert pid == 1
    assert pids == [1]
    assert ppid == 0  # its parent is outside the namespace


def test_pid_1_ignores_signals_it_has_no_handler_for():
    def pid1_signals_itself() -> str:
        os.kill(1, signal.SIGTERM)  # would kill any other process
        time.sleep(0.05)
        return "still alive"

    assert run_isolated(pid1_signals_itself, flags=CLONE_NEWPID) == "still alive"


def test_pid_1_reaps_orphans_that_are_handed_to_it():
    def orphan_a_grandchild() -> tuple[str, list[int]]:
        make_mounts_private()
        mount_proc()
        middle = os.fork()
        if middle == 0:
            if os.fork() == 0:
                time.sleep(0.1)
                os._exit(7)
            os._exit(0)  # the grandchild is now an orphan
        os.waitpid(middle, 0)
        time.sleep(0.3)  # the orphan has exited by now, unreaped
        states = {}
        for p in os.listdir("/proc"):
            if p.isdigit() and p != "1":
                with open(f"/proc/{p}/stat") as f:
                    states[p] = f.read().rsplit(")", 1)[1].split()[0]
        state = "".join(states.values())
        return state, [status for _, status in reap_children()]

    state, statuses = run_isolated(orphan_a_grandchild, flags=CLONE_NEWPID | CLONE_NEWNS)
    assert state == "Z"  # a zombie, parented to our PID 1
    assert statuses == [7]


def test_mount_namespace_keeps_mounts_private(tmp_path):
    target = tmp_path / "mnt"
    target.mkdir()

    def mount_tmpfs() -> bool:
        make_mounts_private()
        mount("tmpfs", target, "tmpfs", 0, "size=1m")
        (target / "inside").write_text("x")
        return str(target) in _mountinfo_points()

    assert run_isolated(mount_tmpfs, flags=CLONE_NEWNS) is True
    assert str(target) not in _mountinfo_points()
    assert list(target.iterdir()) == []


def test_net_namespace_has_only_a_loopback_that_is_down():
    def interfaces() -> tuple[list[str], int]:
        # sysfs shows the network namespace of whoever mounted it: mount our own
        make_mounts_private()
        mount("sysfs", "/sys", "sysfs", C.MS_RDONLY)
        with open("/sys/class/net/lo/flags") as f:
            return [name for _, name in socket.if_nameindex()], int(f.read(), 16)

    names, flags = run_isolated(interfaces, flags=CLONE_NEWNET | CLONE_NEWNS)
    assert names == ["lo"]
    assert flags & 1 == 0  # IFF_UP is clear
    assert len(socket.if_nameindex()) >= 1


def test_ipc_namespace_hides_message_queues():
    def make_queue() -> tuple[int, int]:
        subprocess.run(["ipcmk", "-Q"], check=True, capture_output=True)
        with open("/proc/sysvipc/msg") as f:
            return len(f.readlines()) - 1, os.getpid()

    with open("/proc/sysvipc/msg") as f:
        host_before = f.readlines()
    inside, _ = run_isolated(make_queue, flags=CLONE_NEWIPC)
    assert inside == 1
    with open("/proc/sysvipc/msg") as f:
        assert f.readlines() == host_before  # and the queue died with its namespace


def test_user_namespace_maps_root_inside_to_an_unprivileged_uid_outside():
    seen = {}

    def map_ids(pid: int) -> None:
        with open(f"/proc/{pid}/uid_map", "w") as f:
            f.write("0 100000 1\n")
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write("0 100000 1\n")
        seen["pid"] = pid

    def inside() -> tuple[int, int, str]:
        # The map names inside IDs; the process is still host root (kuid 0),
        # which is unmapped, until it switches to the mapped ID 0.
        os.setgid(0)
        os.setuid(0)
        try:
            open("/etc/shadow").close()
            shadow = "readable"
        except PermissionError:
            shadow = "denied"
        return os.getuid(), os.getgid(), shadow

    assert run_isolated(inside, flags=CLONE_NEWUSER, parent_setup=map_ids) == (0, 0, "denied")
    assert "pid" in seen


def test_user_namespace_without_a_map_is_nobody():
    assert run_isolated(os.getuid, flags=CLONE_NEWUSER) == 65534


def test_unshare_user_namespace_needs_a_single_threaded_process():
    def with_a_thread() -> None:
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
        try:
            unshare(CLONE_NEWUSER)
        finally:
            stop.set()

    with pytest.raises(OSError) as err:
        run_isolated(with_a_thread)
    assert err.value.errno == errno.EINVAL
    assert "unshare(CLONE_NEWUSER)" in str(err.value)


def test_cgroup_namespace_makes_the_current_cgroup_the_root():
    base = "/sys/fs/cgroup/pids" if os.path.isdir("/sys/fs/cgroup/pids") else "/sys/fs/cgroup"
    group = os.path.join(base, f"mini-docker-test-{os.getpid()}")
    os.mkdir(group)
    try:
        def inside() -> list[str]:
            with open(os.path.join(group, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            unshare(CLONE_NEWCGROUP)
            with open("/proc/self/cgroup") as f:
                return [line.strip() for line in f]

        lines = run_isolated(inside)
        mine = [line for line in lines if (":pids:" in line) or line.startswith("0::")]
        assert mine and all(line.endswith(":/") for line in mine[:1])
    finally:
        os.rmdir(group)


def test_time_namespace_applies_to_children():
    host = namespace_ids()["time"]
    assert run_isolated(namespace_ids, flags=CLONE_NEWTIME)["time"] != host


# --- setns: joining another process's namespaces ------------------------------------


def test_setns_joins_the_uts_namespace_of_another_process():
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        unshare(CLONE_NEWUTS)
        sethostname("joined")
        os.write(ready_w, b"1")
        time.sleep(30)
        os._exit(0)
    try:
        os.read(ready_r, 1)

        def join() -> str:
            fd = os.open(f"/proc/{pid}/ns/uts", os.O_RDONLY)
            setns(fd, CLONE_NEWUTS)
            return socket.gethostname()

        assert run_isolated(join) == "joined"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r), os.close(ready_w)


def test_setns_with_the_wrong_kind_says_so():
    fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
    try:
        with pytest.raises(SyscallError) as err:
            setns(fd, CLONE_NEWNET)
    finally:
        os.close(fd)
    assert err.value.errno == errno.EINVAL
    assert "setns(" in str(err.value) and "CLONE_NEWNET" in str(err.value)


# --- mount, umount2, pivot_root: errors name the call and its arguments --------------


def test_mount_error_names_the_call_and_flags(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        mount("tmpfs", tmp_path / "missing", "tmpfs", C.MS_NOSUID | C.MS_NODEV)
    text = str(err.value)
    assert text.startswith("mount('tmpfs', ") and "MS_NOSUID|MS_NODEV" in text
    assert isinstance(err.value, SyscallError) and err.value.syscall == "mount"


def test_umount2_detaches_a_mount(tmp_path):
    def cycle() -> tuple[bool, bool]:
        make_mounts_private()
        mount("tmpfs", tmp_path, "tmpfs")
        mounted = str(tmp_path) in _mountinfo_points()
        umount2(tmp_path, MNT_DETACH)
        return mounted, str(tmp_path) in _mountinfo_points()

    assert run_isolated(cycle, flags=CLONE_NEWNS) == (True, False)


def test_pivot_root_makes_a_directory_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "old").mkdir(parents=True)
    (root / "marker").write_text("new root")

    def pivot() -> tuple[str, bool]:
        make_mounts_private()
        mount(root, root, None, C.MS_BIND | MS_REC)  # new_root must be a mount point
        os.chdir(root)
        pivot_root(".", "old")
        os.chdir("/")
        umount2("/old", MNT_DETACH)
        with open("/marker") as f:
            return f.read(), os.path.exists("/etc/os-release")

    assert run_isolated(pivot, flags=CLONE_NEWNS) == ("new root", False)


def test_pivot_root_on_a_shared_root_is_einval(tmp_path):
    def pivot_without_private() -> None:
        mount(None, "/", None, MS_REC | C.MS_SHARED)
        mount(tmp_path, tmp_path, None, C.MS_BIND)
        os.makedirs(tmp_path / "old", exist_ok=True)
        pivot_root(tmp_path, tmp_path / "old")

    with pytest.raises(OSError) as err:
        run_isolated(pivot_without_private, flags=CLONE_NEWNS)
    assert err.value.errno == errno.EINVAL
    assert "pivot_root(" in str(err.value)


def test_prctl_sets_no_new_privs_for_the_child_only():
    def set_it() -> int:
        prctl(C.PR_SET_NO_NEW_PRIVS, 1)
        return prctl(C.PR_GET_NO_NEW_PRIVS)

    assert run_isolated(set_it) == 1
    assert prctl(C.PR_GET_NO_NEW_PRIVS) == 0


def test_prctl_bad_option_is_einval():
    with pytest.raises(SyscallError) as err:
        prctl(9999)
    assert err.value.errno == errno.EINVAL and "prctl(9999" in str(err.value)


# --- the runner itself ---------------------------------------------------------------


def test_flag_names_spells_flags():
    assert flag_names(CLONE_NEWUTS | CLONE_NEWPID, "CLONE_") == "CLONE_NEWUTS|CLONE_NEWPID"
    assert flag_names(MS_REC | MS_PRIVATE, "MS_") == "MS_REC|MS_PRIVATE"
    assert flag_names(0, "MS_") == "0"


def test_exceptions_in_the_child_come_back_with_their_type():
    def fail() -> None:
        raise ValueError("bad value in the child")

    with pytest.raises(ValueError, match="bad value in the child") as err:
        run_isolated(fail, flags=CLONE_NEWUTS)
    assert "raised in the isolated child process" in err.value.__notes__


def test_unpicklable_result_is_a_child_error():
    with pytest.raises(ChildError, match="could not be sent back.*pickle"):
        run_isolated(lambda: threading.Lock())


def test_child_killed_by_a_signal_is_reported():
    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(ChildError, match="exit status 137"):
        run_isolated(die)


def test_child_dies_with_its_parent():
    # PR_SET_PDEATHSIG: kill the runner's parent, and the isolated child goes too.
    r, w = os.pipe()
    outer = os.fork()
    if outer == 0:
        os.close(r)

        def report_and_wait() -> None:
            with open("/proc/self/status") as f:
                host_pid = [ln.split()[1] for ln in f if ln.startswith("NSpid:")][0]
            os.write(w, host_pid.encode() + b"\n")
            time.sleep(60)

        run_isolated(report_and_wait, flags=CLONE_NEWPID)
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        inner = int(f.readline())
    os.kill(outer, signal.SIGKILL)
    os.waitpid(outer, 0)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(inner, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the isolated child outlived its parent")


def test_fork_as_sibling_makes_a_child_of_the_callers_parent():
    """clone3(CLONE_PARENT): a child of ours forks; its child is ours, and we reap it, in a
    PID namespace of its own if asked, with its exit status and its exit signal (SIGCHLD)."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:  # forks two siblings, tells their pids, exits
        try:
            os.close(r)
            pids = []
            for new_namespace in (False, True):
                pid = fork_as_sibling(new_pid_namespace=new_namespace)
                if pid == 0:
                    with open("/proc/self/status") as f:
                        inner = [ln.split()[-1] for ln in f if ln.startswith("NSpid:")][0]
                    os._exit(40 + int(inner == "1"))  # 41: PID 1 of a namespace of its own
                pids.append(pid)
            os.write(w, b"%d %d\n" % tuple(pids))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        plain, in_namespace = map(int, f.readline().split())
    assert os.waitpid(middle, 0)[1] == 0
    for pid, code in ((plain, 40), (in_namespace, 41)):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # a zombie of ours, not reaped yet
        with open(f"/proc/{pid}/stat") as f:
            exit_signal = int(f.read().rsplit(")", 1)[1].split()[35])  # field 38
        assert exit_signal == signal.SIGCHLD
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == code


def test_fork_as_sibling_is_refused_to_the_init_of_a_pid_namespace():
    """A namespace's init may not make siblings: the kernel says EINVAL, as an OSError."""
    def try_it() -> str:
        try:
            pid = fork_as_sibling()
        except OSError as err:
            return errno.errorcode[err.errno]
        if pid == 0:
            os._exit(0)
        return "forked"

    assert run_isolated(try_it, flags=CLONE_NEWPID) == "EINVAL"
