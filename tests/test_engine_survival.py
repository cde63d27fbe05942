"""Containers outlive their engine, and 200 of them come and go without a trace."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from mini_docker.engine import Engine

ENGINE_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from mini_docker.engine import Engine

    engine = Engine(sys.argv[1])
    ticker = engine.containers.run(
        "busybox", ["sh", "-c", "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.25; done"],
        detach=True, name="ticker")
    sleeper = engine.containers.run("busybox", ["sleep", "300"], detach=True, name="sleeper")
    quitter = engine.containers.run("busybox", ["sh", "-c", "sleep 1; exit 3"], detach=True,
                                    name="quitter")
    print(json.dumps({c.name: engine.inspect(c.id)["State"]["Pid"]
                      for c in (ticker, sleeper, quitter)}), flush=True)
    time.sleep(600)
""")


def _numbers(logs: bytes) -> list[int]:
    return [int(line.split()[1]) for line in logs.decode().splitlines()]


def test_containers_survive_a_sigkilled_engine(engine_root):
    proc = subprocess.Popen([sys.executable, "-c", ENGINE_SCRIPT, str(engine_root)],
                            stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(proc.stdout.readline())
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    time.sleep(1.5)  # the quitter exits while no engine runs
    assert psutil.pid_exists(pids["ticker"]) and psutil.pid_exists(pids["sleeper"])

    engine = Engine(engine_root)
    try:
        ticker, sleeper, quitter = (engine.inspect(n) for n in ("ticker", "sleeper", "quitter"))
        assert ticker["State"]["Status"] == "running" and ticker["State"]["Pid"] == pids["ticker"]
        assert sleeper["State"]["Status"] == "running"
        assert quitter["State"]["Status"] == "exited" and quitter["State"]["ExitCode"] == 3
        before = _numbers(engine.containers.get("ticker").logs())
        time.sleep(0.6)
        after = _numbers(engine.containers.get("ticker").logs())
        # the shim kept writing while no engine ran: no line lost, none twice
        assert after == list(range(1, len(after) + 1)) and len(after) > len(before) >= 8
        # the new engine controls them, and notices their exits
        engine.stop("sleeper", timeout=0)
        assert engine.inspect("sleeper")["State"]["ExitCode"] == 137
        engine.kill("ticker", "SIGKILL")
        assert engine.wait("ticker", timeout=10)["StatusCode"] == 137
        for name in ("ticker", "sleeper", "quitter"):
            engine.remove(name)
    finally:
        for record in engine.list(all=True):
            engine.remove(record.Id, force=True)
        engine.close()


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _settled(engine) -> None:
    """Wait until the monitor watches no shim: a shim that has reported its container's
    exit and will not stay is watched (its pidfd open) until it has exited itself."""
    deadline = time.monotonic() + 10
    while engine._monitor.busy():
        assert time.monotonic() < deadline, "the monitor still watches a shim"
        time.sleep(0.01)


def test_churn_of_200_containers_leaves_nothing_behind(engine, engine_root: Path):
    engine.containers.run("busybox", ["true"], remove=True)  # the zygote and monitor, warm
    engine._janitor.drain()  # its descriptors, while it deletes, are no leak
    _settled(engine)
    gc.collect()  # nor those of earlier tests' objects that are garbage already
    fds = _fds()
    for n in range(200):
        c = engine.containers.create("busybox", ["sleep", "300"], name=f"churn-{n}")
        c.start()
        c.stop(timeout=0)
        c.remove()
    assert engine.list(all=True) == []
    engine._janitor.drain()  # the removed containers' files, deleted after each rm returned
    _settled(engine)
    assert _fds() == fds
    for directory in ("containers", "runtime", "image/containers"):
        assert [p.name for p in (engine_root / directory).iterdir()] == [], directory
