"""The shim and its zygote, against the real kernel: stdio, exec, exit status, survival."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from runtime_support import base_config, make_bundle

from mini_docker import runtime
from mini_docker.engine.shim import ShimProcess, ShimSpec, read_exit, read_shim
from mini_docker.engine.shimclient import (
    CONTROL,
    STDIN,
    FrameReader,
    ShimClient,
    control_frame,
    frame,
)
from mini_docker.engine.zygote import Zygote
from mini_docker.errors import Conflict, InvalidArgument, MiniDockerError
from mini_docker.runtime.state import process_state_letter

PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def wait_gone(pid: int, timeout: float = 10) -> None:
    """Until `pid` has exited (reaped, if it came back to us as a child)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if process_state_letter(pid) in (None, "Z", "X"):
            return
        assert time.monotonic() < deadline, f"process {pid} ({comm(pid)}) is still alive"
        time.sleep(0.01)


def wait_for_exit(state_dir: str, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while (status := read_exit(state_dir)) is None:
        assert time.monotonic() < deadline, "no exit.json"
        time.sleep(0.01)
    return status


@pytest.fixture
def zygote():
    """One per test: its spare shim changes with every spawn, and is dismissed at close."""
    z = Zygote()
    yield z
    z.close()


class Containers:
    """Bundles, specs and shims for one test; whatever still runs is killed at the end."""

    def __init__(self, zygote: Zygote, tmp_path: Path, rootfs: Path, runtime_root: Path) -> None:
        self.zygote, self.tmp, self.rootfs, self.root = zygote, tmp_path, rootfs, runtime_root
        self.specs: list[ShimSpec] = []
        self.shims: list[int] = []

    def spec(self, *args: str, name: str = "c", resources: dict | None = None,
             process: dict | None = None, **fields) -> ShimSpec:
        config = base_config(*args)
        if resources:
            config["linux"]["resources"] = {**config["linux"]["resources"], **resources}
        config["process"].update(process or {})
        if fields.get("tty"):
            config["process"]["terminal"] = True
        bundle = make_bundle(self.tmp / f"bundle-{name}", self.rootfs, config)
        fields.setdefault("log_path", None)
        spec = ShimSpec(container_id=name, bundle=str(bundle), runtime_root=str(self.root),
                        state_dir=str(self.tmp / f"state-{name}"), **fields)
        self.specs.append(spec)
        return spec

    def spawn(self, *args: str, **kw) -> tuple[ShimSpec, ShimProcess]:
        spec = self.spec(*args, **kw)
        return spec, self.spawn_spec(spec)

    def spawn_spec(self, spec: ShimSpec) -> ShimProcess:
        shim = self.zygote.spawn(spec)
        self.shims.append(shim.pid)
        return shim

    def run(self, *args: str, **kw) -> tuple[ShimSpec, ShimProcess]:
        spec, shim = self.spawn(*args, **kw)
        with ShimClient(shim.socket) as client:
            client.start()
        return spec, shim

    def cleanup(self) -> None:
        """Kill what still runs; wait for every shim to be gone (it may still be exiting)."""
        for spec in self.specs:
            try:
                runtime.kill(spec.container_id, "KILL", root=spec.runtime_root)
            except MiniDockerError:
                pass
            if (shim := read_shim(spec.state_dir)) is not None:
                self.shims.append(shim.pid)
        for pid in self.shims:
            wait_gone(pid)


@pytest.fixture
def containers(zygote, tmp_path, busybox_rootfs, runtime_root):
    made = Containers(zygote, tmp_path, busybox_rootfs, runtime_root)
    yield made
    made.cleanup()


def process(*args: str, **extra) -> dict:
    return {"args": list(args), "env": [PATH], "cwd": "/", **extra}


# -- life and death --

def test_spawn_creates_the_container_and_start_runs_it(containers):
    spec, shim = containers.spawn("sh", "-c", "sleep 0.3; echo out; echo err >&2; exit 3")
    assert comm(shim.pid) == "mini-shim"
    assert runtime.state(spec.container_id, root=spec.runtime_root)["status"] == "created"
    assert read_shim(spec.state_dir) == shim
    assert shim.socket.startswith("mini-docker/") and len(shim.socket) < 108
    with ShimClient(shim.socket) as client:
        attachment = client.attach()
        client.start()
        with pytest.raises(Conflict):
            client.start()  # started already (or exited already)
        assert attachment.output() == (b"out\n", b"err\n")
        assert attachment.exit_code == 3
    wait_gone(shim.pid)
    assert read_exit(spec.state_dir).exit_code == 3
    assert read_shim(spec.state_dir) is None
    assert sorted(os.listdir(spec.state_dir)) == ["exit.json"]


def test_output_goes_to_the_log(containers):
    log = containers.tmp / "c-json.log"
    _spec, shim = containers.run("sh", "-c", "echo one; echo two >&2; printf three",
                                log_path=str(log))
    wait_gone(shim.pid)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    by_stream = {s: [e["log"] for e in entries if e["stream"] == s] for s in ("stdout", "stderr")}
    assert by_stream == {"stdout": ["one\n", "three"], "stderr": ["two\n"]}


def test_an_exit_while_nobody_listens_is_in_exit_json(containers):
    spec, shim = containers.run("sh", "-c", "sleep 0.2; exit 3")
    wait_gone(shim.pid)
    status = read_exit(spec.state_dir)
    assert (status.exit_code, status.oom_killed, status.error) == (3, False, "")
    assert status.finished_at.endswith("Z")
    assert os.listdir(spec.runtime_root) == []


def test_killed_by_sigkill_is_137(containers):
    spec, shim = containers.run("sleep", "100")
    runtime.kill(spec.container_id, "KILL", root=spec.runtime_root)
    wait_gone(shim.pid)
    assert read_exit(spec.state_dir).exit_code == 137


def test_the_oom_killer_is_reported(containers):
    memory = {"memory": {"limit": 16 * 2**20, "swap": 16 * 2**20}}
    spec, shim = containers.run("tail", "-n", "1", "/dev/zero", resources=memory)
    wait_gone(shim.pid, timeout=60)
    status = read_exit(spec.state_dir)
    assert (status.exit_code, status.oom_killed) == (137, True)


def test_the_id_can_be_used_again_once_the_shim_has_tidied_up(containers):
    """exit.json comes first, then the shim deletes the runtime state; the engine waits
    for both before it starts a container again, and so does this test."""
    spec, _shim = containers.run("true")
    wait_for_exit(spec.state_dir)
    deadline = time.monotonic() + 10
    while os.path.exists(os.path.join(spec.runtime_root, spec.container_id)):
        assert time.monotonic() < deadline, "the runtime state is still there"
        time.sleep(0.01)
    again = containers.spawn_spec(spec)
    with ShimClient(again.socket) as client:
        attachment = client.attach()
        client.start()
        attachment.output()
    assert attachment.exit_code == 0
    wait_gone(again.pid)


def test_a_container_that_cannot_be_created_leaves_nothing(containers):
    spec = containers.spec("/no/such/program")
    with pytest.raises(MiniDockerError, match="/no/such/program") as raised:
        containers.spawn_spec(spec)
    assert "\n" not in str(raised.value)
    assert os.listdir(spec.runtime_root) == []
    assert not os.path.exists(os.path.join(spec.state_dir, "shim.json"))
    # no shim left: the leak check counts every live "mini-shim"


def test_a_taken_id_is_a_conflict(containers):
    spec, _shim = containers.spawn("true")
    other = containers.spec("true", name="c2")
    other.container_id = spec.container_id
    with pytest.raises(Conflict):
        containers.spawn_spec(other)


def test_the_shim_survives_the_engine(containers):
    spec = containers.spec("sh", "-c", "while true; do echo tick; sleep 0.2; done")
    engine = subprocess.Popen([sys.executable, "-c", ENGINE, json.dumps(asdict(spec))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        pids = json.loads(engine.stdout.readline())
    finally:
        engine.kill()
        engine.wait()
        engine.stdin.close()
        engine.stdout.close()
    wait_gone(pids["zygote"])  # it read EOF on its control socket
    shim = read_shim(spec.state_dir)
    assert shim is not None and shim.pid == pids["shim"]
    assert process_state_letter(shim.init_pid) not in (None, "Z")
    with ShimClient(shim.socket) as client:
        attachment = client.attach()
        chunks = iter(attachment)
        assert next(chunks) == ("stdout", b"tick\n")
        runtime.kill(spec.container_id, "KILL", root=spec.runtime_root)
        list(chunks)
    assert attachment.exit_code == 137
    wait_gone(shim.pid)
    assert read_exit(spec.state_dir).exit_code == 137


ENGINE = """
import json, sys
from mini_docker.engine.shim import ShimSpec
from mini_docker.engine.shimclient import ShimClient
from mini_docker.engine.zygote import Zygote
zygote = Zygote()
shim = zygote.spawn(ShimSpec(**json.loads(sys.argv[1])))
ShimClient(shim.socket).start()
print(json.dumps({"zygote": zygote.pid, "shim": shim.pid}), flush=True)
sys.stdin.read()
"""


def test_shims_are_the_zygotes_children_and_the_kernel_reaps_them(containers):
    # The zygote ignores SIGCHLD: its exited children vanish, no zombie is left to wait for.
    shims = [containers.run("sleep", "100", name=f"r{n}")[1] for n in range(3)]
    for shim in shims:
        with open(f"/proc/{shim.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        assert int(fields[1]) == containers.zygote.pid  # its parent
        assert int(fields[2]) == shim.pid  # a process group of its own
    for spec in containers.specs:
        runtime.kill(spec.container_id, "KILL", root=spec.runtime_root)
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{shim.pid}") for shim in shims):
        assert time.monotonic() < deadline, [process_state_letter(s.pid) for s in shims]
        time.sleep(0.01)


def test_a_killed_zygote_is_replaced(containers, busybox_rootfs):
    with Zygote() as own:
        containers.zygote = own
        first = containers.spawn("true", name="z1")[1]
        os.kill(own.pid, 9)
        wait_gone(own.pid)
        second = containers.spawn("true", name="z2")[1]
        assert second.pid != first.pid
    containers.cleanup()


# -- attach --

def test_attached_stdin_reaches_the_container_and_close_gives_eof(containers):
    _spec, shim = containers.run("cat", open_stdin=True)
    with ShimClient(shim.socket) as client:
        attachment = client.attach(stdin=True)
        attachment.send(b"hello\n")
        chunks = iter(attachment)
        assert next(chunks) == ("stdout", b"hello\n")
        attachment.close_stdin()
        assert list(chunks) == []
    assert attachment.exit_code == 0


def test_stdin_once_closes_stdin_when_the_client_leaves(containers):
    _spec, shim = containers.run("sh", "-c", "cat; exit 5", open_stdin=True, stdin_once=True)
    with ShimClient(shim.socket) as client:
        watcher = client.attach()
        writer = client.attach(stdin=True)
        writer.send(b"bye\n")
        chunks = iter(watcher)
        assert next(chunks) == ("stdout", b"bye\n")
        writer.detach()
        assert list(chunks) == []
    assert watcher.exit_code == 5


def test_close_stdin_request(containers):
    _spec, shim = containers.run("cat", open_stdin=True)
    with ShimClient(shim.socket) as client:
        attachment = client.attach()
        client.close_stdin()
        attachment.output()
    assert attachment.exit_code == 0


def test_a_terminal_is_resized(containers):
    _spec, shim = containers.run("sh", "-c", "read x; stty size; read x; stty size",
                                tty=True, open_stdin=True)
    with ShimClient(shim.socket) as client:
        attachment = client.attach(stdin=True)
        client.resize(30, 100)
        attachment.send(b"\n")
        seen = b""
        chunks = iter(attachment)
        while b"30 100" not in seen:
            stream, data = next(chunks)
            assert stream == "stdout"
            seen += data
        attachment.resize(31, 101)
        attachment.send(b"\n")
        rest = b"".join(data for _, data in chunks)
    assert b"31 101" in rest
    assert attachment.exit_code == 0


def test_resize_without_a_terminal_is_an_error(containers):
    _spec, shim = containers.run("sleep", "100")
    with ShimClient(shim.socket) as client, pytest.raises(Conflict, match="no terminal"):
        client.resize(10, 10)


def test_bad_requests_get_an_error_and_the_shim_serves_on(containers):
    _spec, shim = containers.spawn("sh", "-c", "echo fine")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(5)
        raw.connect("\0" + shim.socket)
        reader = FrameReader()
        for line, kind in ((b"garbage\n", "InvalidArgument"), (b'{"type": "fly"}\n', "InvalidArgument"),
                           (b'[1, 2]\n', "InvalidArgument"), (b'{"type": "exec"}\n', "Conflict")):
            raw.sendall(line)
            frames = []
            while not frames:
                frames = reader.feed(raw.recv(65536))
            stream, payload = frames[0]
            assert stream == CONTROL and json.loads(payload)["kind"] == kind
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:  # nonsense frames: dropped
        raw.connect("\0" + shim.socket)
        raw.sendall(b'{"type": "attach"}\n' + b"\x09" * 16)
    with ShimClient(shim.socket) as client:
        attachment = client.attach()
        client.start()
        assert attachment.output() == (b"fine\n", b"")


# -- exec --

def test_exec_output_and_exit_code(containers):
    _spec, shim = containers.run("sleep", "100")
    with ShimClient(shim.socket) as client:
        session = client.exec(process("sh", "-c", "echo hi; echo oops >&2; exit 7"))
        assert session.output() == (b"hi\n", b"oops\n")
        assert session.exit_code == 7
        assert client.exec(process("true")).output() == (b"", b"")


def test_exec_takes_env_cwd_and_user_from_the_process(containers):
    _spec, shim = containers.run("sleep", "100")
    with ShimClient(shim.socket) as client:
        session = client.exec(process("sh", "-c", "echo $GREETING; pwd; id -u; id -g",
                                      env=[PATH, "GREETING=hello"], cwd="/tmp",
                                      user={"uid": 1000, "gid": 1001}))
        assert session.output() == (b"hello\n/tmp\n1000\n1001\n", b"")


def test_exec_stdin(containers):
    _spec, shim = containers.run("sleep", "100")
    with ShimClient(shim.socket) as client:
        session = client.exec(process("sh", "-c", "cat; echo done"), stdin=True)
        session.send(b"data\n")
        session.close_stdin()
        assert session.output() == (b"data\ndone\n", b"")
        assert session.exit_code == 0


def test_exec_with_a_terminal(containers):
    _spec, shim = containers.run("sleep", "100")
    with ShimClient(shim.socket) as client:
        session = client.exec(process("sh", "-c", "tty; read x; stty size; exit 4"),
                              tty=True, stdin=True)
        session.resize(40, 120)
        session.send(b"\n")
        chunks = list(session)
    assert {stream for stream, _ in chunks} == {"stdout"}
    text = b"".join(data for _, data in chunks)
    assert b"/dev/pts/" in text and b"40 120" in text
    assert session.exit_code == 4


def test_detached_exec(containers):
    spec, shim = containers.run("sleep", "100")
    with ShimClient(shim.socket) as client:
        session = client.exec(process("sleep", "100"), detach=True)
        assert list(session) == [] and session.exit_code is None
        assert process_state_letter(session.pid) not in (None, "Z")
    runtime.kill(spec.container_id, "KILL", root=spec.runtime_root)
    wait_gone(shim.pid)
    wait_gone(session.pid)


def test_exec_of_a_missing_program_is_an_error_and_the_shim_serves_on(containers):
    _spec, shim = containers.run("sleep", "100")
    with ShimClient(shim.socket) as client:
        with pytest.raises(MiniDockerError, match="nope.*not found"):
            client.exec(process("nope"))
        assert client.exec(process("echo", "still here")).output() == (b"still here\n", b"")


def test_exec_needs_a_running_container(containers):
    _spec, shim = containers.spawn("true")
    with ShimClient(shim.socket) as client:
        with pytest.raises(Conflict, match="not running"):
            client.exec(process("true"))
        attachment = client.attach()
        client.start()
        attachment.output()
    wait_gone(shim.pid)
    with pytest.raises(Conflict, match="not running"):
        ShimClient(shim.socket).exec(process("true"))
    with pytest.raises(InvalidArgument):  # the process is checked before the container
        _spec2, shim2 = containers.run("sleep", "100", name="c2")
        ShimClient(shim2.socket).exec({"args": []})


def test_only_stdio_and_no_ignored_signals_reach_the_processes(containers):
    # not sh's own: busybox sh ignores SIGQUIT, and so does a program it execs in its place
    script = "ls /proc/self/fd; grep SigIgn /proc/self/status; true"
    _spec, shim = containers.spawn("sh", "-c", script + "; sleep 100")
    with ShimClient(shim.socket) as client:
        attachment = client.attach()
        client.start()
        seen = b""
        chunks = iter(attachment)
        while b"SigIgn" not in seen:
            seen += next(chunks)[1]
        exec_out, _ = client.exec(process("sh", "-c", script)).output()
    for out in (seen, exec_out):
        fds, sigign = out.decode().split("SigIgn:")
        assert fds.split() == ["0", "1", "2", "3"]  # 3: ls's own /proc/self/fd
        ignored = int(sigign, 16)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM,
                    signal.SIGCHLD):  # the zygote ignores SIGCHLD; nothing below it may
            assert not ignored & 1 << (sig - 1), sig  # bit n-1 stands for signal n


def test_a_client_from_another_mount_namespace_is_refused(containers):
    from mini_docker.kernel import constants as C
    from mini_docker.kernel.process import run_isolated

    _spec, shim = containers.run("sleep", "100")

    def try_it() -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(5)
            raw.connect("\0" + shim.socket)  # the backlog takes it; the shim then closes it
            try:
                raw.sendall(b'{"type": "attach"}\n')
                return raw.recv(100)
            except (BrokenPipeError, ConnectionResetError):
                return b""

    assert run_isolated(try_it, flags=C.CLONE_NEWNS) == b""


def test_frames_round_trip():
    reader = FrameReader()
    data = frame(STDIN, b"abc") + control_frame({"exit": 1})
    assert reader.feed(data[:5]) == []
    assert reader.feed(data[5:]) == [(STDIN, b"abc"), (CONTROL, b'{"exit": 1}')]
    assert frame(1, b"x")[:8] == b"\x01\x00\x00\x00\x00\x00\x00\x01"  # Docker's header
