"""An image's life after the pull: `docker commit`, `docker rmi`, `docker image prune`.

Tags are cheap and blobs are shared, so removing an image is mostly
bookkeeping: which of its pieces does anyone else still need?

- A tag is only a name. While another tag points at the same image, `rmi`
  of one of them just removes that name ("Untagged: ...").
- The last name goes with the image. Its manifest and config blobs go too,
  and each layer goes unless another image or a container still stands on
  it: its blob is kept while another manifest lists it, its snapshot while
  another image's stack (or a container's) includes its ChainID. A layer
  shared with busybox outlives every image built FROM busybox.
- A container needs its image. Without force, `rmi` refuses, in Docker's
  words. With force the tag goes, and the image stays, untagged (`<none>`),
  as long as a container uses it: the container keeps its layers, and
  `commit` can still read its config.

`commit` goes the other way: a container's writable layer becomes a new layer
on top of its image. The upper directory is already a diff, but in
overlayfs's dialect: a deleted file is a character device 0/0, a directory
that was deleted and made again carries the xattr trusted.overlay.opaque=y.
A layer tar speaks the OCI dialect, `.wh.NAME` and `.wh..wh..opq`, so the
tar writer translates as it goes (what Docker's overlay2 driver does in
archive_linux.go). The tar is written like `bootstrap.rootfs_tar`: sorted,
numeric owners, no access or change times, so the same upper directory
always gives the same layer digest.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Mapping

from mini_docker.errors import Conflict, InvalidArgument, NotFound
from mini_docker.image import whiteout as wh
from mini_docker.image.bootstrap import walk_tree
from mini_docker.image.container import merge_env
from mini_docker.image.oci import (OCI_CONFIG, OCI_LAYER_GZIP, Descriptor, GzipLayerReader,
                                   HistoryEntry, Manifest, canonical_json,
                                   check_container_config, load_json_object)
from mini_docker.image.reference import Reference, tag_reference
from mini_docker.image.snapshot import LAYER_INFO, RECORD, Snapshotter
from mini_docker.image.store import Image, ImageStore

COMMIT_CREATED_BY = "mini-docker commit"
_OVERLAY_REDIRECT = "trusted.overlay.redirect"
_OVERLAY_METACOPY = "trusted.overlay.metacopy"


# --- docker rmi ---------------------------------------------------------------------------


def remove_image(store: ImageStore, snapshotter: Snapshotter, name: str, *,
                 force: bool = False) -> list[str]:
    """Remove the image `name` as `docker rmi` does; return the lines Docker prints.

    name: a tag (`busybox`, `busybox:1.36`), an image ID or a unique prefix of
        one, or a manifest digest.
    force: remove the tag even if a container uses the image (the image then
        stays, untagged, for that container), and remove an image by ID
        although its tags are in several repositories.

    Returns e.g. ["Untagged: busybox:latest", "Deleted: sha256:<image id>",
    "Deleted: sha256:<chain id>", ...]: the tags removed, then the image and
    the layers deleted with it, top layer first. Raises NotFound for an
    unknown name and Conflict when a container uses the image (without force).
    """
    digest, ref = store.lookup(name)
    image = store.image(digest)
    users = _containers_using(snapshotter, digest)
    if ref is not None:  # removing a tag
        if len(image.references) > 1:
            store.untag(str(ref))
            return [f"Untagged: {ref.familiar()}"]
        if users and not force:
            raise Conflict(f'conflict: unable to remove repository reference "{name}" (must '
                           f"force) - container {users[0][:12]} is using its referenced image "
                           f"{_short(image.id)}")
        refs: tuple[Reference, ...] = (ref,)
    else:  # removing by ID: every tag goes
        if len({r.name for r in image.references}) > 1 and not force:
            raise Conflict(f"conflict: unable to delete {_short(image.id)} (must be forced) - "
                           "image is referenced in multiple repositories")
        if users and not force:
            raise Conflict(f"conflict: unable to delete {_short(image.id)} (must be forced) - "
                           f"image is being used by stopped container {users[0][:12]}")
        refs = image.references
    lines = _untag_all(store, refs)
    if users:  # forced: the container still needs the image, which stays as <none>
        return lines
    deleted, _ = _delete_image(store, snapshotter, image)
    return lines + deleted


# --- docker image prune -------------------------------------------------------------------


def prune_images(store: ImageStore, snapshotter: Snapshotter, *,
                 all: bool = False) -> tuple[list[str], int]:
    """Remove unused images as `docker image prune` does; return its lines and bytes freed.

    all: remove every image no container uses (`-a`); by default only the
        dangling ones, those without a tag.

    After the images, whatever no image and no container needs is removed
    too: blobs that no stored manifest lists (a pull that died halfway leaves
    those) and snapshots of layers that no image has. A pull running at the
    same moment could lose a blob it has stored but not yet recorded; like
    `docker image prune`, this is meant to run when nothing else does.
    """
    in_use = {_record(snapshotter, cid)["image"] for cid in snapshotter.in_use()}
    lines: list[str] = []
    reclaimed = 0
    for image in store.images():
        if image.digest in in_use or (image.references and not all):
            continue
        lines += _untag_all(store, image.references)
        deleted, freed = _delete_image(store, snapshotter, image)
        lines += deleted
        reclaimed += freed
    return lines, reclaimed + _collect_garbage(store, snapshotter)


# --- removal, step by step ----------------------------------------------------------------


def _untag_all(store: ImageStore, refs: tuple[Reference, ...]) -> list[str]:
    for ref in refs:
        store.untag(str(ref))
    return [f"Untagged: {ref.familiar()}" for ref in refs]


def _delete_image(store: ImageStore, snapshotter: Snapshotter,
                  image: Image) -> tuple[list[str], int]:
    """Forget the untagged `image`, then delete the blobs and snapshots nobody else needs."""
    manifest = store.manifest(image.digest)
    layers = snapshotter.layers_of(image)
    store.forget_image(image.digest)
    needed_blobs = _blobs_in_use(store)
    needed_chains = snapshotter.image_chain_ids() | snapshotter.referenced_chain_ids()
    freed = 0
    for digest in (image.digest, manifest.config.digest, *(d.digest for d in manifest.layers)):
        freed += _delete_blob(store, digest, needed_blobs)
    lines = [f"Deleted: {image.id}"]
    for layer in reversed(layers):  # Docker releases a stack from the top
        if layer.chain_id in needed_chains:
            continue
        freed += _delete_snapshot(snapshotter, layer.chain_id)
        lines.append(f"Deleted: {layer.chain_id}")
    return lines, freed


def _collect_garbage(store: ImageStore, snapshotter: Snapshotter) -> int:
    """Delete blobs no image lists and snapshots no image or container needs; bytes freed."""
    needed = _blobs_in_use(store)
    freed = sum(_delete_blob(store, blob.digest, needed) for blob in store.blobs.walk())
    sizes = {chain: _snapshot_size(snapshotter, chain) for chain in snapshotter.snapshots()}
    return freed + sum(sizes.get(chain, 0) for chain in snapshotter.remove_unused())


def _blobs_in_use(store: ImageStore) -> set[str]:
    """Every blob an image in the store needs: its manifest, its config, its layers."""
    needed = set()
    for image in store.images():
        manifest = store.manifest(image.digest)
        needed |= {image.digest, manifest.config.digest, *(d.digest for d in manifest.layers)}
    return needed


def _delete_blob(store: ImageStore, digest: str, needed: set[str]) -> int:
    if digest in needed:
        return 0
    try:
        size = store.blobs.size(digest)
        store.blobs.delete(digest)
    except NotFound:  # deleted already: the same blob listed twice, or another remover
        return 0
    return size


def _delete_snapshot(snapshotter: Snapshotter, chain_id: str) -> int:
    size = _snapshot_size(snapshotter, chain_id)
    try:
        snapshotter.remove_snapshot(chain_id)
    except NotFound:  # never unpacked
        return 0
    except Conflict:  # a container mounted it meanwhile: it stays for that container
        return 0
    return size


def _snapshot_size(snapshotter: Snapshotter, chain_id: str) -> int:
    try:
        info = json.loads((snapshotter.snapshot_path(chain_id).parent / LAYER_INFO).read_text())
    except (FileNotFoundError, ValueError):
        return 0
    return int(info.get("size", 0))


def _containers_using(snapshotter: Snapshotter, manifest_digest: str) -> list[str]:
    return [cid for cid in snapshotter.in_use()
            if _record(snapshotter, cid).get("image") == manifest_digest]


def _record(snapshotter: Snapshotter, container_id: str) -> dict[str, Any]:
    """The container's snapshot record: its image's manifest digest and its ChainIDs."""
    try:
        return json.loads((snapshotter.container_dir(container_id) / RECORD).read_text())
    except FileNotFoundError:
        raise NotFound(f"No such container: {container_id}") from None


# --- docker commit ------------------------------------------------------------------------


def commit(store: ImageStore, snapshotter: Snapshotter, container_id: str,
           repo_tag: str | None = None, *, changes: Mapping[str, Any] | None = None,
           comment: str = "", author: str = "", created: str | None = None) -> Image:
    """Make a new image of the container's image plus its writable layer (`docker commit`).

    repo_tag: the tag to give the new image (`myapp` means myapp:latest), or None.
    changes: container settings to change, in Docker's config names
        ({"Cmd": ["sh"], "WorkingDir": "/srv"}). Env and Labels are merged
        into the image's, as `--change 'ENV A=1'` would; the rest replace.
    comment, author: recorded in the config (`docker commit -m`, `-a`).
    created: the creation time; by default now.

    The container should not be running: its upper directory is read as it
    is (Docker pauses a running container; we do not). Raises NotFound for
    an unknown container, InvalidArgument for a bad tag or change, or for an
    upper directory written with overlayfs features a layer cannot express
    (redirect_dir, metacopy).
    """
    tags = [tag_reference(repo_tag)] if repo_tag else []  # refused before anything is stored
    settings_changes = check_container_config(changes or {})
    record = _record(snapshotter, container_id)
    parent = store.manifest(record["image"])
    config = load_json_object(store.blobs.read(parent.config.digest), "image config")

    layer, diff_id = _store_layer(store, snapshotter.container_dir(container_id) / "upper")

    created = created or datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    config["config"] = _changed_settings(config.get("config") or {}, settings_changes)
    config["rootfs"] = {"type": "layers",
                        "diff_ids": [*config["rootfs"]["diff_ids"], diff_id]}
    config["history"] = [*(config.get("history") or []),
                         HistoryEntry(created, COMMIT_CREATED_BY, comment).to_json()]
    config["created"] = created
    if author:
        config["author"] = author
    config_blob = store.blobs.put_bytes(canonical_json(config))
    manifest = Manifest(Descriptor(OCI_CONFIG, config_blob.digest, config_blob.size),
                        (*parent.layers, layer))
    manifest_blob = store.blobs.put_bytes(canonical_json(manifest.to_json()))
    return store.add_image(manifest_blob.digest, tags)


def _changed_settings(settings: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = {**settings, **changes}
    if "Env" in changes:
        out["Env"] = merge_env(settings.get("Env") or [], changes["Env"])
    if "Labels" in changes:
        out["Labels"] = {**(settings.get("Labels") or {}), **changes["Labels"]}
    return out


def _store_layer(store: ImageStore, upper: Path) -> tuple[Descriptor, str]:
    """Write `upper` as a gzip layer blob; return its descriptor and its diff_id."""
    store.blobs.ingest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=store.blobs.ingest_dir, prefix="commit-") as tar:
        upper_layer_tar(upper, tar)
        tar.seek(0)
        reader = GzipLayerReader(tar)  # type: ignore[arg-type]
        blob = store.blobs.put(reader)  # type: ignore[arg-type]
    return Descriptor(OCI_LAYER_GZIP, blob.digest, blob.size), reader.diff_id


def upper_layer_tar(upper: Path, fileobj: BinaryIO) -> None:
    """Write the overlay upper directory `upper` to `fileobj` as an OCI layer tar.

    A whiteout (character device 0/0) becomes an empty file `.wh.NAME` (mode
    0600, as Docker writes it); an opaque directory is written, then an
    empty `.wh..wh..opq` inside it. Everything else is written as
    `bootstrap.rootfs_tar` writes a rootfs: name order, numeric owners,
    whole-second mtimes, hard links kept, the root itself and sockets left out.
    Extended attributes travel as pax `SCHILY.xattr.NAME` records (file
    capabilities among them), except overlayfs's own.
    """
    upper = Path(upper)
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in walk_tree(upper):
            rel = path.relative_to(upper).as_posix()
            st = os.lstat(path)
            _refuse_overlay_extras(path, st)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                tar.addfile(_marker(posixpath.join(posixpath.dirname(rel),
                                                   wh.PREFIX + path.name), st, 0o600))
                continue
            info = tar.gettarinfo(str(path), arcname=rel)
            if info is None:  # a socket: tar has no type for it
                continue
            info.uname = info.gname = ""
            info.mtime = int(info.mtime)
            info.pax_headers.update(_xattr_records(path))
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if stat.S_ISDIR(st.st_mode) and _is_opaque(path):
                tar.addfile(_marker(f"{rel}/{wh.OPAQUE}", st, stat.S_IMODE(st.st_mode)))


def _xattr_records(path: Path) -> dict[str, str]:
    """The entry's extended attributes as pax records; overlayfs's own stay behind."""
    records = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # a filesystem without xattrs
        return records
    for name in sorted(names):
        if name.startswith(("trusted.overlay.", "user.overlay.")):
            continue
        value = os.getxattr(path, name, follow_symlinks=False)
        # tarfile writes a value that is not UTF-8 as binary (hdrcharset=BINARY)
        records[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    return records


def _marker(name: str, st: os.stat_result, mode: int) -> tarfile.TarInfo:
    """An empty regular file entry: a whiteout or an opaque marker."""
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid, info.mtime = mode, st.st_uid, st.st_gid, int(st.st_mtime)
    return info


def _refuse_overlay_extras(path: Path, st: os.stat_result) -> None:
    """A renamed directory (redirect_dir) or a metadata-only copy-up cannot become a tar entry."""
    name = (_OVERLAY_REDIRECT if stat.S_ISDIR(st.st_mode)
            else _OVERLAY_METACOPY if stat.S_ISREG(st.st_mode) else None)
    if name is None:
        return
    try:
        os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return
    raise InvalidArgument(f"{path} uses overlayfs's {name.rsplit('.', 1)[1]} feature, which a "
                          "layer tar cannot express: mount overlay with redirect_dir=off and "
                          "metacopy=off")


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, wh.OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]
