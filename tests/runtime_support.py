"""Bundles for the runtime tests: a busybox rootfs and configs built in plain functions.

As crun's tests do, a config is built from a base and adjusted per test, and
the container runs a tiny static program (busybox) that needs no image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mini_docker.runtime.spec import default_spec

MINI_RUNC = [sys.executable, "-m", "mini_docker.runtime.cli"]


def base_config(*args: str) -> dict[str, Any]:
    """`runc spec`'s defaults, without a terminal, running `args`."""
    return default_spec(list(args) or ["true"], terminal=False)


def make_bundle(path: Path, rootfs: Path, config: dict[str, Any]) -> Path:
    """A bundle at `path` whose rootfs is a read-only view of the shared busybox tree."""
    path.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(config))
    config["root"] = {"path": str(rootfs), "readonly": config["root"].get("readonly", True)}
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


def mini_runc(root: Path, *args: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess:
    """Run mini-runc with --root `root`; its output is captured through files.

    Not pipes: a container created or run detached keeps the runtime's stdout
    and stderr as its own, so a pipe would stay open until the container ends.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        done = subprocess.run([*MINI_RUNC, "--root", str(root), *args], stdout=out, stderr=err,
                              stdin=subprocess.DEVNULL, timeout=timeout, **kw)
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(done.args, done.returncode, out.read().decode(),
                                           err.read().decode())


def mounts_mentioning(text: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if text in line]


def run_in_container(root: Path, bundle: Path, cid: str = "t") -> subprocess.CompletedProcess:
    return mini_runc(root, "run", "--bundle", str(bundle), cid)


def wait_until_running(root: Path, cid: str, timeout: float = 10) -> dict:
    """Poll `state` until the container runs; return its state."""
    import json
    import time

    deadline = time.monotonic() + timeout
    while True:
        state = mini_runc(root, "state", cid)
        if state.returncode == 0 and json.loads(state.stdout)["status"] == "running":
            return json.loads(state.stdout)
        assert time.monotonic() < deadline, f"{cid} did not start: {state.stderr}"
        time.sleep(0.02)


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def proc_stat(pid: int) -> tuple[str, list[str]]:
    """A process's comm and the fields of /proc/PID/stat after it; ("", []) once gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return "", []
    return text.partition("(")[2].rpartition(")")[0], text.rpartition(")")[2].split()


def parent_of(pid: int) -> int:
    """A process's parent pid; -1 once it is gone."""
    fields = proc_stat(pid)[1]
    return int(fields[1]) if fields else -1
