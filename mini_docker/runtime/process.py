"""The last steps before the container's program runs: who it is, what it may do.

Both the container's init (after `start`) and every `exec`'d process end here.
The order matters, and each step says why it comes where it does:

1. find the program on the container's PATH, while we can still report a
   clear error ("executable file not found in $PATH") instead of exiting 127;
2. oom_score_adj and rlimits, while we are still root and allowed to raise them;
3. capabilities and the user: drop the bounding set, change uid/gid keeping
   the capabilities asked for, then set the exact sets (the kernel layer);
4. no_new_privs: from here on, no setuid binary or file capability can give
   the process more than it has;
5. the working directory, checked to be inside the container's root;
6. close every inherited file descriptor but 0, 1 and 2 (and any the caller
   asked to preserve), so that nothing of the host leaks in;
7. execve.
"""

from __future__ import annotations

import os
import resource
import signal

from mini_docker.errors import InvalidArgument
from mini_docker.kernel import capabilities as caps
from mini_docker.kernel import constants as C
from mini_docker.kernel import prctl
from mini_docker.runtime.spec import RLIMITS, Process

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def environment(process: Process) -> dict[str, str]:
    """process.env as a dict, with HOME added from the container's /etc/passwd if missing.

    Called inside the container's root, so /etc/passwd is the image's; a user
    it does not list gets "/", as runc does.
    """
    env = {}
    for entry in process.env:
        name, _, value = entry.partition("=")
        env[name] = value
    if "HOME" not in env:
        env["HOME"] = _home_of(process.user.uid)
    return env


def _home_of(uid: int) -> str:
    try:
        with open("/etc/passwd") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2] == str(uid):
                    return fields[5] or "/"
    except OSError:
        pass
    return "/"


def find_executable(name: str, env: dict[str, str]) -> str:
    """`name` as execvp would find it, on the container's PATH."""
    if "/" in name:
        if not os.path.exists(name):
            raise InvalidArgument(f'exec: "{name}": no such file or directory')
        return name
    for directory in env.get("PATH", DEFAULT_PATH).split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise InvalidArgument(f'exec: "{name}": executable file not found in $PATH')


def set_limits(process: Process) -> None:
    if process.oom_score_adj is not None:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(process.oom_score_adj))
    for limit in process.rlimits:
        resource.setrlimit(RLIMITS[limit.type], (limit.soft, limit.hard))


def set_identity(process: Process) -> None:
    """Capabilities and user, in the order the kernel requires (see the kernel layer)."""
    user = process.user
    wanted = process.capabilities
    sets = {name: getattr(wanted, name) if wanted else []  # none given: keep none, as runc
            for name in ("bounding", "effective", "permitted", "inheritable", "ambient")}
    # The kernel raises an ambient capability only if it is permitted and
    # inheritable; `runc spec` lists ambient ones without inheritable. Like
    # runc, leave out those it would refuse instead of failing.
    sets["ambient"] = [c for c in sets["ambient"]
                       if c in sets["permitted"] and c in sets["inheritable"]]
    caps.apply_process_capabilities(
        **sets, user=caps.Credentials(user.uid, user.gid, tuple(user.additional_gids)))
    if user.umask is not None:
        os.umask(user.umask)


def enter_cwd(cwd: str) -> None:
    """chdir, then make sure the directory is really inside our root.

    A working directory that is a leaked host directory (an inherited file
    descriptor's /proc/self/fd/N, the CVE-2024-21626 class) is outside the
    root: the kernel then reports the path as "(unreachable)/...", and glibc's
    getcwd as ENOENT. Either way, refuse to run.
    """
    os.chdir(cwd)
    try:
        where = os.getcwd()
    except FileNotFoundError:
        where = "(unreachable)"
    if where.startswith("(unreachable)") or not os.path.samestat(os.stat("."), os.stat(where)):
        raise InvalidArgument(f"cwd {cwd!r} is outside the container's root")


def close_inherited_fds(preserve: int = 0, keep: tuple[int, ...] = ()) -> None:
    """Close every descriptor above 2 (and above the `preserve` extra ones).

    `keep` names descriptors to leave open; they must be close-on-exec, so
    that they are gone once the program runs.
    """
    first = 3 + preserve
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd >= first and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the directory's own descriptor, already gone


def prepare_exec(process: Process, preserve_fds: int = 0, executable: str | None = None,
                 keep: tuple[int, ...] = ()) -> tuple[str, dict[str, str]]:
    """Steps 2 to 6 (step 1 too if `executable` is None): all but the execve. Returns
    the program's path and environment."""
    env = environment(process)
    path = executable or find_executable(process.args[0], env)
    set_limits(process)
    set_identity(process)
    if process.no_new_privileges:
        prctl(C.PR_SET_NO_NEW_PRIVS, 1)
    enter_cwd(process.cwd)
    close_inherited_fds(preserve_fds, keep)
    restore_signals()
    return path, env


def exec_process(process: Process, preserve_fds: int = 0, executable: str | None = None,
                 keep: tuple[int, ...] = ()) -> None:
    """Steps 2 to 7 (step 1 too if `executable` is None). Returns only by raising."""
    path, env = prepare_exec(process, preserve_fds, executable, keep)
    os.execve(path, process.args, env)


def restore_signals() -> None:
    """Give the program the default action for every signal it may have one for.

    An ignored signal stays ignored across execve(2) (handled ones are reset
    by the kernel), and Python ignores SIGPIPE and SIGXFSZ: it wants EPIPE
    and EFBIG as exceptions instead. A container started from Python would
    inherit that, and `yes | head -1` would never end. Whatever else the
    caller ignored is reset too, except the two real-time signals the C
    library keeps for itself, which sigaction refuses to touch. Which ones
    are ignored the kernel says in one line of /proc/self/status, SigIgn, a
    mask with bit n-1 for signal n (the container's /proc: the init needs it
    for exec.fifo anyway).
    """
    with open("/proc/self/status", "rb") as f:
        ignored = next((int(line.split()[1], 16) for line in f if line.startswith(b"SigIgn:")), 0)
    for sig in range(1, signal.NSIG):
        if ignored >> (sig - 1) & 1:
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                continue
