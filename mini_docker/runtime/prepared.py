"""An init made in advance: the next container's namespaces, before anyone asks for it.

Half of what `create` does does not depend on the container at all: fork
the init (PID 1 of a new PID namespace), unshare the other namespaces,
make every mount private, make a cgroup and join it. For a Docker container these steps
are always the same: a new mount, UTS, IPC, PID and network namespace. In a
Python runtime they are also the slowest part of create, some 5 ms of it: a
forked Python process writes to most of the pages it touches (reference
counts), and each first write to a shared page copies it.

So a process that creates containers again and again (a shim waiting for
work, see engine/zygote.py) can make the next container's init ahead of
time, while nobody is waiting. The SOCK paper (Oakes et al., USENIX ATC
2018) pooled cgroups and namespaces for serverless functions for the same
reason. The prepared init waits on a socket:

    PreparedInit()   unshare(PID), fork ──────────▶ init, PID 1: join its group,
                     setns(our own PID namespace)   unshare the others, rprivate /,
                                                    say "prepared", wait for work
    create(..., prepared=p)
                     the container: spec, paths ──▶ stdio as fds 0-2, the rootfs,
                     its stdio (and a terminal's      then as any init
                     socket) as SCM_RIGHTS

From there the init builds the container exactly as one forked by `create`
does (init.py), and reports over the same sync pipe.

One thing is not the same. The init's mount namespace is a copy of ours
taken when it was made, and private: a mount made since (the engine mounts
a container's overlay rootfs just before starting it) is not in it, and
its mount point there is an empty directory. mount(2) cannot help, since a
bind mount's source must be in the caller's own namespace. The newer mount
API can: open_tree(OPEN_TREE_CLONE) copies a mount tree into a detached one
held by a file descriptor, the descriptor travels to the init over the
socket, and move_mount attaches it in the init's namespace. The rootfs and
the source of every bind mount go that way, and the FIFO as an open
descriptor, so that nothing depends on what the copy has.

Its control group can be made in advance too. Making a group is a mkdir in
each of a v1 host's hierarchies, and joining it a write in each: together
about 1 ms. So on cgroup v1 the prepared init waits in a group of its own,
"mini-docker/.prepared-<pid>-<n>", and create *renames* it to the
container's ("mini-docker/<id>"), then writes the limits: rename(2) of a
cgroup directory moves nothing and nobody. cgroup v2 does not rename
groups, and there a process that *moves* into a group waits for an RCU
grace period (5 ms and more, measured). So on v2 what waits is a stage 0,
in the new namespaces but for the PID namespace, which is its children's:
handed the container, it forks the init straight into the container's
group (clone3 with CLONE_INTO_CGROUP: born there, never moved), reports
the init's pid over the sync pipe, as create's stage 1 does, and exits.

A prepared init fits a config that asks for exactly its new namespaces
(plus a cgroup namespace, which the init makes once it is in the
container's group, as a cgroup namespace must be), joins none by path, has
no user namespace, keeps the default rprivate propagation, and (on v1)
wants a group that the init's own can become (beside it, not there yet). Anything
else is created the ordinary way, and the prepared init is discarded: it
reads EOF and exits.
"""

from __future__ import annotations

import json
import os
import pickle
import socket

from mini_docker.errors import MiniDockerError
from mini_docker.kernel import constants as C
from mini_docker.kernel import (fork, fork_as_sibling, fork_into_cgroup, mount, move_mount,
                                name_process, open_tree, prctl, setns, unshare)
from mini_docker.runtime import cgroup
from mini_docker.runtime.init import InitContext, new_namespace_flags, report_failure, run_init
from mini_docker.runtime.process import close_inherited_fds
from mini_docker.runtime.rootfs import bind_source, is_bind, open_tree_flags
from mini_docker.runtime.spec import Spec
from mini_docker.runtime.sync import SyncPipe

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the cost of importing typing
if TYPE_CHECKING:
    from mini_docker.cgroups import Cgroup, Resources

# A Docker container's new namespaces, when it shares none with the host or another container.
DOCKER_NAMESPACES = (C.CLONE_NEWNS | C.CLONE_NEWUTS | C.CLONE_NEWIPC | C.CLONE_NEWPID
                     | C.CLONE_NEWNET)
MAX_FDS = 253  # SCM_RIGHTS carries at most this many descriptors in one message


class PreparedInit:
    """A container init forked ahead of time, waiting in its new namespaces."""

    __slots__ = ("flags", "group", "stage0", "sync", "_maker", "_pid", "_socket")

    _made = 0  # how many this process has made: part of each group's name

    def __init__(self, flags: int = DOCKER_NAMESPACES, group_parent: str = "mini-docker",
                 maker: InitMaker | None = None) -> None:
        """`group_parent`: where to make its group (cgroup v1; on v2 it has none, and a
        stage 0 forks the init into the container's group at hand-over). `maker`: a
        child of ours that forks it for us (see InitMaker); else we fork it."""
        if flags & (C.CLONE_NEWUSER | C.CLONE_NEWCGROUP):
            raise ValueError("a prepared init cannot have a user or cgroup namespace of its own")
        self.flags = flags
        self.group = _make_group(group_parent)
        # Without a group of its own to become the container's, the process made
        # now is a stage 0, which forks the init into the container's group once
        # it is known: on cgroup v2, born in it (clone3), never moved.
        self.stage0 = self.group is None
        self.sync = SyncPipe.open()
        self._socket, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._maker = maker
        if maker is not None:  # it answers with the pid while we go on (see pid)
            self._pid = None
            try:
                maker.ask(self.sync, theirs, flags, self.group)
            except BaseException:
                theirs.close()
                self._socket.close()
                self.sync.parent_side()  # closes the child's ends,
                self.sync.close_parent()  # and then ours
                if self.group is not None:
                    cgroup.remove(self.group.path)
                raise
        elif self.stage0:
            self._pid = fork()
        else:  # the init itself
            self._pid = _fork_into_new_pid_namespace() if flags & C.CLONE_NEWPID else fork()
        if self._pid == 0:
            self._socket.close()
            _wait_for_work(self.sync, theirs, flags, self.group, self.stage0)  # never returns
        theirs.close()
        self.sync.parent_side()

    @property
    def pid(self) -> int:
        """The process made: the init, or a stage 0. For one a maker forks, the maker's
        answer, read the first time it is needed (MiniDockerError: it could not fork)."""
        if self._pid is None:
            if self._maker is None:
                raise MiniDockerError("the init maker could not fork this prepared init")
            maker, self._maker = self._maker, None
            self._pid = maker.answer()
        return self._pid

    def _forked(self) -> bool:
        """Whether its process exists (was forked), reading the maker's answer if need be."""
        try:
            return self.pid > 0
        except MiniDockerError:
            return False

    @property
    def init_pid(self) -> int | None:
        """The init's pid; None for a stage 0 (it reports the init's once it has forked it)."""
        return None if self.stage0 else self.pid

    def fits(self, spec: Spec, preserve_fds: int = 0, group_path: str | None = None) -> bool:
        """Whether a container of `spec` (in the group at `group_path`) can use this init."""
        linux = spec.linux
        if group_path is not None and not self.stage0 and (
                self.group is None  # given away already
                or os.path.dirname(group_path) != os.path.dirname(self.group.path)
                or cgroup.open_group(group_path).exists()):
            return False  # its group cannot become that one
        return (preserve_fds == 0 and self._socket is not None and self._forked()
                and sum(map(is_bind, spec.mounts)) <= MAX_FDS - 6
                and new_namespace_flags(spec) & ~C.CLONE_NEWCGROUP == self.flags
                and not any(ns.path for ns in linux.namespaces)
                and linux.rootfs_propagation in (None, "", "rprivate"))

    def take_group(self, path: str, limits: Resources | None = None) -> Cgroup:
        """The container's group: for a stage 0 one made now, with `limits`, which it will
        fork the init into; else the init's own, renamed to `path` (see fits), which the
        caller gives its limits once the init has its container (runtime/create.py)."""
        if self.stage0:
            return cgroup.make(path, limits)
        if self.group is None:
            raise MiniDockerError("this prepared init has given its cgroup away")
        if not self.wait_until_made():  # the init joins the group by its first name
            raise MiniDockerError("the prepared init did not get ready in time")
        group, self.group = self.group.renamed(path), None
        return group

    def hand_over(self, ctx: InitContext, stdio: tuple[int, int, int]) -> None:
        """Give the init its container: the context, and as descriptors fds 0-2, the
        FIFO, the rootfs and every bind mount's source, and a console socket."""
        trees: list[int] = []
        fifo = directory = None
        try:
            # Opened here, in our mount namespace: the init's is a copy made before
            # they were mounted (the engine mounts a container's rootfs at create).
            fifo = os.open(ctx.fifo, os.O_PATH | os.O_CLOEXEC)
            trees.append(open_tree(ctx.rootfs))
            for m in ctx.spec.mounts:
                if is_bind(m):
                    trees.append(open_tree(bind_source(m, ctx.bundle), open_tree_flags(m)))
            if self.stage0 and ctx.cgroup is not None:
                directory = ctx.cgroup.directory_fd()  # v2: the init is born in it
            fds = [*stdio, fifo, *trees] + ([ctx.console] if ctx.console is not None else [])
            fds += [directory] if directory is not None else []
            work = (ctx.spec, ctx.bundle, ctx.rootfs, ctx.console is not None,
                    ctx.cgroup if self.stage0 else None, directory is not None)
            socket.send_fds(self._socket, [pickle.dumps(work, pickle.HIGHEST_PROTOCOL)], fds)
        finally:
            self._socket.close()
            self._socket = None
            for fd in [fifo, directory, *trees]:
                if fd is not None:
                    os.close(fd)

    def wait_until_made(self, timeout: float = 5) -> bool:
        """Wait until the init has joined its group and made its namespaces (it says so)."""
        import select

        return bool(select.select([self.sync.report_r], [], [], timeout)[0])

    def discard(self) -> None:
        """Let the init go unused: it reads EOF and exits; reap what is ours to reap.

        Once the init has been handed a container (or discarded) this does nothing.
        """
        if self._socket is None:
            return
        self._socket.close()
        self._socket = None
        while self.sync.receive() is not None:  # EOF once the init has gone
            pass
        self.sync.close_parent()
        if self._forked():
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass  # reaped already, by a caller's loop that reaps every child
        if self.group is not None:
            cgroup.remove(self.group.path)  # and "mini-docker/", if nothing else is in it
            self.group = None


class InitMaker:
    """A child of ours that forks our prepared inits, which are our own children all the same.

    An init we fork ourselves shares every page of ours, copy-on-write, until
    it execs, and a Python process writes to most pages it touches (reference
    counts): each page we write meanwhile is copied. A shim that serves one
    container after another prepares the next init as soon as it is back, and
    then creates the container it is given, so it would pay those copies on
    the container's way, every time. A maker, forked once, shares our pages
    once. It forks each init with clone3(CLONE_PARENT), which makes the new
    process *our* child, not the maker's: we reap it and hear of its exit, as
    of one we forked, and our pages are never shared with it.
    """

    __slots__ = ("broken", "pid", "_socket")

    def __init__(self) -> None:
        self.broken = False  # it failed to answer: it is of no more use
        self._socket, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = fork()
        if self.pid == 0:
            self._socket.close()
            _make_inits(theirs)  # never returns
        theirs.close()

    def fileno(self) -> int:
        return self._socket.fileno()

    def ask(self, sync: SyncPipe, sock: socket.socket, flags: int, group: Cgroup | None) -> None:
        """Have it fork a prepared init (a stage 0 without a `group`), our child, given the
        child's ends of `sync`, and `sock`; `answer` says its pid. One at a time."""
        try:
            socket.send_fds(self._socket, [pickle.dumps((flags, group), pickle.HIGHEST_PROTOCOL)],
                            [sync.report_w, sync.go_r, sock.fileno()])
        except OSError as err:
            self.broken = True
            raise MiniDockerError(f"the init maker cannot fork: {err.strerror}") from None

    def answer(self) -> int:
        """The pid of the process it forked at the last `ask`."""
        try:
            answer = self._socket.recv(256)
        except OSError as err:
            answer = err.strerror.encode()
        if not answer.isdigit():
            self.broken = True
            raise MiniDockerError(f"the init maker cannot fork: {answer.decode() or 'it has gone'}")
        return int(answer)

    def close(self) -> None:
        """It reads EOF and exits; reap it."""
        self._socket.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass  # reaped already, by a caller's loop that reaps every child


def _make_inits(sock: socket.socket) -> None:
    """The maker's life: an init for each request, until EOF. Never returns."""
    try:
        import signal

        name_process("mini-initmaker")
        prctl(C.PR_SET_PDEATHSIG, signal.SIGKILL)  # no longer than the shim it works for
        close_inherited_fds(keep=(sock.fileno(),))
        while True:
            message, fds, _, _ = socket.recv_fds(sock, 4096, 3)
            if not message:
                os._exit(0)
            flags, group = pickle.loads(message)
            stage0 = group is None
            try:
                pid = fork_as_sibling(new_pid_namespace=not stage0 and bool(flags & C.CLONE_NEWPID))
            except OSError as err:
                pid, answer = -1, (err.strerror or str(err)).encode()
            else:
                answer = b"%d" % pid
            if pid == 0:
                sock.close()
                name_process("mini-zygote")  # as an init forked by an idle shim is
                for fd in fds:  # as they are in an init we fork ourselves
                    os.set_inheritable(fd, False)
                report_w, go_r, theirs = fds
                _wait_for_work(SyncPipe(-1, report_w, go_r, -1), socket.socket(fileno=theirs),
                               flags, group, stage0)  # never returns
            for fd in fds:
                os.close(fd)
            sock.send(answer)
    finally:
        os._exit(1)


def sweep(parent: str = "mini-docker") -> list[str]:
    """Remove the groups of prepared inits whose maker died without discarding them
    (killed): empty ones named for a process that is gone. Returns their paths."""
    removed = []
    try:
        hierarchies = cgroup.open_group(parent).directories()
    except (OSError, MiniDockerError):
        return removed
    for name in sorted({n for d in hierarchies if os.path.isdir(d) for n in os.listdir(d)}):
        maker = name.removeprefix(".prepared-").partition("-")[0]
        if not name.startswith(".prepared-") or not maker.isdigit() or os.path.exists(
                f"/proc/{maker}"):
            continue
        group = cgroup.open_group(f"{parent}/{name}")
        if group.exists() and not group.procs():  # never kill: an empty group only
            cgroup.remove(group.path)
            removed.append(group.path)
    return removed


def _make_group(parent: str) -> Cgroup | None:
    """An empty group for the init under `parent`, on cgroup v1; None where groups
    cannot be renamed (v2) or made."""
    PreparedInit._made += 1
    try:
        group = cgroup.open_group(f"{parent}/.prepared-{os.getpid()}-{PreparedInit._made}")
        if group.driver != "v1":
            return None
        group.create()
    except (OSError, MiniDockerError):
        return None
    return group


def _fork_into_new_pid_namespace() -> int:
    """fork, the child being PID 1 of a new PID namespace; we stay where we were.

    unshare(CLONE_NEWPID) does not move the caller: it sets the namespace its
    *next children* are born in. So: unshare, fork, and set our children's
    namespace back to our own with setns. (create's stage 1 is a process of
    its own because it cannot do that last step: it must not stay behind in
    the container's mount and network namespaces. Here every other namespace
    is made by the child itself, after the fork, and only the PID namespace
    is made by us. A thread of ours that forked in between would put its
    child in the new namespace: the engine's spare has one thread.)
    """
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    pid = -1
    try:
        unshare(C.CLONE_NEWPID)
        pid = fork()
        return pid
    finally:
        if pid != 0:  # the parent (the child, PID 1 there, is where it belongs)
            setns(own, C.CLONE_NEWPID)
        os.close(own)


def warm_up() -> None:
    """Run, to no effect, the code the init runs once it has its container.

    The init is a fork: it shares its maker's memory until it writes to a
    page, and Python writes to every object it uses (reference counts), so
    the first use of each function, class and constant costs a page copy.
    Used here once, while nobody waits, they cost the container nothing.
    """
    from mini_docker.runtime import process as process_setup
    from mini_docker.runtime import rootfs as rootfs_setup
    from mini_docker.runtime.spec import default_spec, parse

    spec = parse(default_spec(["sh"], terminal=False))
    spec, *_ = pickle.loads(pickle.dumps((spec, "/", "/", False), pickle.HIGHEST_PROTOCOL))
    for m in spec.mounts:
        rootfs_setup.parse_options(m.options)
        rootfs_setup.secure_join("/", m.destination)
        is_bind(m)
    env = process_setup.environment(spec.process)
    process_setup.find_executable("sh", env)
    json.dumps({"type": "ready", "pid": 1})
    try:
        mount(None, "/nonexistent/mini-docker-warm-up", None, C.MS_PRIVATE)
    except OSError:
        pass


def _fork_the_init(sync: SyncPipe, directory: int | None, group: Cgroup | None) -> None:
    """A stage 0's last act: fork the init, in the container's group from birth where the
    kernel can (clone3), report its pid, exit. Returns only in the init."""
    if directory is not None:
        try:
            pid = fork_into_cgroup(directory)
        except OSError:  # a kernel before 5.7
            directory = None
    if directory is None:
        pid = fork()
        if pid == 0 and group is not None:
            group.join()  # v1: through tasks, which does not wait
    if pid == 0:
        if directory is not None:
            os.close(directory)
        return
    sync.send("pid", pid=pid)
    os._exit(0)


def _wait_for_work(sync: SyncPipe, sock: socket.socket, flags: int, group: Cgroup | None,
                   stage0: bool) -> None:
    """The prepared init (or its stage 0): join its group, make its namespaces, wait for a
    container, then become its init. Never returns."""
    try:
        sync.child_side()
        # What our maker had open is not ours: its socket to the zygote above all, which,
        # held here too, would keep a killed spare's end open and swallow a hand-over.
        close_inherited_fds(keep=(sync.report_w, sync.go_r, sock.fileno()))
        if group is not None:
            group.join()
        # The init is PID 1 of its PID namespace already; a stage 0 makes it for its child.
        unshare(flags if stage0 else flags & ~C.CLONE_NEWPID)
        mount(None, "/", None, C.MS_PRIVATE | C.MS_REC)  # rootfs step 1, done while idle
        sync.send("prepared")
        try:
            warm_up()
        except Exception:  # noqa: BLE001  (only ever a matter of speed)
            pass
        message, fds, _, _ = socket.recv_fds(sock, 1 << 20, MAX_FDS)
        sock.close()
        if not message:
            os._exit(0)  # discarded
        spec, bundle, rootfs, has_console, join, born = pickle.loads(message)
        if stage0:
            _fork_the_init(sync, fds.pop() if born else None, join)  # returns in the init
        if new_namespace_flags(spec) & C.CLONE_NEWCGROUP:
            unshare(C.CLONE_NEWCGROUP)  # in the container's group by now: it becomes the root
        console = fds.pop() if has_console else None
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
            os.close(fd)
        fifo, rootfs_tree, *bind_trees = fds[3:]
        move_mount(rootfs_tree, rootfs)  # the rootfs, as the runtime sees it
        os.close(rootfs_tree)
        ctx = InitContext(spec=spec, bundle=bundle, rootfs=rootfs, fifo=fifo, sync=sync,
                          console=console, propagated=True, bind_trees=bind_trees)
    except BaseException as err:
        report_failure(sync, err)
        os._exit(1)
    run_init(ctx)
