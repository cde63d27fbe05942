"""`exec`: start another process inside a running container.

A new process cannot be created inside a namespace; it has to be moved
there. The runtime forks, and the child joins each of the init's namespaces
with setns(2), opening /proc/INIT/ns/KIND for each. Three rules shape it:

* the user namespace is joined first: it decides what the others allow;
* setns into a PID namespace, like unshare, applies to children only, so
  the child forks once more, and that grandchild is the process in the
  container;
* joining the mount namespace moves the root and cwd to that namespace's
  root, which is the container's pivoted root: no chroot is needed.

It also joins the init's cgroups, so the container's limits and accounting
cover it. Then it ends exactly like the init does (process.py).
"""

from __future__ import annotations

import json
import os

from mini_docker.errors import Conflict, InvalidArgument
from mini_docker.kernel import exit_status, fork, setns
from mini_docker.runtime import spec as oci
from mini_docker.runtime.cgroup import fork_into
from mini_docker.runtime.create import CreateError, _write_atomically
from mini_docker.runtime.init import _describe, set_up_terminal
from mini_docker.runtime.process import environment, exec_process, find_executable
from mini_docker.runtime.spec import Process
from mini_docker.runtime.state import ContainerState, StateDir
from mini_docker.runtime.sync import SyncPipe

JOIN_ORDER = ("user", "cgroup", "ipc", "uts", "net", "pid", "time", "mnt")


def load_process(path: str) -> Process:
    """A runtime-spec "process" object from a JSON file, as `exec --process` takes."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise InvalidArgument(f"cannot read the process file {path}: {err}") from None
    return oci._parse_process(doc)


def exec_in(container_id: str, process: Process, *, root: str | os.PathLike | None = None,
            detach: bool = False, pid_file: str | None = None, console: int | None = None,
            preserve_fds: int = 0) -> int:
    """Run `process` in the container. Returns its exit status, or 0 when detached.

    Waiting needs the process to be our child or re-parented to us: call this
    from a child subreaper (as `mini-runc exec` is) unless `detach` is set.
    """
    states = StateDir(root) if root else StateDir()
    state = states.load(container_id)
    if states.status(state) not in ("running", "created"):
        raise Conflict(f"cannot exec in a stopped container: {container_id}")
    namespaces = _namespace_fds(state)
    sync = SyncPipe.open()
    try:
        child, born = fork_into(StateDir.group(state))  # v2: born in the container's group
        if child == 0:
            if born:
                state.cgroup_path = None  # nothing left to join
            _join_and_exec(state, namespaces, process, sync, console, preserve_fds)
    finally:
        for fd in namespaces.values():
            os.close(fd)
    sync.parent_side()
    pid, error = None, None
    while (message := sync.receive()) is not None:
        if message["type"] == "pid":
            pid = message["pid"]
        elif message["type"] == "error":
            error = message["message"]
    sync.close_parent()
    if child != pid:
        os.waitpid(child, 0)
    if error:
        if pid and pid != child:
            _reap_if_ours(pid)
        raise CreateError(f"exec failed: {error}")
    assert pid is not None
    if pid_file:
        _write_atomically(pid_file, str(pid))
    if detach:
        return 0
    return _reap(pid)


def _reap(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return exit_status(status)


def _reap_if_ours(pid: int) -> None:
    """Reap a grandchild that failed, if it came back to us.

    It does only when we are a child subreaper. Detached (containerd's shim
    calls `exec --detach`), it was re-parented to the caller, who reaps it:
    waiting here would fail with ECHILD and hide the reason exec failed.
    """
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _namespace_fds(state: ContainerState) -> dict[str, int]:
    """Open the init's namespaces that differ from ours, in the order they are joined."""
    fds = {}
    for kind in JOIN_ORDER:
        theirs = f"/proc/{state.pid}/ns/{kind}"
        try:
            if os.readlink(theirs) != os.readlink(f"/proc/self/ns/{kind}"):
                fds[kind] = os.open(theirs, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
    return fds


def _join_cgroup(state: ContainerState) -> None:
    """Move this process into the container's cgroup: its limits and accounts cover us."""
    group = StateDir.group(state)
    if group is not None and group.exists():
        group.join()


def _join_and_exec(state: ContainerState, namespaces: dict[str, int], process: Process,
                   sync: SyncPipe, console: int | None, preserve_fds: int) -> None:
    status = 1
    try:
        sync.child_side()
        _join_cgroup(state)
        for kind, fd in namespaces.items():
            setns(fd, 0)
        if "pid" in namespaces:
            grandchild = fork()
            if grandchild != 0:  # its pid as the runtime sees it; not os.getpid() inside
                sync.send("pid", pid=grandchild)
                os._exit(0)
        else:
            sync.send("pid", pid=os.getpid())
        if console is not None:
            os.setsid()
            set_up_terminal(console, process.console_size, console_device=False)
        executable = find_executable(process.args[0], environment(process))
        exec_process(process, preserve_fds, executable, keep=(sync.report_w,))
    except BaseException as err:
        try:
            sync.send("error", message=_describe(err))
        finally:
            os._exit(status)
