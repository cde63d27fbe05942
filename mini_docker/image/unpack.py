"""Unpacking an image layer, safely, even when the layer was written by an enemy.

An image layer is a tar (often gzipped) of what one build step changed. To
use it we write its entries into a directory: a fresh one per layer for an
overlayfs snapshot, or the directory that already holds the layers below it.
That sounds like `tar -xf`, and it is, except that a layer comes from the
internet and its author may want us to write somewhere else: `../../etc/cron.d/x`,
or, subtler, a symlink `lib -> /etc` followed by an entry `lib/passwd`. Every
container engine has shipped a bug of this kind, and so has Python's tarfile
(its extraction filters were bypassed in 2025), so we do not delegate:
tarfile only parses the headers, and we make every entry ourselves, by rules.

1. Names are cleaned the way docker cleans them. A leading "/" is dropped
   (an absolute name is relative to the layer's root, as GNU tar and docker
   read it), "." and empty components go, and ".." cancels the component
   before it. A name whose ".." would climb above the root is refused: no
   legitimate layer has one. So is a hard link target that would.
2. The entry's parent directory is found component by component, each one
   opened with `openat(O_NOFOLLOW | O_DIRECTORY)` relative to the one before,
   starting from a descriptor on the destination. A component that is a
   symbolic link is read and interpreted by us, with the destination as
   "/" (what the kernel's `openat2(RESOLVE_IN_ROOT)` does, which Python 3.11
   cannot call): `/etc` means dest/etc, and ".." at the root stays at the
   root. So `lib -> /etc` then `lib/passwd` writes dest/etc/passwd, as the
   image's author meant it inside a container, and never the host's. A hard
   link target and a whiteout's directory are found the same way.
3. The last component is never followed. Every entry is made by a call
   that will not go through a symlink (openat O_CREAT|O_EXCL, mkdirat,
   symlinkat, linkat without AT_SYMLINK_FOLLOW, mknodat), and whatever stood
   there before is removed first, never opened and truncated. Owner, mode,
   xattrs and times are set through the new descriptor (fchown, fchmod,
   fsetxattr, futimens), not by path; a hard link entry sets none of them.
4. A symlink's own target is data: `bin/sh -> /bin/busybox` is kept byte for
   byte, whatever it points at. It only matters when a later entry goes
   through it, and then rule 2 applies.

What stays racy. Every step holds a descriptor on a directory inside the
destination and never asks the kernel to resolve ".." or a symlink, so a
symlink swapped in meanwhile is read (and confined) by us, not followed. What
a descriptor cannot guard against is another process moving a directory we
hold to somewhere outside the destination while we write in it. That takes
write access to the destination, a fresh directory under mini-docker's
root-owned state directory: only root can, and root can write anywhere anyway.

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
from typing import BinaryIO, Callable, Literal, TypeVar

from mini_docker.errors import InvalidArgument, MiniDockerError, NotFound
from mini_docker.image import whiteout as wh

WhiteoutMode = Literal["overlay", "delete"]
T = TypeVar("T")

ZSTD_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"

MAX_SYMLINK_HOPS = 40
"""Symlinks followed while resolving one path, as Linux's own limit (MAXSYMLINKS)."""

COPY_BUFFER = 1 << 20

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAGIC = [(b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\xfd7zXZ\x00", "xz")]
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
    xattrs_skipped: int = 0  # trusted.overlay.* and user.overlay.*: overlayfs's, never a layer's


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
        head = layer.read(10)
        layer.seek(start)
        stream = layer
    else:
        head = b""
        while len(head) < 10 and (more := layer.read(10 - len(head))):
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
    """The compression that the first bytes announce; "none" for a tar (its first entry's name)."""
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bzip2"  # all ten bytes: "BZh" alone could begin a file name
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


def _archive_error(compression: str, err: BaseException, *, after: str | None = None,
                   inside: str | None = None) -> InvalidArgument:
    kind = "tar" if compression == "none" else f"tar+{compression}"
    where = (f" (in entry {inside!r})" if inside is not None
             else f" (after entry {after!r})" if after is not None else "")
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

    `open_dir` returns a descriptor and the directory's real path below the
    root. Resolved directories are cached by the name that led to them, so
    that 5,000 files in 50 directories cost 50 walks, not 5,000. The cache
    owns the descriptors: a caller borrows one until it calls `release`, once
    per entry. A descriptor stays on the directory it was opened on, whatever
    happens to names meanwhile, and the cache is emptied whenever the
    unpacker removes anything, since only a removal can change where a name
    leads.
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
        self._retired: list[int] = []  # out of the cache, maybe still borrowed

    def __enter__(self) -> "_LayerRoot":
        return self

    def __exit__(self, *exc) -> None:
        self.forget()
        self.release()
        os.close(self.fd)

    def forget(self) -> None:
        """Empty the cache (its descriptors stay open until `release`)."""
        self._retired.extend(fd for fd, _ in self._cache.values())
        self._cache.clear()

    def release(self) -> None:
        """The caller is done with every descriptor it borrowed."""
        while self._retired:
            os.close(self._retired.pop())

    def open_dir(self, parts: tuple[str, ...], entry: str,
                 create: bool) -> tuple[int, tuple[str, ...]] | None:
        """The directory at `parts`, symlinks resolved inside the root; None if missing.

        create: make missing directories (mode 0755, root's), as tar does
            for an entry whose parent the archive does not list.
        """
        if not parts:
            return self.fd, ()
        cached = self._cache.get(parts)
        if cached is not None:
            self._cache.move_to_end(parts)
            return cached
        found = self._walk(parts, entry, create)
        if found is not None:
            self._cache[parts] = found
            if len(self._cache) > self.CACHE_SIZE:
                self._retired.append(self._cache.popitem(last=False)[1][0])
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
        made = None
        try:
            while todo:
                part = todo.pop()
                if part in ("", "."):
                    continue
                if part == "..":  # ours, not the kernel's: ".." of the root is the root
                    if fds:
                        os.close(fds.pop())
                        names.pop()
                    continue
                here = fds[-1] if fds else self.fd
                try:
                    fds.append(os.open(part, _DIR, dir_fd=here))
                    names.append(part)
                    made = None
                    continue
                except FileNotFoundError:
                    if not create:
                        return None
                    if made == (len(names), part):  # we made it, and it is gone again
                        where = "/".join([*names, part])
                        raise InvalidArgument(f"layer entry {entry!r}: directory {where!r} "
                                              "vanished as it was made")
                    try:
                        os.mkdir(part, 0o755, dir_fd=here)
                    except FileExistsError:
                        pass
                    made = (len(names), part)
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
        self.kernel_copy = _KernelCopy(fast_fd) if fast_fd is not None else None
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
            self.tar.members.clear()  # tarfile keeps every header; a layer may have millions
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
            raise _archive_error(self.stats.compression, err, after=after) from None

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
            elif wh.is_meta(parts):  # docker skips them too
                pass
            elif (hidden := wh.hidden_name(name)) is not None:
                self._whiteout(tuple(parent), hidden, member)
            else:
                self._entry(tuple(parent), name, member)
        except OSError as err:
            raise MiniDockerError(f"layer entry {entry!r}: {_strerror(err)}") from None
        finally:
            self.root.release()

    def _root_entry(self, member: tarfile.TarInfo) -> None:
        """An entry for the root itself ("./") may set its owner, mode and times, nothing more."""
        if not member.isdir():
            raise UnsafeLayer(f"layer entry {member.name!r}: would replace the layer root")
        self._directory_metadata(self.root.fd, (), member)

    def _entry(self, parent: tuple[str, ...], name: str, member: tarfile.TarInfo) -> None:
        if member.islnk():  # resolve the target first: it is refused if it escapes
            target = _clean(member.linkname, member.name, "hard link target")
            if not target:
                raise UnsafeLayer(f"layer entry {member.name!r}: hard link to the layer root")
        dir_fd, real = self.root.open_dir(parent, member.name, create=True)
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

    def _made(self, path: tuple[str, ...]) -> None:
        while path and path not in self.made:
            self.made.add(path)
            path = path[:-1]

    def _replace(self, dir_fd: int, name: str, make: Callable[[], T]) -> T:
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
        self.root.forget()
        if self.mode == "overlay":
            wh.overlay_whiteout(dir_fd, hidden, member.uid, member.gid)
        else:
            self.stats.removed += wh.remove(dir_fd, hidden)
        self.stats.whiteouts += 1

    def _opaque(self, directory: tuple[str, ...], entry: str) -> None:
        found = self.root.open_dir(directory, entry, create=self.mode == "overlay")
        self.stats.opaques += 1
        if found is None:
            return
        dir_fd, real = found
        if self.mode == "overlay":
            wh.overlay_opaque(dir_fd)
        else:
            self.root.forget()
            self.stats.removed += wh.remove_lower(dir_fd, real, self.made)
            self._made(real)

    # contents and metadata

    def _copy_contents(self, member: tarfile.TarInfo, out: int) -> None:
        if member.size == 0:
            return
        if self.kernel_copy is not None and not member.issparse():
            if not self.kernel_copy(member.offset_data, member.size, out):
                raise _archive_error(self.stats.compression, EOFError("unexpected end of data"),
                                     inside=member.name)
            return
        # A sparse file's holes are in the tar's map, not in its data: tarfile reads it.
        source = self.tar.extractfile(member) if member.issparse() else self.stream
        view, size = memoryview(self.buffer), member.size
        try:
            if source is self.stream:
                self.stream.seek(member.offset_data)  # where it is already: a no-op
        except _READ_ERRORS as err:
            raise _archive_error(self.stats.compression, err, inside=member.name) from None
        while size:
            try:
                got = source.readinto(view[:min(size, COPY_BUFFER)])
                if not got:
                    raise EOFError("unexpected end of data")
            except _READ_ERRORS as err:
                raise _archive_error(self.stats.compression, err, inside=member.name) from None
            _write_all(out, view[:got])
            size -= got

    def _xattrs(self, member: tarfile.TarInfo, target, follow_symlinks: bool = True) -> None:
        if not member.pax_headers:
            return
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr."):]
            if name.startswith(("trusted.overlay.", "user.overlay.")):  # overlayfs's own: it
                # would follow a redirect or a metacopy from a layer as from its own upper dir
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


class _KernelCopy:
    """Copies from the layer file to a new file without the bytes entering Python.

    copy_file_range(2) is the fastest (on a filesystem that supports it, the
    kernel may even share blocks); across filesystems Linux refuses it
    (EXDEV), and sendfile(2) does the same work through the page cache. The
    first refusal is remembered, not met again for every file.
    """

    def __init__(self, src: int) -> None:
        self.src = src
        self.copy = self._copy_file_range

    def __call__(self, offset: int, size: int, out: int) -> bool:
        """Copy size bytes at offset to out; False if the layer file ends first."""
        end = offset + size
        while offset < end:
            try:
                done = self.copy(out, offset, end - offset)
            except OSError as err:
                if self.copy != self._copy_file_range or err.errno not in (
                        errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                self.copy = self._sendfile
                continue
            if not done:
                return False
            offset += done
        return True

    def _copy_file_range(self, out: int, offset: int, count: int) -> int:
        return os.copy_file_range(self.src, out, count, offset)

    def _sendfile(self, out: int, offset: int, count: int) -> int:
        return os.sendfile(out, self.src, offset, count)


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
