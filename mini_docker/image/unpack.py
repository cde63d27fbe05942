"""Unpacking an image layer, safely, even when the layer was written by an enemy.

An image layer is a tar (often gzipped) of what one build step changed. To
use it we write its entries into a directory: a fresh one per layer for an
overlayfs snapshot, or the directory that already holds the layers below it.
That sounds like `tar -xf`, and it is, except that a layer comes from the
internet and its author may want us to write somewhere else: `../../etc/cron.d/x`,
`/root/.ssh/authorized_keys`, or, subtler, a symlink `lib -> /etc` followed by
an entry `lib/passwd`. Every container runtime has shipped a bug of this kind
(docker, containerd, podman, Python's own tarfile filters as late as 2025), so
we do not delegate: tarfile only parses the headers, and we create every entry
ourselves with a few rules.

1. Names are cleaned the way docker cleans them. A leading "/" is dropped
   (an absolute name is relative to the layer's root, as GNU tar and docker
   read it), "." and empty components go, and ".." cancels the component
   before it. A name whose ".." would climb above the root is refused: no
   legitimate layer has one. The same goes for hard link targets.
2. The entry's parent directory is found component by component, each one
   opened with `openat(O_NOFOLLOW | O_DIRECTORY)` relative to the one before,
   starting from a descriptor on the destination. A component that is a
   symbolic link is read and interpreted by us, with the destination as
   "/" (what the kernel's `openat2(RESOLVE_IN_ROOT)` does, which Python 3.11
   cannot call): `/etc` means dest/etc, and ".." at the root stays at the
   root. So `lib -> /etc` then `lib/passwd` writes dest/etc/passwd, as the
   image's author meant it inside a container, and never the host's.
3. The last component is never followed. Every entry is made with a call
   that refuses to go through a symlink (openat O_CREAT|O_EXCL, mkdirat,
   symlinkat, linkat without AT_SYMLINK_FOLLOW, mknodat), and whatever stood
   there before is removed first, never opened and truncated. Owner, mode,
   xattrs and times are set on the new descriptor (fchown, fchmod,
   fsetxattr, futimens), not by path.
4. A symlink's own target is data: `bin/sh -> /bin/busybox` is kept byte for
   byte, whatever it points at. It only matters when a later entry goes
   through it, and then rule 2 applies.

What stays racy. Each step holds a descriptor on a directory inside the
destination and never asks the kernel to resolve "..", so a symlink swapped
in by someone else meanwhile is read (and confined) by us, not followed. What
a descriptor cannot guard against is another process renaming a directory we
hold to somewhere outside the destination while we write in it. That needs
write access to the destination, which is a fresh directory under
mini-docker's root-owned state directory: only root can do it, and root can
write anywhere anyway.

A failed unpack leaves the entries written so far and raises; nothing is
rolled back (in "delete" mode the lower layers' removed files could not come
back anyway). The snapshotter unpacks into a fresh directory and removes it
on failure, which is the only safe recovery.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import os
import stat
import tarfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from mini_docker.errors import InvalidArgument, MiniDockerError, NotFound
from mini_docker.image import whiteout as wh

WhiteoutMode = Literal["overlay", "delete"]

ZSTD_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"

MAX_SYMLINK_HOPS = 40
"""Symlinks followed while resolving one path, as Linux's own limit (MAXSYMLINKS)."""

COPY_BUFFER = 1 << 20

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAGIC = [(b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"BZh", "bzip2"),
          (b"\xfd7zXZ\x00", "xz")]
_DEVICE_TYPES = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
                 tarfile.FIFOTYPE: stat.S_IFIFO}


class UnsafeLayer(InvalidArgument):
    """A layer entry that would reach outside the directory the layer is unpacked into."""


@dataclass
class LayerStats:
    """What one unpack did."""

    compression: str = "none"
    entries: int = 0        # tar entries read, whiteouts included
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    devices: int = 0        # character and block devices, fifos
    bytes: int = 0          # file contents written
    whiteouts: int = 0      # .wh.NAME entries applied
    opaques: int = 0        # .wh..wh..opq entries applied
    removed: int = 0        # entries of the destination removed (replaced or whited out)
    xattrs: int = 0
    xattrs_skipped: int = 0  # trusted.overlay.* from the layer: overlayfs's, not the image's


def unpack_layer(layer: str | os.PathLike | BinaryIO, dest: Path, *,
                 whiteouts: WhiteoutMode = "overlay",
                 compression: str | None = None) -> LayerStats:
    """Apply the layer tar `layer` on top of the directory `dest`.

    layer: a path, or a binary file object positioned at the layer's first
        byte (it need not be seekable; it is not closed).
    dest: an existing directory; run as root, since a layer sets owners and
        makes device nodes.
    whiteouts: "overlay" to turn whiteouts into overlayfs's (dest is a
        snapshot's upper directory), "delete" to carry them out (dest holds
        the lower layers already).
    compression: None to detect it from the first bytes; or "none", "gzip",
        "zstd", "bzip2", "xz", or a layer media type.

    Returns a LayerStats. Raises UnsafeLayer for an entry that would escape
    `dest`, InvalidArgument for a corrupt or unsupported archive, NotFound
    for a missing `dest`, MiniDockerError for a failed write. On failure the
    entries already written stay (see the module's docstring).
    """
    if whiteouts not in ("overlay", "delete"):
        raise InvalidArgument(f"whiteouts must be 'overlay' or 'delete', not {whiteouts!r}")
    owned = None
    if isinstance(layer, (str, os.PathLike)):
        try:
            layer = owned = open(layer, "rb")
        except OSError as err:
            raise NotFound(f"layer {os.fspath(layer)}: {err.strerror}") from None
    try:
        stream, name = _decompressed(layer, compression)
        with _LayerRoot(dest) as root:
            unpacker = _Unpacker(root, whiteouts, stream, _fast_fd(stream, name))
            unpacker.stats.compression = name
            unpacker.run()
        return unpacker.stats
    finally:
        if owned is not None:
            owned.close()


# -- the stream: compression and reading ------------------------------------------------------


class _ForwardReader:
    """A non-seekable stream made just seekable enough for tarfile: forward only."""

    def __init__(self, raw: BinaryIO, head: bytes) -> None:
        self.raw, self.head, self.pos = raw, head, 0

    def read(self, size: int = -1) -> bytes:
        if self.head:
            cut = len(self.head) if size < 0 else min(size, len(self.head))
            data, self.head = self.head[:cut], self.head[cut:]
            if size < 0 or len(data) < size:
                data += self.raw.read(-1 if size < 0 else size - len(data)) or b""
        else:
            data = self.raw.read(size) or b""
        self.pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = offset if whence == os.SEEK_SET else self.pos + offset
        if whence not in (os.SEEK_SET, os.SEEK_CUR) or target < self.pos:
            raise OSError(errno.ESPIPE, "cannot seek backwards in a stream")
        while self.pos < target and self.read(min(target - self.pos, COPY_BUFFER)):
            pass
        return self.pos


def _decompressed(layer: BinaryIO, compression: str | None) -> tuple[BinaryIO, str]:
    """The layer's plain tar bytes as a file object tarfile can read, and the compression."""
    try:
        seekable = layer.seekable()
    except (AttributeError, ValueError):
        seekable = False
    if seekable:
        start = layer.tell()
        head = layer.read(6)
        layer.seek(start)
        stream = layer
    else:
        head = b""
        while len(head) < 6 and (more := layer.read(6 - len(head))):
            head += more
        stream = _ForwardReader(layer, head)
    name = _compression_name(compression) if compression else _sniff(head)
    if name == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb"), name
    if name == "bzip2":
        return bz2.BZ2File(stream), name
    if name == "xz":
        return lzma.LZMAFile(stream), name
    if name == "zstd":
        try:
            from compression import zstd  # the standard library's from Python 3.14
        except ImportError:
            raise InvalidArgument(
                f"layer is zstd-compressed ({ZSTD_MEDIA_TYPE}): Python's standard library "
                "cannot decompress zstd before 3.14; decompress it first (zstd -d)") from None
        return zstd.ZstdFile(stream), name
    return stream, name


def _sniff(head: bytes) -> str:
    return next((name for magic, name in _MAGIC if head.startswith(magic)), "none")


def _compression_name(compression: str) -> str:
    """A compression from its name or from a layer media type (OCI or Docker)."""
    value = compression.lower()
    if value in ("none", "gzip", "zstd", "bzip2", "xz"):
        return value
    if value.endswith(("+gzip", ".tar.gzip")):
        return "gzip"
    if value.endswith("+zstd"):
        return "zstd"
    if value.endswith(".tar"):
        return "none"
    raise InvalidArgument(f"unknown layer compression {compression!r}")


def _fast_fd(stream: BinaryIO, compression: str) -> int | None:
    """A descriptor on an uncompressed layer file, for in-kernel copies; None otherwise."""
    if compression != "none" or isinstance(stream, _ForwardReader):
        return None
    try:
        fd = stream.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):
        return None


def _archive_error(compression: str, after: str | None, err: BaseException) -> InvalidArgument:
    kind = "tar" if compression == "none" else f"tar+{compression}"
    where = f" (after entry {after!r})" if after is not None else ""
    text = " ".join(str(err).split()) or type(err).__name__
    return InvalidArgument(f"layer is not a valid {kind} archive{where}: {text}")


_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError)


# -- the destination: paths resolved inside it --------------------------------------------------


def _clean(name: str, entry: str, what: str = "path") -> tuple[str, ...]:
    """The components of an archive path, cleaned; refuse one that climbs above the root."""
    parts: list[str] = []
    for part in name.split("/"):
        if part == "..":
            if not parts:
                raise UnsafeLayer(f"layer entry {entry!r}: {what} escapes the layer root")
            parts.pop()
        elif part and part != ".":
            parts.append(part)
    return tuple(parts)


class _LayerRoot:
    """The destination directory, and directories below it found without leaving it.

    `open_dir` returns a descriptor (the caller closes it) and the directory's
    real path below the root. Resolved directories are cached by the name
    that led to them, so that 5,000 files in 50 directories cost 50 walks, not
    5,000. The cache holds descriptors, which stay on the directory they were
    opened on, and it is emptied whenever the unpacker removes anything,
    since only a removal can change where a name leads.
    """

    CACHE_SIZE = 64

    def __init__(self, dest: Path) -> None:
        try:
            self.fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"{dest}: no such directory") from None
        except NotADirectoryError:
            raise InvalidArgument(f"{dest} is not a directory") from None
        self._cache: OrderedDict[tuple[str, ...], tuple[int, tuple[str, ...]]] = OrderedDict()

    def __enter__(self) -> "_LayerRoot":
        return self

    def __exit__(self, *exc) -> None:
        self.forget()
        os.close(self.fd)

    def forget(self) -> None:
        while self._cache:
            os.close(self._cache.popitem()[1][0])

    def open_dir(self, parts: tuple[str, ...], entry: str,
                 create: bool) -> tuple[int, tuple[str, ...]] | None:
        """The directory at `parts`, symlinks resolved inside the root; None if missing.

        create: make missing directories (mode 0755, root's), as tar does
            for an entry whose parent the archive does not list.
        """
        cached = self._cache.get(parts)
        if cached is not None:
            self._cache.move_to_end(parts)
            return os.dup(cached[0]), cached[1]
        found = self._walk(parts, entry, create)
        if found is not None:
            self._cache[parts] = (os.dup(found[0]), found[1])
            if len(self._cache) > self.CACHE_SIZE:
                os.close(self._cache.popitem(last=False)[1][0])
        return found

    def open_real(self, path: tuple[str, ...]) -> int | None:
        """The directory at a real path (one `open_dir` returned), following nothing.

        None if it is gone or is no longer a directory.
        """
        fd = os.dup(self.fd)
        for part in path:
            try:
                next_fd = os.open(part, _DIR, dir_fd=fd)
            except OSError as err:
                if err.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    raise
                next_fd = None
            finally:
                os.close(fd)
            if next_fd is None:
                return None
            fd = next_fd
        return fd

    def _walk(self, parts: tuple[str, ...], entry: str,
              create: bool) -> tuple[int, tuple[str, ...]] | None:
        fds: list[int] = []       # one descriptor per level below the root
        names: list[str] = []     # the real path they stand for
        todo = list(reversed(parts))
        hops = 0
        try:
            while todo:
                part = todo.pop()
                if part in ("", "."):
                    continue
                if part == "..":  # ours to interpret, never the kernel's: ".." of the root is the root
                    if fds:
                        os.close(fds.pop())
                        names.pop()
                    continue
                here = fds[-1] if fds else self.fd
                try:
                    fds.append(os.open(part, _DIR, dir_fd=here))
                    names.append(part)
                    continue
                except FileNotFoundError:
                    if not create:
                        return None
                    try:
                        os.mkdir(part, 0o755, dir_fd=here)
                    except FileExistsError:
                        pass
                    todo.append(part)  # and open it on the next turn
                    continue
                except OSError as err:
                    if err.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                target = self._readlink(part, here, entry, names)
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise UnsafeLayer(f"layer entry {entry!r}: too many levels of symbolic links")
                if target.startswith("/"):  # absolute: from the layer's root, not the host's
                    while fds:
                        os.close(fds.pop())
                    names.clear()
                todo.extend(reversed(target.split("/")))
            top = fds.pop() if fds else os.dup(self.fd)
            return top, tuple(names)
        finally:
            for fd in fds:
                os.close(fd)

    @staticmethod
    def _readlink(part: str, here: int, entry: str, names: list[str]) -> str:
        try:
            return os.readlink(part, dir_fd=here)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
        where = "/".join([*names, part])
        raise InvalidArgument(f"layer entry {entry!r}: {where!r} is not a directory") from None


# -- the entries ----------------------------------------------------------------------------------


class _Unpacker:
    """Reads the tar and makes each entry; keeps what must wait until the end."""

    def __init__(self, root: _LayerRoot, whiteouts: WhiteoutMode, stream: BinaryIO,
                 fast_fd: int | None) -> None:
        self.root = root
        self.mode = whiteouts
        self.stream = stream
        self.fast_fd = fast_fd
        self.stats = LayerStats()
        self.tar: tarfile.TarFile | None = None
        # Directories get their mode and mtime last (a 0500 directory still
        # receives its files, and writing a file changes its directory's mtime).
        self.deferred: dict[tuple[int, int], tuple[tuple[str, ...], int, int, int]] = {}
        # "delete" mode only: what this layer made, so that an opaque marker keeps it.
        self.made: set[tuple[str, ...]] = set()
        self.buffer = bytearray(COPY_BUFFER)

    def run(self) -> None:
        self.tar = self._read(lambda: tarfile.open(fileobj=self.stream, mode="r:",
                                                   encoding="utf-8", errors="surrogateescape"))
        last = None
        while (member := self._read(self.tar.next, last)) is not None:
            self.stats.entries += 1
            self.apply(member)
            last = member.name
        self._read(self._drain, last)
        try:
            self._finish_directories()
        except OSError as err:
            raise MiniDockerError(f"layer directories: {_strerror(err)}") from None

    def _read(self, step, after: str | None = None):
        """step(), with a corrupt or truncated archive reported in one line."""
        try:
            return step()
        except _READ_ERRORS as err:
            raise _archive_error(self.stats.compression, after, err) from None

    def _drain(self) -> None:
        """Read a compressed or piped stream to its end: a gzip checksum is verified there."""
        if self.stats.compression != "none" or isinstance(self.stream, _ForwardReader):
            while self.stream.read(COPY_BUFFER):
                pass

    def apply(self, member: tarfile.TarInfo) -> None:
        entry = member.name
        parts = _clean(entry, entry)
        try:
            if not parts:
                self._root_entry(member)
                return
            *parent, name = parts
            if wh.is_opaque(name):
                self._opaque(tuple(parent), entry)
            elif wh.is_meta(name):
                pass
            elif (hidden := wh.hidden_name(name)) is not None:
                self._whiteout(tuple(parent), hidden, member)
            else:
                self._entry(tuple(parent), name, member)
        except OSError as err:
            raise MiniDockerError(f"layer entry {entry!r}: {_strerror(err)}") from None

    def _root_entry(self, member: tarfile.TarInfo) -> None:
        """"./" sets the root's own owner, mode and times; anything else there is refused."""
        if not member.isdir():
            raise UnsafeLayer(f"layer entry {member.name!r}: would replace the layer root")
        fd = os.dup(self.root.fd)
        try:
            self._directory_metadata(fd, (), member)
        finally:
            os.close(fd)

    def _entry(self, parent: tuple[str, ...], name: str, member: tarfile.TarInfo) -> None:
        if member.islnk():  # resolve the target first: it is refused if it escapes
            target = _clean(member.linkname, member.name, "hard link target")
            if not target:
                raise UnsafeLayer(f"layer entry {member.name!r}: hard link to the layer root")
        dir_fd, real = self.root.open_dir(parent, member.name, create=True)
        try:
            if member.isdir():
                self._directory(dir_fd, real, name, member)
            elif member.isreg():
                self._file(dir_fd, name, member)
            elif member.issym():
                self._symlink(dir_fd, name, member)
            elif member.islnk():
                self._hardlink(dir_fd, name, target, member)
            elif member.type in _DEVICE_TYPES:
                self._device(dir_fd, name, member)
            else:
                raise InvalidArgument(f"layer entry {member.name!r}: unsupported tar entry type "
                                      f"{member.type!r}")
            if self.mode == "delete":
                self._made(real + (name,))
        finally:
            os.close(dir_fd)

    def _made(self, path: tuple[str, ...]) -> None:
        while path and path not in self.made:
            self.made.add(path)
            path = path[:-1]

    def _replace(self, dir_fd: int, name: str, make) -> None:
        """make() the entry; if the name is taken, remove what is there and try again."""
        try:
            return make()
        except FileExistsError:
            self._remove(dir_fd, name)
            return make()

    def _remove(self, dir_fd: int, name: str) -> None:
        self.root.forget()
        self.stats.removed += wh.remove(dir_fd, name)

    # one method per entry type

    def _directory(self, dir_fd: int, real: tuple[str, ...], name: str,
                   member: tarfile.TarInfo) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        except FileExistsError:  # a directory stays (its content too); anything else goes
            if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                self._remove(dir_fd, name)
                os.mkdir(name, 0o700, dir_fd=dir_fd)
        fd = os.open(name, _DIR, dir_fd=dir_fd)
        try:
            self._directory_metadata(fd, real + (name,), member)
        finally:
            os.close(fd)
        self.stats.directories += 1

    def _directory_metadata(self, fd: int, path: tuple[str, ...], member: tarfile.TarInfo) -> None:
        os.chown(fd, member.uid, member.gid)
        self._xattrs(member, fd)
        st = os.fstat(fd)
        self.deferred[(st.st_dev, st.st_ino)] = (path, member.mode & 0o7777, *_times_ns(member))

    def _file(self, dir_fd: int, name: str, member: tarfile.TarInfo) -> None:
        fd = self._replace(dir_fd, name, lambda: os.open(name, _NEW_FILE, 0o600, dir_fd=dir_fd))
        try:
            self._copy_contents(member, fd)
            os.chown(fd, member.uid, member.gid)    # before chmod: chown clears set-id bits
            os.chmod(fd, member.mode & 0o7777)
            self._xattrs(member, fd)                # after chown: it clears security.capability
            os.utime(fd, ns=_times_ns(member))
        finally:
            os.close(fd)
        self.stats.files += 1
        self.stats.bytes += member.size

    def _symlink(self, dir_fd: int, name: str, member: tarfile.TarInfo) -> None:
        self._replace(dir_fd, name, lambda: os.symlink(member.linkname, name, dir_fd=dir_fd))
        os.chown(name, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)
        # No lsetxattrat(2): the path goes through our directory descriptor, and the
        # link itself is not followed.
        self._xattrs(member, f"/proc/self/fd/{dir_fd}/{name}", follow_symlinks=False)
        os.utime(name, ns=_times_ns(member), dir_fd=dir_fd, follow_symlinks=False)
        self.stats.symlinks += 1

    def _hardlink(self, dir_fd: int, name: str, target: tuple[str, ...],
                  member: tarfile.TarInfo) -> None:
        found = self.root.open_dir(target[:-1], member.name, create=False)
        missing = f"layer entry {member.name!r}: hard link target {member.linkname!r}"
        if found is None:
            raise InvalidArgument(f"{missing} is not in the layer")
        target_fd, _ = found
        try:
            try:
                st = os.stat(target[-1], dir_fd=target_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise InvalidArgument(f"{missing} is not in the layer") from None
            if stat.S_ISDIR(st.st_mode):
                raise InvalidArgument(f"{missing} is a directory")
            try:
                here = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino):
                    return  # already the same file
            except FileNotFoundError:
                pass
            # No metadata from a link entry: it names an inode the archive already described.
            self._replace(dir_fd, name, lambda: os.link(target[-1], name, src_dir_fd=target_fd,
                                                        dst_dir_fd=dir_fd, follow_symlinks=False))
        finally:
            os.close(target_fd)
        self.stats.hardlinks += 1

    def _device(self, dir_fd: int, name: str, member: tarfile.TarInfo) -> None:
        kind = _DEVICE_TYPES[member.type]
        device = os.makedev(member.devmajor, member.devminor) if kind != stat.S_IFIFO else 0
        self._replace(dir_fd, name, lambda: os.mknod(name, kind | 0o600, device, dir_fd=dir_fd))
        # fchmod and fsetxattr need a real descriptor, and opening a device may do
        # things (a tape rewinds): an O_PATH descriptor and its /proc link instead.
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if stat.S_IFMT(os.fstat(fd).st_mode) != kind:
                raise InvalidArgument(f"layer entry {member.name!r}: replaced while unpacking")
            path = f"/proc/self/fd/{fd}"
            os.chown(path, member.uid, member.gid)
            os.chmod(path, member.mode & 0o7777)
            self._xattrs(member, path)
            os.utime(path, ns=_times_ns(member))
        finally:
            os.close(fd)
        self.stats.devices += 1

    # whiteouts

    def _whiteout(self, parent: tuple[str, ...], hidden: str, member: tarfile.TarInfo) -> None:
        if hidden in ("", ".", ".."):
            raise UnsafeLayer(f"layer entry {member.name!r}: whiteout of "
                              f"{'the directory itself' if hidden != '..' else 'its parent'}")
        create = self.mode == "overlay"
        found = self.root.open_dir(parent, member.name, create=create)
        if found is None:  # "delete": nothing there to delete
            self.stats.whiteouts += 1
            return
        dir_fd, _ = found
        try:
            self.root.forget()
            if self.mode == "overlay":
                wh.overlay_whiteout(dir_fd, hidden, member.uid, member.gid)
            else:
                self.stats.removed += wh.remove(dir_fd, hidden)
        finally:
            os.close(dir_fd)
        self.stats.whiteouts += 1

    def _opaque(self, directory: tuple[str, ...], entry: str) -> None:
        found = self.root.open_dir(directory, entry, create=self.mode == "overlay")
        self.stats.opaques += 1
        if found is None:
            return
        dir_fd, real = found
        try:
            if self.mode == "overlay":
                wh.overlay_opaque(dir_fd)
            else:
                self.root.forget()
                self.stats.removed += wh.remove_lower(dir_fd, real, self.made)
                self._made(real)
        finally:
            os.close(dir_fd)

    # contents and metadata

    def _copy_contents(self, member: tarfile.TarInfo, out: int) -> None:
        if member.size == 0:
            return
        if member.issparse():
            self._copy_from(self.tar.extractfile(member), member.size, out)
            os.ftruncate(out, member.size)
        elif self.fast_fd is not None:
            _copy_range(self.fast_fd, member.offset_data, member.size, out)
        else:
            try:
                self.stream.seek(member.offset_data)
            except _READ_ERRORS as err:
                raise _archive_error(self.stats.compression, member.name, err) from None
            self._copy_from(self.stream, member.size, out)

    def _copy_from(self, source: BinaryIO, size: int, out: int) -> None:
        view = memoryview(self.buffer)
        while size:
            want = min(size, COPY_BUFFER)
            try:
                got = source.readinto(view[:want])
            except _READ_ERRORS as err:
                raise _archive_error(self.stats.compression, None, err) from None
            if not got:
                raise InvalidArgument("layer is truncated: unexpected end of data")
            _write_all(out, view[:got])
            size -= got

    def _xattrs(self, member: tarfile.TarInfo, target, follow_symlinks: bool = True) -> None:
        if not member.pax_headers:
            return
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr."):]
            if name.startswith("trusted.overlay."):  # would steer overlayfs: never the layer's say
                self.stats.xattrs_skipped += 1
                continue
            os.setxattr(target, name, value.encode("utf-8", "surrogateescape"),
                        follow_symlinks=follow_symlinks)
            self.stats.xattrs += 1

    def _finish_directories(self) -> None:
        """Give every directory of the layer its mode and mtime, deepest first."""
        for (dev, ino), (path, mode, atime, mtime) in sorted(
                self.deferred.items(), key=lambda item: -len(item[1][0])):
            fd = self.root.open_real(path)
            if fd is None:  # replaced or removed later in the layer
                continue
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    os.chmod(fd, mode)
                    os.utime(fd, ns=(atime, mtime))
            finally:
                os.close(fd)


def _copy_range(src: int, offset: int, size: int, out: int) -> None:
    """Copy size bytes at offset of src to out in the kernel (copy_file_range, else pread)."""
    end = offset + size
    try:
        while offset < end:
            done = os.copy_file_range(src, out, end - offset, offset)
            if not done:
                raise InvalidArgument("layer is truncated: unexpected end of data")
            offset += done
        return
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while offset < end:  # another filesystem on an old kernel: through user space
        data = os.pread(src, min(end - offset, COPY_BUFFER), offset)
        if not data:
            raise InvalidArgument("layer is truncated: unexpected end of data")
        _write_all(out, data)
        offset += len(data)


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _times_ns(member: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in nanoseconds: exact from pax records, where tarfile gives a float."""
    mtime = _pax_ns(member.pax_headers.get("mtime")) if member.pax_headers else None
    if mtime is None:
        mtime = int(member.mtime) * 1_000_000_000
    atime = _pax_ns(member.pax_headers.get("atime")) if member.pax_headers else None
    return (mtime if atime is None else atime), mtime


def _pax_ns(text: str | None) -> int | None:
    if not text:
        return None
    negative = text.startswith("-")
    seconds, _, fraction = text.lstrip("-").partition(".")
    try:
        ns = int(seconds or "0") * 1_000_000_000 + int((fraction + "000000000")[:9])
    except ValueError:
        return None
    return -ns if negative else ns


def _strerror(err: OSError) -> str:
    return err.strerror or str(err)
