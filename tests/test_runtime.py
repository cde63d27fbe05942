"""The OCI runtime against the real kernel: lifecycle, isolation, safety, errors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from runtime_support import base_config, make_bundle, mini_runc, mounts_mentioning, wait_until_running


@pytest.fixture
def bundle(tmp_path, busybox_rootfs):
    def make(*args: str, **changes) -> Path:
        config = base_config(*args)
        for key, value in changes.items():
            section, _, field = key.partition("__")
            if field:
                config[section][field] = value
            else:
                config[section] = value
        return make_bundle(tmp_path / "bundle", busybox_rootfs, config)
    return make


def run(root, bundle_dir, cid="t"):
    return mini_runc(root, "run", "--bundle", str(bundle_dir), cid)


# --- run: output, exit codes ---------------------------------------------------------


def test_run_prints_and_exits_with_the_process_status(runtime_root, bundle):
    result = run(runtime_root, bundle("sh", "-c", "echo out; echo err >&2; exit 3"))
    assert (result.stdout, result.stderr, result.returncode) == ("out\n", "err\n", 3)


def test_no_signal_is_ignored_in_the_container(runtime_root, bundle):
    # Python ignores SIGPIPE and SIGXFSZ; the container's program must not inherit that
    result = run(runtime_root, bundle("sh", "-c", "grep SigIgn /proc/self/status; yes | head -1"))
    ignored = int(result.stdout.split()[1], 16)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
        assert not ignored & 1 << (sig - 1), sig  # bit n-1 stands for signal n
    assert result.stdout.endswith("\ny\n") and result.returncode == 0


def test_killed_by_a_signal_is_128_plus_the_signal(runtime_root, bundle):
    import subprocess
    import sys

    running = subprocess.Popen([sys.executable, "-m", "mini_docker.runtime.cli", "--root",
                                str(runtime_root), "run", "--bundle", str(bundle("sleep", "60")), "k"])
    state = wait_until_running(runtime_root, "k")
    os.kill(state["pid"], signal.SIGKILL)  # from outside: PID 1 can't refuse
    assert running.wait(10) == 137


def test_pid_1_ignores_a_kill_from_inside(runtime_root, bundle):
    result = run(runtime_root, bundle("sh", "-c", "kill -9 $$; echo survived"))
    assert (result.stdout, result.returncode) == ("survived\n", 0)


def test_unknown_program_is_a_clear_error_and_nothing_is_left(runtime_root, bundle):
    result = run(runtime_root, bundle("no-such-program"))
    assert result.returncode == 1
    assert 'executable file not found in $PATH' in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_failure_after_ready_is_the_reason_start_gives(runtime_root, bundle):
    """Limits, user and capabilities are applied between "ready" and the FIFO, while
    start is on its way: a limit the kernel refuses fails the start, with the reason."""
    config = base_config("true")
    config["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 256}]
    result = run(runtime_root, bundle(process=config["process"]))
    assert result.returncode == 1
    assert result.stderr.startswith("mini-runc: container t did not start: ")
    assert "limit" in result.stderr and result.stderr.count("\n") == 1, result.stderr


# --- isolation --------------------------------------------------------------------------


def test_container_is_pid_1_and_sees_only_its_processes(runtime_root, bundle):
    result = run(runtime_root, bundle("sh", "-c", "echo $$; echo /proc/[0-9]*"))
    assert result.stdout.split() == ["1", "/proc/1"]  # the glob is expanded by sh alone


def test_every_namespace_differs_from_the_hosts(runtime_root, bundle):
    script = "for n in mnt uts ipc pid net; do readlink /proc/1/ns/$n; done"
    inside = run(runtime_root, bundle("sh", "-c", script)).stdout.split()
    host = [os.readlink(f"/proc/self/ns/{n}") for n in ("mnt", "uts", "ipc", "pid", "net")]
    assert len(inside) == 5
    assert all(a != b for a, b in zip(inside, host))


def test_hostname_and_network_are_the_containers_own(runtime_root, bundle):
    config_hostname = "box-1"
    b = bundle("sh", "-c", "hostname; ls /sys/class/net", hostname=config_hostname)
    assert run(runtime_root, b).stdout.split() == [config_hostname, "lo"]


def test_root_is_the_bundle_rootfs_and_read_only(runtime_root, bundle):
    result = run(runtime_root, bundle("sh", "-c", "cat /etc/hostname 2>&1; touch /x 2>&1; ls /"))
    assert "Read-only file system" in result.stdout
    assert "bin" in result.stdout.split() and "home" in result.stdout.split()


def test_no_path_leads_back_to_the_host(runtime_root, bundle, tmp_path):
    marker = Path("/tmp") / f"host-marker-{os.getpid()}"
    marker.write_text("host")
    try:
        result = run(runtime_root, bundle("sh", "-c", f"cat {marker}; cat /proc/1/root{marker}; "
                                                      "cd /../../..; ls"))
    finally:
        marker.unlink()
    assert "host" not in result.stdout.split()


def test_masked_paths_are_empty_and_readonly_paths_read_only(runtime_root, bundle):
    files = [p for p in ("/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/kcore")
             if os.path.exists(p)]
    assert files, "none of the usual masked files exists on this host"
    script = "".join(f"cat {p} | wc -c; " for p in files) + (
        "ls /proc/acpi 2>/dev/null | wc -l; "
        "echo 1 > /proc/sysrq-trigger 2>/dev/null && echo writable || echo refused; "
        "echo x > /proc/sys/kernel/hostname 2>/dev/null && echo writable || echo refused")
    assert run(runtime_root, bundle("sh", "-c", script)).stdout.split() == [
        "0"] * len(files) + ["0", "refused", "refused"]


def test_sys_is_read_only(runtime_root, bundle):
    result = run(runtime_root, bundle("sh", "-c", "exec 2>&1; mkdir /sys/x; echo 1 > /sys/kernel/uevent_helper"))
    assert result.stdout.count("Read-only file system") == 2


def test_dev_has_only_the_safe_nodes(runtime_root, bundle):
    listing = run(runtime_root, bundle("ls", "/dev")).stdout.split()
    assert set(listing) == {"fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm",
                            "stderr", "stdin", "stdout", "tty", "urandom", "zero"}
    assert "sda" not in listing and "vda" not in listing and "mem" not in listing


def test_only_stdio_reaches_the_container(runtime_root, bundle, tmp_path):
    leaked = [os.open(tmp_path, os.O_RDONLY), os.open("/etc/hostname", os.O_RDONLY)]
    for fd in leaked:
        os.set_inheritable(fd, True)  # even inheritable fds must not get through
    try:
        result = mini_runc(runtime_root, "run", "--bundle", str(bundle("ls", "/proc/self/fd")),
                           "t", pass_fds=leaked)
    finally:
        for fd in leaked:
            os.close(fd)
    assert sorted(int(fd) for fd in result.stdout.split()) == [0, 1, 2, 3]  # 3: ls's own dir fd


def test_cwd_outside_the_root_is_refused(runtime_root, bundle, tmp_path):
    # The CVE-2024-21626 shape: a cwd through an inherited fd that points at the host.
    fd = os.open("/etc", os.O_RDONLY)
    os.set_inheritable(fd, True)
    try:
        config = base_config("pwd")
        b = bundle("pwd", process={**config["process"], "cwd": f"/proc/self/fd/{fd}"})
        result = mini_runc(runtime_root, "run", "--bundle", str(b), "t", pass_fds=[fd])
    finally:
        os.close(fd)
    assert result.returncode != 0
    assert "/etc" not in result.stdout


def test_default_capabilities_stop_mounts_links_and_modules(runtime_root, bundle):
    script = ("mount -t tmpfs none /tmp 2>&1 | grep -c 'denied\\|not permitted'; "
              "ip link add x type dummy 2>&1 | grep -c 'not permitted'; "
              "insmod /nonexistent.ko 2>&1 | grep -c 'not permitted\\|No such'; "
              "grep CapEff /proc/self/status")
    out = run(runtime_root, bundle("sh", "-c", script)).stdout.split()
    assert out[:3] == ["1", "1", "1"]
    assert out[-1] == f"{(1 << 5) | (1 << 10) | (1 << 29):016x}"  # KILL, NET_BIND_SERVICE, AUDIT_WRITE


def test_no_new_privileges_is_set(runtime_root, bundle):
    out = run(runtime_root, bundle("grep", "NoNewPrivs", "/proc/self/status")).stdout.split()
    assert out == ["NoNewPrivs:", "1"]


def test_user_rlimits_env_and_cwd_come_from_the_config(runtime_root, bundle):
    config = base_config()
    process = {**config["process"], "args": ["sh", "-c", "id -u; id -g; ulimit -n; echo $GREETING; pwd"],
               "user": {"uid": 1000, "gid": 1000}, "cwd": "/tmp",
               "env": config["process"]["env"] + ["GREETING=hi"],
               "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]}
    out = run(runtime_root, bundle(process=process)).stdout.split()
    assert out == ["1000", "1000", "123", "hi", "/tmp"]


# --- the lifecycle, verb by verb -------------------------------------------------------


def test_create_start_state_kill_delete(runtime_root, bundle, tmp_path):
    b = bundle("sleep", "60")
    pid_file = tmp_path / "init.pid"
    created = mini_runc(runtime_root, "create", "--bundle", str(b), "--pid-file", str(pid_file), "c1")
    assert created.returncode == 0, created.stderr
    state = json.loads(mini_runc(runtime_root, "state", "c1").stdout)
    assert state["status"] == "created"
    assert state["pid"] == int(pid_file.read_text()) > 0
    assert set(state) >= {"ociVersion", "id", "status", "pid", "bundle", "created"}
    assert state["bundle"] == str(b)
    # the init waits: it has not run sleep yet
    assert Path(f"/proc/{state['pid']}/cmdline").read_bytes() != b"sleep\x0060\x00"

    assert mini_runc(runtime_root, "start", "c1").returncode == 0
    time.sleep(0.05)
    assert json.loads(mini_runc(runtime_root, "state", "c1").stdout)["status"] == "running"
    assert Path(f"/proc/{state['pid']}/cmdline").read_bytes() == b"sleep\x0060\x00"
    assert mini_runc(runtime_root, "start", "c1").returncode == 1  # not twice

    refused = mini_runc(runtime_root, "delete", "c1")
    assert refused.returncode == 1 and "not stopped" in refused.stderr

    assert mini_runc(runtime_root, "kill", "c1", "KILL").returncode == 0
    deadline = time.monotonic() + 5
    while json.loads(mini_runc(runtime_root, "state", "c1").stdout)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert mini_runc(runtime_root, "delete", "c1").returncode == 0
    assert mini_runc(runtime_root, "state", "c1").returncode == 1
    assert mounts_mentioning(str(b)) == []


def test_delete_force_stops_a_running_container(runtime_root, bundle):
    assert mini_runc(runtime_root, "run", "-d", "--bundle", str(bundle("sleep", "60")), "c2").returncode == 0
    assert json.loads(mini_runc(runtime_root, "state", "c2").stdout)["status"] == "running"
    assert mini_runc(runtime_root, "delete", "--force", "c2").returncode == 0
    assert mini_runc(runtime_root, "list", "-q").stdout.strip() == ""


def test_delete_of_a_created_container_needs_no_force(runtime_root, bundle):
    assert mini_runc(runtime_root, "create", "--bundle", str(bundle("true")), "c3").returncode == 0
    assert mini_runc(runtime_root, "delete", "c3").returncode == 0


def test_kill_sends_the_named_signal(runtime_root, bundle):
    script = "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.05; done"
    b = bundle("sh", "-c", script)
    assert mini_runc(runtime_root, "create", "--bundle", str(b), "c4").returncode == 0
    pid = json.loads(mini_runc(runtime_root, "state", "c4").stdout)["pid"]
    assert mini_runc(runtime_root, "start", "c4").returncode == 0
    time.sleep(0.3)
    assert mini_runc(runtime_root, "kill", "c4", "TERM").returncode == 0
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert mini_runc(runtime_root, "delete", "c4").returncode == 0


def test_exec_runs_in_the_same_namespaces(runtime_root, bundle):
    b = bundle("sh", "-c", "hostname > /tmp/name 2>/dev/null; sleep 60", hostname="exec-box")
    assert mini_runc(runtime_root, "run", "-d", "--bundle", str(b), "c5").returncode == 0
    try:
        result = mini_runc(runtime_root, "exec", "c5", "sh", "-c",
                           "hostname; echo $$; readlink /proc/1/ns/pid; readlink /proc/self/ns/pid; exit 4")
        name, pid, ns_init, ns_self = result.stdout.split()
        assert (name, result.returncode) == ("exec-box", 4)
        assert ns_init == ns_self and int(pid) > 1
    finally:
        mini_runc(runtime_root, "delete", "--force", "c5")


def test_exec_with_a_process_file_detached(runtime_root, bundle, tmp_path):
    assert mini_runc(runtime_root, "run", "-d", "--bundle", str(bundle("sleep", "60")), "c6").returncode == 0
    try:
        process = base_config()["process"]
        process["args"] = ["sleep", "30"]
        (tmp_path / "process.json").write_text(json.dumps(process))
        pid_file = tmp_path / "exec.pid"
        result = mini_runc(runtime_root, "exec", "--process", str(tmp_path / "process.json"),
                           "--detach", "--pid-file", str(pid_file), "c6")
        assert result.returncode == 0, result.stderr
        pid = int(pid_file.read_text())
        assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0030\x00"
        ps = json.loads(mini_runc(runtime_root, "ps", "--format", "json", "c6").stdout)
        assert pid in ps and len(ps) == 2
    finally:
        mini_runc(runtime_root, "delete", "--force", "c6")


def test_terminal_arrives_over_the_console_socket(runtime_root, bundle, tmp_path):
    from mini_docker.runtime.console import ConsoleListener

    config = base_config()
    process = {**config["process"], "terminal": True, "args": ["sh", "-c", "tty; stty size"],
               "consoleSize": {"height": 30, "width": 100}}
    b = bundle(process=process)
    with ConsoleListener() as listener:
        import subprocess
        import sys

        creating = subprocess.Popen(
            [sys.executable, "-m", "mini_docker.runtime.cli", "--root", str(runtime_root), "create",
             "--bundle", str(b), "--console-socket", listener.path, "c7"])
        master = listener.receive()
        assert creating.wait(30) == 0
    try:
        assert mini_runc(runtime_root, "start", "c7").returncode == 0
        output = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
        mini_runc(runtime_root, "delete", "--force", "c7")
    assert output.replace(b"\r", b"").split(b"\n")[:2] == [b"/dev/pts/0", b"30 100"]


# --- errors: one line, nothing left ----------------------------------------------------


@pytest.mark.parametrize("config_text, message", [
    ("{", "config.json is not valid JSON"),
    ('{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": []}}',
     "process.args must be a non-empty list"),
    ('{"ociVersion": "1.0.2", "root": {"path": "missing"}, "process": {"args": ["true"]}, '
     '"linux": {"namespaces": [{"type": "mount"}]}}', "root.path 'missing': no such directory"),
    ('{"ociVersion": "1.0.2", "root": {"path": "/"}, "process": {"args": ["true"]}, '
     '"linux": {"namespaces": [{"type": "bogus"}]}}', "is not a namespace type: 'bogus'"),
])
def test_bad_configs_are_one_line_errors(runtime_root, tmp_path, config_text, message):
    (tmp_path / "config.json").write_text(config_text)
    result = mini_runc(runtime_root, "create", "--bundle", str(tmp_path), "bad")
    assert result.returncode == 1
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_errors_go_to_the_json_log(runtime_root, tmp_path):
    log = tmp_path / "log.json"
    result = mini_runc(runtime_root, "--log", str(log), "--log-format", "json", "state", "nope")
    assert result.returncode == 1
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "does not exist" in entry["msg"] and entry["time"]


def test_an_id_in_use_is_refused(runtime_root, bundle):
    b = bundle("true")
    assert mini_runc(runtime_root, "create", "--bundle", str(b), "dup").returncode == 0
    try:
        again = mini_runc(runtime_root, "create", "--bundle", str(b), "dup")
        assert again.returncode == 1 and "already exists" in again.stderr
    finally:
        mini_runc(runtime_root, "delete", "dup")


def test_invalid_signal_and_id(runtime_root):
    assert "invalid container id" in mini_runc(runtime_root, "state", "../x").stderr
    from mini_docker.runtime.kill import parse_signal
    from mini_docker.errors import InvalidArgument

    assert parse_signal("KILL") == parse_signal("SIGKILL") == parse_signal("9") == signal.SIGKILL
    with pytest.raises(InvalidArgument):
        parse_signal("SIGNOPE")


def test_spec_writes_a_config_that_parses_and_refuses_to_overwrite(tmp_path):
    from mini_docker.runtime import load

    assert mini_runc(tmp_path, "spec", "--bundle", str(tmp_path)).returncode == 0
    (tmp_path / "rootfs").mkdir()
    assert load(tmp_path).process.args == ["sh"]
    again = mini_runc(tmp_path, "spec", "--bundle", str(tmp_path))
    assert again.returncode == 1 and "exists" in again.stderr


def test_features_and_version():
    import subprocess
    import sys

    features = json.loads(subprocess.run([sys.executable, "-m", "mini_docker.runtime.cli", "features"],
                                         capture_output=True, text=True).stdout)
    assert "mount" in features["linux"]["namespaces"] and "CAP_SYS_ADMIN" in features["linux"]["capabilities"]
    version = subprocess.run([sys.executable, "-m", "mini_docker.runtime.cli", "--version"],
                             capture_output=True, text=True).stdout
    assert version.startswith("mini-runc version") and "spec: 1.0.2" in version


# The argument shapes dockerd, containerd and people use, which the quick parser must
# read exactly as argparse does; and shapes it must leave to argparse (help, errors...).
QUICK_SHAPES = [
    "--root /r --log /l --log-format json create --bundle /b --pid-file /p --console-socket /s c",
    "--root /r --log /l --log-format json create --bundle /b --pid-file /p c",
    "--root /r create -b /b c", "create c", "create c --bundle=/b", "--root=/r create c",
    "create --preserve-fds 2 --no-pivot --no-new-keyring --bundle /b c",
    "--root /r --log /l --log-format json start c", "state c", "--log-format text state c",
    "--root /r kill c 9", "kill c", "kill --all c KILL", "kill -a c SIGTERM",
    "--root /r --log /l --log-format json delete --force c", "delete c", "delete -f c",
    "--root /r --log /l --log-format json exec --process /p.json --detach --pid-file /pid c",
    "exec --process /p.json --detach --pid-file /pid --console-socket /s c",
    "--root /r run --bundle /b c", "run -d --bundle /b c", "run --keep -b /b c",
    "--debug --systemd-cgroup --rootless false --criu x run --bundle /b c", "state start",
]
ARGPARSE_SHAPES = [
    "", "--version", "-h", "create", "create a b", "--log-format xml state c", "create -b=/b c",
    "kill c 9 x", "state --help", "exec c sh -c x", "create --preserve-fds x c", "--root",
    "create --bundle", "features", "delete --force=1 c", "start -- c", "create --bund /b c",
    "start -x c", "--debug start --debug c", "list", "ps c",
]


@pytest.mark.parametrize("shape", QUICK_SHAPES)
def test_the_quick_parser_reads_the_usual_shapes_as_argparse_does(shape):
    from mini_docker.runtime.cli import _parser, _quick_parse

    quick = _quick_parse(shape.split())
    assert quick is not None and vars(quick) == vars(_parser("mini-runc").parse_args(shape.split()))


@pytest.mark.parametrize("shape", ARGPARSE_SHAPES)
def test_the_quick_parser_leaves_the_rest_to_argparse(shape):
    from mini_docker.runtime.cli import _quick_parse

    assert _quick_parse(shape.split()) is None


# --- the tiny init ---------------------------------------------------------------------


def _with_init(process_args: list[str]) -> dict:
    config = base_config(*process_args)
    config["annotations"] = {"io.mini-docker.init": "true"}
    return config


def _zombies_in(runtime_root: Path, cid: str) -> int:
    state = json.loads(mini_runc(runtime_root, "state", cid).stdout)
    target = os.readlink(f"/proc/{state['pid']}/ns/pid")
    count = 0
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/ns/pid") == target:
                count += Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
    return count


def test_tiny_init_reaps_orphans_that_the_program_leaves(runtime_root, tmp_path, busybox_rootfs):
    # An orphan is handed to PID 1; `sleep` as PID 1 never waits, so it stays a zombie.
    script = ["sh", "-c", "(sleep 0.1 &); exec sleep 30"]
    plain = make_bundle(tmp_path / "plain", busybox_rootfs, base_config(*script))
    inited = make_bundle(tmp_path / "init", busybox_rootfs, _with_init(script))
    for cid, b in (("plain", plain), ("inited", inited)):
        assert mini_runc(runtime_root, "run", "-d", "--bundle", str(b), cid).returncode == 0
    try:
        time.sleep(0.6)
        assert _zombies_in(runtime_root, "plain") == 1
        assert _zombies_in(runtime_root, "inited") == 0
    finally:
        for cid in ("plain", "inited"):
            mini_runc(runtime_root, "delete", "--force", cid)


def test_tiny_init_is_pid_1_and_passes_on_the_exit_status(runtime_root, tmp_path, busybox_rootfs):
    b = make_bundle(tmp_path / "b", busybox_rootfs,
                    _with_init(["sh", "-c", "echo $$; cat /proc/1/cmdline | head -c 40 | tr '\\0' ' '; exit 9"]))
    result = run(runtime_root, b)
    pid, *init_cmd = result.stdout.split()
    assert result.returncode == 9
    assert pid != "1"  # the program is not PID 1; the init is


def test_tiny_init_forwards_sigterm_to_the_program(runtime_root, tmp_path, busybox_rootfs):
    import subprocess
    import sys

    script = "trap 'echo got TERM; exit 3' TERM; while true; do sleep 0.05; done"
    b = make_bundle(tmp_path / "b", busybox_rootfs, _with_init(["sh", "-c", script]))
    out = tmp_path / "out"
    with open(out, "w") as f:
        running = subprocess.Popen([sys.executable, "-m", "mini_docker.runtime.cli", "--root",
                                    str(runtime_root), "run", "--bundle", str(b), "sig"], stdout=f)
        wait_until_running(runtime_root, "sig")
        time.sleep(0.3)
        assert mini_runc(runtime_root, "kill", "sig", "TERM").returncode == 0  # to PID 1: the init
        assert running.wait(10) == 3
    assert out.read_text() == "got TERM\n"


def test_tiny_init_holds_a_sigterm_sent_before_the_program_runs(runtime_root, tmp_path,
                                                               busybox_rootfs):
    # PID 1 drops a signal it has no handler for. The init blocks them from
    # before `start`, so a stop sent at once is forwarded when the program runs.
    import select

    from mini_docker.kernel import constants as C
    from mini_docker.kernel import prctl
    from mini_docker.runtime.create import create
    from mini_docker.runtime.delete import delete
    from mini_docker.runtime.kill import kill
    from mini_docker.runtime.start import start

    b = make_bundle(tmp_path / "b", busybox_rootfs, _with_init(["sleep", "30"]))
    prctl(C.PR_SET_CHILD_SUBREAPER, 1)  # the init's parent once stage 1 has gone
    try:
        state, status = create("early", b, root=runtime_root), None
        pidfd = os.pidfd_open(state.pid)
        try:
            kill("early", "TERM", root=runtime_root)  # still created: waiting for start
            start("early", root=runtime_root)
            ended = select.select([pidfd], [], [], 10)[0]  # else it was lost: sleep goes on
            status = os.waitpid(state.pid, 0)[1] if ended else None
        finally:
            os.close(pidfd)
            delete("early", force=True, root=runtime_root)
            if status is None:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(state.pid, 0)  # killed by delete: ours to reap
    finally:
        prctl(C.PR_SET_CHILD_SUBREAPER, 0)
    assert status is not None and os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM


def test_run_with_a_terminal_is_interactive_and_follows_resizes(runtime_root, bundle):
    import sys

    import pexpect

    config = base_config()
    b = bundle(process={**config["process"], "terminal": True, "args": ["sh"]})
    child = pexpect.spawn(sys.executable, ["-m", "mini_docker.runtime.cli", "--root", str(runtime_root),
                                           "run", "--bundle", str(b), "tty"],
                          timeout=15, dimensions=(30, 100))
    try:
        child.expect(r"# ")
        child.sendline("tty; stty size")
        child.expect(r"(/dev/pts/\d+)\r\n(\d+ \d+)\r\n")
        assert child.match.groups() == (b"/dev/pts/0", b"30 100")
        child.setwinsize(40, 120)
        child.sendline("stty size")
        child.expect(r"stty size\r\n(\d+ \d+)\r\n")
        assert child.match.group(1) == b"40 120"
        child.sendline("exit 5")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 5
