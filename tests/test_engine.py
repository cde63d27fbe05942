"""The engine: containers' states, every transition and every refusal, on the real kernel."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mini_docker.engine import ContainerError, Engine, NotModified
from mini_docker.errors import Conflict, InvalidArgument, NotFound
from runtime_support import all_pids, parent_of

LONG = ["sleep", "300"]


def status(engine, ref: str) -> str:
    return engine.inspect(ref)["State"]["Status"]


# --- create, names, IDs ------------------------------------------------------------------


def test_create_records_a_container_docker_inspect_would_show(engine, engine_root):
    c = engine.containers.create("busybox", ["echo", "hi"], name="first",
                                 environment={"A": "1"}, working_dir="/srv",
                                 labels={"tier": "web"})
    assert re.fullmatch(r"[0-9a-f]{64}", c.id)
    attrs = c.attrs
    assert attrs["Name"] == "/first" and attrs["State"]["Status"] == "created"
    assert attrs["Path"] == "echo" and attrs["Args"] == ["hi"]
    assert attrs["Config"]["Hostname"] == c.id[:12]
    assert "A=1" in attrs["Config"]["Env"] and attrs["Config"]["WorkingDir"] == "/srv"
    assert attrs["Config"]["Labels"] == {"tier": "web"}
    assert attrs["Image"].startswith("sha256:") and attrs["Config"]["Image"] == "busybox"
    on_disk = json.loads((engine_root / "containers" / c.id / "config.v2.json").read_text())
    assert on_disk["Name"] == "first" and on_disk["State"]["Status"] == "created"
    # the rootfs is made (and checked) at create, and ready for the start
    merged = engine_root / "image" / "containers" / c.id / "merged"
    assert merged.is_mount() and (merged.parent / "config.json").is_file()
    c.remove()
    assert not merged.is_mount()
    assert not (engine_root / "containers" / c.id).exists()
    assert not (engine_root / "image" / "containers" / c.id).exists()


def test_names_and_id_prefixes_resolve_as_dockers_do(engine):
    a = engine.containers.create("busybox", LONG, name="alpha")
    b = engine.containers.create("busybox", LONG)
    assert re.fullmatch(r"[a-z]+_[a-z]+\d?", b.name)
    assert engine.containers.get("alpha") == a
    assert engine.containers.get("/alpha") == a
    assert engine.containers.get(a.id[:6]) == a
    assert engine.containers.get(b.id) == b
    common = next((n for n in range(1, 64) if a.id[:n] != b.id[:n]), 64) - 1
    if common:
        with pytest.raises(InvalidArgument, match="multiple IDs found"):
            engine.containers.get(a.id[:common])
    with pytest.raises(NotFound, match="No such container: nosuch"):
        engine.containers.get("nosuch")
    a.remove()
    b.remove()


@pytest.mark.parametrize("bad", ["a", "-x", "has space", "sl/ash", "émile", ""])
def test_an_invalid_name_is_refused_and_nothing_is_made(engine, engine_root, bad):
    with pytest.raises(InvalidArgument, match="Invalid container name|an image"):
        engine.containers.create("busybox", LONG, name=bad or "x")
    assert engine.list(all=True) == []
    assert list((engine_root / "containers").glob("*")) == [] if \
        (engine_root / "containers").exists() else True


def test_a_taken_name_is_a_conflict_and_the_first_container_is_untouched(engine):
    first = engine.containers.create("busybox", LONG, name="web")
    with pytest.raises(Conflict, match='The container name "/web" is already in use'):
        engine.containers.create("busybox", LONG, name="web")
    assert [c.id for c in engine.containers.list(all=True)] == [first.id]
    first.remove()


def test_an_unknown_image_and_bad_options_are_one_line_errors(engine):
    with pytest.raises(NotFound, match="Unable to find image 'nosuch:latest' locally"):
        engine.containers.create("nosuch")
    with pytest.raises(InvalidArgument, match="unknown option: colour"):
        engine.containers.create("busybox", colour="red")
    with pytest.raises(InvalidArgument, match="invalid restart policy 'sometimes'"):
        engine.containers.create("busybox", restart_policy={"Name": "sometimes"})
    with pytest.raises(InvalidArgument, match="Conflicting options: --restart and --rm"):
        engine.containers.create("busybox", restart_policy={"Name": "always"},
                                 auto_remove=True)
    with pytest.raises(InvalidArgument):
        engine.containers.create("busybox", mem_limit="lots")
    with pytest.raises(InvalidArgument, match="absolute path"):
        engine.containers.create("busybox", working_dir="relative")
    assert engine.list(all=True) == []


def test_a_second_engine_on_the_same_root_is_refused(engine, engine_root):
    with pytest.raises(Conflict, match="another engine is using"):
        Engine(engine_root)


# --- shims, one container after another --------------------------------------------------


def _shim_of(engine, container) -> int:
    """The pid of a running container's shim: its init's parent."""
    return parent_of(engine.inspect(container.id)["State"]["Pid"])


def _back_and_idle(shim: int, timeout: float = 10) -> None:
    """Wait until `shim` is back from its container and idle (named as a spare is), and
    a moment more, for the zygote to hear that it is free."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{shim}/comm").read_text().strip() != "mini-zygote":
        assert time.monotonic() < deadline, "the shim did not come back"
        time.sleep(0.005)
    time.sleep(0.05)


def test_a_shim_serves_the_next_container_once_its_own_has_exited(engine):
    """One container after another forks no new shim: the last one's, back and idle,
    takes the next (zygote.py). Each container's output and exit code are its own."""
    shims = []
    for n in range(8):
        c = engine.containers.run("busybox", ["sh", "-c", f"sleep 0.1; echo {n}; exit {n}"],
                                  detach=True)
        shims.append(_shim_of(engine, c))
        assert engine.wait(c.id)["StatusCode"] == n
        assert c.logs() == f"{n}\n".encode()
        c.remove()
        _back_and_idle(shims[-1])
    assert len(set(shims)) <= 2, shims  # a new shim each time, were they not reused


def test_a_shim_comes_back_with_nothing_of_its_last_container_open(engine):
    """A shim that has anything of its container's still open exits instead of staying
    (shim.main). So the same shim coming back after a container with a terminal, an
    attached stdin and an exec with a terminal of its own shows that all of it was
    closed; and it holds as many descriptors as after a plain container."""
    c = engine.containers.run("busybox", ["sleep", "0.1"], detach=True)
    shim = _shim_of(engine, c)
    engine.wait(c.id)
    c.remove()
    _back_and_idle(shim)
    idle = sorted(os.listdir(f"/proc/{shim}/fd"))
    c = engine.containers.run("busybox", ["sh"], detach=True, tty=True, stdin_open=True)
    assert _shim_of(engine, c) == shim
    result = c.exec_run("tty", tty=True)
    assert result.exit_code == 0 and result.output.startswith(b"/dev/pts/")
    c.kill()
    engine.wait(c.id)
    c.remove()
    _back_and_idle(shim)
    assert sorted(os.listdir(f"/proc/{shim}/fd")) == idle
    c = engine.containers.run("busybox", ["sh", "-c", "sleep 0.1; echo again"], detach=True)
    assert _shim_of(engine, c) == shim
    assert engine.wait(c.id)["StatusCode"] == 0 and c.logs() == b"again\n"
    c.remove()


def test_of_many_shims_back_at_once_one_stays_beside_the_spare(engine):
    """Containers that end together bring their shims back together: the zygote keeps
    one (MAX_IDLE_SHIMS) beside its spare, and the others exit."""
    from mini_docker.engine.zygote import MAX_IDLE_SHIMS

    running = [engine.containers.run("busybox", ["sleep", "30"], detach=True)
               for _ in range(4)]
    for c in running:
        c.remove(force=True)
    zygote, deadline = engine._zygote.pid, time.monotonic() + 10
    while True:
        children = [pid for pid in all_pids() if parent_of(pid) == zygote]
        if len(children) == 1 + MAX_IDLE_SHIMS:
            break
        assert time.monotonic() < deadline, f"the zygote's children: {children}"
        time.sleep(0.01)
    time.sleep(0.2)  # and no more come back
    assert len([pid for pid in all_pids() if parent_of(pid) == zygote]) == 1 + MAX_IDLE_SHIMS


def test_the_monitor_survives_a_shim_that_stays_and_then_exits_at_once():
    """A shim says it stays, and is dismissed and exits right away: its report pipe's
    end and its pidfd can come in one batch. The pidfd, closed at the first, must not
    be touched at the second (it once killed the monitor's thread, and every exit
    after it went unheard)."""
    from mini_docker.engine.monitor import Monitor

    heard, woken = [], threading.Event()

    def on_exit(container_id, ended):
        heard.append((container_id, ended))
        woken.set()

    monitor = Monitor(on_exit, lambda _: None)
    try:
        for n, stays in enumerate((True, False, True)):
            read_end, write_end = os.pipe()
            os.set_blocking(read_end, False)
            pid = os.fork()
            if pid == 0:
                os.close(read_end)
                line = {"exit": {"exit_code": n}, "stays": stays}
                os.write(write_end, json.dumps(line).encode() + b"\n")
                os._exit(0)
            os.close(write_end)
            pidfd = os.pidfd_open(pid)
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # both ends ready now
            woken.clear()
            monitor.watch(f"c{n}", pidfd, read_end)
            assert woken.wait(5), f"c{n} was not heard of"
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass  # reaped by the monitor: it reaps a shim of its own that exited
        assert heard == [(f"c{n}", {"exit_code": n}) for n in range(3)]
    finally:
        monitor.close()


def test_the_monitor_takes_the_exit_line_that_came_with_the_ready_line():
    """A container that exits at once: its exit line can come in the same read as the
    shim's ready line, in the zygote's client. The monitor is given what was read: it
    hears the exit, and lets go of a shim that stays (its pidfd closed), though the
    pipe it reads holds nothing more."""
    from mini_docker.engine.monitor import Monitor

    heard, woken = [], threading.Event()

    def on_exit(container_id, ended):
        heard.append((container_id, ended))
        woken.set()

    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.close(write_end)  # all it said was read along with its ready line
    shim = subprocess.Popen(["sleep", "30"])  # a shim that stays, alive
    monitor = Monitor(on_exit, lambda _: None)
    try:
        said = json.dumps({"exit": {"exit_code": 7}, "stays": True}).encode() + b"\n"
        monitor.watch("c", os.pidfd_open(shim.pid), read_end, said)
        assert woken.wait(5)
        assert heard == [("c", {"exit_code": 7})]
        deadline = time.monotonic() + 5
        while monitor.busy():  # its pidfd closed, though the shim lives on
            assert time.monotonic() < deadline, "the monitor still watches the shim"
            time.sleep(0.01)
        assert shim.poll() is None
    finally:
        monitor.close()
        shim.kill()
        shim.wait()


# --- run, start, stop, kill ----------------------------------------------------------------


def test_run_returns_the_output_and_remove_leaves_nothing(engine, engine_root):
    out = engine.containers.run("busybox", ["sh", "-c", "echo out; echo err >&2"],
                                remove=True)
    assert out == b"out\n"
    assert engine.list(all=True) == []
    engine._janitor.drain()  # it waits for the shim to delete the runtime state (janitor.py)
    assert list((engine_root / "runtime").iterdir()) == []


def test_rm_renames_the_files_away_at_once_and_the_janitor_deletes_them(engine, engine_root):
    c = engine.containers.run("busybox", ["sh", "-c", "mkdir -p /a/b; echo x > /a/b/f"],
                              detach=True)
    engine.wait(c.id)
    layer, record = engine.snapshots.container_dir(c.id), engine.records.directory(c.id)
    assert (layer / "upper" / "a" / "b" / "f").is_file() and record.is_dir()
    c.remove()
    assert not layer.exists() and not record.exists()  # gone from their names as rm returns
    engine._janitor.drain()
    for directory in ("containers", "image/containers"):
        assert list((engine_root / directory).iterdir()) == [], directory


def test_the_janitor_deletes_in_order_and_finishes_before_it_closes(tmp_path):
    from mini_docker.engine.janitor import Janitor

    trees = []
    for n in range(20):
        (tmp_path / f"t{n}" / "sub").mkdir(parents=True)
        (tmp_path / f"t{n}" / "sub" / "file").write_text("x")
        trees.append(tmp_path / f"t{n}")
    janitor = Janitor()
    for tree in trees:
        janitor.dispose(str(tree))
    janitor.close()  # no drain first: close itself finishes the work
    assert list(tmp_path.iterdir()) == []
    janitor.close()  # twice is harmless


def test_the_janitor_calls_work_in_turn_and_drops_what_it_raises(tmp_path):
    from mini_docker.engine.janitor import Janitor

    (tmp_path / "tree" / "sub").mkdir(parents=True)
    seen = []

    def fail():
        raise RuntimeError("dropped")

    janitor = Janitor()
    janitor.later(lambda: seen.append((tmp_path / "tree").exists()))
    janitor.dispose(str(tmp_path / "tree"))
    janitor.later(fail)
    janitor.later(lambda: seen.append((tmp_path / "tree").exists()))
    janitor.drain()
    assert seen == [True, False]  # in the order handed over, past the failure
    janitor.close()


def test_a_failing_command_raises_container_error_with_its_stderr(engine):
    with pytest.raises(ContainerError, match="returned non-zero exit status 3: oops") as err:
        engine.containers.run("busybox", ["sh", "-c", "echo oops >&2; exit 3"], name="bad")
    assert err.value.exit_status == 3
    c = engine.containers.get("bad")
    assert c.status == "exited" and c.attrs["State"]["ExitCode"] == 3
    assert c.attrs["State"]["FinishedAt"] > c.attrs["State"]["StartedAt"]
    c.remove()


def test_a_command_that_cannot_start_leaves_the_container_created_with_the_reason(engine):
    c = engine.containers.create("busybox", ["/no/such/program"])
    with pytest.raises(Exception, match="no/such/program"):
        c.start()
    c.reload()
    assert c.status == "created" and "no/such/program" in c.attrs["State"]["Error"]
    c.remove()


def test_run_that_cannot_start_writes_its_record_once_with_the_reason(engine, engine_root):
    with pytest.raises(Exception, match="no/such/program"):
        engine.containers.run("busybox", ["/no/such/program"], name="never")
    c = engine.containers.get("never")
    on_disk = json.loads((engine_root / "containers" / c.id / "config.v2.json").read_text())
    assert on_disk["State"]["Status"] == "created"
    assert "no/such/program" in on_disk["State"]["Error"]
    c.remove()
    with pytest.raises(Exception, match="no/such/program"):
        engine.containers.run("busybox", ["/no/such/program"], remove=True)
    assert engine.list(all=True) == []  # remove=True: gone again, as docker run --rm


def test_an_engine_killed_between_create_and_start_leaves_nothing(engine_root):
    """run writes no record until the start: what a death in between leaves is swept away."""
    first = Engine(engine_root)
    record = first._create("busybox", ["true"], {}, save=False)
    assert (engine_root / "image" / "containers" / record.Id / "merged").is_mount()
    first.close()  # as if killed: the rootfs mounted, no record
    with Engine(engine_root) as again:
        assert again.list(all=True) == []
        assert not (engine_root / "image" / "containers" / record.Id).exists()


def test_start_stop_and_the_refusals_around_them(engine):
    c = engine.containers.create("busybox", LONG)
    with pytest.raises(NotModified):
        c.stop()
    c.start()
    c.reload()
    assert c.status == "running" and c.attrs["State"]["Pid"] > 0
    with pytest.raises(NotModified, match="already running"):
        c.start()
    with pytest.raises(Conflict, match="You cannot remove a running container"):
        c.remove()
    assert status(engine, c.id) == "running"
    begun = time.monotonic()
    c.stop(timeout=1)  # sleep as PID 1 ignores SIGTERM: SIGKILL after the timeout
    took = time.monotonic() - begun
    c.reload()
    assert c.status == "exited" and c.attrs["State"]["ExitCode"] == 137
    assert 0.9 < took < 10
    c.start()  # an exited container starts again, with the same writable layer
    assert status(engine, c.id) == "running"
    c.remove(force=True)


def test_init_never_fails_when_its_program_execs_first(engine):
    """The init and its child both call setpgid; if the child has exec'd already, the
    init's call gets EACCES, which once killed the init (exit 126, 1 run in 30 here)."""
    codes = []
    for _ in range(40):
        c = engine.containers.run("busybox", ["sleep", "300"], detach=True, init=True)
        c.stop(timeout=5)
        codes.append(engine.inspect(c.id)["State"]["ExitCode"])
        assert c.logs() == b""
        c.remove()
    assert set(codes) == {143}


def test_stop_uses_the_stop_signal_and_init_forwards_it(engine):
    c = engine.containers.run("busybox", LONG, detach=True, init=True)
    c.stop(timeout=20)  # the init passes SIGTERM on to sleep, which dies of it at once
    assert engine.inspect(c.id)["State"]["ExitCode"] == 143
    c.remove()
    trap = ["sh", "-c", "trap 'echo got USR1; exit 7' USR1; while true; do sleep 0.1; done"]
    c = engine.containers.run("busybox", trap, detach=True, stop_signal="SIGUSR1")
    time.sleep(0.3)
    c.stop(timeout=20)
    assert engine.inspect(c.id)["State"]["ExitCode"] == 7
    assert c.logs() == b"got USR1\n"
    c.remove()


def test_kill_sends_any_signal_and_refuses_a_stopped_container(engine):
    c = engine.containers.run("busybox", LONG, detach=True)
    c.kill("SIGKILL")
    assert c.wait(timeout=10)["StatusCode"] == 137
    with pytest.raises(Conflict, match="is not running"):
        c.kill()
    c.remove()


def test_pause_and_unpause_freeze_the_container(engine):
    c = engine.containers.run("busybox", ["sh", "-c", "while true; do echo x; sleep 0.05; done"],
                              detach=True)
    with pytest.raises(Conflict, match="is not paused"):
        c.unpause()
    c.pause()
    assert status(engine, c.id) == "paused"
    with pytest.raises(Conflict, match="already paused"):
        c.pause()
    with pytest.raises(Conflict, match="cannot start a paused container"):
        c.start()
    with pytest.raises(Conflict, match="is paused"):
        c.exec_run("true")
    time.sleep(0.2)
    lines = len(c.logs().splitlines())
    time.sleep(0.4)
    assert len(c.logs().splitlines()) == lines  # frozen: not one more line
    c.unpause()
    assert status(engine, c.id) == "running"
    time.sleep(0.4)
    assert len(c.logs().splitlines()) > lines
    c.stop(timeout=0)
    c.remove()


def test_a_paused_container_can_be_stopped_and_force_removed(engine):
    c = engine.containers.run("busybox", LONG, detach=True)
    c.pause()
    c.stop(timeout=0)
    assert status(engine, c.id) == "exited"
    c.start()
    c.pause()
    c.remove(force=True)
    assert engine.list(all=True) == []


def test_restart_and_rename(engine):
    c = engine.containers.run("busybox", LONG, detach=True, name="one")
    first_pid = engine.inspect(c.id)["State"]["Pid"]
    c.restart(timeout=0)
    state = engine.inspect(c.id)["State"]
    assert state["Status"] == "running" and state["Pid"] != first_pid
    other = engine.containers.create("busybox", LONG, name="two")
    with pytest.raises(Conflict, match='"/two" is already in use'):
        c.rename("two")
    with pytest.raises(InvalidArgument, match="same name"):
        c.rename("one")
    c.rename("three")
    assert engine.containers.get("three") == c
    with pytest.raises(NotFound):
        engine.containers.get("one")
    c.remove(force=True)
    other.remove()


# --- wait ---------------------------------------------------------------------------------


def test_wait_conditions(engine):
    import threading

    c = engine.containers.create("busybox", ["sh", "-c", "sleep 0.3; exit 5"])
    assert c.wait()["StatusCode"] == 0  # not running: at once
    c.start()
    assert c.wait(timeout=10) == {"StatusCode": 5, "Error": None}
    result = {}
    waiter = threading.Thread(target=lambda: result.update(
        engine.wait(c.id, "next-exit", timeout=10)))
    waiter.start()
    time.sleep(0.1)
    c.start()
    waiter.join()
    assert result["StatusCode"] == 5
    gone = threading.Thread(target=lambda: result.update(removed=engine.wait(c.id, "removed",
                                                                             timeout=10)))
    gone.start()
    time.sleep(0.1)
    c.remove()
    gone.join()
    assert "removed" in result
    with pytest.raises(InvalidArgument, match="invalid condition"):
        engine.wait("whatever", "sometime")


# --- auto-remove, restart policies, prune -------------------------------------------------


def test_auto_remove_removes_the_container_when_it_exits(engine, engine_root):
    out = engine.containers.run("busybox", ["echo", "bye"], auto_remove=True, detach=True)
    engine.wait(out.id, "removed", timeout=10)
    assert engine.list(all=True) == []
    assert not (engine_root / "image" / "containers" / out.id).exists()


def test_on_failure_restarts_up_to_the_count_with_back_off(engine):
    c = engine.containers.run("busybox", ["sh", "-c", "echo run; exit 1"], detach=True,
                              restart_policy={"Name": "on-failure", "MaximumRetryCount": 2})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        attrs = engine.inspect(c.id)
        if attrs["State"]["Status"] == "exited" and attrs["RestartCount"] == 2:
            break
        time.sleep(0.05)
    assert attrs["RestartCount"] == 2 and attrs["State"]["ExitCode"] == 1
    assert c.logs() == b"run\nrun\nrun\n"
    time.sleep(0.5)
    assert engine.inspect(c.id)["RestartCount"] == 2  # and no more
    c.remove()


def test_on_failure_leaves_a_clean_exit_alone_and_always_restarts_until_stopped(engine):
    ok = engine.containers.run("busybox", ["true"], detach=True,
                               restart_policy={"Name": "on-failure"})
    assert ok.wait(timeout=10)["StatusCode"] == 0
    time.sleep(0.3)
    assert engine.inspect(ok.id)["RestartCount"] == 0
    ok.remove()
    always = engine.containers.run("busybox", ["true"], detach=True,
                                   restart_policy={"Name": "always"})
    deadline = time.monotonic() + 10
    while engine.inspect(always.id)["RestartCount"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.inspect(always.id)["RestartCount"] >= 2
    always.stop(timeout=1)
    count = engine.inspect(always.id)["RestartCount"]
    time.sleep(0.5)
    attrs = engine.inspect(always.id)
    assert attrs["State"]["Status"] == "exited" and attrs["RestartCount"] == count
    always.remove()


def test_prune_removes_only_stopped_containers(engine):
    running = engine.containers.run("busybox", LONG, detach=True)
    done = engine.containers.run("busybox", ["sh", "-c", "echo data > /file"], detach=True)
    done.wait(timeout=10)
    created = engine.containers.create("busybox", LONG)
    result = engine.containers.prune()
    assert sorted(result["ContainersDeleted"]) == sorted([done.id, created.id])
    assert result["SpaceReclaimed"] >= 5
    assert [c.id for c in engine.containers.list(all=True)] == [running.id]
    running.remove(force=True)


def test_list_filters(engine):
    a = engine.containers.run("busybox", LONG, detach=True, name="web-1", labels={"app": "web"})
    b = engine.containers.run("busybox", ["sh", "-c", "exit 2"], detach=True, name="job")
    b.wait(timeout=10)
    assert [c.name for c in engine.containers.list()] == ["web-1"]
    assert {c.name for c in engine.containers.list(all=True)} == {"web-1", "job"}
    assert [c.name for c in engine.containers.list(filters={"status": "exited"})] == ["job"]
    assert [c.name for c in engine.containers.list(filters={"exited": 2})] == ["job"]
    assert [c.name for c in engine.containers.list(all=True, filters={"label": "app=web"})] \
        == ["web-1"]
    assert [c.name for c in engine.containers.list(all=True, filters={"name": "web"})] \
        == ["web-1"]
    assert [c.name for c in engine.containers.list(all=True, limit=1)] == ["job"]
    with pytest.raises(InvalidArgument, match="invalid filter 'colour'"):
        engine.containers.list(filters={"colour": "red"})
    a.remove(force=True)
    b.remove()


# --- inside: logs, exec, top, stats ----------------------------------------------------------


def test_logs_keep_streams_apart_with_tail_and_timestamps(engine):
    # two pipes are read as data arrives: lines apart in time keep their order
    c = engine.containers.run("busybox", ["sh", "-c", "echo 1; sleep 0.1; echo 2 >&2; "
                                          "sleep 0.1; echo 3"], detach=True)
    c.wait(timeout=10)
    assert c.logs() == b"1\n2\n3\n"
    assert c.logs(stderr=False) == b"1\n3\n"
    assert c.logs(stdout=False) == b"2\n"
    assert c.logs(tail=1) == b"3\n"
    stamped = c.logs(timestamps=True).decode().splitlines()
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z \d", line)
               for line in stamped)
    entries = [json.loads(line) for line in Path(c.attrs["LogPath"]).read_text().splitlines()]
    assert [(e["stream"], e["log"]) for e in entries] == [
        ("stdout", "1\n"), ("stderr", "2\n"), ("stdout", "3\n")]
    assert all(set(e) == {"log", "stream", "time"} for e in entries)
    c.remove()


def test_logs_follow_until_the_container_exits(engine):
    c = engine.containers.run("busybox", ["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.2; "
                                          "done"], detach=True)
    assert list(c.logs(stream=True, follow=True)) == [b"1\n", b"2\n", b"3\n"]
    c.remove()


def test_exec_runs_inside_with_its_own_exit_code_env_user_and_workdir(engine):
    c = engine.containers.run("busybox", LONG, detach=True, environment=["FROM=run"])
    result = c.exec_run(["sh", "-c", "echo $FROM $EXTRA $(id -u) $(pwd); exit 4"],
                        environment={"EXTRA": "x"}, user="nobody", workdir="/tmp")
    assert result.exit_code == 4
    assert result.output == b"run x 65534 /tmp\n"
    out, err = c.exec_run(["sh", "-c", "echo o; echo e >&2"], demux=True).output
    assert (out, err) == (b"o\n", b"e\n")
    # the same namespaces as the container's init
    host = c.exec_run("hostname").output.strip().decode()
    assert host == c.id[:12]
    pid = engine.inspect(c.id)["State"]["Pid"]
    with open(f"/proc/{pid}/cgroup") as f:
        init_groups = f.read()
    exec_groups = c.exec_run("cat /proc/self/cgroup").output
    assert c.id in init_groups  # the container's own cgroups, as the host sees them
    assert exec_groups == c.exec_run("cat /proc/1/cgroup").output  # and the exec is in them
    for kind in ("mnt", "pid", "net", "uts", "ipc"):
        inside = c.exec_run(f"readlink /proc/self/ns/{kind}").output.decode().strip()
        assert inside == os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}")
    assert c.exec_run("readlink /proc/1/exe").output.strip() == b"/bin/sleep" or \
        c.exec_run("cat /proc/1/cmdline").output.startswith(b"sleep")
    with pytest.raises(InvalidArgument, match="No exec command"):
        c.exec_run([])
    c.stop(timeout=0)
    with pytest.raises(Conflict, match="is not running"):
        c.exec_run("true")
    c.remove()


def test_top_lists_the_containers_processes(engine):
    c = engine.containers.run("busybox", ["sh", "-c", "sleep 300 & sleep 301"], detach=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        top = c.top()
        commands = [row[-1] for row in top["Processes"]]
        if any("sleep 300" in cmd for cmd in commands) and any("sleep 301" in cmd
                                                                for cmd in commands):
            break
        time.sleep(0.05)
    assert top["Titles"][:2] == ["UID", "PID"]
    assert any("sleep 300" in cmd for cmd in commands)
    c.remove(force=True)
    with pytest.raises(Conflict, match="is not running"):
        engine.containers.create("busybox", name="idle").top()
    engine.remove("idle")


def test_stats_read_the_cgroup(engine):
    c = engine.containers.run("busybox", LONG, detach=True, mem_limit="64m", pids_limit=20)
    reading = c.stats(stream=False, one_shot=True)
    assert reading["memory_stats"]["limit"] == 64 << 20
    assert reading["precpu_stats"]["cpu_usage"]["total_usage"] == 0
    two = c.stats(stream=False)  # two readings a second apart: a CPU percentage
    assert two["precpu_stats"]["system_cpu_usage"] < two["cpu_stats"]["system_cpu_usage"]
    from mini_docker.engine.stats import cpu_percent

    assert 0 <= cpu_percent(two) < 5  # sleep uses next to nothing
    assert reading["pids_stats"]["current"] >= 1
    assert reading["name"] == "/" + c.name and reading["id"] == c.id
    c.remove(force=True)


def test_an_oom_kill_is_recorded_and_announced(engine):
    events = engine.events.stream(since=time.time() - 1, filters={"event": "oom"})
    hog = ["sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"]
    c = engine.containers.run("busybox", hog, detach=True, mem_limit="16m")
    assert c.wait(timeout=30)["StatusCode"] == 137
    assert engine.inspect(c.id)["State"]["OOMKilled"] is True
    assert next(events)["Actor"]["ID"] == c.id
    events.close()
    c.remove()


# --- events -------------------------------------------------------------------------------


def test_a_containers_life_in_events(engine):
    since = time.time()
    c = engine.containers.run("busybox", LONG, detach=True, name="evented")
    c.pause()
    c.unpause()
    c.stop(timeout=0)
    c.remove()
    seen = [(e["Action"], e["Actor"]["Attributes"].get("exitCode"))
            for e in engine.events.stream(since=since, until=time.time())]
    assert seen == [("create", None), ("start", None), ("pause", None), ("unpause", None),
                    ("kill", None), ("kill", None), ("die", "137"), ("stop", None),
                    ("destroy", None)]
    only = [e["Action"] for e in engine.events.stream(since=since, until=time.time(),
                                                      filters={"event": ["die", "start"],
                                                               "container": "evented"})]
    assert only == ["start", "die"]
    with pytest.raises(InvalidArgument, match="invalid filter"):
        next(engine.events.stream(filters={"colour": "red"}))


def test_always_starts_with_the_engine_even_after_a_stop_and_unless_stopped_does_not(
        engine, engine_root):
    always = engine.containers.run("busybox", LONG, detach=True, name="always",
                                   restart_policy={"Name": "always"})
    unless = engine.containers.run("busybox", LONG, detach=True, name="unless",
                                   restart_policy={"Name": "unless-stopped"})
    engine.containers.create("busybox", LONG, name="never",
                             restart_policy={"Name": "always"})
    always.stop(timeout=0)
    unless.stop(timeout=0)
    engine.close()
    with Engine(engine_root) as again:
        deadline = time.monotonic() + 10
        while again.inspect("always")["State"]["Status"] != "running" and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert again.inspect("always")["State"]["Status"] == "running"
        assert again.inspect("unless")["State"]["Status"] == "exited"
        assert again.inspect("never")["State"]["Status"] == "created"
        for name in ("always", "unless", "never"):
            again.remove(name, force=True)
    engine.__init__(engine_root)  # for the fixture's clean-up


def test_logs_rotate_and_read_across_the_files(engine):
    c = engine.containers.run(
        "busybox", ["sh", "-c", "i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo line $i; done"],
        detach=True, log_config={"Type": "json-file",
                                 "Config": {"max-size": "2k", "max-file": "3"}})
    c.wait(timeout=10)
    log = c.attrs["LogPath"]
    files = sorted(p.name for p in Path(log).parent.glob(Path(log).name + "*"))
    assert files == [Path(log).name, Path(log).name + ".1", Path(log).name + ".2"]
    assert all(Path(log).parent.joinpath(f).stat().st_size <= 2048 + 200 for f in files)
    numbers = [int(line.split()[1]) for line in c.logs().decode().splitlines()]
    assert numbers == list(range(numbers[0], 301)) and numbers[0] > 1  # the oldest rotated away
    c.remove()
    assert not list(Path(log).parent.glob("*"))


def test_logs_since_and_until(engine):
    c = engine.containers.run("busybox", ["sh", "-c", "echo early; sleep 0.5; echo late"],
                              detach=True)
    c.wait(timeout=10)
    stamps = [line.split(b" ")[0].decode() for line in c.logs(timestamps=True).splitlines()]
    from mini_docker.engine.logs import parse_timestamp

    middle = (parse_timestamp(stamps[0]) + parse_timestamp(stamps[1])) / 2
    assert c.logs(since=middle) == b"late\n"
    assert c.logs(until=middle) == b"early\n"
    assert c.logs(since=stamps[1]) == b"late\n"
    with pytest.raises(InvalidArgument):
        c.logs(since="yesterday-ish")
    c.remove()


def test_exec_with_a_tty(engine):
    c = engine.containers.run("busybox", LONG, detach=True)
    result = c.exec_run("tty", tty=True)
    assert result.exit_code == 0 and re.fullmatch(rb"/dev/pts/\d+\r\n", result.output)
    assert c.exec_run("tty").output == b"not a tty\n"
    c.remove(force=True)


def test_run_with_auto_remove_still_returns_the_output_and_stream_gives_lines(engine):
    out = engine.containers.run("busybox", ["sh", "-c", "echo a; echo b >&2; echo c"],
                                auto_remove=True, stderr=True)
    assert sorted(out.splitlines()) == [b"a", b"b", b"c"]
    assert engine.list(all=True) == []
    lines = engine.containers.run("busybox", ["sh", "-c", "echo 1; sleep 0.2; echo 2"],
                                  stream=True, name="streamed")
    assert list(lines) == [b"1\n", b"2\n"]
    engine.remove("streamed")
    with pytest.raises(ContainerError, match="status 2: bad") as err:
        engine.containers.run("busybox", ["sh", "-c", "echo bad >&2; exit 2"], auto_remove=True)
    assert err.value.stderr == b"bad\n"
    assert engine.list(all=True) == []


def test_a_log_followed_from_run_is_read_whole_after_the_container_is_removed(engine):
    record, entries = engine.run("busybox", ["echo", "hi"], logs=True, auto_remove=True)
    engine.wait(record.Id, condition="removed")
    assert not (engine.root / "containers" / record.Id).exists()
    assert [(e.stream, e.data) for e in entries] == [("stdout", b"hi\n")]


def test_an_auto_removed_container_that_ends_at_once_still_gives_its_output(engine):
    """It may be gone before run() looks at it: its log is opened before it starts."""
    for n in range(5):
        assert engine.containers.run("busybox", ["echo", str(n)], auto_remove=True) == \
            f"{n}\n".encode()
        assert engine.containers.run("busybox", ["true"], auto_remove=True) == b""
    assert engine.list(all=True) == []


def test_exec_instances_create_start_inspect_and_resize(engine):
    c = engine.containers.run("busybox", LONG, detach=True)
    since = time.time()
    exec_id = engine.exec_create(c.id, ["sh", "-c", "echo hi; exit 3"])
    before = engine.exec_inspect(exec_id)
    assert (before["Running"], before["ExitCode"], before["ContainerID"]) == (False, None, c.id)
    assert before["ProcessConfig"]["entrypoint"] == "sh"
    stream = engine.exec_start(exec_id)
    assert list(stream) == [("stdout", b"hi\n")]
    after = engine.exec_inspect(exec_id)
    assert (after["Running"], after["ExitCode"]) == (False, 3) and after["Pid"] > 0
    with pytest.raises(Conflict, match="already been started"):
        engine.exec_start(exec_id)
    # detached: its exit code still arrives
    quiet = engine.exec_create(c.id, ["sh", "-c", "sleep 0.2; exit 4"])
    assert engine.exec_start(quiet, detach=True) is None
    deadline = time.monotonic() + 10
    while engine.exec_inspect(quiet)["ExitCode"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.exec_inspect(quiet)["ExitCode"] == 4
    # a terminal resized by the exec's ID
    sized = engine.exec_create(c.id, ["sh", "-c", "sleep 0.3; stty size"], tty=True)
    stream = engine.exec_start(sized)
    engine.exec_resize(sized, 40, 120)
    assert b"".join(data for _, data in stream).strip() == b"40 120"
    dies = [e["Actor"]["Attributes"]["exitCode"] for e in
            engine.events.stream(since=since, until=time.time(), filters={"event": "exec_die"})]
    assert dies == ["3", "4", "0"]
    with pytest.raises(NotFound, match="No such exec instance"):
        engine.exec_inspect("nosuch")
    c.remove(force=True)
    with pytest.raises(NotFound):
        engine.exec_inspect(exec_id)  # gone with its container
