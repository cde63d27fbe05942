"""`create`: make the container, up to its init blocked before the user's program.

The runtime's side of the exchange described in init.py: reserve the id, make
the FIFO, fork (or hand the container to an init prepared in advance, see
prepared.py), answer the child's requests, and once the init reports ready,
write the state and the pid file. If anything fails, everything made so far
is undone: the init killed, the state directory removed. (The container's
mounts live in its own mount namespace and vanish with its last process.)
"""

from __future__ import annotations

import os
import pwd
import signal

from mini_docker.errors import InvalidArgument, MiniDockerError
from mini_docker.runtime import cgroup
from mini_docker.runtime import spec as oci
from mini_docker.runtime.init import InitContext, new_namespace_flags, stage1
from mini_docker.runtime.spec import IDMapping, Spec
from mini_docker.runtime.state import ContainerState, StateDir, now_rfc3339, process_start_time
from mini_docker.runtime.sync import SyncPipe

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the cost of importing typing
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from mini_docker.runtime.prepared import PreparedInit


class CreateError(MiniDockerError):
    """The container could not be created; the message is the child's reason."""


def create(container_id: str, bundle: str | os.PathLike, *, root: str | os.PathLike | None = None,
           pid_file: str | None = None, console_socket: str | None = None,
           preserve_fds: int = 0, prepared: PreparedInit | None = None,
           meanwhile: Callable[[], None] | None = None) -> ContainerState:
    """Create container `container_id` from `bundle`; return its state ("created").

    `prepared`: an init made in advance, used if it fits the config and
    discarded if not; either way it is used up. `meanwhile`: called while the
    container's init builds the container, for the caller's own preparations;
    what it raises undoes the create.
    """
    bundle = os.path.abspath(bundle)
    try:
        spec = oci.load(bundle)
        _check(spec, console_socket)
        limits = cgroup.resources(spec)  # checked before anything exists
        group_path = cgroup.group_path(spec, container_id)
        states = StateDir(root) if root else StateDir()
        directory = states.reserve(container_id)
    except BaseException:
        if prepared is not None:
            prepared.discard()
        raise
    if prepared is not None and not prepared.fits(spec, preserve_fds, group_path):
        prepared.discard()
        prepared = None
    init_pid, child, group = None, None, None
    try:
        fifo = os.path.join(directory, "exec.fifo")
        os.mkfifo(fifo)
        os.chmod(fifo, 0o622)  # the init opens it as the container's user (in a 0700 directory)
        console = _connect(console_socket) if console_socket else None
        deferred = None  # limits for a group that has its init in it already
        if prepared is None:
            group = cgroup.make(group_path, limits)
        elif prepared.stage0:
            group = prepared.take_group(group_path, limits)
        else:  # its own group, renamed; the limits once the init is busy (see below)
            group, deferred = prepared.take_group(group_path), limits
        ctx = InitContext(spec=spec, bundle=bundle, rootfs=oci.root_path(spec, bundle),
                          fifo=fifo, sync=prepared.sync if prepared else SyncPipe.open(),
                          preserve_fds=preserve_fds,
                          console=console.fileno() if console else None, cgroup=group)
        if prepared is None:
            child = _fork_stage1(ctx)
            if child == 0:
                stage1(ctx)  # never returns
        else:
            child = prepared.pid  # the init, or a stage 0 that forks it
            prepared.hand_over(ctx, (0, 1, 2))  # our stdio is the container's
            if deferred is not None:
                # Written while the init builds the container: before it reports ready,
                # and so before the container's program can run.
                group.set(deferred)
        if meanwhile is not None:
            meanwhile()
        if console:
            console.close()
        state = ContainerState(
            id=container_id, bundle=bundle, rootfs=ctx.rootfs, pid=0, start_time=0,
            created=now_rfc3339(), owner=_owner(), oci_version=spec.oci_version,
            annotations=spec.annotations, terminal=bool(spec.process and spec.process.terminal),
            cgroup_path=group_path)

        def save_state(pid: int) -> None:  # while the init builds the container, in parallel
            state.pid, state.start_time = pid, process_start_time(pid) or 0
            states.save(state)

        init_pid = _converse(ctx, spec, child, save_state,
                             init_pid=prepared.init_pid if prepared else None)
        if pid_file:
            _write_atomically(pid_file, f"{init_pid}")
        return state
    except BaseException:
        if prepared is not None and child is None:
            prepared.discard()
        for pid in (init_pid, child):
            if pid:
                _kill_quietly(pid)
        if group is not None:
            cgroup.remove(group_path)
        states.remove(container_id)
        raise


def _fork_stage1(ctx: InitContext) -> int:
    """fork stage 1, born in the container's cgroup where the kernel can (cgroup.fork_into)."""
    pid, born = cgroup.fork_into(ctx.cgroup)
    if pid == 0 and born:
        ctx.cgroup = None  # in it from birth: nothing to join
    return pid


def _check(spec: Spec, console_socket: str | None) -> None:
    if spec.process is None:
        raise InvalidArgument("config.json: process is missing: there is nothing to run")
    if spec.linux.namespace("mount") is None:
        raise InvalidArgument("config.json: linux.namespaces needs a mount namespace")
    if spec.process.terminal and not console_socket:
        raise InvalidArgument("process.terminal is true: a --console-socket is needed to "
                              "receive the terminal")
    if not spec.process.terminal and console_socket:
        raise InvalidArgument("--console-socket given, but process.terminal is false")


def _connect(path: str) -> socket.socket:
    import socket  # only with a terminal; the forked init finds it already loaded

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as err:
        sock.close()
        raise InvalidArgument(f"cannot connect to the console socket {path}: {err.strerror}") from None
    return sock


def _converse(ctx: InitContext, spec: Spec, child: int, on_pid: Callable[[int], None],
              init_pid: int | None = None) -> int:
    """Answer the child until its init is ready; return the init's host pid.

    `on_pid` is called with that pid as soon as it is known, before the init
    is ready; `init_pid`: known already (a prepared init, our own child).
    """
    sync = ctx.sync
    sync.parent_side()
    ready = False
    try:
        if init_pid is not None:
            on_pid(init_pid)
        # "pid" comes from stage 1 and "ready" from the init: two processes, so
        # either may arrive first, and both are needed.
        while (message := sync.receive()) is not None:
            kind = message["type"]
            if kind == "userns":
                write_id_maps(child, spec.linux.uid_mappings, spec.linux.gid_mappings)
                sync.go()
            elif kind == "pid":
                init_pid = message["pid"]
                on_pid(init_pid)
            elif kind == "ready":
                ready = True
            elif kind == "error":
                raise CreateError(f"container init failed: {message['message']}")
            if ready and init_pid is not None:
                break
        else:
            raise CreateError("container init exited during set-up without saying why")
    except BaseException:
        if init_pid:
            _kill_quietly(init_pid)
        raise
    finally:
        sync.close_parent()
        if child != init_pid:
            try:
                os.waitpid(child, 0)  # stage 1 has done its part
            except ChildProcessError:
                pass  # reaped already, by a caller's loop that reaps every child
    assert init_pid is not None
    return init_pid


def write_id_maps(pid: int, uids: list[IDMapping], gids: list[IDMapping]) -> None:
    """Write a new user namespace's ID maps, from outside, as the spec requires."""
    if not uids or not gids:
        raise InvalidArgument("a user namespace needs linux.uidMappings and linux.gidMappings")
    for name, mappings in (("uid_map", uids), ("gid_map", gids)):
        lines = "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in mappings)
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(lines)


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # not our child (it had a stage 1 parent): the subreaper or init reaps it


def _owner() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


__all__ = ["create", "CreateError", "new_namespace_flags"]
