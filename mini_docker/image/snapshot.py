"""Snapshots: every layer unpacked once, and each container's root filesystem on top.

An image's layers are tar archives in the blob store; a container needs them as
one directory tree it can write to. Docker's overlay2 driver does this with
two ideas, and so do we.

Each layer is unpacked once, into a directory of its own, and shared by every
image that has it. Its name is the layer's *ChainID* (oci.chain_ids), not its
diff_id: the same tar on top of different layers below is a different
filesystem, and the ChainID names "this layer on that stack". Two images built
FROM busybox share busybox's snapshot, on disk, inode for inode.

    <root>/snapshots/<chainid hex>/fs          the layer's files, whiteouts in overlayfs's form
    <root>/snapshots/<chainid hex>/layer.json  its diff_id, parent and size
    <root>/snapshots/l/<short id>              -> ../<chainid hex>/fs (see "The page limit")
    <root>/containers/<id>/upper, work         the container's writable layer, overlayfs's scratch
    <root>/containers/<id>/merged              the mount point: the container's rootfs
    <root>/containers/<id>/snapshot.json       the image and the layers the container stands on

A container's root filesystem is then one overlay mount: the layers as
read-only `lowerdir`s, the topmost first, and an empty `upperdir` that takes
every write. Writing to a file of a lower layer copies it up first; deleting
one leaves a whiteout (a character device 0/0) in the upper directory. The
layers themselves never change, which is why they can be shared.

A snapshot is whole or absent. A layer is unpacked into a temporary sibling
directory, its uncompressed bytes hashed on the way and compared with the
diff_id the image config promises, and only then renamed to its name: a rename
is atomic, so no reader ever sees half a layer. Two processes unpacking the
same layer at once both do the work; the first rename wins and the second,
finding the name taken (ENOTEMPTY), throws its copy away. A layer that fails
(hostile paths, corrupt gzip, the wrong digest) leaves nothing behind.
Removal goes the same way backwards: renamed aside, then deleted.

The page limit. The mount(2) system call copies its option string into one
page of kernel memory (4096 bytes here) and cuts it there. With absolute
paths, 30 layers can already overflow that. overlayfs resolves relative paths
from the mounting process's working directory, so docker's overlay2 keeps a
short symbolic link per layer in `l/` and mounts from a child that has
changed into the snapshot directory: `lowerdir=l/5f2e8a...:l/09c1d4...`. We
do the same (in a forked child, since the working directory belongs to the
whole process): a 12-character link name fits about 250 layers in a page,
twice docker's own limit of 128. An image with more is refused with a clear
message. Absolute paths are used whenever they fit: they read better in
/proc/self/mountinfo.

Who uses what. A container's record lists the ChainIDs it stands on, from the
moment its rootfs is made until it is removed (a stopped container still
needs its image), so `rmi` and `prune` can ask `referenced_chain_ids()` and
refuse to pull a layer from under it. A lock file serialises removals against
mounts: unpacking and mounting take it shared, removing takes it exclusive.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import posixpath
import re
import secrets
import shutil
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from mini_docker.errors import Conflict, InvalidArgument, MiniDockerError, NotFound
from mini_docker.image import whiteout as wh
from mini_docker.image.oci import (CHUNK, Descriptor, DiffIDReader, ImageConfig, Manifest,
                                   chain_ids, layer_compression)
from mini_docker.image.store import Image, ImageStore
from mini_docker.image.unpack import unpack_layer
from mini_docker.kernel import mount, run_isolated, umount2
from mini_docker.kernel.constants import MNT_DETACH

RECORD = "snapshot.json"
LAYER_INFO = "layer.json"
LINK_LENGTHS = (12, 16, 24, 32, 64)
"""Lengths tried for a layer's short link name: a prefix of its ChainID, longer on a clash."""

OVERLAY_INDEX = Path("/sys/module/overlay/parameters/index")
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_SNAPSHOT_NAME = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True)
class Layer:
    """One layer of an image, as the snapshotter sees it.

    chain_id: names the stack up to and including this layer; the snapshot's name.
    diff_id: the digest of the uncompressed tar, as the image config lists it.
    blob: the layer's blob (usually gzip-compressed) in the store.
    parent: the ChainID of the layer below, None for the base layer.
    """

    chain_id: str
    diff_id: str
    blob: Descriptor
    parent: str | None

    @property
    def key(self) -> str:
        """The snapshot directory's name: the ChainID's hex."""
        return self.chain_id.removeprefix("sha256:")


@dataclass(frozen=True)
class LayerUsage:
    """One snapshot on disk: its size, and who needs it."""

    chain_id: str
    diff_id: str
    size: int                   # bytes of its files, each inode once
    images: tuple[str, ...]     # IDs of the images whose stack includes it
    containers: tuple[str, ...]  # containers standing on it

    @property
    def shared(self) -> bool:
        return len(self.images) > 1


@dataclass(frozen=True)
class ImageUsage:
    """An image's unpacked size, split as `docker system df -v` splits it."""

    image_id: str
    size: int
    shared_size: int  # in layers that other images have too
    unique_size: int


@dataclass(frozen=True)
class DiskUsage:
    layers: tuple[LayerUsage, ...]
    images: tuple[ImageUsage, ...]
    containers: Mapping[str, int]  # container -> bytes in its writable layer
    total: int                      # bytes of all snapshots, each counted once


class Snapshotter:
    """Unpacked layers, shared between images, and the overlay mounts made of them.

    store: the image store the layers' blobs come from.
    root: where snapshots/ and containers/ live; by default the store's root.
    """

    def __init__(self, store: ImageStore, root: str | Path | None = None) -> None:
        self.store = store
        self.root = Path(root) if root is not None else store.root
        self.snapshot_dir = self.root / "snapshots"
        self.link_dir = self.snapshot_dir / "l"
        self.container_root = self.root / "containers"
        self.option_limit = os.sysconf("SC_PAGE_SIZE")  # mount(2) reads one page of options

    # -- layers --

    def layers_of(self, image: str | Image,
                  parsed: tuple[Manifest, ImageConfig] | None = None) -> list[Layer]:
        """The image's layers, base first, each with its ChainID. `parsed`: the image's
        manifest and config, if the caller has read them already (`image` is then the
        manifest's digest)."""
        digest = self._digest(image, parsed)
        if parsed is not None:
            manifest, config = parsed
        else:
            manifest = self.store.manifest(digest)
            config = self.store.config(manifest)
        if len(manifest.layers) != len(config.diff_ids):
            raise InvalidArgument(f"image {digest}: its manifest lists {len(manifest.layers)} "
                                  f"layers but its config {len(config.diff_ids)} diff_ids")
        chains = chain_ids(config.diff_ids)
        return [Layer(chain, diff_id, blob, chains[i - 1] if i else None)
                for i, (chain, diff_id, blob) in enumerate(zip(chains, config.diff_ids,
                                                               manifest.layers))]

    def prepare(self, image: str | Image) -> list[Path]:
        """Unpack whatever layers of `image` are missing; return its lower dirs, top first."""
        with self._lock():
            return self._prepare(self.layers_of(image))

    def snapshot_path(self, chain_id: str) -> Path:
        """The unpacked files of the snapshot `chain_id` (whether or not it exists)."""
        return self.snapshot_dir / chain_id.removeprefix("sha256:") / "fs"

    def _prepare(self, layers: list[Layer]) -> list[Path]:
        if not layers:
            raise InvalidArgument("the image has no layers: there is no filesystem to mount")
        return [self._unpacked(layer, n, len(layers)) for n, layer in enumerate(layers, 1)][::-1]

    def _unpacked(self, layer: Layer, n: int, count: int) -> Path:
        """The layer's snapshot, unpacked and verified now if it is not on disk yet."""
        final = self.snapshot_dir / layer.key
        if final.is_dir():  # renamed into place whole: there is nothing to check
            return final / "fs"
        temp = Path(tempfile.mkdtemp(dir=self.snapshot_dir, prefix=f".unpack-{os.getpid()}-"))
        try:
            (temp / "fs").mkdir()
            os.chmod(temp / "fs", 0o755)  # whatever the umask; the layer's "./" entry may differ
            try:
                diff_id = self._unpack_verified(layer, temp / "fs")
            except MiniDockerError as err:  # say which layer, keep the kind of error
                raise type(err)(f"layer {n} of {count} ({_short(layer.diff_id)}): {err}") from None
            if diff_id != layer.diff_id:
                raise InvalidArgument(f"layer {n} of {count}: its content is {diff_id}, but the "
                                      f"image config says {layer.diff_id}; refusing it")
            info = {"chain_id": layer.chain_id, "diff_id": layer.diff_id, "parent": layer.parent,
                    "blob": layer.blob.digest, "size": _tree_size(temp / "fs")}
            (temp / LAYER_INFO).write_text(json.dumps(info, indent=1) + "\n")
            try:
                os.rename(temp, final)
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                shutil.rmtree(temp)  # another process unpacked it first: same bytes, keep theirs
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return final / "fs"

    def _unpack_verified(self, layer: Layer, dest: Path) -> str:
        """Unpack the layer's blob into `dest`; return the digest of its uncompressed bytes.

        The blob passes through a DiffIDReader on its way to the unpacker, so
        it is read once: decompressed and hashed as the files are written.
        """
        compression = layer_compression(layer.blob)
        with self.store.blobs.open(layer.blob.digest) as blob:
            reader = DiffIDReader(blob, compression)
            unpack_layer(reader, dest, whiteouts="overlay",  # type: ignore[arg-type]
                         compression=compression)
            while reader.read(CHUNK):  # what the tar reader left: padding after the archive
                pass
        if reader.error:
            raise InvalidArgument(reader.error)
        return reader.diff_id

    # -- containers --

    def container_dir(self, container_id: str) -> Path:
        """The container's directory: upper, work, merged, and its record."""
        if not _CONTAINER_ID.fullmatch(container_id or ""):
            raise InvalidArgument(f"invalid container id {container_id!r}: letters, digits, "
                                  "'_', '.' and '-' only, starting with a letter or digit")
        return self.container_root / container_id

    def mount_rootfs(self, container_id: str, image: str | Image,
                     parsed: tuple[Manifest, ImageConfig] | None = None) -> Path:
        """Mount the container's root filesystem: the image's layers and a writable one.

        Returns the merged directory. A container whose rootfs exists (made
        earlier, now unmounted) is mounted again with the same upper layer.
        If making a new one fails, nothing of it is left: no directory, no
        mount, no half-unpacked layer. `parsed`: as for layers_of.
        """
        directory = self.container_dir(container_id)
        with self._lock():
            digest = self._digest(image, parsed)
            layers = self.layers_of(digest, parsed)
            chains = [layer.chain_id for layer in layers]
            if directory.is_dir():
                if self._record(container_id)["chain_ids"] != chains:
                    raise Conflict(f"container {container_id} already has a root filesystem, "
                                   "made from another image")
                if not os.path.ismount(directory / "merged"):
                    self._mount_overlay(self._prepare(layers), layers[::-1], directory)
                return directory / "merged"
            lowers = self._prepare(layers)
            self.container_root.mkdir(mode=0o700, exist_ok=True)
            try:
                directory.mkdir(mode=0o700)
            except FileExistsError:
                raise Conflict(f"container {container_id} is being created already") from None
            try:
                _make_upper(directory / "upper", like=lowers[0])
                (directory / "work").mkdir(mode=0o700)
                (directory / "merged").mkdir(mode=0o755)
                _write_json(directory / RECORD, {"image": digest, "chain_ids": chains})
                self._mount_overlay(lowers, layers[::-1], directory)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
        return directory / "merged"

    def _mount_overlay(self, lowers: list[Path], top_first: list[Layer], directory: Path) -> None:
        upper, work, merged = directory / "upper", directory / "work", directory / "merged"
        options = _overlay_options([str(p) for p in lowers], upper, work)
        try:
            if len(options.encode()) < self.option_limit:
                mount("overlay", merged, "overlay", 0, options)
                return
            options = _overlay_options([f"l/{self._link(layer.key)}" for layer in top_first],
                                       upper, work)
            if len(options.encode()) < self.option_limit:
                run_isolated(_mount_from, str(self.snapshot_dir), options, str(merged))
                return
        except OSError as err:
            raise MiniDockerError(f"cannot mount the root filesystem of container "
                                  f"{directory.name}: {err}") from None
        raise InvalidArgument(f"the image has {len(lowers)} layers, too many for one overlay "
                              f"mount: even with short names the options take "
                              f"{len(options.encode())} bytes, and mount(2) reads "
                              f"{self.option_limit - 1}")

    def _link(self, key: str) -> str:
        """The short name under l/ of the snapshot `key`, made if need be."""
        self.link_dir.mkdir(mode=0o700, exist_ok=True)
        target = f"../{key}/fs"
        for length in LINK_LENGTHS:
            name = key[:length]
            try:
                os.symlink(target, self.link_dir / name)
                return name
            except FileExistsError:
                if os.readlink(self.link_dir / name) == target:
                    return name  # made earlier, for this layer; on a clash, try a longer name
        raise MiniDockerError(f"l/{key} points elsewhere: {self.link_dir} is damaged")

    def unmount(self, container_id: str) -> None:
        """Unmount the container's rootfs; its layers and upper directory stay."""
        merged = self.container_dir(container_id) / "merged"
        try:
            umount2(merged)
        except OSError as err:
            if err.errno == errno.EINVAL:  # not mounted
                return
            if err.errno == errno.ENOENT:
                raise NotFound(f"container {container_id} has no root filesystem") from None
            raise MiniDockerError(f"cannot unmount {merged}: {err.strerror}") from None

    def remove(self, container_id: str,
               later: Callable[[Callable[[], object]], None] | None = None) -> None:
        """Unmount the container's rootfs and delete its upper, work and merged directories:
        gone from their name at once, unmounted and deleted now or, given `later` (to
        call a function soon: Janitor.later), then. The mount moves with the rename."""
        directory = self.container_dir(container_id)
        if not directory.is_dir():
            raise NotFound(f"container {container_id} has no root filesystem")
        if later is None:
            self.unmount(container_id)
        doomed = self.container_root / f".removing-{container_id}-{secrets.token_hex(4)}"
        os.rename(directory, doomed)  # the record goes first, in one step
        if later is not None:
            later(lambda: _delete_removed(doomed))
        else:
            shutil.rmtree(doomed)

    def clear_removals(self) -> None:
        """Delete what removals that a crash cut short left renamed out of the way."""
        if self.container_root.is_dir():
            for entry in self.container_root.iterdir():
                if entry.name.startswith(".removing-"):
                    _delete_removed(entry)

    def diff(self, container_id: str) -> list[tuple[str, str]]:
        """What the container changed, as `docker diff` lists it: ("A"|"C"|"D", path), by path.

        Read from the upper directory alone, against the layers below:
        - a whiteout (character device 0/0) is a deleted path, D;
        - an opaque directory that the layers below have was deleted and made
          again: D, and what is in it now is all new, A;
        - anything else is A if no layer below has it, C if one does. A
          directory that was only copied up because something inside it
          changed (same mode, owner and mtime) is not listed itself;
        - the parent of an A or a D is C, as in Docker.
        """
        record = self._record(container_id)
        lowers = [self.snapshot_path(chain) for chain in reversed(record["chain_ids"])]
        return _changes(self.container_dir(container_id) / "upper", lowers)

    # -- who uses what; removal --

    def in_use(self) -> dict[str, list[str]]:
        """Every container with a rootfs, and the ChainIDs it stands on (base first)."""
        found = {}
        if self.container_root.is_dir():
            for name in sorted(os.listdir(self.container_root)):
                if _CONTAINER_ID.fullmatch(name):
                    try:
                        found[name] = list(self._record(name)["chain_ids"])
                    except NotFound:  # being created: its directory comes before its record
                        continue
        return found

    def referenced_chain_ids(self) -> set[str]:
        """The ChainIDs some container needs: layers no removal may touch."""
        return {chain for chains in self.in_use().values() for chain in chains}

    def image_chain_ids(self) -> set[str]:
        """The ChainIDs of every image in the store."""
        return {layer.chain_id for image in self.store.images() for layer in self.layers_of(image)}

    def snapshots(self) -> list[str]:
        """The ChainIDs of the snapshots on disk."""
        if not self.snapshot_dir.is_dir():
            return []
        return [f"sha256:{name}" for name in sorted(os.listdir(self.snapshot_dir))
                if _SNAPSHOT_NAME.fullmatch(name)]

    def remove_snapshot(self, chain_id: str) -> None:
        """Delete one snapshot; Conflict if a container stands on it."""
        with self._lock(exclusive=True):
            users = [cid for cid, chains in self.in_use().items() if chain_id in chains]
            if users:
                raise Conflict(f"layer {_short(chain_id)} is in use by container "
                               f"{', '.join(users)}: remove the container first")
            if chain_id not in self.snapshots():
                raise NotFound(f"no snapshot of layer {chain_id}")
            self._delete(chain_id.removeprefix("sha256:"))

    def remove_unused(self, keep: Iterable[str] | None = None) -> list[str]:
        """Delete every snapshot not in `keep` and not in use; return their ChainIDs.

        keep: the ChainIDs to keep; None keeps every layer of every image in
            the store (what `image prune` keeps). Unpacks that were left
            half-done by a process that died are cleared too.
        """
        with self._lock(exclusive=True):
            wanted = set(self.image_chain_ids() if keep is None else keep)
            wanted |= self.referenced_chain_ids()
            removed = [chain for chain in self.snapshots() if chain not in wanted]
            for chain in removed:
                self._delete(chain.removeprefix("sha256:"))
            self._clear_leftovers()
        return removed

    def _delete(self, key: str) -> None:
        for length in LINK_LENGTHS:
            link = self.link_dir / key[:length]
            if os.path.islink(link) and os.readlink(link) == f"../{key}/fs":
                os.unlink(link)
        doomed = self.snapshot_dir / f".removing-{key}-{secrets.token_hex(4)}"
        os.rename(self.snapshot_dir / key, doomed)  # gone from its name at once, whole
        shutil.rmtree(doomed)

    def _clear_leftovers(self) -> None:
        for name in os.listdir(self.snapshot_dir):
            if name.startswith(".removing-"):  # we hold the lock: its remover died
                shutil.rmtree(self.snapshot_dir / name, ignore_errors=True)
            elif name.startswith(".unpack-") and not _alive(int(name.split("-")[1])):
                shutil.rmtree(self.snapshot_dir / name, ignore_errors=True)

    # -- disk usage --

    def usage(self) -> DiskUsage:
        """Bytes per snapshot and per image, shared and unique, and per container."""
        info = {chain: self._layer_info(chain) for chain in self.snapshots()}
        users: dict[str, set[str]] = {}
        stacks: dict[str, list[str]] = {}
        for image in self.store.images():
            stacks[image.id] = [layer.chain_id for layer in self.layers_of(image)]
            for chain in stacks[image.id]:
                users.setdefault(chain, set()).add(image.id)
        in_use = self.in_use()
        layers = tuple(LayerUsage(chain, data["diff_id"], data["size"],
                                  tuple(sorted(users.get(chain, ()))),
                                  tuple(cid for cid, chains in in_use.items() if chain in chains))
                       for chain, data in info.items())
        images = []
        for image_id, chains in stacks.items():
            size = sum(info[c]["size"] for c in chains if c in info)
            shared = sum(info[c]["size"] for c in chains if c in info and len(users[c]) > 1)
            images.append(ImageUsage(image_id, size, shared, size - shared))
        containers = {cid: _tree_size(self.container_dir(cid) / "upper") for cid in in_use}
        return DiskUsage(layers, tuple(images), containers,
                         sum(data["size"] for data in info.values()))

    # -- helpers --

    def _layer_info(self, chain_id: str) -> dict:
        return json.loads((self.snapshot_dir / chain_id.removeprefix("sha256:") / LAYER_INFO)
                          .read_text())

    def _record(self, container_id: str) -> dict:
        try:
            return json.loads((self.container_dir(container_id) / RECORD).read_text())
        except FileNotFoundError:
            raise NotFound(f"container {container_id} has no root filesystem") from None

    def _digest(self, image: str | Image, parsed: object = None) -> str:
        """The manifest digest of `image`; given `parsed`, a str `image` is that digest."""
        if isinstance(image, Image):
            return image.digest
        return image if parsed is not None else self.store.resolve(image)

    @contextmanager
    def _lock(self, exclusive: bool = False) -> Iterator[None]:
        self.snapshot_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.snapshot_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield


# --- the overlay mount ------------------------------------------------------------------


def _overlay_options(lowers: list[str], upper: Path, work: Path) -> str:
    for path in (*lowers, str(upper), str(work)):
        if any(c in path for c in ",:\\"):
            raise InvalidArgument(f"{path}: overlayfs cannot take a path with ',', ':' or '\\'")
    options = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
    # index=on would tie the lower layers to this one upper directory (docker turns it off).
    return options + (",index=off" if OVERLAY_INDEX.exists() else "")


def _mount_from(directory: str, options: str, target: str) -> None:
    """In a child process: mount with lower dirs relative to `directory` (see the page limit)."""
    os.chdir(directory)
    mount("overlay", target, "overlay", 0, options)


def _make_upper(upper: Path, like: Path) -> None:
    """The upper directory, with the owner and mode of the top layer's root.

    The merged root takes its attributes from the upper directory, so an
    image whose root is 0700 stays 0700 (docker's overlay2 does the same).
    """
    upper.mkdir()
    st = os.stat(like)
    os.chown(upper, st.st_uid, st.st_gid)
    os.chmod(upper, stat.S_IMODE(st.st_mode))


# --- docker diff --------------------------------------------------------------------------


def _changes(upper: Path, lowers: list[Path]) -> list[tuple[str, str]]:
    changes: dict[str, str] = {}

    def parent_changed(path: str) -> None:
        parent = posixpath.dirname(path)
        if parent != "/" and parent not in changes:
            changes[parent] = "C"

    def walk(rel: str, hidden: bool) -> None:
        with os.scandir(upper / rel.lstrip("/") if rel else upper) as entries:
            found = sorted(entries, key=lambda e: e.name)
        for entry in found:
            path = f"{rel}/{entry.name}"
            st = entry.stat(follow_symlinks=False)
            below = None if hidden else _lower_entry(lowers, path.lstrip("/").split("/"))
            is_dir = stat.S_ISDIR(st.st_mode)
            opaque = is_dir and _is_opaque(entry.path)
            if _is_whiteout(st):
                changes[path] = "D"
            elif below is None:
                changes[path] = "A"
            elif opaque:
                changes[path] = "D"
            elif not (is_dir and stat.S_ISDIR(below.st_mode) and _same_dir(st, below)):
                changes[path] = "C"
            if changes.get(path) in ("A", "D"):
                parent_changed(path)
            if is_dir:
                walk(path, hidden or opaque or below is None)

    walk("", False)
    return sorted(((kind, path) for path, kind in changes.items()), key=lambda c: c[1])


def _lower_entry(lowers: list[Path], parts: list[str]) -> os.stat_result | None:
    """The entry at `parts` as the layers below show it (topmost first), or None.

    Each layer is walked component by component, never through a symlink: a
    non-directory on the way hides the path in every layer beneath, and an
    opaque directory stops the search at its layer, as overlayfs decides.
    """
    for lower in lowers:
        current, stop = lower, False
        for depth, part in enumerate(parts):
            current = current / part
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                break
            if depth == len(parts) - 1:
                return None if _is_whiteout(st) else st
            if not stat.S_ISDIR(st.st_mode):
                return None
            stop = stop or _is_opaque(current)
        if stop:
            return None
    return None


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str | Path) -> bool:
    try:
        return os.getxattr(path, wh.OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _same_dir(a: os.stat_result, b: os.stat_result) -> bool:
    return ((a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns)
            == (b.st_mode, b.st_uid, b.st_gid, b.st_mtime_ns))


# --- small helpers ------------------------------------------------------------------------


def _tree_size(top: Path) -> int:
    """Bytes of the files under `top`, each inode once (hard links share their bytes)."""
    seen, total = set(), 0
    for directory, dirs, files in os.walk(top):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            st = os.lstat(os.path.join(directory, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _delete_removed(doomed: Path) -> None:
    """Delete a container's directory, renamed out of the way by `remove`: its rootfs
    first unmounted, if it still is mounted (never delete through the overlay). A
    mount still in use is detached (MNT_DETACH, as Docker's overlay2 does): gone from
    the tree at once, and from the kernel once its last user lets go."""
    for flags in (0, MNT_DETACH):
        try:
            umount2(doomed / "merged", flags)
            break
        except OSError as err:
            if err.errno in (errno.EINVAL, errno.ENOENT):  # not mounted, or not there
                break
            if err.errno != errno.EBUSY or flags:
                return  # still mounted: leave it, rather than delete what it shows
    shutil.rmtree(doomed, ignore_errors=True)


def _write_json(path: Path, value: object) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]
