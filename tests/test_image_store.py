"""The blob store, the references file, image records, and the OCI data model.

Images here are made from small tars built in the test (a few files), so
that each test takes milliseconds; one test uses the busybox rootfs to show
that the base image is reproducible.
"""

from __future__ import annotations

import gzip
import io
import json
import multiprocessing
import os

import pytest

from mini_docker.errors import InvalidArgument, NotFound
from mini_docker.image import oci
from mini_docker.image.oci import (Descriptor, Index, Manifest, canonical_json, chain_ids,
                                   image_from_rootfs_tar, parse_manifest)
from mini_docker.image.store import BlobStore, ImageStore

from image_support import sha, small_tar


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def make_image(store: ImageStore, text: str, tag: str | None = "app") -> oci.Image:
    return image_from_rootfs_tar(store, io.BytesIO(small_tar({"hello": text.encode()})),
                                 {"Cmd": ["cat", "/hello"]}, tag)


# --- blobs -----------------------------------------------------------------------------------


def test_put_get_exists_walk_delete(tmp_path):
    blobs = BlobStore(tmp_path)
    blob = blobs.put(io.BytesIO(b"hello"))
    assert (blob.digest, blob.size, blob.new) == (sha(b"hello"), 5, True)
    assert blobs.path(blob.digest) == tmp_path / "blobs/sha256" / sha(b"hello")[7:]
    assert blobs.exists(blob.digest) and blobs.read(blob.digest) == b"hello"
    with blobs.open(blob.digest) as f:
        assert f.read() == b"hello"
    again = blobs.put_bytes(b"hello", expected=sha(b"hello"))
    assert again == blob and again.new is False
    blobs.put_bytes(b"")
    assert sorted(b.digest for b in blobs.walk()) == sorted([sha(b"hello"), sha(b"")])
    blobs.verify(blob.digest)
    blobs.delete(blob.digest)
    assert not blobs.exists(blob.digest)
    with pytest.raises(NotFound, match=f"blob {blob.digest} is not in the store"):
        blobs.read(blob.digest)
    with pytest.raises(NotFound):
        blobs.delete(blob.digest)
    assert os.listdir(tmp_path / "ingest") == []


def test_a_wrong_expected_digest_stores_nothing_and_names_both(tmp_path):
    blobs = BlobStore(tmp_path)
    wrong = sha(b"something else")
    with pytest.raises(InvalidArgument) as caught:
        blobs.put(io.BytesIO(b"hello"), expected=wrong)
    message = str(caught.value)
    assert wrong in message and sha(b"hello") in message
    assert list(blobs.walk()) == [] and os.listdir(tmp_path / "ingest") == []
    with pytest.raises(InvalidArgument, match="is 5 bytes, not the 6"):
        blobs.put(io.BytesIO(b"hello"), expected=sha(b"hello"), size=6)
    assert list(blobs.walk()) == []


@pytest.mark.parametrize("bad", ["sha256:abc", "md5:" + "a" * 64, "a" * 64, "sha256:" + "A" * 64,
                                 "sha256:../../../../etc/passwd" + "a" * 37])
def test_malformed_digests_are_refused_everywhere(tmp_path, bad):
    blobs = BlobStore(tmp_path)
    for call in (blobs.path, blobs.exists, blobs.open, blobs.delete, blobs.verify):
        with pytest.raises(InvalidArgument, match="invalid digest"):
            call(bad)
    with pytest.raises(InvalidArgument, match="invalid digest"):
        blobs.put(io.BytesIO(b"x"), expected=bad)


def test_verify_finds_a_flipped_byte(tmp_path):
    blobs = BlobStore(tmp_path)
    digest = blobs.put_bytes(b"precious bytes").digest
    path = blobs.path(digest)
    path.write_bytes(b"Precious bytes")
    with pytest.raises(InvalidArgument, match=f"blob {digest} is corrupt: its content hashes "
                                              f"to {sha(b'Precious bytes')}"):
        blobs.verify(digest)


def _writer(root: str, worker: int) -> list[str]:
    """Write one big blob that every worker writes, one of its own, and a small shared one."""
    blobs = BlobStore(root)
    shared = bytes(range(256)) * 16384  # 4 MiB: writers overlap in time
    out = []
    for round_ in range(5):
        out.append(blobs.put(io.BytesIO(shared)).digest)
        out.append(blobs.put_bytes(f"worker {worker} round {round_}".encode()).digest)
        out.append(blobs.put_bytes(b"tiny").digest)
    return out


def test_concurrent_writers_of_the_same_and_different_blobs(tmp_path):
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        results = pool.starmap(_writer, [(str(tmp_path), n) for n in range(8)])
    expected = {d for result in results for d in result}
    assert len(expected) == 2 + 8 * 5
    blobs = BlobStore(tmp_path)
    assert {b.digest for b in blobs.walk()} == expected
    for digest in expected:
        blobs.verify(digest)
    assert os.listdir(tmp_path / "ingest") == []


# --- the data model ------------------------------------------------------------------------


def test_canonical_json_is_sorted_and_compact():
    assert canonical_json({"b": 1, "a": [1, {"d": "é", "c": None}]}) == \
        '{"a":[1,{"c":null,"d":"é"}],"b":1}'.encode()


def test_parse_docker_schema2_manifest_and_list():
    layer = {"mediaType": oci.DOCKER_LAYER_GZIP, "digest": sha(b"l"), "size": 1}
    manifest = parse_manifest(json.dumps({
        "schemaVersion": 2, "mediaType": oci.DOCKER_MANIFEST,
        "config": {"mediaType": oci.DOCKER_CONFIG, "digest": sha(b"c"), "size": 2},
        "layers": [layer]}).encode())
    assert isinstance(manifest, Manifest) and manifest.media_type == oci.DOCKER_MANIFEST
    assert manifest.layers == (Descriptor(oci.DOCKER_LAYER_GZIP, sha(b"l"), 1),)
    listing = parse_manifest(json.dumps({
        "schemaVersion": 2, "mediaType": oci.DOCKER_MANIFEST_LIST, "manifests": [
            {"mediaType": oci.DOCKER_MANIFEST, "digest": sha(b"arm"), "size": 3,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": oci.DOCKER_MANIFEST, "digest": sha(b"x86"), "size": 4,
             "platform": {"architecture": "amd64", "os": "linux"}}]}).encode())
    assert isinstance(listing, Index)
    assert listing.for_platform(oci.Platform("amd64", "linux")).digest == sha(b"x86")
    assert listing.for_platform(oci.Platform("arm64", "linux", "v8")).digest == sha(b"arm")
    with pytest.raises(InvalidArgument, match="no manifest for linux/s390x"):
        listing.for_platform(oci.Platform("s390x", "linux"))


def test_an_oci_manifest_without_media_type_is_read_by_its_shape():
    """umoci writes manifests and index.json without a mediaType field."""
    doc = {"schemaVersion": 2, "config": {"mediaType": oci.OCI_CONFIG, "digest": sha(b"c"),
                                          "size": 1}, "layers": []}
    assert isinstance(parse_manifest(json.dumps(doc).encode()), Manifest)
    assert isinstance(parse_manifest(b'{"schemaVersion": 2, "manifests": []}'), Index)


@pytest.mark.parametrize("doc,message", [
    (b"{", "manifest is not valid JSON"),
    (b"[]", "manifest is not a JSON object"),
    (b'{"schemaVersion": 1, "fsLayers": []}', "Docker schema 1 manifests are not supported"),
    (b'{"schemaVersion": 2, "mediaType": "text/plain"}', "text/plain is not a manifest media type"),
    (b'{"schemaVersion": 2, "layers": [], "config": {"mediaType": "x", "digest": "sha256:1", '
     b'"size": 1}}', "invalid digest"),
    (b'{"schemaVersion": 2, "layers": [], "config": {"mediaType": "x", "digest": "sha256:'
     + b"a" * 64 + b'", "size": -1}}', "manifest config has no valid size"),
])
def test_bad_manifests_are_refused(doc, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_manifest(doc)


def test_chain_ids():
    a, b = sha(b"a"), sha(b"b")
    assert chain_ids([a, b]) == [a, sha(f"{a} {b}".encode())]


def test_unknown_config_keys_and_wrong_types_are_refused(store):
    tar = small_tar({"f": b"x"})
    with pytest.raises(InvalidArgument, match="unknown image config key 'cmd'"):
        image_from_rootfs_tar(store, io.BytesIO(tar), {"cmd": ["sh"]})
    with pytest.raises(InvalidArgument, match="image config Cmd must be a JSON list, not str"):
        image_from_rootfs_tar(store, io.BytesIO(tar), {"Cmd": "sh"})
    with pytest.raises(InvalidArgument, match="not a tar archive"):
        image_from_rootfs_tar(store, io.BytesIO(gzip.compress(tar)))
    with pytest.raises(InvalidArgument, match="must be lowercase"):
        image_from_rootfs_tar(store, io.BytesIO(tar), None, "BusyBox")
    assert list(store.blobs.walk()) == []


# --- images made from a rootfs tar ---------------------------------------------------------


def test_image_from_rootfs_tar_makes_an_oci_image(store):
    tar = small_tar({"hello": b"hi\n"})
    image = image_from_rootfs_tar(store, io.BytesIO(tar), {"Cmd": ["cat", "/hello"],
                                                           "ExposedPorts": {"80/tcp": {}}}, "app")
    assert image.repo_tags == ["app:latest"] and image.created == oci.EPOCH
    details = store.inspect("app")
    manifest, config = details.manifest, details.config
    assert manifest.media_type == oci.OCI_MANIFEST
    assert manifest.config.media_type == oci.OCI_CONFIG and image.id == manifest.config.digest
    (layer,) = manifest.layers
    assert layer.media_type == oci.OCI_LAYER_GZIP
    blob = store.blobs.read(layer.digest)
    # gzip header: magic, deflate, no flags (no file name), mtime 0, xfl 0 (level 6), OS unix
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
    assert gzip.decompress(blob) == tar
    assert config.diff_ids == (sha(tar),)
    assert config.config == {"Env": [oci.DEFAULT_PATH], "Cmd": ["cat", "/hello"],
                             "ExposedPorts": {"80/tcp": {}}}
    # The stored bytes are the canonical serialisation, and hash to their names.
    raw = store.blobs.read(image.digest)
    assert raw == canonical_json(json.loads(raw)) and sha(raw) == image.digest
    assert image.size == manifest.config.size + layer.size


def test_the_busybox_image_is_reproducible(tmp_path, busybox_rootfs):
    from mini_docker.image.bootstrap import rootfs_tar

    tar = tmp_path / "busybox.tar"
    with open(tar, "wb") as f:
        diff_id = rootfs_tar(busybox_rootfs, f)
    one = image_from_rootfs_tar(ImageStore(tmp_path / "one"), tar, {"Cmd": ["sh"]}, "busybox")
    two = image_from_rootfs_tar(ImageStore(tmp_path / "two"), str(tar), {"Cmd": ["sh"]}, "busybox")
    assert (one.id, one.digest) == (two.id, two.digest)
    assert ImageStore(tmp_path / "one").inspect("busybox").config.diff_ids == (diff_id,)


# --- tags, lists, history ------------------------------------------------------------------------


def test_tag_resolve_untag(store):
    first = make_image(store, "one")
    second = make_image(store, "two", tag=None)
    assert [i.digest for i in store.images()] == sorted([first.digest, second.digest],
                                                        key=lambda d: store.image(d).id)
    assert store.resolve("app") == store.resolve("docker.io/library/app:latest") == first.digest
    assert store.resolve(first.id) == store.resolve(first.id[7:19]) == first.digest
    assert store.resolve(f"app@{second.digest}") == second.digest
    assert store.image(second.digest).references == ()

    moved = store.tag(second.id[7:19], "app")  # an existing tag moves to the other image
    assert str(moved) == "docker.io/library/app:latest"
    assert store.resolve("app") == second.digest
    store.tag("app", "localhost:5000/team/app:v1")
    assert store.image("app").repo_tags == ["app:latest", "localhost:5000/team/app:v1"]
    assert store.references() == {"docker.io/library/app:latest": second.digest,
                                  "localhost:5000/team/app:v1": second.digest}

    assert store.untag("app:latest") == second.digest
    with pytest.raises(NotFound, match="no such tag: app:latest"):
        store.untag("app")
    with pytest.raises(NotFound, match="no such image: app"):
        store.resolve("app")
    assert len(store.images()) == 2  # untagged images stay, as <none>


def test_tagging_an_unknown_image_changes_nothing(store):
    make_image(store, "one")
    before = store.references_file.read_bytes()
    with pytest.raises(NotFound, match="no such image: nosuch"):
        store.tag("nosuch", "other")
    with pytest.raises(NotFound, match="no such image: sha256:"):
        store.tag("sha256:" + "f" * 64, "other")
    with pytest.raises(InvalidArgument, match="cannot use app@sha256:.* as a tag"):
        store.tag("app", "app@sha256:" + "f" * 64)
    with pytest.raises(InvalidArgument, match="must be lowercase"):
        store.tag("app", "App")
    assert store.references_file.read_bytes() == before
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []


def test_history_pairs_steps_with_layers(store):
    image = make_image(store, "one")
    (row,) = store.history("app")
    assert row.entry.comment == "imported from a root filesystem tar"
    assert row.layer_digest == store.manifest(image.digest).layers[0].digest
    assert row.layer_size > 0


def test_add_image_refuses_an_image_with_missing_blobs(store):
    image = make_image(store, "one", tag=None)
    layer = store.manifest(image.digest).layers[0].digest
    store.blobs.delete(layer)
    with pytest.raises(NotFound, match=f"needs blob {layer}"):
        store.add_image(image.digest, ["broken"])
    assert "docker.io/library/broken:latest" not in store.references()


def _tagger(root: str, worker: int) -> None:
    store = ImageStore(root)
    for n in range(10):
        store.tag("app", f"t{worker}-{n}")


def test_concurrent_taggers_lose_nothing(store):
    make_image(store, "one")
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        pool.starmap(_tagger, [(str(store.root), n) for n in range(4)])
    assert len(store.references()) == 1 + 4 * 10
    json.loads(store.references_file.read_text())  # whole, valid JSON
