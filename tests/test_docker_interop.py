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
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from leaks import HostSnapshot

DOCKERD = shutil.which("dockerd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
# Debian's docker.io puts its CLI in /usr/bin; prefer it over a newer one elsewhere on PATH,
# so that the messages checked below are those of the same release as the daemon.
DOCKER_CLI = shutil.which("docker", path=f"/usr/bin:{os.environ.get('PATH', '')}")
CTR = shutil.which("ctr")
MINI_RUNC = Path(sys.executable).parent / "mini-runc"  # the console script of this venv

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="dockerd needs root"),
    pytest.mark.skipif(DOCKERD is None or DOCKER_CLI is None,
                       reason="dockerd and the docker CLI are not installed "
                              "(lab/host-setup.sh --test installs docker.io)"),
    pytest.mark.skipif(not MINI_RUNC.exists(),
                       reason=f"{MINI_RUNC} is missing: install the project in this venv"),
]

RUN = ("run", "--pull", "never", "--runtime", "mini")


@dataclass
class Daemon:
    """A private dockerd (and its containerd), and how to talk to them."""

    home: Path
    socket: str
    process: subprocess.Popen

    @property
    def exec_root(self) -> Path:
        return self.home / "exec"

    @property
    def runtime_root(self) -> Path:
        """Where mini-runc keeps its state: dockerd 20.10 passes every runc-shim runtime
        `--root <exec-root>/runtime-runc/moby`."""
        return self.exec_root / "runtime-runc" / "moby"

    @property
    def containerd_address(self) -> str:
        return str(self.exec_root / "containerd" / "containerd.sock")

    @property
    def log(self) -> str:
        return (self.home / "dockerd.log").read_text(errors="replace")

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}",
                "DOCKER_CONFIG": str(self.home / "cli")}

    def docker(self, *args: str, input: str | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([DOCKER_CLI, *args], input=input, capture_output=True, text=True,
                              env=self.env(), timeout=timeout)

    def in_terminal(self, *args: str, keys: bytes = b"", timeout: float = 30) -> tuple[int, str]:
        """Run the docker CLI with a pseudo-terminal as its stdin, stdout and stderr.

        `docker run -t` and `exec -it` want a terminal, and the tests have none.
        Return the exit status and what appeared on the terminal (without \\r).
        """
        master, slave = pty.openpty()
        try:
            cli = subprocess.Popen([DOCKER_CLI, *args], stdin=slave, stdout=slave, stderr=slave,
                                   env=self.env(), start_new_session=True)
        finally:
            os.close(slave)
        output = bytearray()
        try:
            if keys:
                os.write(master, keys)
            deadline = time.monotonic() + timeout
            while True:
                ready, _, _ = select.select([master], [], [], max(0, deadline - time.monotonic()))
                if not ready:
                    cli.kill()
                    raise AssertionError(f"docker {' '.join(args)}: no end after {timeout} s: "
                                         f"{bytes(output)!r}")
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the CLI, the last holder of the terminal, has exited
                    break
                if not chunk:
                    break
                output += chunk
            status = cli.wait(timeout)
        finally:
            os.close(master)
        return status, output.decode(errors="replace").replace("\r", "")


# --- the daemon ---------------------------------------------------------------------


def _ping(path: str) -> bool:
    """Whether the Engine API answers on the unix socket at `path`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return sock.recv(1024).startswith(b"HTTP/1.0 200")
    except OSError:
        return False


def _start_dockerd(home: Path) -> Daemon:
    for name in ("data", "exec", "cli"):
        (home / name).mkdir()
    (home / "daemon.json").write_text("{}")  # not /etc/docker/daemon.json
    sock = str(home / "docker.sock")
    argv = [DOCKERD, "--config-file", str(home / "daemon.json"),
            "--data-root", str(home / "data"), "--exec-root", str(home / "exec"),
            "--pidfile", str(home / "dockerd.pid"), "-H", f"unix://{sock}",
            "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
            "--ip-masq=false", "--userland-proxy=false",
            "--storage-driver", "overlay2", "--add-runtime", f"mini={MINI_RUNC}"]
    with open(home / "dockerd.log", "wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
    deadline = time.monotonic() + 30
    while not _ping(sock):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            tail = (home / "dockerd.log").read_text(errors="replace")[-2000:]
            pytest.fail(f"dockerd did not start (exit {process.returncode}):\n{tail}")
        time.sleep(0.05)
    return Daemon(home, sock, process)


def _stop_dockerd(daemon: Daemon) -> None:
    """Remove every container, stop dockerd, which stops its containerd.

    If that fails, whatever still runs on this daemon's sockets (containerd,
    the shims, named with `-address <home>/...`, and their containers) is killed.
    """
    try:
        left = daemon.docker("ps", "-aq", timeout=20).stdout.split()
        if left:
            daemon.docker("rm", "--force", *left, timeout=60)
    except subprocess.TimeoutExpired:
        pass  # a daemon that does not answer is killed below
    daemon.process.terminate()
    try:
        daemon.process.wait(20)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        daemon.process.wait()
    ours = [p for p in psutil.process_iter(["cmdline"])
            if any(str(daemon.home) in arg for arg in p.info["cmdline"] or ())]
    for process in ours:
        for victim in [*process.children(recursive=True), process]:
            try:
                victim.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
    psutil.wait_procs(ours, timeout=10)


def _unmount_under(root: Path) -> None:
    """Detach what the daemon left mounted under `root` (its data root, overlays), deepest first."""
    from mini_docker.kernel import constants as C
    from mini_docker.kernel import umount2

    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4] for line in f}
    inside = [p for p in points if p == str(root) or p.startswith(f"{root}/")]
    for point in sorted(inside, key=len, reverse=True):
        umount2(Path(point), C.MNT_DETACH)


def _docker_cgroups() -> set[Path]:
    """The parent cgroups of docker's containers (/sys/fs/cgroup/<controller>/docker).

    runc makes them from config.json's cgroupsPath; mini-runc does not manage
    cgroups yet, so they appear only if a container here ever runs on runc.
    """
    return {p for p in Path("/sys/fs/cgroup").glob("*/docker") if p.is_dir()}


def _remove_cgroup(directory: Path) -> None:
    for cgroup in sorted((p for p in directory.rglob("*") if p.is_dir()),
                         key=lambda p: len(p.parts), reverse=True) + [directory]:
        try:
            cgroup.rmdir()
        except OSError:
            pass  # EBUSY: it still has processes, someone else's


def _remove_if_empty(*directories: Path) -> None:
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            pass  # not ours to remove: something else put files there


@pytest.fixture(scope="module")
def daemon(busybox_rootfs):
    from mini_docker.image.bootstrap import rootfs_tar

    before = HostSnapshot()
    cgroups_before = _docker_cgroups()
    shim_dirs = [Path("/run/containerd/s"), Path("/run/containerd")]  # shim sockets live here
    shim_dirs_before = {d for d in shim_dirs if d.exists()}
    home = Path(tempfile.mkdtemp(prefix="mini-dockerd-"))
    daemon = None
    try:
        daemon = _start_dockerd(home)
        tar = home / "busybox.tar"
        with open(tar, "wb") as f:
            rootfs_tar(busybox_rootfs, f)
        imported = daemon.docker("import", "--change", 'CMD ["sh"]', str(tar), "busybox:latest")
        assert imported.returncode == 0, imported.stderr
        yield daemon
    finally:
        if daemon:
            _stop_dockerd(daemon)
        _unmount_under(home)
        shutil.rmtree(home)
        for cgroup in _docker_cgroups() - cgroups_before:
            _remove_cgroup(cgroup)
        _remove_if_empty(*(d for d in shim_dirs if d not in shim_dirs_before))
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
