"""`kill`: send a signal to a container's init, or to every process in it."""

from __future__ import annotations

import os
import signal

from mini_docker.errors import Conflict, InvalidArgument
from mini_docker.runtime.state import ContainerState, StateDir


def parse_signal(name: str | int) -> int:
    """9, "9", "KILL" and "SIGKILL" are all SIGKILL."""
    if isinstance(name, int) or str(name).isdigit():
        number = int(name)
        if not 0 < number < signal.NSIG:
            raise InvalidArgument(f"invalid signal {name!r}")
        return number
    upper = str(name).upper()
    try:
        return int(signal.Signals[upper if upper.startswith("SIG") else "SIG" + upper])
    except KeyError:
        raise InvalidArgument(f"invalid signal {name!r}") from None


def processes(state: ContainerState) -> list[int]:
    """Host pids of every process in the container.

    Those in its cgroup, if it has one; otherwise those in its init's PID namespace.
    """
    group = StateDir.group(state)
    if group is not None and group.exists():
        return sorted(group.procs())
    try:
        target = os.readlink(f"/proc/{state.pid}/ns/pid")
    except FileNotFoundError:
        return []
    if target == os.readlink("/proc/self/ns/pid"):
        return [state.pid]  # shares our PID namespace: only the init is surely its own
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == target:
                    found.append(int(entry))
            except (FileNotFoundError, PermissionError):
                continue
    return sorted(found)


def kill(container_id: str, sig: str | int = "SIGTERM", *, all_processes: bool = False,
         root: str | os.PathLike | None = None) -> None:
    states = StateDir(root) if root else StateDir()
    state = states.load(container_id)
    number = parse_signal(sig)
    if not states.alive(state):
        raise Conflict(f"container {container_id} is not running")
    for pid in processes(state) if all_processes else [state.pid]:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass
