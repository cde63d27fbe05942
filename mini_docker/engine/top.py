"""`docker top`: the processes running in a container.

A container's processes are ordinary host processes, so dockerd does not
look inside the container at all: it asks the runtime for the pids in the
container's cgroup, runs the host's `ps` (-ef unless told otherwise), and
keeps the rows whose PID is one of them. The reply is a table, titles and
rows of strings, as `ps` printed them:

    {"Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
     "Processes": [["root", "4242", "4230", "0", "19:20", "?", "00:00:00", "sleep 60"]]}

We read /proc (through psutil, and /proc/PID/stat for the few fields it
does not give) instead of running ps, so only two ps formats exist: the
default `-ef` and BSD's `aux`. Each column is computed as procps computes
it; the PIDs are the host's, as `docker top` shows them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import psutil

from mini_docker.errors import Conflict, InvalidArgument
from mini_docker.runtime.kill import processes
from mini_docker.runtime.state import ContainerState, StateDir

EF_TITLES = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
AUX_TITLES = ["USER", "PID", "%CPU", "%MEM", "VSZ", "RSS", "TTY", "STAT", "START", "TIME", "COMMAND"]


def container_top(state: ContainerState, ps_args: str = "-ef") -> dict[str, list]:
    """`docker top` of a running container, from its runtime state."""
    if not StateDir.alive(state):
        raise Conflict(f"container {state.id} is not running")
    return top(processes(state), ps_args)


def top(pids: Iterable[int], ps_args: str = "-ef") -> dict[str, list]:
    """The table `ps ps_args` would print for `pids`, in pid order; gone pids are left out.

    ps_args: "-ef" (also "" or "-e -f") or "aux" ("-aux"); anything else is InvalidArgument.
    """
    titles, row = _format(ps_args)
    rows = []
    now = time.time()
    for pid in sorted(set(pids)):
        try:
            rows.append(row(psutil.Process(pid), now))
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
    return {"Titles": list(titles), "Processes": rows}


def _format(ps_args: str) -> tuple[list[str], Callable[[psutil.Process, float], list[str]]]:
    words = ps_args.split()
    if words in ([], ["-ef"], ["-fe"], ["-e", "-f"], ["-f", "-e"]):
        return EF_TITLES, _ef_row
    if words in (["aux"], ["-aux"], ["uax"]):
        return AUX_TITLES, _aux_row
    raise InvalidArgument(f"unsupported ps options {ps_args!r}: use -ef (the default) or aux")


def _ef_row(proc: psutil.Process, now: float) -> list[str]:
    with proc.oneshot():
        cpu = _cpu_seconds(proc)
        started = proc.create_time()
        return [_user(proc), str(proc.pid), str(proc.ppid()),
                str(min(99, int(_share(cpu, now - started)))),  # procps caps C at 99
                _start(started, now), _tty(proc), _clock(cpu), _command(proc)]


def _aux_row(proc: psutil.Process, now: float) -> list[str]:
    with proc.oneshot():
        cpu = _cpu_seconds(proc)
        started = proc.create_time()
        memory = proc.memory_info()
        minutes, seconds = divmod(int(cpu), 60)
        return [_user(proc), str(proc.pid), f"{min(999.0, _share(cpu, now - started)):.1f}",
                f"{proc.memory_percent():.1f}", str(memory.vms // 1024), str(memory.rss // 1024),
                _tty(proc), _stat(proc), _start(started, now), f"{minutes}:{seconds:02d}",
                _command(proc)]


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _share(cpu: float, elapsed: float) -> float:
    """CPU time as a percentage of the time the process has existed."""
    return cpu / elapsed * 100 if elapsed > 0 else 0.0


def _user(proc: psutil.Process) -> str:
    """The user's name, or the uid where there is none or it is longer than ps's 8 columns."""
    uid = proc.uids().effective
    try:
        name = proc.username()
    except (KeyError, psutil.Error):
        return str(uid)
    return name if len(name) <= 8 and not name.isdigit() else str(uid)


def _start(started: float, now: float) -> str:
    """HH:MM today, MonDD (Nov30) this year, else the year: procps's STIME and START."""
    then, today = time.localtime(started), time.localtime(now)
    if then.tm_year != today.tm_year:
        return time.strftime("%Y", then)
    if then.tm_yday != today.tm_yday:
        return time.strftime("%b%d", then)
    return time.strftime("%H:%M", then)


def _clock(seconds: float) -> str:
    """CPU time as -ef's TIME: [DD-]HH:MM:SS."""
    days, rest = divmod(int(seconds), 86400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{clock}" if days else clock


def _tty(proc: psutil.Process) -> str:
    terminal = proc.terminal()
    return terminal.removeprefix("/dev/") if terminal else "?"


def _command(proc: psutil.Process) -> str:
    """The command line; a process without one (a kernel thread, a zombie) as [name]."""
    args = proc.cmdline()
    if args:  # ps shows a control character (a newline in an argument) as "?"
        return "".join(c if c.isprintable() else "?" for c in " ".join(args))
    zombie = proc.status() == psutil.STATUS_ZOMBIE
    return f"[{proc.name()}]" + (" <defunct>" if zombie else "")


def _stat(proc: psutil.Process) -> str:
    """BSD STAT: the state letter, then < or N (priority), L (locked pages),
    s (session leader), l (threads), + (in the terminal's foreground group)."""
    with open(f"/proc/{proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    state, pgrp, session, tpgid = fields[0], int(fields[2]), int(fields[3]), int(fields[5])
    nice, threads = int(fields[16]), int(fields[17])
    flags = state
    flags += "<" if nice < 0 else "N" if nice > 0 else ""
    flags += "L" if _locked_kib(proc.pid) else ""
    flags += "s" if session == proc.pid else ""
    flags += "l" if threads > 1 else ""
    flags += "+" if tpgid == pgrp else ""
    return flags


def _locked_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmLck:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0

