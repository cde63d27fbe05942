"""Manifests, indexes and image configs: the JSON documents that make an image.

An image is a small tree of blobs, each named by the sha256 of its bytes:

    index (optional)      one manifest per platform: linux/amd64, linux/arm64...
      manifest            this platform's image: a config and a list of layers
        config            how to run it (Env, Cmd, ...) and the layers' diff_ids
        layer, layer...   tar archives of files, usually gzip-compressed

A parent points at a child with a *descriptor*: media type, digest, size.
Because the digest is in the parent, the parent's own digest covers the
whole tree: the manifest digest names one exact image, as a git commit id
names one exact tree.

Two dialects describe the same tree. Docker's "schema 2" (2016) came first;
the OCI image spec (2017) standardised it with new media type names and
next to no other change. Registries and tools speak both, so we read both;
we write OCI.

Two digests per layer, for two reasons. The layer's blob is compressed,
and the manifest names it by the digest of the compressed bytes: that is
what travels. The config names it by its *diff_id*, the digest of the
uncompressed tar: that is what it is. The same files compressed twice may
differ in bytes (another gzip level, another zlib), never in diff_id.

The bytes are what is hashed, so JSON read from elsewhere is kept exactly
as it came; re-serialising it would change its digest. JSON made here is
serialised one way only, `canonical_json`: keys sorted, no spaces, UTF-8.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Mapping

from mini_docker.errors import InvalidArgument
from mini_docker.image.reference import check_digest, tag_reference

if TYPE_CHECKING:
    from mini_docker.image.store import Image, ImageStore

# --- media types ---------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
LAYER_COMPRESSION: dict[str, str] = {
    OCI_LAYER: "none", OCI_LAYER_GZIP: "gzip", OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_NONDISTRIBUTABLE_GZIP: "gzip",
    DOCKER_LAYER_GZIP: "gzip", DOCKER_FOREIGN_LAYER_GZIP: "gzip",
}

REF_NAME = "org.opencontainers.image.ref.name"  # the tag, in an image layout's index.json
IMAGE_NAME = "io.containerd.image.name"         # the full reference, as containerd writes it

EPOCH = "1970-01-01T00:00:00Z"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def canonical_json(value: Any) -> bytes:
    """The one byte form of `value` that mini_docker writes: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def load_json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse `data` as a JSON object, or raise InvalidArgument naming `what`."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidArgument(f"{what} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return value


# --- descriptors, manifests, indexes --------------------------------------------------


@dataclass(frozen=True)
class Platform:
    """What a manifest in an index runs on, in Go's names: amd64, arm64, linux."""

    architecture: str
    os: str
    variant: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "os": self.os,
                **({"variant": self.variant} if self.variant else {})}


_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "i386": "386",
            "armv7l": "arm", "armv6l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
            "riscv64": "riscv64"}


def host_platform() -> Platform:
    """This machine's platform, named as images name it."""
    machine = _platform.machine()
    variant = {"armv7l": "v7", "armv6l": "v6", "aarch64": "v8"}.get(machine)
    return Platform(_GO_ARCH.get(machine, machine), "linux", variant)


@dataclass(frozen=True)
class Descriptor:
    """A pointer to a blob: what it is, its digest, its size; and optional labels."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = self.platform.to_json()
        return out

    @classmethod
    def from_json(cls, value: Any, what: str = "descriptor") -> Descriptor:
        if not isinstance(value, dict):
            raise InvalidArgument(f"{what} is not a JSON object")
        media_type, size = value.get("mediaType"), value.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidArgument(f"{what} has no mediaType")
        if type(size) is not int or size < 0:
            raise InvalidArgument(f"{what} has no valid size (a non-negative integer)")
        check_digest(value.get("digest"))
        annotations = value.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
            raise InvalidArgument(f"{what} has annotations that are not strings")
        plat = value.get("platform")
        parsed = (Platform(str(plat.get("architecture", "")), str(plat.get("os", "")),
                           plat.get("variant")) if isinstance(plat, dict) else None)
        return cls(media_type, value["digest"], size, annotations, parsed)


@dataclass(frozen=True)
class Manifest:
    """One platform's image: the config's descriptor and the layers', base layer first."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = OCI_MANIFEST
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type,
                               "config": self.config.to_json(),
                               "layers": [layer.to_json() for layer in self.layers]}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Index:
    """A list of manifests: one per platform (a "fat" image), or one per tag (index.json)."""

    manifests: tuple[Descriptor, ...]
    media_type: str = OCI_INDEX
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type,
                               "manifests": [m.to_json() for m in self.manifests]}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def for_platform(self, wanted: Platform | None = None) -> Descriptor:
        """The manifest for `wanted` (default: this machine), as `docker pull` chooses it."""
        wanted = wanted or host_platform()
        images = [m for m in self.manifests if m.media_type in MANIFEST_TYPES]
        for m in images:
            p = m.platform
            if p and (p.os, p.architecture) == (wanted.os, wanted.architecture) and (
                    not p.variant or not wanted.variant or p.variant == wanted.variant):
                return m
        if len(images) == 1 and images[0].platform is None:
            return images[0]
        raise InvalidArgument(f"the index has no manifest for {wanted.os}/{wanted.architecture}")


def parse_manifest(data: bytes, media_type: str | None = None) -> Manifest | Index:
    """Parse a manifest or an index, OCI or Docker schema 2.

    media_type: what the descriptor that pointed here said, if anything. The
    document's own "mediaType" field is optional in OCI (umoci leaves it out),
    so the shape decides when neither says: "manifests" makes an index.
    """
    doc = load_json_object(data, "manifest")
    declared = doc.get("mediaType")
    if declared in DOCKER_SCHEMA1 or media_type in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise InvalidArgument("Docker schema 1 manifests are not supported (deprecated "
                              "since Docker 19.03; re-push the image with a newer tool)")
    if doc.get("schemaVersion") != 2:
        raise InvalidArgument(f"manifest has schemaVersion {doc.get('schemaVersion')!r}, not 2")
    if declared and media_type and declared != media_type:
        raise InvalidArgument(f"manifest says it is {declared}, but was described as {media_type}")
    kind = declared or media_type or (OCI_INDEX if "manifests" in doc else OCI_MANIFEST)
    annotations = doc.get("annotations") or {}
    if kind in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise InvalidArgument("index has no list of manifests")
        return Index(tuple(Descriptor.from_json(m, f"index entry {i}")
                           for i, m in enumerate(entries)), kind, annotations)
    if kind not in MANIFEST_TYPES:
        raise InvalidArgument(f"{kind} is not a manifest media type mini_docker knows")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise InvalidArgument("manifest has no list of layers")
    return Manifest(Descriptor.from_json(doc.get("config"), "manifest config"),
                    tuple(Descriptor.from_json(d, f"manifest layer {i}")
                          for i, d in enumerate(layers)), kind, annotations)


# --- the image config -------------------------------------------------------------------

# config key -> the JSON type it must have, in Docker's (capitalised) names.
CONTAINER_CONFIG_KEYS: dict[str, type] = {
    "User": str, "ExposedPorts": dict, "Env": list, "Entrypoint": list, "Cmd": list,
    "Volumes": dict, "WorkingDir": str, "Labels": dict, "StopSignal": str,
}


@dataclass(frozen=True)
class HistoryEntry:
    """One step that made the image: `docker history` prints one line per entry."""

    created: str | None = None
    created_by: str = ""
    comment: str = ""
    empty_layer: bool = False  # a step like ENV that made no layer

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"created": self.created} if self.created else {}
        out.update({k: v for k, v in (("created_by", self.created_by),
                                      ("comment", self.comment)) if v})
        if self.empty_layer:
            out["empty_layer"] = True
        return out


@dataclass(frozen=True)
class ImageConfig:
    """The config blob: what to run and in which environment, and which layers make the rootfs.

    config: Docker's container settings, keys as in CONTAINER_CONFIG_KEYS
    (`{"Cmd": ["sh"], "Env": ["PATH=..."]}`), the defaults of `docker run`.
    diff_ids: digests of the uncompressed layers, base first.
    """

    architecture: str
    os: str
    config: Mapping[str, Any]
    diff_ids: tuple[str, ...]
    history: tuple[HistoryEntry, ...] = ()
    created: str | None = None
    variant: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os,
                               "config": dict(self.config),
                               "rootfs": {"type": "layers", "diff_ids": list(self.diff_ids)},
                               "history": [h.to_json() for h in self.history]}
        if self.created:
            out["created"] = self.created
        if self.variant:
            out["variant"] = self.variant
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageConfig:
        doc = load_json_object(data, "image config")
        rootfs = doc.get("rootfs")
        if not isinstance(rootfs, dict) or rootfs.get("type") != "layers" or not isinstance(
                rootfs.get("diff_ids"), list):
            raise InvalidArgument('image config has no rootfs '
                                  '{"type": "layers", "diff_ids": [...]}')
        diff_ids = tuple(check_digest(d) for d in rootfs["diff_ids"])
        history = tuple(HistoryEntry(h.get("created"), h.get("created_by") or "",
                                     h.get("comment") or "", bool(h.get("empty_layer")))
                        for h in doc.get("history") or () if isinstance(h, dict))
        settings = doc.get("config") or {}
        if not isinstance(settings, dict):
            raise InvalidArgument("image config's config is not a JSON object")
        return cls(str(doc.get("architecture", "")), str(doc.get("os", "")),
                   {k: v for k, v in settings.items() if v is not None},
                   diff_ids, history, doc.get("created"), doc.get("variant"))


def check_container_config(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Return `settings` as a dict if every key is a known one with a value of the right type."""
    out = {}
    for key, value in settings.items():
        expected = CONTAINER_CONFIG_KEYS.get(key)
        if expected is None:
            known = ", ".join(CONTAINER_CONFIG_KEYS)
            raise InvalidArgument(f"unknown image config key {key!r} (known: {known})")
        if not isinstance(value, expected):
            raise InvalidArgument(f"image config {key} must be a JSON {expected.__name__}, "
                                  f"not {type(value).__name__}")
        out[key] = value
    return out


def chain_ids(diff_ids: tuple[str, ...] | list[str]) -> list[str]:
    """The ChainID of each layer: a name for "this layer on top of those below".

    chain[0] = diff_id[0]; chain[n] = sha256(chain[n-1] + " " + diff_id[n]).
    Two images that share their first n layers share the first n ChainIDs,
    which is how a store knows it already has an unpacked stack of layers.
    """
    chains: list[str] = []
    for diff_id in diff_ids:
        chains.append(diff_id if not chains else sha256_digest(f"{chains[-1]} {diff_id}".encode()))
    return chains


# --- reading and writing layers ---------------------------------------------------------

GZIP_LEVEL = 6  # Go's and Docker's default: much faster than 9, a few percent larger
CHUNK = 1 << 20


def layer_compression(layer: Descriptor) -> str:
    """The compression of a layer we can read, "none" or "gzip"; InvalidArgument otherwise."""
    compression = LAYER_COMPRESSION.get(layer.media_type)
    if compression is None:
        raise InvalidArgument(f"layer {layer.digest} has media type {layer.media_type}, "
                              "which is not a layer type mini_docker knows")
    if compression == "zstd":
        raise InvalidArgument(f"layer {layer.digest} is zstd-compressed, which mini_docker "
                              "cannot read (only tar and tar+gzip)")
    return compression


class DiffIDReader:
    """Passes a layer blob through unchanged and hashes its uncompressed content.

    compression: "gzip" or "none". For gzip, every chunk read is also fed to
    a decompressor (several gzip members in a row are allowed, as gzip
    itself allows), and the output is hashed: after the last read,
    `diff_id` is the digest of the tar inside.

    Bytes that are not gzip do not stop the reading: `error` records why,
    and the caller reports it once the blob's own digest has been checked
    (a corrupt blob is best reported as one, not as bad gzip).
    """

    def __init__(self, stream: BinaryIO, compression: str) -> None:
        self.stream, self.compression = stream, compression
        self.error: str | None = None
        self._sha256 = hashlib.sha256()
        self._inflate = zlib.decompressobj(31) if compression == "gzip" else None
        self._sink: BinaryIO | None = None

    @property
    def diff_id(self) -> str:
        return f"sha256:{self._sha256.hexdigest()}"

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        if self.compression == "none":
            self._sha256.update(chunk)
            return chunk
        data = chunk
        while data and self._inflate is not None:
            try:
                plain = self._inflate.decompress(data)
            except zlib.error as err:
                self.error, self._inflate = f"the layer is not valid gzip ({err})", None
                break
            self._sha256.update(plain)
            if self._sink is not None:
                self._sink.write(plain)
            data = self._inflate.unused_data
            if self._inflate.eof:
                self._inflate = zlib.decompressobj(31)  # another gzip member follows
        return chunk

    def read_into(self, sink: BinaryIO) -> bool:
        """Read one chunk, writing its uncompressed bytes to `sink`; False at the end."""
        self._sink = sink
        try:
            return bool(self.read(CHUNK))
        finally:
            self._sink = None


class GzipLayerReader:
    """Reads a tar from `source` and gives it back gzip-compressed, hashing the tar as it goes.

    zlib with wbits=31 writes a gzip header with mtime 0 and no file name,
    so the same tar always gives the same compressed bytes on a given zlib.
    After the last read, `diff_id` is the sha256 of the uncompressed tar.
    """

    def __init__(self, source: BinaryIO, level: int = GZIP_LEVEL) -> None:
        self.source = source
        self._tar_sha256 = hashlib.sha256()
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
        self._pending = b""
        self._done = False

    @property
    def diff_id(self) -> str:
        return f"sha256:{self._tar_sha256.hexdigest()}"

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._pending) < size):
            chunk = self.source.read(CHUNK)
            if chunk:
                self._tar_sha256.update(chunk)
                self._pending += self._compressor.compress(chunk)
            else:
                self._pending += self._compressor.flush()
                self._done = True
        if size < 0:
            size = len(self._pending)
        out, self._pending = self._pending[:size], self._pending[size:]
        return out


# --- a one-layer image from a rootfs tar ----------------------------------------------


def _looks_like_tar(head: bytes) -> bool:
    """A tar starts with a 512-byte header saying "ustar" at 257, or (an empty one) with zeros."""
    return len(head) >= 512 and (head[257:262] == b"ustar" or head[:512] == bytes(512))


class _Prefixed:
    """`head` followed by the rest of `stream`: lets us peek at a stream we cannot seek."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(size)
        out = self.head if size < 0 else self.head[:size]
        self.head = self.head[len(out):]
        if size < 0:
            out += self.stream.read()
        return out


def image_from_rootfs_tar(store: ImageStore, tar: str | Path | BinaryIO,
                          config_overrides: Mapping[str, Any] | None = None,
                          tag: str | None = None, *, created: str = EPOCH,
                          comment: str = "imported from a root filesystem tar",
                          platform: Platform | None = None) -> Image:
    """Make a one-layer image from an uncompressed tar of a root filesystem, and tag it.

    store: the ImageStore that receives the layer, config and manifest blobs.
    tar: a path, or a readable binary file object (read once, front to back).
    config_overrides: container settings in Docker's names, e.g. {"Cmd": ["sh"]};
        Env defaults to the usual PATH.
    tag: a reference to point at the image (`busybox` means busybox:latest), or None.
    created: the image's creation time. The default, the epoch, makes the same
        tar give the same image ID on every machine.

    Returns the stored image. The layer is gzip-compressed (level 6, header
    with mtime 0 and no name); its diff_id is the sha256 of the tar itself.
    """
    settings = {"Env": [DEFAULT_PATH], **check_container_config(config_overrides or {})}
    tags = [tag_reference(tag)] if tag else []  # a bad tag is refused before anything is stored
    plat = platform or host_platform()
    if isinstance(tar, (str, Path)):
        with open(tar, "rb") as f:
            return image_from_rootfs_tar(store, f, config_overrides, tag, created=created,
                                         comment=comment, platform=platform)
    head = tar.read(512)
    if not _looks_like_tar(head):
        raise InvalidArgument("not a tar archive (compressed? give the uncompressed tar)")
    layer_stream = GzipLayerReader(_Prefixed(head, tar))  # type: ignore[arg-type]
    layer = store.blobs.put(layer_stream)  # type: ignore[arg-type]
    config = ImageConfig(plat.architecture, plat.os, settings, (layer_stream.diff_id,),
                         (HistoryEntry(created, comment=comment),), created,
                         plat.variant if plat.architecture == "arm" else None)
    config_bytes = canonical_json(config.to_json())
    config_blob = store.blobs.put_bytes(config_bytes)
    manifest = Manifest(Descriptor(OCI_CONFIG, config_blob.digest, config_blob.size),
                        (Descriptor(OCI_LAYER_GZIP, layer.digest, layer.size),))
    manifest_blob = store.blobs.put_bytes(canonical_json(manifest.to_json()))
    return store.add_image(manifest_blob.digest, tags)
