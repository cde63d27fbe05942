"""The real Docker daemon and containerd run containers with mini-runc in place of runc.

dockerd does not run containers itself: it asks containerd, whose shim
(containerd-shim-runc-v2) calls an OCI runtime with runc's command line
(shared/reference/runc-calls-by-dockerd.md has a trace). Registered with
`--add-runtime mini=.../mini-runc`, our runtime gets exactly those calls:
create with a pid file and maybe a console socket, start, exec --process
--detach, kill 15 then kill 9, delete, delete --force.

The daemon is a private one, started once for this module: its own data
root, exec root, socket and config file, its own containerd (dockerd 20.10
starts and stops one under those roots), no bridge and no iptables rules,
and no registry: the busybox image is imported from a tar made offline,
and every `docker run` says `--pull never`. The teardown stops it and
removes everything it made; the module then checks the host is as it was.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from docker_support import (CTR, DOCKER_CLI, Daemon, DockerdError, missing,
                            private_dockerd)
from leaks import HostSnapshot

MINI_RUNC = Path(sys.executable).parent / "mini-runc"  # the console script of this venv

pytestmark = [
    pytest.mark.skipif(missing() is not None, reason=str(missing())),
    pytest.mark.skipif(not MINI_RUNC.exists(),
                       reason=f"{MINI_RUNC} is missing: install the project in this venv"),
]

RUN = ("run", "--pull", "never", "--runtime", "mini")


@pytest.fixture(scope="module")
def daemon(busybox_rootfs):
    """The private dockerd (see docker_support.py), with busybox:latest and mini-runc."""
    from mini_docker.image.bootstrap import rootfs_tar

    before = HostSnapshot()
    try:
        with private_dockerd({"mini": str(MINI_RUNC)}) as daemon:
            tar = daemon.home / "busybox.tar"
            with open(tar, "wb") as f:
                rootfs_tar(busybox_rootfs, f)
            imported = daemon.docker("import", "--change", 'CMD ["sh"]', str(tar),
                                     "busybox:latest")
            assert imported.returncode == 0, imported.stderr
            yield daemon
    except DockerdError as err:
        pytest.fail(str(err))
    leaks = HostSnapshot().leaked_since(before)
    assert not leaks, f"the private dockerd left these behind: {leaks}"


# --- docker run: output, exit status, hostname, errors ------------------------------


def test_docker_run_prints_hi(daemon):
    result = daemon.docker(*RUN, "--rm", "busybox", "echo", "hi")
    assert (result.stdout, result.returncode) == ("hi\n", 0), result.stderr


def test_docker_run_exits_with_the_container_status(daemon):
    result = daemon.docker(*RUN, "--rm", "busybox", "sh", "-c", "exit 3")
    assert result.returncode == 3, result.stderr


def test_docker_run_passes_stdin(daemon):
    result = daemon.docker(*RUN, "--rm", "-i", "busybox", "cat", input="piped in\n")
    assert (result.stdout, result.returncode) == ("piped in\n", 0), result.stderr


def test_the_hostname_is_the_short_container_id(daemon, tmp_path):
    cidfile = tmp_path / "cid"
    result = daemon.docker(*RUN, "--rm", "--cidfile", str(cidfile), "busybox", "hostname")
    assert result.returncode == 0, result.stderr
    assert result.stdout == cidfile.read_text()[:12] + "\n"


def test_an_unknown_command_is_a_clear_error(daemon):
    result = daemon.docker(*RUN, "--rm", "busybox", "nosuchcmd")
    assert result.returncode == 127
    error = result.stderr.splitlines()[0]
    assert error.startswith("docker: Error response from daemon: failed to create shim task: "
                            "OCI runtime create failed: ")
    assert 'exec: "nosuchcmd": executable file not found in $PATH' in error
    assert "Traceback" not in result.stderr
    assert daemon.docker("ps", "-aq").stdout == ""  # --rm removed it


# --- a detached container: logs, exec, stop, rm --------------------------------------


def _wait_for_log(daemon: Daemon, name: str, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        logs = daemon.docker("logs", name)
        if text in logs.stdout or time.monotonic() > deadline:
            return logs.stdout
        time.sleep(0.05)


def test_detached_container_logs_exec_stop_rm(daemon):
    started = daemon.docker(*RUN, "-d", "--name", "sleeper", "busybox",
                            "sh", "-c", "echo started; sleep 60")
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    try:
        # It is mini-runc's container: its state is in mini-runc's format, its init is docker's.
        from mini_docker.runtime import StateDir

        pid = daemon.docker("inspect", "-f", "{{.State.Pid}}", "sleeper").stdout.strip()
        assert StateDir(daemon.runtime_root).load(cid).pid == int(pid)
        assert "started\n" in _wait_for_log(daemon, "sleeper", "started")

        shell = daemon.docker("exec", "sleeper", "sh", "-c", "echo $$; hostname")
        assert shell.returncode == 0, shell.stderr
        exec_pid, hostname = shell.stdout.split()
        assert int(exec_pid) > 1 and hostname == cid[:12]
        assert daemon.docker("exec", "sleeper", "sh", "-c", "exit 5").returncode == 5

        missing = daemon.docker("exec", "sleeper", "nosuchcmd")
        said = missing.stdout + missing.stderr  # docker 20.10 prints this error on stdout
        assert missing.returncode == 126
        assert 'exec: "nosuchcmd": executable file not found in $PATH' in said

        # PID 1 ignores SIGTERM (no handler), so this is kill 15, 2 s, then kill 9.
        t0 = time.monotonic()
        stopped = daemon.docker("stop", "-t", "2", "sleeper")
        took = time.monotonic() - t0
        assert stopped.returncode == 0, stopped.stderr
        assert 2 <= took < 10
        state = daemon.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "sleeper")
        assert state.stdout.split() == ["exited", "137"]
    finally:
        removed = daemon.docker("rm", "--force", "sleeper")
    assert removed.returncode == 0, removed.stderr
    assert not (daemon.runtime_root / cid).exists()


# --- terminals: --console-socket ---------------------------------------------------------


def test_docker_run_with_a_tty(daemon):
    status, output = daemon.in_terminal(*RUN, "--rm", "-t", "busybox",
                                        "sh", "-c", "tty; echo hello; exit 4")
    assert (output.splitlines(), status) == (["/dev/pts/0", "hello"], 4)


def test_docker_exec_with_a_tty_twice(daemon):
    """Each `exec -it` gets a terminal of its own; the second must work as the first."""
    started = daemon.docker(*RUN, "-d", "--name", "tty-sleeper", "busybox", "sleep", "60")
    assert started.returncode == 0, started.stderr
    try:
        for n in (1, 2):
            keys = f"echo typed-$((40+{n}))\nexit 7\n".encode()  # the echo of it says $((...))
            status, output = daemon.in_terminal("exec", "-it", "tty-sleeper", "sh", keys=keys)
            assert f"typed-{40 + n}" in output and status == 7, output
    finally:
        daemon.docker("rm", "--force", "tty-sleeper")


# --- containerd alone: ctr run --runc-binary -------------------------------------------


@pytest.mark.skipif(CTR is None, reason="ctr is not installed (it comes with containerd)")
def test_ctr_runs_the_image_with_mini_runc(daemon):
    """containerd without dockerd: the image goes into containerd's own store, then
    `ctr run --runc-binary` makes the runc shim call mini-runc."""
    ctr = [CTR, "--address", daemon.containerd_address, "--namespace", "mini-interop"]
    saved = subprocess.run([DOCKER_CLI, "save", "busybox:latest"], capture_output=True,
                           env=daemon.env(), timeout=60)
    assert saved.returncode == 0, saved.stderr
    loaded = subprocess.run([*ctr, "images", "import", "-"], input=saved.stdout,
                            capture_output=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    try:
        result = subprocess.run(
            [*ctr, "run", "--rm", "--runc-binary", str(MINI_RUNC),
             "--runc-root", str(daemon.home / "ctr-runc"),
             "--fifo-dir", str(daemon.home / "ctr-fifo"),
             "docker.io/library/busybox:latest", "ctr-hi", "sh", "-c", "echo hi from ctr; exit 3"],
            capture_output=True, text=True, timeout=60)
        assert (result.stdout, result.returncode) == ("hi from ctr\n", 3), result.stderr
        left = subprocess.run([*ctr, "containers", "ls", "-q"], capture_output=True, text=True)
        assert left.stdout == ""
    finally:
        subprocess.run([*ctr, "images", "rm", "docker.io/library/busybox:latest"],
                       capture_output=True, timeout=60)



# --- cgroups through docker: limits, stats, pause ---------------------------------------


def test_docker_limits_reach_the_containers_cgroup(daemon):
    result = daemon.docker(*RUN, "--rm", "-m", "64m", "--pids-limit", "33", "busybox", "sh", "-c",
                           "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null "
                           "|| cat /sys/fs/cgroup/memory.max; "
                           "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(64 * 2**20), "33"]


def test_docker_oom_is_reported_by_docker(daemon):
    result = daemon.docker(*RUN, "--name", "oomer", "-m", "32m", "--memory-swap", "32m", "busybox",
                           "tail", "-n", "1", "/dev/zero", timeout=120)
    try:
        assert result.returncode == 137
        inspect = json.loads(daemon.docker("inspect", "oomer").stdout)[0]["State"]
        assert inspect["OOMKilled"] is True and inspect["ExitCode"] == 137
    finally:
        daemon.docker("rm", "-f", "oomer")


def test_docker_pause_unpause_and_stats(daemon):
    assert daemon.docker(*RUN, "-d", "--name", "pauser", "busybox", "sleep", "60").returncode == 0
    try:
        paused = daemon.docker("pause", "pauser")
        assert paused.returncode == 0, paused.stderr
        assert daemon.docker("inspect", "-f", "{{.State.Status}}", "pauser").stdout.strip() == "paused"
        assert daemon.docker("unpause", "pauser").returncode == 0
        assert daemon.docker("inspect", "-f", "{{.State.Status}}", "pauser").stdout.strip() == "running"
        stats = daemon.docker("stats", "--no-stream", "--format", "{{.PIDs}} {{.MemUsage}}", "pauser")
        assert stats.returncode == 0, stats.stderr
        pids, usage = stats.stdout.split(" ", 1)
        assert pids == "1" and "/" in usage
    finally:
        daemon.docker("rm", "-f", "pauser")
