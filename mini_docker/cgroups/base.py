"""The one interface both cgroup drivers implement, and what they share.

crun has two cgroup managers, cgroupfs and systemd, and the rest of crun
cannot tell them apart: each is the same struct of functions. Our drivers
follow that shape. `Cgroup` below is the struct: create, add, join, set, stats,
freeze, kill, destroy. `V1Cgroup` (v1.py) spreads one group over a
directory per controller; `V2Cgroup` (v2.py) keeps it in one directory of
the unified tree. The engine holds a `Cgroup` and never asks which.

Two habits run through both drivers. `set()` works out every write first,
as a list of `Write`s, checks that every file is there, and only then
writes: a limit the host cannot apply fails before the group is half
configured. And `destroy()` is the same for both: kill what is inside,
then remove the directories, deepest first, since the kernel refuses to
remove a cgroup that still has children or processes.

`Write` is a plain class, not a dataclass: importing dataclasses costs the
mini-runc command 7 ms of its ~30, and runc's speed is the target.
"""

from __future__ import annotations

import copy
import errno
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from mini_docker.cgroups.resources import Resources
from mini_docker.cgroups.stats import Pressure, Stats
from mini_docker.errors import InvalidArgument, MiniDockerError, NotFound
from mini_docker.records import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the cost of importing typing
if TYPE_CHECKING:
    from typing import ClassVar


class CgroupError(MiniDockerError):
    """The kernel refused a cgroup operation, or the host lacks what it needs."""


class Write(Value):
    """One value to write to one interface file of the group's `controller`."""

    __slots__ = ("controller", "file", "value")  # noqa: RUF023 - in the order of __init__

    def __init__(self, controller: str, file: str, value: str) -> None:
        self.controller = controller
        self.file = file
        self.value = value


def clean_path(path: str) -> str:
    """A cgroup path relative to each hierarchy's root: "/docker/abc" -> "docker/abc"."""
    parts = [p for p in str(path).split("/") if p not in ("", ".")]
    if not parts or ".." in parts or ":" in path:
        raise InvalidArgument(f"invalid cgroup path '{path}': use a path such as mini-docker/<id>"
                              " (systemd slice:prefix:name paths are not supported)")
    return "/".join(parts)


def write_file(path: str, value: str) -> None:
    """Write one value as the kernel wants it: a single write(2) of the whole text."""
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as err:
        raise CgroupError(f"cannot write '{value}' to {path}: {err.strerror}") from None


def write_files(writes: list[tuple[str, str]]) -> None:
    """write_file for each (path, value), in order; values in a row for one file go
    through one open of it, each still a write(2) of its own (devices.allow, for one,
    takes one rule per write)."""
    fd, current, value = -1, None, ""
    try:
        for path, value in writes:
            if path != current:
                if fd >= 0:
                    os.close(fd)
                fd, current = -1, path
                fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
            os.write(fd, value.encode())
    except OSError as err:
        raise CgroupError(f"cannot write '{value}' to {current}: {err.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def gone_while_waiting(path: str, thawing: bool) -> bool:
    """For a freezer wait whose group was removed meanwhile: a thaw is done (no process is
    left to thaw); a freeze fails at once, not after its timeout."""
    if thawing:
        return True
    raise CgroupError(f"cgroup {path} was removed while it was being frozen")


def wait_until(done: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `done` every few milliseconds; CgroupError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise CgroupError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.005)


def read_procs(directory: str) -> list[int]:
    """The process ids in a group's cgroup.procs (none if the group is gone)."""
    try:
        with open(f"{directory}/cgroup.procs") as f:
            return [int(line) for line in f.read().split()]
    except FileNotFoundError:
        return []


def kill_each(pids: list[int]) -> None:
    """SIGKILL every pid; one that has already gone is not an error."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def remove_tree(directory: str, timeout: float = 2.0) -> None:
    """rmdir a cgroup and every group under it, deepest first.

    EBUSY means a process is still on its way out: wait a little and retry.
    """
    try:
        os.rmdir(directory)  # the usual case: no group below it, no process left
        return
    except FileNotFoundError:
        return
    except OSError:
        pass  # the long way round
    below = [root for root, _, _ in os.walk(directory, topdown=False)]
    deadline = time.monotonic() + timeout
    for path in below:
        while True:
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as err:
                if err.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise CgroupError(f"cannot remove cgroup {path}: {err.strerror}") from None
                time.sleep(0.01)


class Cgroup(ABC):
    """A control group named by `path`, relative to the root of each hierarchy.

    The same path ("mini-docker/<id>", as docker uses "docker/<id>") names
    the group in every v1 hierarchy, or once in the v2 tree. A Cgroup is a
    handle: making one does not touch the kernel; `create()` does.
    """

    driver: ClassVar[str]  # "v1" or "v2"

    def __init__(self, path: str) -> None:
        self.path = clean_path(path)
        self._made: list[str] = []  # directories create() made, parents first
        self.warnings: list[str] = []  # what the last set() could not enforce

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"

    def __enter__(self) -> "Cgroup":
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    @abstractmethod
    def directories(self) -> list[str]:
        """The group's directories: one per hierarchy in v1, one in v2."""

    @abstractmethod
    def require(self, resources: Resources) -> None:
        """CgroupError if the host lacks a controller `resources` needs (nothing is touched)."""

    @abstractmethod
    def create(self) -> None:
        """Make the group's directories (and missing parents); no error if they exist."""

    @abstractmethod
    def plan(self, resources: Resources) -> tuple[list[Write], list[str]]:
        """The writes that apply `resources`, in order, and warnings about what cannot be."""

    @abstractmethod
    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into the group."""

    @abstractmethod
    def join(self) -> None:
        """Move the calling process (of a single thread: a child just forked) into the group."""

    @abstractmethod
    def stats(self) -> Stats:
        """The group's accounts now."""

    @abstractmethod
    def freeze(self) -> None:
        """Stop every process in the group, and wait until the kernel says they are."""

    @abstractmethod
    def thaw(self) -> None:
        """Let the group's processes run again."""

    @abstractmethod
    def frozen(self) -> bool:
        """Whether the group is frozen."""

    @abstractmethod
    def kill_all(self) -> None:
        """SIGKILL every process in the group and wait until none is left."""

    @abstractmethod
    def oom_events(self) -> int:
        """How many processes the out-of-memory killer has killed in the group."""

    @abstractmethod
    def file_path(self, controller: str, file: str) -> str:
        """Where `file` of `controller` lives for this group."""

    def pressure(self) -> dict[str, Pressure]:
        """Pressure stall information by resource ("cpu", "memory", "io"): v2 only."""
        return {}

    def require_exists(self) -> None:
        """NotFound unless the group exists."""
        if not self.exists():
            raise NotFound(f"cgroup {self.path} does not exist")

    def exists(self) -> bool:
        """Whether any of the group's directories exists."""
        return any(os.path.isdir(d) for d in self.directories())

    def procs(self) -> list[int]:
        """The processes in the group, in any of its directories, sorted."""
        return sorted({pid for d in self.directories() for pid in read_procs(d)})

    def set(self, resources: Resources) -> list[str]:
        """Apply `resources`; return warnings for what this driver cannot enforce.

        Every write is planned and every file checked before the first one is
        made, so a limit the host cannot apply changes nothing.
        """
        self.require(resources)
        writes, warnings = self.plan(resources)
        paths = [self.file_path(w.controller, w.file) for w in writes]
        for path, w in dict(zip(paths, writes)).items():  # each file once
            if not os.path.exists(path):
                raise CgroupError(self.missing_file(w))
        write_files(list(zip(paths, (w.value for w in writes))))
        self.warnings = warnings
        return warnings

    def missing_file(self, write: Write) -> str:
        """Why `write` cannot be made: the group or the file is missing."""
        where = self.file_path(write.controller, write.file)
        if not os.path.isdir(os.path.dirname(where)):
            return f"cgroup {self.path} does not exist: create it first"
        return f"this host's {write.controller} controller has no {write.file} ({where})"

    def directory_fd(self) -> int | None:
        """Its directory, opened for clone3's CLONE_INTO_CGROUP (kernel.fork_into_cgroup),
        where a child can be born in the group; None where it cannot (cgroup v1)."""
        return None

    def renamed(self, path: str) -> Cgroup:
        """Rename the group to `path`, a sibling: same parent, another name; return it.

        The processes inside stay where they are, and so do the limits: only
        the name changes. cgroup v1 allows this (rename(2) on each
        hierarchy's directory); cgroup v2 does not (V2Cgroup says so).
        """
        new = copy.copy(self)
        new.path, new._made, new.warnings = clean_path(path), [], []
        if os.path.dirname(new.path) != os.path.dirname(self.path):
            raise CgroupError(f"cannot rename cgroup {self.path} to {new.path}: not a sibling")
        done: list[tuple[str, str]] = []
        try:
            for old_dir, new_dir in zip(self.directories(), new.directories(), strict=True):
                os.rename(old_dir, new_dir)
                done.append((old_dir, new_dir))
        except OSError as err:
            for old_dir, new_dir in reversed(done):
                os.rename(new_dir, old_dir)
            raise CgroupError(f"cannot rename cgroup {self.path} to {new.path}: "
                              f"{err.strerror}") from None
        return new

    def destroy(self) -> None:
        """Kill everything inside, then remove every directory this group made.

        Safe to call twice, and on a group that was never created. A parent
        shared with another group (mini-docker/ holds every container) stays.
        """
        if self.exists() and self.procs():
            self.kill_all()
        for directory in self.directories():
            remove_tree(directory)
        for directory in reversed(self._made):
            try:
                os.rmdir(directory)
            except OSError as err:  # gone already, or a sibling group still uses it
                if err.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
                    raise CgroupError(f"cannot remove cgroup {directory}: {err.strerror}") from None
        self._made = []

    def _make_dirs(self, root: str) -> list[str]:
        """mkdir root/path one level at a time; return the directories made, parents first.

        Another container's clean-up may remove a shared parent ("mini-docker/")
        that it found empty, just after we saw it there: the next mkdir then
        fails with ENOENT, and the walk starts again from the top.
        """
        made: list[str] = []
        for attempt in range(5):
            current = root
            for part in self.path.split("/"):
                current = f"{current}/{part}"
                try:
                    os.mkdir(current)
                except FileExistsError:
                    continue
                except FileNotFoundError:
                    if attempt < 4:
                        break  # a parent vanished under us: again from the top
                    raise CgroupError(f"cannot create cgroup {current}: its parent keeps "
                                      "disappearing") from None
                except OSError as err:
                    raise CgroupError(f"cannot create cgroup {current}: {err.strerror}") from None
                made.append(current)
                self._made.append(current)
            else:
                return made
        return made

    def _kill_until_empty(self, timeout: float = 5.0) -> None:
        """SIGKILL the group's processes over and over until none is left.

        Once is not enough: a process may fork between our reading of
        cgroup.procs and its death, and its child would be missed.
        """
        def empty() -> bool:
            kill_each(self.procs())
            return not self.procs()
        wait_until(empty, timeout, f"the processes of cgroup {self.path} to die")
