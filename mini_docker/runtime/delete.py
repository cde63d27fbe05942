"""`delete`: forget a stopped container (with force, stop it first)."""

from __future__ import annotations

import os
import signal
import time

from mini_docker.errors import Conflict
from mini_docker.runtime.kill import processes
from mini_docker.runtime.state import StateDir


def delete(container_id: str, *, force: bool = False, root: str | os.PathLike | None = None) -> None:
    states = StateDir(root) if root else StateDir()
    state = states.load(container_id)
    status = states.status(state)
    if status in ("running", "paused") and not force:
        raise Conflict(f"cannot delete container {container_id} that is not stopped: {status}")
    if status != "stopped":  # "created" is deleted without force, as runc does
        for pid in processes(state):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_gone(states, state)
    if state.cgroup_path:
        from mini_docker.runtime.cgroup import remove

        remove(state.cgroup_path)
    states.remove(container_id)


def _wait_gone(states: StateDir, state, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while states.alive(state):
        try:  # our own child (a container made in this process): reap it
            os.waitpid(state.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            raise Conflict(f"container {state.id} did not die within {timeout} s")
        time.sleep(0.005)
