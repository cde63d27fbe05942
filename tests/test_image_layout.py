"""Save and load, in the OCI image layout and docker-archive formats, and with the peers.

The first half checks the formats and the refusals with our own code only.
The second half hands what we save to skopeo, umoci and docker 20.10, and
loads what they write; each part is skipped, with the reason, where the tool
is not installed (`lab/host-setup.sh --test` installs them all).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from mini_docker.errors import Conflict, InvalidArgument, NotFound
from mini_docker.image import oci
from mini_docker.image.layout import (load, load_docker_archive, load_oci_layout,
                                      save_docker_archive, save_oci_layout)
from mini_docker.image.oci import image_from_rootfs_tar
from mini_docker.image.store import ImageStore

from image_support import sha, small_tar

SKOPEO = shutil.which("skopeo")
UMOCI = shutil.which("umoci")


@pytest.fixture
def store(tmp_path) -> ImageStore:
    store = ImageStore(tmp_path / "store")
    image_from_rootfs_tar(store, io.BytesIO(small_tar({"hello": b"hi\n", "etc/x": b"x"})),
                          {"Cmd": ["cat", "/hello"]}, "app:v1")
    return store


@pytest.fixture
def fresh(tmp_path) -> ImageStore:
    return ImageStore(tmp_path / "fresh")


def store_state(store: ImageStore) -> tuple[list[str], dict[str, str]]:
    return [b.digest for b in store.blobs.walk()], store.references()


# --- OCI image layout --------------------------------------------------------------------


def test_save_oci_layout_writes_the_standard_layout(store, tmp_path):
    image = store.image("app:v1")
    dest = save_oci_layout(store, ["app:v1"], tmp_path / "layout")
    assert json.loads((dest / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((dest / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["mediaType"] == oci.OCI_INDEX
    (entry,) = index["manifests"]
    assert entry["digest"] == image.digest and entry["mediaType"] == oci.OCI_MANIFEST
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "v1",
                                    "io.containerd.image.name": "docker.io/library/app:v1"}
    blobs = sorted(os.listdir(dest / "blobs/sha256"))
    assert len(blobs) == 3  # manifest, config, one layer
    for name in blobs:
        assert sha((dest / "blobs/sha256" / name).read_bytes()) == f"sha256:{name}"


def test_oci_layout_round_trip_keeps_every_digest(store, fresh, tmp_path):
    image = store.image("app:v1")
    save_oci_layout(store, ["app:v1"], tmp_path / "layout")
    (loaded,) = load(fresh, tmp_path / "layout")
    assert (loaded.id, loaded.digest, loaded.repo_tags) == (image.id, image.digest, ["app:v1"])
    assert sorted(store.blobs.walk(), key=str) == sorted(fresh.blobs.walk(), key=str)


def test_saving_adds_to_a_layout_and_replaces_the_same_tag(store, tmp_path):
    first = store.image("app:v1")
    save_oci_layout(store, ["app:v1"], tmp_path / "layout")
    second = image_from_rootfs_tar(store, io.BytesIO(small_tar({"b": b"2"})), None, "app:v1")
    store.tag(first.digest, "other:v1")
    save_oci_layout(store, ["app:v1", "other:v1"], tmp_path / "layout")
    entries = json.loads((tmp_path / "layout/index.json").read_text())["manifests"]
    names = {e["annotations"]["io.containerd.image.name"]: e["digest"] for e in entries}
    assert names == {"docker.io/library/app:v1": second.digest,
                     "docker.io/library/other:v1": first.digest}


def test_a_layout_that_names_only_tags_loads_into_a_given_repository(store, fresh, tmp_path):
    save_oci_layout(store, ["app:v1"], tmp_path / "layout")
    index_file = tmp_path / "layout/index.json"
    index = json.loads(index_file.read_text())
    del index["manifests"][0]["annotations"]["io.containerd.image.name"]  # as skopeo writes it
    index_file.write_text(json.dumps(index))
    (untagged,) = load(fresh, tmp_path / "layout")
    assert untagged.repo_tags == []
    (tagged,) = load(fresh, tmp_path / "layout", repository="localhost:5000/team/app")
    assert tagged.repo_tags == ["localhost:5000/team/app:v1"]
    with pytest.raises(InvalidArgument, match="give only the repository name"):
        load(fresh, tmp_path / "layout", repository="app:v2")


def test_save_refuses_a_directory_that_is_not_a_layout(store, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/file").write_text("mine")
    with pytest.raises(Conflict, match="is not empty and is not an OCI image layout"):
        save_oci_layout(store, ["app:v1"], tmp_path / "busy")
    with pytest.raises(NotFound, match="no such image: nosuch"):
        save_oci_layout(store, ["nosuch"], tmp_path / "new")
    assert not (tmp_path / "new").exists()


def _flip_a_byte(path: Path, offset: int = -30) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("which", ["layer", "config", "manifest"])
def test_a_flipped_byte_in_a_layout_blob_is_refused_and_nothing_is_imported(
        store, fresh, tmp_path, which):
    save_oci_layout(store, ["app:v1"], tmp_path / "layout")
    manifest = store.manifest(store.resolve("app:v1"))
    digest = {"layer": manifest.layers[0].digest, "config": manifest.config.digest,
              "manifest": store.resolve("app:v1")}[which]
    blob = tmp_path / "layout/blobs/sha256" / digest[7:]
    _flip_a_byte(blob)
    with pytest.raises(InvalidArgument) as caught:
        load(fresh, tmp_path / "layout")
    message = str(caught.value)
    assert message.startswith(f"blobs/sha256/{digest[7:]} in {tmp_path / 'layout'}: blob content "
                              f"does not match its digest: expected {digest}, got sha256:")
    assert sha(blob.read_bytes()) in message
    assert store_state(fresh) == ([], {})
    # A store that has the image already keeps it, whole.
    before = store_state(store)
    with pytest.raises(InvalidArgument, match="does not match its digest"):
        load(store, tmp_path / "layout")
    assert store_state(store) == before


def test_a_config_that_lies_about_a_diff_id_is_refused(store, fresh, tmp_path):
    """A layer whose blob is intact but is not the tar its config names."""
    other = image_from_rootfs_tar(store, io.BytesIO(small_tar({"evil": b"!"})), None, None)
    good = store.manifest(store.resolve("app:v1"))
    config = json.loads(store.blobs.read(good.config.digest))
    config["rootfs"]["diff_ids"] = list(store.inspect(other.digest).config.diff_ids)
    config_blob = store.blobs.put_bytes(oci.canonical_json(config))
    lying = oci.Manifest(oci.Descriptor(oci.OCI_CONFIG, config_blob.digest, config_blob.size),
                         good.layers)
    manifest_blob = store.blobs.put_bytes(oci.canonical_json(lying.to_json()))
    store.add_image(manifest_blob.digest, ["liar"])
    save_oci_layout(store, ["liar"], tmp_path / "layout")
    with pytest.raises(InvalidArgument, match="layer 0 is not the one the config names: its "
                                              "diff_id is sha256:.*, the config says sha256:"):
        load(fresh, tmp_path / "layout")
    assert store_state(fresh) == ([], {})


def test_a_missing_blob_and_a_non_layout_are_clear_errors(store, fresh, tmp_path):
    save_oci_layout(store, ["app:v1"], tmp_path / "layout")
    layer = store.manifest(store.resolve("app:v1")).layers[0].digest
    (tmp_path / "layout/blobs/sha256" / layer[7:]).unlink()
    with pytest.raises(InvalidArgument, match=f"layout is missing layer 0 {layer}"):
        load(fresh, tmp_path / "layout")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match="is neither an OCI image layout .* nor a "
                                              "docker-archive"):
        load(fresh, tmp_path / "empty")
    with pytest.raises(NotFound, match="no such file or directory"):
        load(fresh, tmp_path / "nothing")
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InvalidArgument, match="is not a tar archive"):
        load(fresh, tmp_path / "junk.tar")
    assert store_state(fresh) == ([], {})


def test_a_tar_of_a_layout_loads_too(store, fresh, tmp_path):
    save_oci_layout(store, ["app:v1"], tmp_path / "layout")
    with tarfile.open(tmp_path / "layout.tar", "w") as tar:
        tar.add(tmp_path / "layout", arcname=".")
    (loaded,) = load_oci_layout(fresh, tmp_path / "layout.tar")
    assert loaded.digest == store.resolve("app:v1")


# --- docker-archive ---------------------------------------------------------------------------


def test_save_docker_archive_writes_what_docker_20_10_writes(store, tmp_path):
    image = store.image("app:v1")
    save_docker_archive(store, ["app:v1"], tmp_path / "app.tar")
    with tarfile.open(tmp_path / "app.tar") as tar:
        names = tar.getnames()
        listing = json.load(tar.extractfile("manifest.json"))
        repositories = json.load(tar.extractfile("repositories"))
        (entry,) = listing
        assert entry["Config"] == f"{image.id[7:]}.json" and entry["RepoTags"] == ["app:v1"]
        (layer,) = entry["Layers"]
        v1_id = layer.split("/")[0]
        assert repositories == {"app": {"v1": v1_id}}
        assert sorted(names) == sorted([f"{v1_id}", f"{v1_id}/VERSION", f"{v1_id}/json",
                                        layer, entry["Config"], "manifest.json", "repositories"])
        assert tar.extractfile(f"{v1_id}/VERSION").read() == b"1.0"
        plain = tar.extractfile(layer).read()  # uncompressed, as docker save writes it
        assert sha(plain) == store.inspect("app:v1").config.diff_ids[0]
        assert sha(tar.extractfile(entry["Config"]).read()) == image.id


def test_docker_archive_round_trip_through_a_pipe(store, fresh):
    """save writes front to back, load reads a stream it cannot seek (`docker save | load`)."""
    image = store.image("app:v1")
    read_end, write_end = os.pipe()

    def save() -> None:
        with open(write_end, "wb") as out:
            save_docker_archive(store, ["app:v1", image.id], out)

    writer = threading.Thread(target=save)
    writer.start()
    with open(read_end, "rb") as stream:
        (loaded,) = load(fresh, stream)
    writer.join()
    assert (loaded.id, loaded.repo_tags) == (image.id, ["app:v1"])
    details = fresh.inspect("app:v1")
    assert details.manifest.layers[0].media_type == oci.OCI_LAYER  # kept uncompressed
    assert details.config == store.inspect("app:v1").config


def test_a_gzip_compressed_docker_archive_loads(store, fresh, tmp_path):
    """`docker save busybox | gzip > busybox.tar.gz` is something `docker load` accepts."""
    save_docker_archive(store, ["app:v1"], tmp_path / "app.tar")
    (tmp_path / "app.tar.gz").write_bytes(gzip.compress((tmp_path / "app.tar").read_bytes()))
    (loaded,) = load(fresh, tmp_path / "app.tar.gz")
    assert (loaded.id, loaded.repo_tags) == (store.image("app:v1").id, ["app:v1"])


def test_a_docker_archive_cannot_point_outside_itself(fresh, tmp_path):
    archive = tmp_path / "evil"
    archive.mkdir()
    (archive / "manifest.json").write_text(json.dumps(
        [{"Config": "../../../../etc/passwd", "RepoTags": ["evil:latest"], "Layers": []}]))
    with pytest.raises(InvalidArgument, match="'../../../../etc/passwd' points outside the "
                                              "layout or archive"):
        load(fresh, archive)
    assert store_state(fresh) == ([], {})


def test_a_flipped_byte_in_a_docker_archive_layer_is_refused(store, fresh, tmp_path):
    save_docker_archive(store, ["app:v1"], tmp_path / "app.tar")
    with tarfile.open(tmp_path / "app.tar") as tar:
        layer_name = json.load(tar.extractfile("manifest.json"))[0]["Layers"][0]
        offset = tar.getmember(layer_name).offset_data + 600  # inside the second tar block
    _flip_a_byte(tmp_path / "app.tar", offset)
    with pytest.raises(InvalidArgument, match=f"{layer_name} in {tmp_path / 'app.tar'}: layer 0 "
                                              "is not the one the config names"):
        load_docker_archive(fresh, tmp_path / "app.tar")
    assert store_state(fresh) == ([], {})


def test_a_docker_archive_config_must_match_its_name(store, fresh, tmp_path):
    image = store.image("app:v1")
    save_docker_archive(store, ["app:v1"], tmp_path / "app.tar")
    with tarfile.open(tmp_path / "app.tar") as tar:
        offset = tar.getmember(f"{image.id[7:]}.json").offset_data + 5
    _flip_a_byte(tmp_path / "app.tar", offset)
    with pytest.raises(InvalidArgument, match=f"{image.id[7:]}.json in .*: blob content does not "
                                              f"match its digest: expected {image.id}"):
        load(fresh, tmp_path / "app.tar")
    assert store_state(fresh) == ([], {})


# --- the peers: skopeo, umoci, docker ---------------------------------------------------------

needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed "
                                  "(lab/host-setup.sh --test installs it)")
needs_umoci = pytest.mark.skipif(UMOCI is None, reason="umoci is not installed "
                                 "(lab/host-setup.sh --test installs it)")


def run(*argv: str | Path) -> str:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def busybox_store(busybox_rootfs, tmp_path_factory) -> ImageStore:
    """A store with the busybox image, as `mini-docker image bootstrap busybox` makes it."""
    from mini_docker.image.bootstrap import rootfs_tar

    root = tmp_path_factory.mktemp("busybox-store")
    with open(root / "busybox.tar", "wb") as f:
        rootfs_tar(busybox_rootfs, f)
    store = ImageStore(root / "store")
    image_from_rootfs_tar(store, root / "busybox.tar", {"Cmd": ["sh"]}, "busybox")
    return store


@needs_skopeo
def test_skopeo_reads_our_layout(busybox_store, tmp_path):
    image = busybox_store.image("busybox")
    layout = save_oci_layout(busybox_store, ["busybox"], tmp_path / "layout")
    raw = run(SKOPEO, "inspect", "--raw", f"oci:{layout}:latest")
    assert sha(raw.encode()) == image.digest
    summary = json.loads(run(SKOPEO, "inspect", f"oci:{layout}:latest"))
    manifest = busybox_store.manifest(image.digest)
    assert summary["Layers"] == [layer.digest for layer in manifest.layers]
    assert summary["Digest"] == image.digest
    config = run(SKOPEO, "inspect", "--config", "--raw", f"oci:{layout}:latest")
    assert sha(config.encode()) == image.id

    run(SKOPEO, "copy", "-q", f"oci:{layout}:latest", f"oci:{tmp_path / 'copy'}:latest")
    fresh = ImageStore(tmp_path / "fresh")
    (loaded,) = load(fresh, tmp_path / "copy", repository="busybox")
    assert (loaded.digest, loaded.repo_tags) == (image.digest, ["busybox:latest"])


@needs_skopeo
def test_skopeo_docker_archive_round_trip(busybox_store, tmp_path):
    image = busybox_store.image("busybox")
    layout = save_oci_layout(busybox_store, ["busybox"], tmp_path / "layout")
    archive = tmp_path / "skopeo.tar"
    run(SKOPEO, "copy", "-q", f"oci:{layout}:latest", f"docker-archive:{archive}:busybox:latest")
    (loaded,) = load(ImageStore(tmp_path / "from-skopeo"), archive)
    assert (loaded.id, loaded.repo_tags) == (image.id, ["busybox:latest"])

    ours = tmp_path / "ours.tar"
    save_docker_archive(busybox_store, ["busybox"], ours)
    run(SKOPEO, "copy", "-q", f"docker-archive:{ours}", f"oci:{tmp_path / 'back'}:latest")
    back_store = ImageStore(tmp_path / "back-store")
    (back,) = load(back_store, tmp_path / "back", repository="busybox")
    # skopeo rewrites a docker-archive's config as an OCI one (another digest), and
    # recompresses the layer; what the image is and does is unchanged.
    ours_config = busybox_store.inspect("busybox").config
    its_config = back_store.inspect(back.digest).config
    assert its_config.diff_ids == ours_config.diff_ids
    assert its_config.config["Cmd"] == ["sh"] and back.repo_tags == ["busybox:latest"]


@needs_umoci
def test_umoci_unpacks_what_we_saved(busybox_store, tmp_path):
    layout = save_oci_layout(busybox_store, ["busybox"], tmp_path / "layout")
    run(UMOCI, "unpack", "--image", f"{layout}:latest", tmp_path / "bundle")
    rootfs = tmp_path / "bundle/rootfs"
    assert run(rootfs / "bin/busybox", "echo", "hi") == "hi\n"
    spec = json.loads((tmp_path / "bundle/config.json").read_text())
    assert spec["process"]["args"] == ["sh"]
    run(UMOCI, "raw", "unpack", "--image", f"{layout}:latest", tmp_path / "raw")
    assert (tmp_path / "raw/etc/passwd").read_text() == (rootfs / "etc/passwd").read_text()


@needs_umoci
def test_we_load_what_umoci_wrote(busybox_store, tmp_path):
    layout = tmp_path / "umoci"
    run(UMOCI, "init", "--layout", layout)
    run(UMOCI, "new", "--image", f"{layout}:base")
    (tmp_path / "src").mkdir()
    (tmp_path / "src/greeting").write_text("hello from umoci\n")
    run(UMOCI, "insert", "--image", f"{layout}:base", tmp_path / "src/greeting", "/greeting")
    run(UMOCI, "config", "--image", f"{layout}:base", "--config.cmd", "cat",
        "--config.cmd", "/greeting")
    store = ImageStore(tmp_path / "store")
    (loaded,) = load(store, layout, repository="umoci-made")
    assert loaded.repo_tags == ["umoci-made:base"]
    details = store.inspect("umoci-made:base")
    assert details.config.config["Cmd"] == ["cat", "/greeting"]
    assert len(details.manifest.layers) == len(details.config.diff_ids) == 1
    # ...and what we then save, umoci unpacks again.
    save_oci_layout(store, ["umoci-made:base"], tmp_path / "again")
    run(UMOCI, "unpack", "--image", f"{tmp_path / 'again'}:base", tmp_path / "bundle")
    assert (tmp_path / "bundle/rootfs/greeting").read_text() == "hello from umoci\n"


# --- docker 20.10, a private daemon --------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerd():
    """A private dockerd (own data root, exec root and socket, from tests/docker_support.py);
    afterwards the host must be as it was."""
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root")
    import docker_support
    from leaks import HostSnapshot

    reason = docker_support.missing()
    if reason:
        pytest.skip(reason)
    before = HostSnapshot()
    with docker_support.private_dockerd() as daemon:
        yield daemon
    leaks = HostSnapshot().leaked_since(before)
    assert not leaks, f"the private dockerd left these behind: {leaks}"


def test_docker_loads_and_runs_our_archive_and_we_load_its_save(dockerd, busybox_store, tmp_path):
    image = busybox_store.image("busybox")
    busybox_store.tag("busybox", "busybox-from-us")
    save_docker_archive(busybox_store, ["busybox-from-us"], tmp_path / "ours.tar")
    loaded = dockerd.docker("load", "-i", str(tmp_path / "ours.tar"))
    assert loaded.stdout == "Loaded image: busybox-from-us:latest\n", loaded.stderr
    assert dockerd.docker("image", "inspect", "-f", "{{.Id}}",
                          "busybox-from-us").stdout.strip() == image.id
    ran = dockerd.docker("run", "--rm", "--pull", "never", "--runtime", "runc",
                         "busybox-from-us", "echo", "hi")
    assert (ran.stdout, ran.returncode) == ("hi\n", 0), ran.stderr

    saved = subprocess.run([_docker_cli(), "save", "busybox-from-us"], capture_output=True,
                           env=dockerd.env(), timeout=60)  # bytes: the archive on stdout
    assert saved.returncode == 0, saved.stderr
    (back,) = load(ImageStore(tmp_path / "store"), io.BytesIO(saved.stdout))
    assert (back.id, back.repo_tags) == (image.id, ["busybox-from-us:latest"])


def _docker_cli() -> str:
    import test_docker_interop as interop

    return interop.DOCKER_CLI
