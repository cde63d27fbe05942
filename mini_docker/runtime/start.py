"""`start`: let a created container's init run the user's program.

The init is blocked opening exec.fifo for writing. Opening it for reading
releases it; it writes one byte and goes on to exec. We read that byte (so
we know it got past the FIFO) and remove the FIFO: from now on the
container's status is "running".
"""

from __future__ import annotations

import os
import select

from mini_docker.errors import Conflict, MiniDockerError
from mini_docker.runtime.state import ContainerState, StateDir


def start(container_id: str, *, root: str | os.PathLike | None = None, timeout: float = 10,
          state: ContainerState | None = None) -> None:
    """`state`: the container's, if the caller has it already (it created the container)."""
    states = StateDir(root) if root else StateDir()
    if state is None:
        state = states.load(container_id)
    status = states.status(state)
    if status != "created":
        raise Conflict(f"cannot start a container that is {status}: {container_id}")
    fifo = states.fifo(container_id)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        ready, _, _ = select.select([reader], [], [], timeout)
        word = os.read(reader, select.PIPE_BUF) if ready else b""  # the init's word, whole
        if word.startswith(b"!"):  # the init could not get its program ready to run
            raise MiniDockerError(f"container {container_id} did not start: "
                                  f"{word[1:].decode(errors='replace')}")
        if word != b"0":
            raise Conflict(f"container {container_id} did not start: its init is gone")
    finally:
        os.close(reader)
        try:
            os.unlink(fifo)
        except FileNotFoundError:
            pass
