"""A tiny init for PID 1: forward signals, reap zombies, pass on the exit status.

Chapter 1 showed why PID 1 is special: the kernel does not deliver a signal
to it unless it has a handler, and every orphan in the namespace becomes its
child. Most programs are not written to be PID 1. Docker's `--init` puts a
small init (tini, as docker-init) in front of them; this is ours.

It is the container's own set-up process, which is already running: instead
of exec'ing the program, it forks, the child execs the program, and the
parent stays behind as PID 1 and loops:

* every signal it receives (but SIGCHLD) is passed to the program, so
  `docker stop`'s SIGTERM reaches a program that has a handler for it;
* on SIGCHLD it reaps every exited child, so orphans never pile up as zombies;
* when the program itself exits, it exits with the same status (killed by
  signal N: 128 + N, as a shell reports it).

It waits with sigwaitinfo on blocked signals rather than with handlers: no
signal can arrive between "check" and "wait", and no Python code runs in a
signal handler. Selected with the annotation ``io.mini-docker.init: "true"``.
"""

from __future__ import annotations

import os
import signal

from mini_docker.kernel import reap_children
from mini_docker.runtime.process import close_inherited_fds

ANNOTATION = "io.mini-docker.init"

# Signals that stop or kill PID 1 itself are not forwarded: they cannot be caught.
NOT_FORWARDED = {signal.SIGCHLD, signal.SIGKILL, signal.SIGSTOP}


def wanted(annotations: dict[str, str]) -> bool:
    return annotations.get(ANNOTATION, "").lower() in ("1", "true", "yes")


CATCHABLE = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


def hold_signals() -> None:
    """Block every signal PID 1 can catch, before the container is reported created.

    PID 1 without a handler drops a signal such as SIGTERM. A blocked one
    waits, pending, for supervise's first sigwaitinfo: a `docker stop` sent
    to a created container, or the instant after start, is forwarded, not lost."""
    signal.pthread_sigmask(signal.SIG_BLOCK, CATCHABLE)


def supervise(run_program) -> None:
    """Fork; the child calls `run_program()` (which execs); we reap and forward. Never returns."""
    hold_signals()  # held already by the init; for any other caller
    child = os.fork()
    if child == 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, CATCHABLE)
        os.setpgid(0, 0)
        run_program()
        os._exit(127)
    try:  # both sides set it, so that neither order of the two can miss it
        os.setpgid(child, child)
    except PermissionError:
        pass  # the child has exec'd already (EACCES), having set it itself
    close_inherited_fds()
    while True:
        info = signal.sigwaitinfo(CATCHABLE)
        if info.si_signo == signal.SIGCHLD:
            for pid, status in reap_children():
                if pid == child:
                    os._exit(status)
        elif info.si_signo not in NOT_FORWARDED:
            try:
                os.kill(child, info.si_signo)
            except ProcessLookupError:
                pass

