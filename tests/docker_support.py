"""A private Docker daemon, for the interop tests and the engine benchmark.

The host may have a docker.io of its own, with its own daemon; nothing here
touches it. A private dockerd gets its own data root, exec root, socket,
config file and key file, and starts its own containerd under those roots
(dockerd 20.10 does that itself). It makes no bridge, no iptables rules and
no docker0 link, and it never contacts a registry: images come in from a
tar, and every run says `--pull never`. Its clients speak to it only over
its unix socket: the docker CLI with DOCKER_HOST, or the Engine API through
`EngineAPI`, an http.client connection to that socket.

`private_dockerd()` starts one and, on the way out, removes everything it
made: its containers, the daemon and its containerd (and, if they do not
stop, every process named after its directory: shims, containers), the
mounts under its directory (overlays, shm, network namespaces), the
cgroups runc made for its containers (/sys/fs/cgroup/<controller>/docker),
the shim socket directories that were not there before, and the directory.
`traces()` lists what of a daemon could be left on the host, so that a
caller can compare before and after.
"""

from __future__ import annotations

import http.client
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

DOCKERD = shutil.which("dockerd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
# Debian's docker.io puts its CLI in /usr/bin; prefer it over a newer one elsewhere on PATH,
# so that the CLI is of the same release as the daemon.
DOCKER_CLI = shutil.which("docker", path=f"/usr/bin:{os.environ.get('PATH', '')}")
CONTAINERD = shutil.which("containerd")
CTR = shutil.which("ctr")
SHIM = "containerd-shim-runc-v2"

# Directories a daemon may make outside its own, removed afterwards if it made them.
SHIM_DIRS = (Path("/run/containerd/s"), Path("/run/containerd"))  # the shims' sockets
PLUGIN_DIRS = (Path("/run/docker/plugins"), Path("/run/docker"))  # libnetwork's plugin sockets


class DockerdError(Exception):
    """The private dockerd did not start; the message has the end of its log."""


def missing() -> str | None:
    """Why a private dockerd cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "dockerd needs root"
    absent = [name for name, path in (("dockerd", DOCKERD), ("docker", DOCKER_CLI),
                                      ("containerd", CONTAINERD)) if path is None]
    if absent:
        return (f"{', '.join(absent)} not installed "
                "(lab/host-setup.sh --test installs docker.io)")
    return None


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
        """Where a runc-shim runtime keeps its state: dockerd 20.10 passes every one
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
                              env=self.env(), timeout=timeout, check=False)

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

    def shims(self) -> list[psutil.Process]:
        """The containerd-shim-runc-v2 processes of this daemon's containerd."""
        return [p for p in psutil.process_iter(["name", "cmdline"])
                if p.info["name"] == SHIM and self.containerd_address in (p.info["cmdline"] or ())]


# --- the Engine API over the unix socket --------------------------------------------


class EngineAPI(http.client.HTTPConnection):
    """One keep-alive HTTP connection to a daemon's unix socket, as the docker CLI has."""

    def __init__(self, path: str, timeout: float = 60) -> None:
        super().__init__("docker", timeout=timeout)  # the Host header; no DNS, no TCP
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)

    def send_request(self, method: str, url: str, body: Any = None) -> None:
        """Send one request, JSON body if any; read its answer with getresponse()."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        self.request(method, url, body=data, headers=headers)

    def call(self, method: str, url: str, body: Any = None, expect: int = 200) -> Any:
        """One request and its decoded JSON answer (None if empty); any other status raises."""
        self.send_request(method, url, body)
        return read_answer(self.getresponse(), method, url, expect)


def read_answer(response: http.client.HTTPResponse, method: str, url: str,
                expect: int = 200) -> Any:
    data = response.read()
    if response.status != expect:
        raise DockerdError(f"{method} {url}: {response.status} {data.decode(errors='replace')}")
    return json.loads(data) if data else None


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


def _daemon_config(home: Path) -> dict[str, Any]:
    """daemon.json: dockerd before 23.0 keeps a key file, /etc/docker/key.json unless told."""
    found = re.search(r"version (\d+)\.", subprocess.run(
        [DOCKERD, "--version"], capture_output=True, text=True, check=False).stdout)
    if found and int(found.group(1)) < 23:
        return {"deprecated-key-path": str(home / "key.json")}
    return {}


def start_dockerd(home: Path, runtimes: dict[str, str] | None = None) -> Daemon:
    """Start a dockerd whose every file is under `home`; `runtimes` are added by name."""
    for name in ("data", "exec", "cli"):
        (home / name).mkdir()
    (home / "daemon.json").write_text(json.dumps(_daemon_config(home)))  # not /etc/docker's
    sock = str(home / "docker.sock")
    argv = [DOCKERD, "--config-file", str(home / "daemon.json"),
            "--data-root", str(home / "data"), "--exec-root", str(home / "exec"),
            "--pidfile", str(home / "dockerd.pid"), "-H", f"unix://{sock}",
            "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
            "--ip-masq=false", "--userland-proxy=false", "--storage-driver", "overlay2"]
    for name, path in (runtimes or {}).items():
        argv += ["--add-runtime", f"{name}={path}"]
    with open(home / "dockerd.log", "wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
    deadline = time.monotonic() + 30
    while not _ping(sock):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            tail = (home / "dockerd.log").read_text(errors="replace")[-2000:]
            raise DockerdError(f"dockerd did not start (exit {process.returncode}):\n{tail}")
        time.sleep(0.05)
    return Daemon(home, sock, process)


def stop_dockerd(daemon: Daemon) -> None:
    """Remove every container, stop dockerd, which stops its containerd.

    If that fails, whatever still runs on this daemon's sockets (containerd,
    the shims, named with `-address <home>/...`, and their containers) is killed.
    """
    try:
        left = daemon.docker("ps", "-aq", timeout=20).stdout.split()
        if left:
            daemon.docker("rm", "--force", *left, timeout=120)
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


def unmount_under(root: Path) -> None:
    """Detach what the daemon left mounted under `root` (overlays, shm, netns), deepest first."""
    from mini_docker.kernel import constants as C
    from mini_docker.kernel import umount2

    inside = _mounts_under(root)
    for point in sorted(inside, key=len, reverse=True):
        umount2(Path(point), C.MNT_DETACH)


def _mounts_under(root: Path) -> set[str]:
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4] for line in f}
    return {p for p in points if p == str(root) or p.startswith(f"{root}/")}


def docker_cgroups() -> set[Path]:
    """The parent cgroups of docker's containers (/sys/fs/cgroup/<controller>/docker).

    runc makes them from config.json's cgroupsPath; mini-runc does not manage
    cgroups, so they appear only if a container runs on runc.
    """
    return {p for p in Path("/sys/fs/cgroup").glob("*/docker") if p.is_dir()}


def remove_cgroup(directory: Path) -> None:
    for cgroup in sorted((p for p in directory.rglob("*") if p.is_dir()),
                         key=lambda p: len(p.parts), reverse=True) + [directory]:
        try:
            cgroup.rmdir()
        except OSError:
            pass  # EBUSY: it still has processes, someone else's


def remove_if_empty(*directories: Path) -> None:
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            pass  # not ours to remove: something else put files there


@contextmanager
def private_dockerd(runtimes: dict[str, str] | None = None) -> Iterator[Daemon]:
    """A dockerd of our own for the duration of the block; see the module's docstring."""
    cgroups_before = docker_cgroups()
    outside = (*SHIM_DIRS, *PLUGIN_DIRS)
    outside_before = {d for d in outside if d.exists()}
    home = Path(tempfile.mkdtemp(prefix="mini-dockerd-"))
    daemon = None
    try:
        daemon = start_dockerd(home, runtimes)
        yield daemon
    finally:
        if daemon:
            stop_dockerd(daemon)
        unmount_under(home)
        shutil.rmtree(home)
        for cgroup in docker_cgroups() - cgroups_before:
            remove_cgroup(cgroup)
        remove_if_empty(*(d for d in outside if d not in outside_before))


def traces(home: Path | None = None) -> dict[str, set[str]]:
    """What a daemon could leave on the host: compare a call before it with one after.

    Processes and mounts are those that name `home` (dockerd, its containerd,
    the shims: `-address <home>/...`; the overlays, shm and netns under it);
    links are those named docker*, veth* or br-*; cgroups are docker's; files
    are the shims' and the plugins' socket directories, the key file and `home`.
    """
    processes = set()
    if home:
        for p in psutil.process_iter(["cmdline"]):
            cmdline = p.info["cmdline"] or ()
            if any(str(home) in arg for arg in cmdline):
                processes.add(f"{p.pid} {' '.join(cmdline)[:120]}")
    links = {name for _, name in socket.if_nameindex()
             if name.startswith(("docker", "veth", "br-"))}
    cgroups = {str(c) for d in docker_cgroups() for c in (d, *d.rglob("*")) if c.is_dir()}
    files = {str(d) for d in (*SHIM_DIRS, *PLUGIN_DIRS, Path("/etc/docker/key.json"))
             if d.exists()}
    if home and home.exists():
        files.add(str(home))
    return {"processes": processes, "mounts": _mounts_under(home) if home else set(),
            "links": links, "cgroups": cgroups, "files": files}
