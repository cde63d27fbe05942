"""Save and load: images as files, in the two formats the other tools read.

An image leaves the store in one of two shapes:

- An OCI image layout, the standard one: a directory with an `oci-layout`
  file, an `index.json` listing manifests, and `blobs/sha256/<hex>`: the
  store's own blobs, byte for byte. skopeo (`oci:DIR:tag`), umoci, buildah
  and containerd read it. The index entry's `org.opencontainers.image.ref.name`
  annotation holds the tag, as skopeo and umoci expect; containerd's
  `io.containerd.image.name` holds the full reference.
- A docker-archive, the tar that `docker save` writes and `docker load`
  reads: `manifest.json` ([{"Config", "RepoTags", "Layers"}]), the config as
  `<hex>.json`, and each layer uncompressed as `<id>/layer.tar` beside the
  `json` and `VERSION` files of Docker's pre-2016 format, which old tools
  still look for. It has no manifests, so loading one makes a new one.

Loading trusts nothing it reads. Every blob is hashed while it is copied
into the store and refused if it does not match the digest that names it;
every layer is also decompressed as it goes, so that its diff_id can be
checked against the config. Tags are written last, in one atomic change,
and only when every blob of every image has passed; if anything fails,
the blobs this load added are removed again, and the store is as it was.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, Sequence

from mini_docker.errors import Conflict, InvalidArgument, NotFound
from mini_docker.image.oci import (IMAGE_NAME, OCI_CONFIG, OCI_INDEX, OCI_LAYER,
                                   OCI_LAYER_GZIP, REF_NAME, Descriptor, DiffIDReader,
                                   ImageConfig, Index, Manifest, canonical_json, chain_ids,
                                   layer_compression, load_json_object, parse_manifest,
                                   sha256_digest)
from mini_docker.image.reference import Reference, is_tag, parse_reference, tag_reference
from mini_docker.image.store import Blob, Image, ImageStore

LAYOUT_VERSION = "1.0.0"
MANIFEST_LIMIT = 4 << 20  # containerd's limit: a manifest is small, a huge one is an attack
CHUNK = 1 << 20
_HEX_NAME = re.compile(r"([a-f0-9]{64})(?:\.json|\.tar|\.tar\.gz)?")


# --- saving -------------------------------------------------------------------------------


def _images_to_save(store: ImageStore, names: Sequence[str]) -> list[tuple[str, list[Reference]]]:
    """Resolve `names` to images, in order, each once, with the tags they were named by
    (an image named by its ID or digest is saved with no name)."""
    images: dict[str, list[Reference]] = {}
    for name in names:
        digest, tag = store.lookup(name)
        tags = images.setdefault(digest, [])
        if tag is not None and tag not in tags:
            tags.append(tag)
    return list(images.items())


def save_oci_layout(store: ImageStore, names: Sequence[str], dest: str | Path) -> Path:
    """Write the images `names` into the OCI image layout at `dest`, and return `dest`.

    dest may be missing, an empty directory, or a layout already (skopeo's,
    umoci's, ours): the images are added, and an entry with the same tag is
    replaced. Blobs are written before index.json, which is replaced whole,
    so a layout is never left pointing at a missing blob.
    """
    dest = Path(dest)
    images = _images_to_save(store, names)
    entries = _existing_entries(dest)
    blob_dir = dest / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    if not (dest / "oci-layout").exists():
        _write_atomically(dest / "oci-layout",
                          canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
    for digest, refs in images:
        manifest = store.manifest(digest)
        for blob in (digest, manifest.config.digest, *(d.digest for d in manifest.layers)):
            target = blob_dir / blob.removeprefix("sha256:")
            if not target.exists():
                _copy_atomically(store.blobs.path(blob), target)
        size = store.blobs.size(digest)
        for annotations in ([{IMAGE_NAME: str(r), REF_NAME: r.tag} for r in refs] or [{}]):
            entries = [e for e in entries if not _same_name(e, annotations)]
            entries.append(Descriptor(manifest.media_type, digest, size, annotations))
    index = Index(tuple(entries))
    _write_atomically(dest / "index.json", canonical_json(index.to_json()))
    return dest


def _existing_entries(dest: Path) -> list[Descriptor]:
    if not dest.exists():
        return []
    if not dest.is_dir():
        raise Conflict(f"{dest} exists and is not a directory")
    if not (dest / "oci-layout").exists():
        if any(dest.iterdir()):
            raise Conflict(f"{dest} is not empty and is not an OCI image layout")
        return []
    if not (dest / "index.json").exists():
        return []
    index = parse_manifest((dest / "index.json").read_bytes(), OCI_INDEX)
    assert isinstance(index, Index)
    return list(index.manifests)


def _same_name(entry: Descriptor, annotations: dict[str, str]) -> bool:
    """Whether a new index entry with `annotations` replaces `entry`: same tag, and not
    another repository's (an entry that names none is taken to be the same one)."""
    tag = annotations.get(REF_NAME)
    if not tag or entry.annotations.get(REF_NAME) != tag:
        return False
    other = entry.annotations.get(IMAGE_NAME)
    return other is None or other == annotations[IMAGE_NAME]


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with open(fd, "wb") as out:
            out.write(data)
            os.fchmod(out.fileno(), 0o644)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def _copy_atomically(source: Path, target: Path) -> None:
    """Copy a blob (never link it: a layout is the user's to edit, the store's blobs are not)."""
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
    os.close(fd)
    try:
        shutil.copyfile(source, temp)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        os.unlink(temp)
        raise


def save_docker_archive(store: ImageStore, names: Sequence[str],
                        dest: str | Path | BinaryIO) -> None:
    """Write the images `names` as a docker-archive tar, as `docker save` (20.10) does.

    dest: a file name (written beside, then renamed into place) or a writable
    binary file object (written front to back; it may be a pipe).
    """
    if not isinstance(dest, (str, Path)):
        _write_docker_archive(store, _images_to_save(store, names), dest)
        return
    dest = Path(dest)
    images = _images_to_save(store, names)
    fd, temp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}-")
    try:
        with open(fd, "wb") as out:
            _write_docker_archive(store, images, out)
            os.fchmod(out.fileno(), 0o644)
        os.replace(temp, dest)
    except BaseException:
        os.unlink(temp)
        raise


def _write_docker_archive(store: ImageStore, images: list[tuple[str, list[Reference]]],
                          out: BinaryIO) -> None:
    manifest_json: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    written: set[str] = set()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for digest, refs in images:
            manifest = store.manifest(digest)
            config_bytes = store.blobs.read(manifest.config.digest)
            config = ImageConfig.from_bytes(config_bytes)
            if len(config.diff_ids) != len(manifest.layers):
                raise InvalidArgument(f"image {digest}: the config lists {len(config.diff_ids)} "
                                      f"layers, the manifest {len(manifest.layers)}")
            ids = _v1_ids(config.diff_ids, manifest.config.digest)
            for n, (layer, v1_id) in enumerate(zip(manifest.layers, ids)):
                if v1_id not in written:
                    v1_json = {"id": v1_id, "created": "1970-01-01T00:00:00Z",
                               **({"parent": ids[n - 1]} if n else {})}
                    if n == len(ids) - 1:  # the top one stands for the whole image
                        v1_json.update(created=config.created or v1_json["created"],
                                       config=dict(config.config),
                                       architecture=config.architecture, os=config.os)
                    _add_dir(tar, v1_id)
                    _add_bytes(tar, f"{v1_id}/VERSION", b"1.0")
                    _add_bytes(tar, f"{v1_id}/json", canonical_json(v1_json))
                    _add_layer(tar, store, layer, config.diff_ids[n], f"{v1_id}/layer.tar")
                    written.add(v1_id)
            config_name = manifest.config.digest.removeprefix("sha256:") + ".json"
            if config_name not in written:
                _add_bytes(tar, config_name, config_bytes)
                written.add(config_name)
            manifest_json.append({"Config": config_name,
                                  "RepoTags": [r.familiar() for r in refs] or None,
                                  "Layers": [f"{i}/layer.tar" for i in ids]})
            for ref in refs:
                repositories.setdefault(ref.familiar_name, {})[ref.tag or ""] = ids[-1]
        _add_bytes(tar, "manifest.json", json.dumps(manifest_json, separators=(",", ":")).encode())
        if repositories:
            _add_bytes(tar, "repositories", canonical_json(repositories))


def _v1_ids(diff_ids: Sequence[str], config_digest: str) -> list[str]:
    """Names for the layer directories, in Docker's pre-2016 style: one per layer,
    made from its ChainID and its parent's name, the top one also from the config.
    `docker load` ignores them when manifest.json is there; they only must differ."""
    ids: list[str] = []
    for n, chain in enumerate(chain_ids(diff_ids)):
        seed: dict[str, str] = {"layer_id": chain, **({"parent": ids[-1]} if ids else {})}
        if n == len(diff_ids) - 1:
            seed["config"] = config_digest
        ids.append(sha256_digest(canonical_json(seed)).removeprefix("sha256:"))
    return ids


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(info)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_layer(tar: tarfile.TarFile, store: ImageStore, layer: Descriptor, diff_id: str,
               name: str) -> None:
    """Add a layer uncompressed, checking on the way that it is the one the config names."""
    compression = layer_compression(layer)
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    if compression == "none":
        if layer.digest != diff_id:
            raise InvalidArgument(f"layer {layer.digest} is uncompressed, so its diff_id "
                                  f"must be the same digest, not {diff_id}")
        info.size = layer.size
        with store.blobs.open(layer.digest) as f:
            tar.addfile(info, f)
        return
    store.blobs.ingest_dir.mkdir(parents=True, exist_ok=True)
    with store.blobs.open(layer.digest) as blob, tempfile.TemporaryFile(
            dir=store.blobs.ingest_dir) as plain:
        reader = DiffIDReader(blob, compression)
        while reader.read_into(plain):
            pass
        if reader.error or reader.diff_id != diff_id:
            raise InvalidArgument(f"layer {layer.digest} in the store does not match its "
                                  f"config: its diff_id is {reader.diff_id}, not {diff_id}")
        info.size = plain.tell()
        plain.seek(0)
        tar.addfile(info, plain)


# --- where a load reads from: a directory or a tar --------------------------------------


class _Source:
    """The files of a layout or an archive, by relative name ("index.json", "blobs/...")."""

    where: str

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def open(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def read(self, name: str, limit: int = MANIFEST_LIMIT) -> bytes:
        if not self.has(name):
            raise InvalidArgument(f"{self.where} has no {name}")
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise InvalidArgument(f"{self.describe(name)} is larger than {limit} bytes")
        return data

    def describe(self, name: str) -> str:
        return f"{name} in {self.where}"

    def close(self) -> None:
        pass


def _inside(name: str) -> str:
    """`name` normalised, if it stays inside the layout or archive ("../x" does not)."""
    clean = os.path.normpath(name) if isinstance(name, str) and name else ".."
    if clean.startswith(("/", "..")):
        raise InvalidArgument(f"{name!r} points outside the layout or archive")
    return clean


class _DirectorySource(_Source):
    def __init__(self, root: Path) -> None:
        self.root, self.where = root, str(root)

    def has(self, name: str) -> bool:
        return (self.root / _inside(name)).is_file()

    def open(self, name: str) -> BinaryIO:
        return open(self.root / _inside(name), "rb")


class _TarSource(_Source):
    """A tar, read where it is if it is a seekable file; otherwise (a pipe, or
    compressed, as `docker save | gzip` makes it) first copied to `spool_dir`."""

    def __init__(self, source: str | Path | BinaryIO, spool_dir: Path) -> None:
        named = isinstance(source, (str, Path))
        self.where = str(source) if named else getattr(source, "name", "the archive")
        self._opened: list[BinaryIO] = []  # what close() must close
        fileobj = self._keep(open(source, "rb")) if named else source  # type: ignore[arg-type]
        try:
            if not _seekable(fileobj):
                fileobj = self._spool(fileobj, spool_dir)
            magic = fileobj.read(2)
            fileobj.seek(0)
            if magic == b"\x1f\x8b":
                fileobj = self._spool(gzip.GzipFile(fileobj=fileobj), spool_dir)  # type: ignore
            self.tar = tarfile.open(fileobj=fileobj, mode="r:")
            self.members = {os.path.normpath(m.name): m for m in self.tar.getmembers()}
        except (tarfile.TarError, OSError, EOFError) as err:
            self.close()
            raise InvalidArgument(f"{self.where} is not a tar archive: {err}") from None

    def _keep(self, f: BinaryIO) -> BinaryIO:
        self._opened.append(f)
        return f

    def _spool(self, stream: BinaryIO, spool_dir: Path) -> BinaryIO:
        spool_dir.mkdir(parents=True, exist_ok=True)
        spool = self._keep(tempfile.TemporaryFile(dir=spool_dir))  # type: ignore[arg-type]
        shutil.copyfileobj(stream, spool, CHUNK)
        spool.seek(0)
        return spool

    def has(self, name: str) -> bool:
        member = self.members.get(_inside(name))
        return member is not None and (member.isfile() or member.issym() or member.islnk())

    def open(self, name: str) -> BinaryIO:
        try:
            f = self.tar.extractfile(self.members[_inside(name)])
        except (KeyError, tarfile.TarError):
            f = None
        if f is None:
            raise InvalidArgument(f"{self.where} has no file {name}")
        return f  # type: ignore[return-value]

    def close(self) -> None:
        if getattr(self, "tar", None):
            self.tar.close()
        for f in self._opened:
            f.close()


def _seekable(f: BinaryIO) -> bool:
    try:
        return f.seekable()
    except (AttributeError, ValueError):
        return False


class _Importer:
    """Copies blobs from a source into the store, verified; can take back what it added."""

    def __init__(self, store: ImageStore, source: _Source) -> None:
        self.store, self.source = store, source
        self.added: list[str] = []
        self.done: dict[str, Blob] = {}
        self.diff_ids: dict[str, str] = {}  # layer blob digest -> the digest of its tar

    def put(self, stream: BinaryIO, name: str, expected: str | None = None,
            size: int | None = None) -> Blob:
        try:
            blob = self.store.blobs.put(stream, expected, size)
        except InvalidArgument as err:
            raise InvalidArgument(f"{self.source.describe(name)}: {err}") from None
        if blob.new:
            self.added.append(blob.digest)
        self.done[blob.digest] = blob
        return blob

    def blob(self, descriptor: Descriptor, what: str) -> Blob:
        """Import the layout blob `descriptor` points at."""
        if descriptor.digest in self.done:
            return self.done[descriptor.digest]
        name = _blob_name(descriptor.digest)
        if not self.source.has(name):
            raise InvalidArgument(f"{self.source.where} is missing {what} {descriptor.digest}")
        with self.source.open(name) as f:
            return self.put(f, name, descriptor.digest, descriptor.size)

    def document(self, descriptor: Descriptor, what: str) -> Manifest | Index:
        """Import a manifest or index blob, checked before it is parsed."""
        name = _blob_name(descriptor.digest)
        if not self.source.has(name):
            raise InvalidArgument(f"{self.source.where} is missing {what} {descriptor.digest}")
        data = self.source.read(name)
        self.put(io.BytesIO(data), name, descriptor.digest, descriptor.size)
        return parse_manifest(data, descriptor.media_type)

    def layer(self, descriptor: Descriptor, diff_id: str, n: int) -> None:
        """Import layer `n`, and check that its content is the diff_id the config names."""
        compression = layer_compression(descriptor)
        name = _blob_name(descriptor.digest)
        found = self.diff_ids.get(descriptor.digest)
        if found is None and compression == "none":  # the blob is the tar: same digest
            found = self.blob(descriptor, f"layer {n}").digest
        elif found is None:
            if not self.source.has(name):
                raise InvalidArgument(f"{self.source.where} is missing layer {n} "
                                      f"{descriptor.digest}")
            with self.source.open(name) as f:
                reader = DiffIDReader(f, compression)
                self.put(reader, name, descriptor.digest, descriptor.size)  # type: ignore
            if reader.error:
                raise InvalidArgument(f"{self.source.describe(name)}: {reader.error}")
            found = reader.diff_id
        self.diff_ids[descriptor.digest] = found
        if found != diff_id:
            raise InvalidArgument(f"{self.source.describe(name)}: layer {n} is not the one "
                                  f"the config names: its diff_id is {found}, the config "
                                  f"says {diff_id}")

    def roll_back(self) -> None:
        for digest in self.added:
            try:
                self.store.blobs.delete(digest)
            except NotFound:
                pass


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _open_source(store: ImageStore, source: str | Path | BinaryIO) -> _Source:
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        return _DirectorySource(Path(source))
    if isinstance(source, (str, Path)) and not Path(source).exists():
        raise NotFound(f"{source}: no such file or directory")
    return _TarSource(source, store.blobs.ingest_dir)


# --- loading ------------------------------------------------------------------------------


def load(store: ImageStore, source: str | Path | BinaryIO,
         repository: str | None = None) -> list[Image]:
    """Load every image in `source` into the store, and return them.

    source: an OCI image layout (a directory, or a tar of one), or a
        docker-archive (a tar with manifest.json, which wins if both are there).
    repository: the repository for index entries that name only a tag
        (skopeo's and umoci's `ref.name` is "latest", not "busybox:latest");
        without it such images are loaded untagged.
    """
    opened = _open_source(store, source)
    try:
        if opened.has("manifest.json"):
            return _load_docker_archive(store, opened)
        if opened.has("oci-layout"):
            return _load_oci(store, opened, repository)
        raise InvalidArgument(f"{opened.where} is neither an OCI image layout (no oci-layout "
                              "file) nor a docker-archive (no manifest.json)")
    finally:
        opened.close()


def load_oci_layout(store: ImageStore, source: str | Path,
                    repository: str | None = None) -> list[Image]:
    """Load an OCI image layout (directory or tar); see `load`."""
    opened = _open_source(store, source)
    try:
        return _load_oci(store, opened, repository)
    finally:
        opened.close()


def load_docker_archive(store: ImageStore, source: str | Path | BinaryIO) -> list[Image]:
    """Load a docker-archive (`docker save` output); see `load`."""
    opened = _open_source(store, source)
    try:
        return _load_docker_archive(store, opened)
    finally:
        opened.close()


def _load_oci(store: ImageStore, source: _Source, repository: str | None) -> list[Image]:
    repo = _repository(repository)
    layout = load_json_object(source.read("oci-layout"), source.describe("oci-layout"))
    if layout.get("imageLayoutVersion") != LAYOUT_VERSION:
        raise InvalidArgument(f"{source.describe('oci-layout')}: imageLayoutVersion is not "
                              f"{LAYOUT_VERSION}")
    index = parse_manifest(source.read("index.json"), None)
    if not isinstance(index, Index):
        raise InvalidArgument(f"{source.describe('index.json')} is a manifest, not an index")
    importer = _Importer(store, source)
    try:
        entries = []
        for n, descriptor in enumerate(index.manifests):
            names = _names(descriptor, repo)  # a bad name fails before any blob is copied
            document = importer.document(descriptor, f"index entry {n}")
            if isinstance(document, Index):  # several platforms: take this machine's
                descriptor = document.for_platform()
                document = importer.document(descriptor, "the platform's manifest")
            if not isinstance(document, Manifest):
                raise InvalidArgument(f"{descriptor.digest} is nested too deeply")
            _import_image(importer, document)
            entries.append((descriptor.digest, names))
        return store.add_images(entries)
    except BaseException:
        importer.roll_back()
        raise


def _repository(repository: str | None) -> Reference | None:
    if repository is None:
        return None
    ref = parse_reference(repository)
    if ref.tag or ref.digest:
        raise InvalidArgument(f"{repository} is a reference; give only the repository name")
    return ref


def _names(descriptor: Descriptor, repository: Reference | None) -> list[Reference]:
    """The tags an index entry asks for: containerd's full name, else ref.name, which
    may be a full reference too, or (usually) just a tag for `repository`. A name
    by digest alone (`x@sha256:...`) is no tag: the image then loads untagged."""
    full = descriptor.annotations.get(IMAGE_NAME)
    ref_name = descriptor.annotations.get(REF_NAME)
    if not full and ref_name and is_tag(ref_name):
        return [repository.with_tag(ref_name)] if repository else []
    name = full or ref_name
    if not name:
        return []
    ref = parse_reference(name)
    if ref.digest and not ref.tag:
        return []
    return [tag_reference(replace(ref, digest=None))]


def _import_image(importer: _Importer, manifest: Manifest) -> None:
    """Import a manifest's config and layers; each layer is checked against its diff_id."""
    config_blob = importer.blob(manifest.config, "config")
    config = ImageConfig.from_bytes(importer.store.blobs.read(config_blob.digest))
    if len(config.diff_ids) != len(manifest.layers):
        raise InvalidArgument(f"config {manifest.config.digest} lists {len(config.diff_ids)} "
                              f"layers, its manifest {len(manifest.layers)}")
    for n, (layer, diff_id) in enumerate(zip(manifest.layers, config.diff_ids)):
        importer.layer(layer, diff_id, n)


def _load_docker_archive(store: ImageStore, source: _Source) -> list[Image]:
    try:
        listing = json.loads(source.read("manifest.json"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidArgument(f"{source.describe('manifest.json')} is not JSON: {err}") from None
    if not isinstance(listing, list) or not all(
            isinstance(e, dict) and isinstance(e.get("Config"), str)
            and isinstance(e.get("Layers"), list) for e in listing):
        raise InvalidArgument(f"{source.describe('manifest.json')} is not a list of "
                              '{"Config", "RepoTags", "Layers"} entries')
    tags = [[tag_reference(t) for t in e.get("RepoTags") or ()] for e in listing]
    importer = _Importer(store, source)
    try:
        entries = []
        for entry, refs in zip(listing, tags):
            manifest = _import_archive_image(importer, entry["Config"], entry["Layers"])
            blob = importer.put(io.BytesIO(canonical_json(manifest.to_json())), "manifest.json")
            entries.append((blob.digest, refs))
        return store.add_images(entries)
    except BaseException:
        importer.roll_back()
        raise


def _import_archive_image(importer: _Importer, config_name: str,
                          layer_names: list[str]) -> Manifest:
    """Import one manifest.json entry's config and layers; make the OCI manifest it lacks."""
    source = importer.source
    config_bytes = source.read(config_name)
    config_blob = importer.put(io.BytesIO(config_bytes), config_name, _named_digest(config_name))
    config = ImageConfig.from_bytes(config_bytes)
    if len(config.diff_ids) != len(layer_names):
        raise InvalidArgument(f"{source.describe(config_name)} lists {len(config.diff_ids)} "
                              f"layers, manifest.json {len(layer_names)}")
    layers = []
    for n, (name, diff_id) in enumerate(zip(layer_names, config.diff_ids)):
        if not isinstance(name, str) or not source.has(name):
            raise InvalidArgument(f"{source.where} has no layer file {name}")
        with source.open(name) as f:
            head = f.read(4)
            f.seek(0)
            compression = "gzip" if head[:2] == b"\x1f\x8b" else "none"
            if head == b"\x28\xb5\x2f\xfd":
                raise InvalidArgument(f"{source.describe(name)} is zstd-compressed, which "
                                      "mini_docker cannot read (only tar and tar+gzip)")
            if compression == "none":  # the layer is the tar: its digest is the diff_id
                blob = importer.put(f, name, _named_digest(name))
                found = blob.digest
            else:
                reader = DiffIDReader(f, compression)
                blob = importer.put(reader, name, _named_digest(name))  # type: ignore[arg-type]
                if reader.error:
                    raise InvalidArgument(f"{source.describe(name)}: {reader.error}")
                found = reader.diff_id
        if found != diff_id:
            raise InvalidArgument(f"{source.describe(name)}: layer {n} is not the one the "
                                  f"config names: its diff_id is {found}, the config "
                                  f"says {diff_id}")
        media_type = OCI_LAYER_GZIP if compression == "gzip" else OCI_LAYER
        layers.append(Descriptor(media_type, blob.digest, blob.size))
    return Manifest(Descriptor(OCI_CONFIG, config_blob.digest, config_blob.size), tuple(layers))


def _named_digest(name: str) -> str | None:
    """The digest a file's own name claims ("<hex>.json", "blobs/sha256/<hex>"), if any."""
    match = _HEX_NAME.fullmatch(os.path.basename(name))
    return f"sha256:{match.group(1)}" if match else None
