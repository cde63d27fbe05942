"""Snapshots: layers unpacked once and shared, overlay mounts, diff, usage, removal.

Two images share the busybox base layer: busybox:latest itself, and
layered:latest, whose second layer adds /etc/added.txt, deletes
/etc/nsswitch.conf with an OCI whiteout and makes /usr/bin opaque (the base
has /usr/bin/env there). Everything is mounted for real and unmounted before
each test ends; the containers that run these images are in test_image_run.py.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import threading
from pathlib import Path

import pytest

from mini_docker.errors import Conflict, InvalidArgument, NotFound
from mini_docker.image.bootstrap import HOSTS, rootfs_tar
from mini_docker.image.oci import (DEFAULT_PATH, OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP,
                                   Descriptor, ImageConfig, Manifest, canonical_json, chain_ids,
                                   host_platform, image_from_rootfs_tar)
from mini_docker.image.snapshot import Snapshotter
from mini_docker.image.store import Image, ImageStore
from mini_docker.image.unpack import UnsafeLayer

from image_support import sha

LAYERED_CONFIG = {
    "Env": [DEFAULT_PATH, "GREETING=hello from the image"],
    "Entrypoint": ["sh", "-c"],
    "Cmd": ["echo $GREETING; pwd; id -u"],
    "WorkingDir": "/srv/app",
    "User": "www-data",
    "Labels": {"org.example.book": "mini-docker"},
    "StopSignal": "SIGQUIT",
}


# --- building images ------------------------------------------------------------------------------


def File(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    return info, data


def Dir(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 1_700_000_000
    return info, None


def layer_tar(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def add_image(store: ImageStore, tars: list[bytes], *, base: Image | None = None,
              settings: dict | None = None, tag: str | None = None,
              diff_ids: list[str] | None = None, compress: bool = True) -> Image:
    """An image of `base`'s layers plus `tars` (gzipped unless not `compress`), `settings` added
    to its config."""
    layers: list[Descriptor] = []
    ids: list[str] = []
    config: dict = {"Env": [DEFAULT_PATH]}
    if base is not None:
        manifest = store.manifest(base.digest)
        layers, ids = list(manifest.layers), list(store.config(manifest).diff_ids)
        config = dict(store.config(manifest).config)
    for tar in tars:
        blob = store.blobs.put_bytes(gzip.compress(tar, mtime=0) if compress else tar)
        layers.append(Descriptor(OCI_LAYER_GZIP if compress else OCI_LAYER, blob.digest,
                                 blob.size))
        ids.append(sha(tar))
    platform = host_platform()
    image_config = ImageConfig(platform.architecture, platform.os, {**config, **(settings or {})},
                               tuple(diff_ids or ids))
    config_blob = store.blobs.put_bytes(canonical_json(image_config.to_json()))
    manifest = Manifest(Descriptor(OCI_CONFIG, config_blob.digest, config_blob.size),
                        tuple(layers))
    manifest_blob = store.blobs.put_bytes(canonical_json(manifest.to_json()))
    return store.add_image(manifest_blob.digest, [tag] if tag else [])


SECOND_LAYER = layer_tar(
    Dir("etc"),
    File("etc/added.txt", b"added in layer 2\n"),
    File("etc/.wh.nsswitch.conf", b""),
    Dir("usr"),
    Dir("usr/bin"),
    File("usr/bin/.wh..wh..opq", b""),
    File("usr/bin/fresh", b"only this shows in /usr/bin\n", mode=0o755),
)


@pytest.fixture(scope="session")
def busybox_tar(busybox_rootfs) -> bytes:
    out = io.BytesIO()
    rootfs_tar(busybox_rootfs, out)
    return out.getvalue()


@pytest.fixture
def store(tmp_path, busybox_tar) -> ImageStore:
    """busybox:latest and layered:latest, which shares busybox's layer."""
    store = ImageStore(tmp_path / "image")
    base = image_from_rootfs_tar(store, io.BytesIO(busybox_tar), {"Cmd": ["sh"]}, "busybox")
    add_image(store, [SECOND_LAYER], base=base, settings=LAYERED_CONFIG, tag="layered")
    return store


@pytest.fixture
def snapshots(store) -> Snapshotter:
    snapshots = Snapshotter(store)
    yield snapshots
    for container_id in snapshots.in_use():  # a failed test must not leak a mount
        snapshots.remove(container_id)


def overlay_mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if " - overlay " in line and str(path) in line]


def leftovers(snapshots: Snapshotter) -> list[str]:
    """Half-made or half-removed things in the snapshot directory."""
    return [n for n in os.listdir(snapshots.snapshot_dir) if n.startswith((".unpack", ".removing"))]


# --- one layer, one snapshot ----------------------------------------------------------------------


def test_a_shared_layer_is_unpacked_once_and_both_images_use_it(snapshots, store):
    busybox_lowers = snapshots.prepare("busybox")
    layered_lowers = snapshots.prepare("layered")
    base, second = snapshots.layers_of("layered")
    assert len(busybox_lowers) == 1 and len(layered_lowers) == 2
    assert layered_lowers == [snapshots.snapshot_path(second.chain_id), busybox_lowers[0]]
    assert snapshots.snapshots() == sorted([base.chain_id, second.chain_id])
    assert (base.chain_id, second.chain_id) == tuple(chain_ids([base.diff_id, second.diff_id]))
    assert busybox_lowers[0] == snapshots.snapshot_dir / base.chain_id[7:] / "fs"
    one = os.stat(busybox_lowers[0] / "bin/busybox")
    other = os.stat(layered_lowers[1] / "bin/busybox")
    assert (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)
    # The second layer keeps its deletions in overlayfs's form.
    whiteout = os.lstat(layered_lowers[0] / "etc/nsswitch.conf")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(layered_lowers[0] / "usr/bin", "trusted.overlay.opaque") == b"y"
    assert leftovers(snapshots) == []


def test_concurrent_unpackers_of_one_layer_leave_one_snapshot(snapshots):
    barrier, results, errors = threading.Barrier(4), [], []

    def prepare():
        barrier.wait()
        try:
            results.append(snapshots.prepare("layered"))
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=prepare) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len({tuple(r) for r in results}) == 1
    assert len(snapshots.snapshots()) == 2 and leftovers(snapshots) == []


# --- the overlay mount ----------------------------------------------------------------------------


def test_the_mount_shows_the_layers_merged_and_copies_up_on_write(snapshots, tmp_path):
    merged = snapshots.mount_rootfs("c1", "layered")
    try:
        assert (merged / "etc/added.txt").read_text() == "added in layer 2\n"
        assert not (merged / "etc/nsswitch.conf").exists()
        assert os.listdir(merged / "usr/bin") == ["fresh"]
        assert (merged / "bin/busybox").is_file()
        assert len(overlay_mounts_under(tmp_path)) == 1
        with open(merged / "etc/hosts", "a") as f:
            f.write("10.0.0.1 written\n")
        upper = snapshots.container_dir("c1") / "upper"
        base = snapshots.prepare("busybox")[0]
        assert (upper / "etc/hosts").read_text() == HOSTS + "10.0.0.1 written\n"
        assert (base / "etc/hosts").read_text() == HOSTS
    finally:
        snapshots.remove("c1")
    assert overlay_mounts_under(tmp_path) == []
    assert not snapshots.container_dir("c1").exists()


def test_diff_lists_additions_changes_and_deletions(snapshots):
    merged = snapshots.mount_rootfs("c1", "layered")
    (merged / "new.txt").write_text("new\n")                 # A /new.txt
    (merged / "etc/added.txt").write_text("changed\n")       # C /etc/added.txt (a lower file)
    (merged / "etc/passwd").unlink()                         # D /etc/passwd, C /etc
    for name in os.listdir(merged / "var/spool"):            # /var/spool emptied, deleted,
        os.rmdir(merged / "var/spool" / name)
    os.rmdir(merged / "var/spool")
    (merged / "var/spool").mkdir()                           # made again: opaque, D
    (merged / "var/spool/queue").write_text("")              # A below it
    (merged / "home/me").mkdir()                             # A /home/me, A /home/me/x, C /home
    (merged / "home/me/x").write_text("")
    assert snapshots.diff("c1") == [
        ("C", "/etc"), ("C", "/etc/added.txt"), ("D", "/etc/passwd"),
        ("C", "/home"), ("A", "/home/me"), ("A", "/home/me/x"),
        ("A", "/new.txt"),
        ("C", "/var"), ("D", "/var/spool"), ("A", "/var/spool/queue"),
    ]
    snapshots.unmount("c1")
    assert snapshots.diff("c1")[0] == ("C", "/etc")  # the upper dir outlives the mount
    snapshots.remove("c1")


def test_a_container_rootfs_mounts_again_after_unmount_with_its_changes(snapshots):
    merged = snapshots.mount_rootfs("c1", "busybox")
    (merged / "kept.txt").write_text("still here\n")
    snapshots.unmount("c1")
    assert not (merged / "kept.txt").exists()
    assert snapshots.mount_rootfs("c1", "busybox") == merged
    assert (merged / "kept.txt").read_text() == "still here\n"
    with pytest.raises(Conflict, match="another image"):
        snapshots.mount_rootfs("c1", "layered")
    snapshots.remove("c1")
    with pytest.raises(NotFound):
        snapshots.remove("c1")


def test_a_removal_done_later_unmounts_first_and_a_cut_short_one_is_finished(snapshots):
    """Given `later`, remove renames the container's directory away with its rootfs still
    mounted, and the work it hands over unmounts it before deleting: nothing is deleted
    through the overlay. An engine killed before that work is done leaves a `.removing-`
    directory with a mount in it, which the next one's clear_removals finishes."""
    pending = []
    for container_id in ("c1", "c2"):
        (snapshots.mount_rootfs(container_id, "busybox") / "new.txt").write_text("x")
        snapshots.remove(container_id, later=pending.append)
    base = snapshots.snapshot_path(snapshots.layers_of("busybox")[0].chain_id)
    before = sorted(os.listdir(base))
    assert not snapshots.container_dir("c1").exists() and len(pending) == 2
    assert len(overlay_mounts_under(snapshots.container_root)) == 2  # moved with the rename
    pending[0]()  # the janitor's turn
    assert len(overlay_mounts_under(snapshots.container_root)) == 1
    snapshots.clear_removals()  # the next engine's, for the one never done
    assert overlay_mounts_under(snapshots.container_root) == []
    assert os.listdir(snapshots.container_root) == []
    assert sorted(os.listdir(base)) == before  # the layer below is whole


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "a b"])
def test_container_ids_cannot_name_other_paths(snapshots, bad):
    with pytest.raises(InvalidArgument, match="invalid container id"):
        snapshots.mount_rootfs(bad, "busybox")


# --- who uses what --------------------------------------------------------------------------------


def test_layers_in_use_are_not_removed(snapshots):
    base, second = snapshots.layers_of("layered")
    snapshots.mount_rootfs("c1", "layered")
    assert snapshots.in_use() == {"c1": [base.chain_id, second.chain_id]}
    assert snapshots.referenced_chain_ids() == {base.chain_id, second.chain_id}
    with pytest.raises(Conflict, match="in use by container c1"):
        snapshots.remove_snapshot(base.chain_id)
    assert snapshots.remove_unused(keep=()) == []
    snapshots.unmount("c1")  # a stopped container still needs its layers
    assert snapshots.remove_unused(keep=()) == []
    snapshots.remove("c1")
    assert snapshots.remove_unused() == []  # both layers belong to images in the store
    assert snapshots.remove_unused(keep={base.chain_id}) == [second.chain_id]
    snapshots.remove_snapshot(base.chain_id)
    assert snapshots.snapshots() == [] and leftovers(snapshots) == []
    assert not snapshots.link_dir.exists() or os.listdir(snapshots.link_dir) == []


def test_prune_clears_an_unpack_whose_process_died(snapshots):
    dead = 4_000_000  # above any pid this machine hands out (pid_max is 4194304 at most)
    while os.path.exists(f"/proc/{dead}"):
        dead += 1
    (snapshots.snapshot_dir / f".unpack-{dead}-abc/fs").mkdir(parents=True)
    mine = snapshots.snapshot_dir / f".unpack-{os.getpid()}-xyz"
    mine.mkdir()
    snapshots.remove_unused()
    assert leftovers(snapshots) == [mine.name]
    mine.rmdir()


def test_usage_counts_a_shared_layer_once(snapshots, store):
    snapshots.prepare("layered")
    merged = snapshots.mount_rootfs("c1", "busybox")
    (merged / "data").write_bytes(b"x" * 1000)
    base, second = snapshots.layers_of("layered")
    usage = snapshots.usage()
    by_chain = {layer.chain_id: layer for layer in usage.layers}
    busybox_id, layered_id = store.image("busybox").id, store.image("layered").id
    assert by_chain[base.chain_id].shared and not by_chain[second.chain_id].shared
    assert set(by_chain[base.chain_id].images) == {busybox_id, layered_id}
    assert by_chain[base.chain_id].containers == ("c1",)
    assert by_chain[base.chain_id].size > 500_000  # busybox, stored once despite its links
    second_size = len(b"added in layer 2\n") + len(b"only this shows in /usr/bin\n")
    assert by_chain[second.chain_id].size == second_size
    images = {image.image_id: image for image in usage.images}
    assert images[layered_id].unique_size == second_size
    assert images[layered_id].shared_size == by_chain[base.chain_id].size
    assert images[busybox_id].size == by_chain[base.chain_id].size
    assert images[busybox_id].unique_size == 0
    assert usage.total == by_chain[base.chain_id].size + second_size
    assert usage.containers == {"c1": 1000}
    snapshots.remove("c1")


# --- refusals -------------------------------------------------------------------------------------


def test_a_layer_that_does_not_match_its_diff_id_is_refused(snapshots, store, tmp_path):
    base = store.image("busybox")
    liar = add_image(store, [layer_tar(File("x", b"x"))], base=base, tag="liar",
                     diff_ids=[snapshots.layers_of(base)[0].diff_id, sha(b"something else")])
    with pytest.raises(InvalidArgument, match="layer 2 of 2: its content is sha256:.* image "
                                              "config says " + sha(b"something else")):
        snapshots.prepare("liar")
    assert snapshots.snapshots() == [snapshots.layers_of(base)[0].chain_id]  # the good one stays
    assert leftovers(snapshots) == []
    with pytest.raises(InvalidArgument):
        snapshots.mount_rootfs("c1", liar)
    assert not snapshots.container_dir("c1").exists() and overlay_mounts_under(tmp_path) == []


def test_a_hostile_layer_is_refused_and_leaves_nothing(snapshots, store, tmp_path):
    add_image(store, [layer_tar(File("../../escaped", b"gotcha"))], tag="hostile")
    with pytest.raises(UnsafeLayer, match=r"^layer 1 of 1 \(\w{12}\): layer entry "
                                          r"'../../escaped': path escapes the layer "
                                          r"root$"):
        snapshots.mount_rootfs("c1", "hostile")
    assert snapshots.snapshots() == [] and leftovers(snapshots) == []
    assert not snapshots.container_dir("c1").exists() and overlay_mounts_under(tmp_path) == []
    assert not (tmp_path.parent / "escaped").exists()


def test_a_corrupt_blob_is_refused_and_leaves_nothing(snapshots, store):
    blob = store.blobs.put_bytes(b"\x1f\x8b\x08\x00 this is not gzip at all" * 10)
    config = ImageConfig("amd64", "linux", {}, (sha(b"?"),))
    config_blob = store.blobs.put_bytes(canonical_json(config.to_json()))
    manifest = Manifest(Descriptor(OCI_CONFIG, config_blob.digest, config_blob.size),
                        (Descriptor(OCI_LAYER_GZIP, blob.digest, blob.size),))
    store.add_image(store.blobs.put_bytes(canonical_json(manifest.to_json())).digest, ["bad"])
    with pytest.raises(InvalidArgument, match=r"^layer 1 of 1 .*not a valid tar\+gzip"):
        snapshots.prepare("bad")
    assert snapshots.snapshots() == [] and leftovers(snapshots) == []


# --- the page limit on mount options --------------------------------------------------------------


def many_layers(store: ImageStore, count: int, tag: str) -> Image:
    tars = [layer_tar(File("bottom.txt", b"from the lowest layer\n"))]
    tars += [layer_tar(Dir("layers"), File(f"layers/{n:03}", f"{n}\n".encode()))
             for n in range(1, count)]
    return add_image(store, tars, tag=tag, compress=False)  # plain tars: the other reader


def test_a_hundred_layers_mount_through_short_relative_names(snapshots, store, tmp_path):
    image = many_layers(store, 100, "tall")
    lowers = snapshots.prepare(image)
    assert len(":".join(map(str, lowers))) > 4096  # absolute paths cannot fit in one page
    merged = snapshots.mount_rootfs("c1", image)
    try:
        assert (merged / "bottom.txt").read_text() == "from the lowest layer\n"
        assert (merged / "layers/099").read_text() == "99\n"
        assert len(os.listdir(merged / "layers")) == 99
        [line] = overlay_mounts_under(merged)
        assert "lowerdir=l/" in line
        top = snapshots.layers_of(image)[-1]
        assert os.readlink(snapshots.link_dir / top.key[:12]) == f"../{top.key}/fs"
        assert (snapshots.link_dir / top.key[:12]).resolve() == lowers[0]
    finally:
        snapshots.remove("c1")
    assert overlay_mounts_under(tmp_path) == []
    snapshots.remove_unused(keep=())  # the links go with their snapshots
    assert snapshots.snapshots() == [] and os.listdir(snapshots.link_dir) == []


def test_too_many_layers_for_one_page_is_a_clear_error(snapshots, store, tmp_path):
    image = many_layers(store, 20, "tall")
    snapshots.option_limit = 200  # as if the page were tiny: 20 short names do not fit
    with pytest.raises(InvalidArgument, match="the image has 20 layers, too many for one "
                                              "overlay mount"):
        snapshots.mount_rootfs("c1", image)
    assert not snapshots.container_dir("c1").exists() and overlay_mounts_under(tmp_path) == []
