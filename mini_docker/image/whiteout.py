"""Whiteouts: how a layer says that something in the layers below it is gone.

A layer is a tar of what changed, and a tar can only hold things that exist.
To record a deletion, OCI images borrow AUFS's trick: an empty file whose
name is the deleted one prefixed with `.wh.`. `etc/.wh.motd` means "there is
no etc/motd any more". A directory that was deleted and made again holds a
marker `.wh..wh..opq` ("opaque"): nothing of the lower layers' directory
shows through, only what this layer puts in it.

What a whiteout turns into depends on where the layer is unpacked:

- "overlay": into the upper directory of an overlayfs snapshot. overlayfs
  has its own vocabulary for the same two ideas, so we translate: a
  character device 0/0 named like the deleted file hides it, and the xattr
  `trusted.overlay.opaque="y"` makes a directory opaque. The lower layers
  are not touched; the kernel hides them when it mounts the stack.
- "delete": onto one directory that already holds the layers below (a
  flattened rootfs, as `docker export` gives). Then a whiteout is a plain
  removal, and an opaque marker removes what the lower layers left in that
  directory, but not what this very layer has already put there: a tar
  lists a directory's new content before or after the marker, in any order.

Every function here works on a directory file descriptor and a single name
in it, and none follows a symbolic link, so a removal can never leave the
directory it was aimed at. Finding that directory safely is the caller's
job (`unpack._LayerRoot`).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat

PREFIX = ".wh."
"""A file named `.wh.NAME` deletes NAME from the layers below."""

OPAQUE = ".wh..wh..opq"
"""A file of this name makes its directory opaque."""

META_PREFIX = ".wh..wh."
"""AUFS's own bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): not a whiteout, skipped."""

OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"


def hidden_name(base: str) -> str | None:
    """The name that the entry `base` whites out, or None if it is no whiteout.

    Opaque markers and AUFS metadata are not whiteouts of a name: check them
    first with `is_opaque` and `is_meta`. The result may be "", "." or "..",
    which a caller must refuse: they would hide the directory itself or its
    parent.
    """
    if not base.startswith(PREFIX) or base.startswith(META_PREFIX):
        return None
    return base[len(PREFIX):]


def is_opaque(base: str) -> bool:
    return base == OPAQUE


def is_meta(parts: tuple[str, ...]) -> bool:
    """Whether an entry (its path's components) is AUFS bookkeeping, such as `.wh..wh.plnk/12`."""
    return any(part.startswith(META_PREFIX) and part != OPAQUE for part in (parts[0], parts[-1]))


def remove(dir_fd: int, name: str) -> bool:
    """Remove `name` from the directory `dir_fd`, with all it holds. False if it was absent.

    A symbolic link is removed itself, never what it points to, and
    shutil.rmtree (given dir_fd) walks the tree through file descriptors,
    opening each directory with O_NOFOLLOW.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)
    return True


def overlay_whiteout(dir_fd: int, name: str, uid: int = 0, gid: int = 0) -> None:
    """Hide `name` of the lower layers the way overlayfs expects: a 0/0 character device."""
    remove(dir_fd, name)  # the same layer may have made it; the spec forbids it, docker copes
    os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=dir_fd)
    os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)


def overlay_opaque(dir_fd: int) -> None:
    """Mark the directory `dir_fd` opaque for overlayfs (needs CAP_SYS_ADMIN: trusted.*)."""
    os.setxattr(dir_fd, OVERLAY_OPAQUE_XATTR, b"y")


def remove_lower(dir_fd: int, path: tuple[str, ...], keep: set[tuple[str, ...]]) -> int:
    """Empty the directory `dir_fd` (at `path` below the layer root) of lower layers' content.

    keep: the paths this layer has made or gone through so far (a directory
        is in it when an entry of this layer lies below it). Those stay, and
        the directories among them are emptied in turn, since an opaque
        directory shows nothing of the lower layers at any depth.

    Returns how many entries were removed.
    """
    removed = 0
    for name in os.listdir(dir_fd):
        child = path + (name,)
        if child not in keep:
            removed += remove(dir_fd, name)
            continue
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except OSError as err:  # a file or a symlink of this layer: kept as it is
            if err.errno in (errno.ENOTDIR, errno.ELOOP):
                continue
            raise
        try:
            removed += remove_lower(fd, child, keep)
        finally:
            os.close(fd)
    return removed
