"""The image store: blobs named by their sha256, and the tags that point into them.

Everything an image is (layers, config, manifest) is a blob, and a blob's
name is the sha256 of its bytes. That one rule does a lot of work:

- A name can be checked. Whoever reads `blobs/sha256/<hex>` can hash it and
  know it is intact; a flipped bit cannot pass for the real thing.
- A name is forever. The same bytes always get the same name, so a blob is
  never rewritten, two images share the layers they have in common, and two
  processes writing the same blob at once write the same thing.
- Writes are all or nothing. A blob is written to a temporary file in
  `ingest/` (the same file system, so no copying later), hashed while it is
  written, flushed to disk, then given its name with link(2). Until that
  link, no reader can see it; after it, the whole blob is there. If the
  name already exists another writer won, with identical bytes: we keep
  theirs.

Names people type (`busybox:latest`) are not content: they move. They live
in one small JSON file, `references.json`, that maps each full reference to
a manifest digest and lists every image the store holds. It is rewritten
whole and renamed over the old one, so a reader sees the old mapping or the
new one and never half of each; a lock file serialises writers, so two
`tag` commands at once cannot lose each other's change.

    <root>/blobs/sha256/<64 hex>   the blobs
    <root>/ingest/                 blobs being written
    <root>/references.json         {"images": {manifest: config}, "references": {ref: manifest}}
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

from mini_docker.errors import Conflict, InvalidArgument, MiniDockerError, NotFound
from mini_docker.image.oci import HistoryEntry, ImageConfig, Manifest, parse_manifest
from mini_docker.image.reference import (Reference, check_digest, parse_reference,
                                         tag_reference)

CHUNK = 1 << 20
_HEX_PREFIX = re.compile(r"(?:sha256:)?[a-f0-9]{1,64}")


@dataclass(frozen=True)
class Blob:
    """A blob in the store: its digest and size. `new` says whether this put created it."""

    digest: str
    size: int
    new: bool = field(default=False, compare=False)


class BlobStore:
    """Content-addressable storage: put bytes in, get them back by their sha256."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs" / "sha256"
        self.ingest_dir = self.root / "ingest"

    def path(self, digest: str) -> Path:
        """Where the blob `digest` lives (whether or not it is there)."""
        return self.blob_dir / check_digest(digest).removeprefix("sha256:")

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put(self, stream: BinaryIO, expected: str | None = None,
            size: int | None = None) -> Blob:
        """Store everything `stream` yields and return its digest and size.

        expected, size: what the caller was told the blob is (a descriptor's
        digest and size). If the bytes disagree, nothing is stored and
        InvalidArgument names both digests.
        """
        if expected is not None:
            check_digest(expected)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.ingest_dir, prefix="put-")
        try:
            sha256, written = hashlib.sha256(), 0
            with open(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    sha256.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fchmod(out.fileno(), 0o644)
                os.fsync(out.fileno())  # the bytes are on disk before they have a name
            actual = f"sha256:{sha256.hexdigest()}"
            if expected is not None and actual != expected:
                raise InvalidArgument(f"blob content does not match its digest: expected "
                                      f"{expected}, got {actual} ({written} bytes)")
            if size is not None and written != size:
                raise InvalidArgument(f"blob {actual} is {written} bytes, not the {size} "
                                      "its descriptor says")
            try:
                os.link(temp, self.path(actual))
                new = True
            except FileExistsError:
                new = False  # someone stored the same bytes first
            return Blob(actual, written, new)
        finally:
            os.unlink(temp)

    def put_bytes(self, data: bytes, expected: str | None = None) -> Blob:
        return self.put(io.BytesIO(data), expected)

    def open(self, digest: str) -> BinaryIO:
        """Open the blob for reading; NotFound if the store does not have it."""
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store") from None

    def read(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store") from None

    def delete(self, digest: str) -> None:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store") from None

    def verify(self, digest: str) -> None:
        """Hash the blob again; InvalidArgument if its bytes no longer match its name."""
        sha256 = hashlib.sha256()
        with self.open(digest) as f:
            while chunk := f.read(CHUNK):
                sha256.update(chunk)
        if f"sha256:{sha256.hexdigest()}" != digest:
            raise InvalidArgument(f"blob {digest} is corrupt: its content hashes to "
                                  f"sha256:{sha256.hexdigest()}")

    def walk(self) -> Iterator[Blob]:
        """Every blob in the store, in digest order (files with other names are skipped)."""
        if not self.blob_dir.is_dir():
            return
        for name in sorted(os.listdir(self.blob_dir)):
            if re.fullmatch(r"[a-f0-9]{64}", name):
                yield Blob(f"sha256:{name}", (self.blob_dir / name).stat().st_size)


# --- images and tags ----------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """An image as `docker images` lists it.

    id: the config's digest, Docker's IMAGE ID (it names what the image is,
        whichever way its layers happen to be compressed).
    digest: the manifest's digest, what a registry and `name@sha256:...` name.
    references: the tags that point at it, full form.
    size: the bytes of its blobs (config and compressed layers).
    """

    id: str
    digest: str
    references: tuple[Reference, ...]
    created: str | None
    size: int
    architecture: str
    os: str

    @property
    def repo_tags(self) -> list[str]:
        """The tags in short form, as Docker shows them: ["busybox:latest"]."""
        return [ref.familiar() for ref in self.references]


@dataclass(frozen=True)
class ImageDetails:
    """What `docker image inspect` shows: the image, its manifest and its config."""

    image: Image
    manifest: Manifest
    config: ImageConfig


@dataclass(frozen=True)
class HistoryRow:
    """One line of `docker history`: a step, and the layer it made (None, 0 if it made none)."""

    entry: HistoryEntry
    layer_digest: str | None
    layer_size: int


class ImageStore:
    """Blobs plus the images and references that give them meaning."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.blobs = BlobStore(self.root)
        self.references_file = self.root / "references.json"
        self._lock_file = self.root / "references.lock"

    # -- the references file --

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.references_file.read_bytes())
        except FileNotFoundError:
            return {"images": {}, "references": {}}
        except (UnicodeDecodeError, json.JSONDecodeError) as err:  # written atomically: a bug
            raise MiniDockerError(f"{self.references_file} is damaged: {err}") from None
        return {"images": dict(data.get("images", {})),
                "references": dict(data.get("references", {}))}

    @contextmanager
    def _update(self) -> Iterator[dict[str, dict[str, str]]]:
        """Read, let the caller change, write back atomically; one writer at a time."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self._lock_file, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read()
            yield state
            fd, temp = tempfile.mkstemp(dir=self.root, prefix=".references-")
            try:
                with open(fd, "w") as out:
                    json.dump(state, out, indent=2, sort_keys=True)
                    out.write("\n")
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, self.references_file)
            except BaseException:
                os.unlink(temp)
                raise

    def references(self) -> dict[str, str]:
        """Every reference (full form) and the manifest digest it points at."""
        return self._read()["references"]

    # -- adding images --

    def add_image(self, manifest_digest: str, tags: Sequence[str | Reference] = ()) -> Image:
        """Record the image whose manifest is `manifest_digest`, and point `tags` at it."""
        return self.add_images([(manifest_digest, tags)])[0]

    def add_images(self, entries: Iterable[tuple[str, Sequence[str | Reference]]]) -> list[Image]:
        """Record several images and their tags in one atomic change.

        Every blob each image needs must be in the store already: a tag is
        written only for an image that is whole.
        """
        planned: list[tuple[str, str, list[Reference]]] = []
        for manifest_digest, tags in entries:
            manifest = self.manifest(manifest_digest)
            for descriptor in (manifest.config, *manifest.layers):
                if not self.blobs.exists(descriptor.digest):
                    raise NotFound(f"image {manifest_digest} needs blob {descriptor.digest}, "
                                   "which is not in the store")
            refs = [tag_reference(tag) for tag in tags]
            planned.append((manifest_digest, manifest.config.digest, refs))
        with self._update() as state:
            for manifest_digest, config_digest, refs in planned:
                state["images"][manifest_digest] = config_digest
                for ref in refs:
                    state["references"][str(ref)] = manifest_digest
        return [self.image(digest) for digest, _, _ in planned]

    # -- finding images --

    def resolve(self, name: str) -> str:
        """The manifest digest of the image `name` means.

        name: a reference (`busybox`, `busybox:1.36`, `x@sha256:...`), a
        manifest digest, or an image ID (config digest), whole or a unique
        prefix of at least one hex digit, as Docker accepts them.
        """
        return self.lookup(name)[0]

    def lookup(self, name: str) -> tuple[str, Reference | None]:
        """Like `resolve`, and also the tag `name` was found by (None for IDs and digests).

        The order is Docker's: a full digest first (`sha256:<hex>` is also a
        valid reference, repository "sha256"!), then a tag, then an ID prefix.
        """
        state = self._read()
        images: dict[str, str] = state["images"]
        if name.startswith("sha256:") and len(name) == 71:
            check_digest(name)
            if name in images:
                return name, None
            for manifest_digest, config_digest in images.items():
                if config_digest == name:
                    return manifest_digest, None
            raise NotFound(f"no such image: {name}")
        ref: Reference | None = None
        try:
            ref = parse_reference(name)
        except InvalidArgument:
            if not _HEX_PREFIX.fullmatch(name):
                raise
        if ref is not None and ref.digest:
            if ref.digest in images:
                return ref.digest, None
        elif ref is not None:
            found = state["references"].get(str(ref.with_default_tag()))
            if found:
                return found, ref.with_default_tag()
        if _HEX_PREFIX.fullmatch(name):
            prefix = name if name.startswith("sha256:") else f"sha256:{name}"
            matches = {m for m, c in images.items() if c.startswith(prefix)}
            if len(matches) == 1:
                return matches.pop(), None
            if len(matches) > 1:
                raise InvalidArgument(f"image ID prefix {name} is ambiguous: "
                                      f"{len(matches)} images match it")
        raise NotFound(f"no such image: {name}")

    def manifest(self, digest: str) -> Manifest:
        parsed = parse_manifest(self.blobs.read(digest))
        if not isinstance(parsed, Manifest):
            raise InvalidArgument(f"{digest} is an index, not an image manifest")
        return parsed

    def config(self, manifest: Manifest) -> ImageConfig:
        return ImageConfig.from_bytes(self.blobs.read(manifest.config.digest))

    def image(self, name: str) -> Image:
        digest = self.resolve(name)
        manifest = self.manifest(digest)
        config = self.config(manifest)
        refs = tuple(sorted((parse_reference(r) for r, d in self.references().items()
                             if d == digest), key=str))
        size = manifest.config.size + sum(layer.size for layer in manifest.layers)
        return Image(manifest.config.digest, digest, refs, config.created, size,
                     config.architecture, config.os)

    def images(self) -> list[Image]:
        """Every image in the store, newest first (Docker's order), then by ID."""
        found = [self.image(digest) for digest in self._read()["images"]]
        found.sort(key=lambda i: i.id)
        found.sort(key=lambda i: i.created or "", reverse=True)
        return found

    def inspect(self, name: str) -> ImageDetails:
        image = self.image(name)
        manifest = self.manifest(image.digest)
        return ImageDetails(image, manifest, self.config(manifest))

    def history(self, name: str) -> list[HistoryRow]:
        """The steps that made the image, newest first, each with the layer it made.

        A config's history has one entry per step; steps with empty_layer made
        no layer, the others made the next layer in order.
        """
        manifest = self.manifest(self.resolve(name))
        config = self.config(manifest)
        layers = iter(manifest.layers)
        rows = []
        for entry in config.history:
            layer = None if entry.empty_layer else next(layers, None)
            rows.append(HistoryRow(entry, layer.digest if layer else None,
                                   layer.size if layer else 0))
        return rows[::-1]

    # -- tags --

    def tag(self, source: str, target: str) -> Reference:
        """Point the tag `target` at the image `source` names; a tag already there moves."""
        ref = tag_reference(target)
        digest = self.resolve(source)  # NotFound for an unknown image: nothing is written
        with self._update() as state:
            if digest not in state["images"]:
                raise NotFound(f"no such image: {source}")
            state["references"][str(ref)] = digest
        return ref

    def forget_image(self, manifest_digest: str) -> None:
        """Drop the record of an untagged image (its blobs are the caller's to delete).

        Refused if a tag points at it again: a concurrent `tag` wins over a removal.
        """
        with self._update() as state:
            if manifest_digest in state["references"].values():
                raise Conflict(f"image {manifest_digest} was tagged again while being removed")
            state["images"].pop(manifest_digest, None)

    def untag(self, target: str) -> str:
        """Remove the tag `target` and return the manifest digest it pointed at.

        The image stays in the store (untagged, as `<none>`), until removed.
        """
        ref = tag_reference(target)
        with self._update() as state:
            digest = state["references"].pop(str(ref), None)
        if digest is None:
            raise NotFound(f"no such tag: {ref.familiar()}")
        return digest
