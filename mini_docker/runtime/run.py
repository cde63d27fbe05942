"""`run`: create, start and wait, as one command; the exit status is the container's.

The container's init is not our child: with a new PID namespace, the stage
1 process forked it and exited. We become a *child subreaper*
(PR_SET_CHILD_SUBREAPER), so that the kernel re-parents orphans, our init
among them, to us instead of to the host's PID 1, and we can wait for it.
containerd's shim does the same. Signals we receive are passed on to the
init, so Ctrl-C and `kill` reach the container. With a terminal, our
terminal's size is copied to the container's, again on every SIGWINCH.
"""

from __future__ import annotations

import os
import signal

from mini_docker.kernel import constants as C
from mini_docker.kernel import exit_status, prctl, reap_children
from mini_docker.runtime import spec as oci
from mini_docker.runtime.create import create
from mini_docker.runtime.delete import delete
from mini_docker.runtime.start import start

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH)


def run(container_id: str, bundle: str | os.PathLike, *, root: str | os.PathLike | None = None,
        pid_file: str | None = None, console_socket: str | None = None,
        detach: bool = False, keep: bool = False) -> int:
    """Run the bundle's process to completion and return its exit status.

    The calling process becomes a child subreaper. With `detach`, return 0 once
    the container runs; with `keep`, do not delete it after it exits.
    """
    prctl(C.PR_SET_CHILD_SUBREAPER, 1)
    terminal = bool(oci.load(bundle).process.terminal) if not console_socket else False
    listener = None
    if terminal and not detach:  # imported only when needed: most runs have no terminal
        from mini_docker.runtime.console import ConsoleListener, copy_window_size, relay

        listener = ConsoleListener()
    try:
        state = create(container_id, bundle, root=root, pid_file=pid_file,
                       console_socket=listener.path if listener else console_socket)
        master = listener.receive() if listener else None
    finally:
        if listener:
            listener.close()
    try:
        start(container_id, root=root)
    except BaseException:
        delete(container_id, force=True, root=root)
        raise
    if detach:
        return 0
    previous = {sig: signal.signal(sig, _forward_to(state.pid)) for sig in FORWARDED}
    if master is not None:  # a resize of our terminal is a resize of the container's
        copy_window_size(0, master)
        signal.signal(signal.SIGWINCH, lambda *_: copy_window_size(0, master))
    try:
        if master is not None:
            relay(master)
            os.close(master)
        _, status = os.waitpid(state.pid, 0)
        reap_children()  # the container's other processes, re-parented to us
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not keep:
            delete(container_id, force=True, root=root)
    return exit_status(status)


def _forward_to(pid: int):
    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    return forward
