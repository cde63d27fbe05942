"""docker rmi, docker image prune and docker commit, on real overlay mounts.

The store fixture holds busybox:latest and layered:latest, which shares
busybox's base layer (see test_snapshot.py). Containers are made with the
snapshotter's mount_rootfs and written to directly through the merged
directory; the committed image is then run for real, with run_image.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tarfile

import pytest

from mini_docker.errors import Conflict, InvalidArgument, NotFound
from mini_docker.image.lifecycle import commit, prune_images, remove_image, upper_layer_tar
from mini_docker.image.snapshot import Snapshotter

from test_image_run import nothing_left, run  # noqa: F401 (fixture)
from test_snapshot import (SECOND_LAYER, add_image, busybox_tar, overlay_mounts_under,  # noqa: F401
                           snapshots, store)


def blob_digests(store) -> set[str]:
    return {blob.digest for blob in store.blobs.walk()}


def pieces(store, name: str) -> tuple[str, str, list[str]]:
    """The manifest, config and layer blob digests of the image `name`."""
    digest = store.resolve(name)
    manifest = store.manifest(digest)
    return digest, manifest.config.digest, [layer.digest for layer in manifest.layers]


# --- docker rmi -----------------------------------------------------------------------------


def test_removing_one_of_two_tags_only_untags(store, snapshots):
    store.tag("busybox", "mine:v1")
    before = blob_digests(store)
    assert remove_image(store, snapshots, "mine:v1") == ["Untagged: mine:v1"]
    assert store.image("busybox").repo_tags == ["busybox:latest"]
    assert blob_digests(store) == before


def test_removing_the_last_tag_deletes_what_no_other_image_uses(store, snapshots, runtime_root,
                                                               nothing_left):
    snapshots.prepare("layered")
    base, top = snapshots.layers_of("layered")
    layered_id = store.image("layered").id
    manifest, config, [base_blob, top_blob] = pieces(store, "layered")

    lines = remove_image(store, snapshots, "layered")

    assert lines == ["Untagged: layered:latest", f"Deleted: {layered_id}",
                     f"Deleted: {top.chain_id}"]
    with pytest.raises(NotFound):
        store.image("layered")
    assert [i.repo_tags for i in store.images()] == [["busybox:latest"]]
    for gone in (manifest, config, top_blob):
        assert not store.blobs.exists(gone)
    store.blobs.verify(base_blob)  # the shared layer survives, intact
    assert snapshots.snapshots() == [base.chain_id]
    assert snapshots.snapshot_path(base.chain_id).is_dir()
    done = run(store, runtime_root, "busybox", ["cat", "/etc/passwd"])
    assert done.returncode == 0 and done.stdout.startswith("root:x:0:0:")


def test_removing_by_id_untags_every_tag_unless_they_span_repositories(store, snapshots):
    image = store.image("layered")
    store.tag("layered", "other:1")
    with pytest.raises(Conflict, match=f"^conflict: unable to delete {image.id[7:19]} "
                                       r"\(must be forced\) - image is referenced in multiple "
                                       "repositories$"):
        remove_image(store, snapshots, image.id[7:19])
    lines = remove_image(store, snapshots, image.id[7:19], force=True)
    assert lines[:3] == ["Untagged: layered:latest", "Untagged: other:1", f"Deleted: {image.id}"]
    assert store.references().keys() == {"docker.io/library/busybox:latest"}


def test_an_image_a_container_uses_is_refused_and_force_only_untags(store, snapshots):
    snapshots.mount_rootfs("c1", "layered")
    image = store.image("layered")
    before = blob_digests(store)
    with pytest.raises(Conflict) as refused:
        remove_image(store, snapshots, "layered")
    assert str(refused.value) == ('conflict: unable to remove repository reference "layered" '
                                  f"(must force) - container c1 is using its referenced image "
                                  f"{image.id[7:19]}")
    assert store.image("layered").repo_tags == ["layered:latest"]

    assert remove_image(store, snapshots, "layered", force=True) == ["Untagged: layered:latest"]
    assert store.image(image.id).references == ()  # dangling, kept for its container
    assert blob_digests(store) == before
    assert len(snapshots.snapshots()) == 2
    assert (snapshots.container_dir("c1") / "merged/etc/added.txt").is_file()

    assert prune_images(store, snapshots) == ([], 0)  # in use: prune leaves it too
    snapshots.remove("c1")
    lines, reclaimed = prune_images(store, snapshots)
    assert lines[0] == f"Deleted: {image.id}" and reclaimed > 0
    assert [i.repo_tags for i in store.images()] == [["busybox:latest"]]


def test_unknown_names_are_not_found(store, snapshots):
    with pytest.raises(NotFound, match="no such image: nope"):
        remove_image(store, snapshots, "nope")
    with pytest.raises(NotFound, match="No such container: ghost"):
        commit(store, snapshots, "ghost")


# --- docker image prune -----------------------------------------------------------------------


def test_prune_removes_dangling_images_then_with_all_every_unused_one(store, snapshots):
    busybox = store.image("busybox")
    dangling = add_image(store, [SECOND_LAYER], base=busybox, settings={"Cmd": ["true"]})
    orphan = store.blobs.put_bytes(b"left by a pull that died").digest
    snapshots.prepare(dangling)
    snapshots.prepare("layered")

    lines, reclaimed = prune_images(store, snapshots)
    assert lines == [f"Deleted: {dangling.id}"]  # its top layer is layered's too: kept
    assert reclaimed > 0 and not store.blobs.exists(orphan)
    assert sorted(t for i in store.images() for t in i.repo_tags) == ["busybox:latest",
                                                                    "layered:latest"]

    snapshots.mount_rootfs("c1", "busybox")
    top = snapshots.layers_of("layered")[1]
    manifest, config, [_, top_blob] = pieces(store, "layered")
    expected = sum(store.blobs.size(d) for d in (manifest, config, top_blob))
    expected += {u.chain_id: u.size for u in snapshots.usage().layers}[top.chain_id]
    layered_id = store.image("layered").id
    lines, reclaimed = prune_images(store, snapshots, all=True)
    assert lines == ["Untagged: layered:latest", f"Deleted: {layered_id}",
                     f"Deleted: {top.chain_id}"]
    assert reclaimed == expected
    assert [i.repo_tags for i in store.images()] == [["busybox:latest"]]
    assert snapshots.snapshots() == [snapshots.layers_of("busybox")[0].chain_id]
    for digest in blob_digests(store):
        store.blobs.verify(digest)


# --- docker commit ------------------------------------------------------------------------------


def change_container(snapshots: Snapshotter, container_id: str) -> None:
    """Add a file, delete one, and delete and remake /usr/bin (an opaque directory)."""
    merged = snapshots.mount_rootfs(container_id, "busybox")
    (merged / "new.txt").write_text("written in the container\n")
    os.unlink(merged / "etc/shadow")
    shutil.rmtree(merged / "usr/bin")
    (merged / "usr/bin").mkdir()
    (merged / "usr/bin/tool").write_text("#!/bin/sh\necho tool\n")
    os.chmod(merged / "usr/bin/tool", 0o755)
    snapshots.unmount(container_id)


def test_commit_makes_a_layer_of_the_containers_changes(store, snapshots, runtime_root,
                                                        nothing_left):
    change_container(snapshots, "c1")
    parent = store.image("busybox")

    image = commit(store, snapshots, "c1", "committed:v1", comment="my change",
                   author="me", changes={"Cmd": ["cat", "/new.txt"], "Env": ["A=1"]})

    assert image.repo_tags == ["committed:v1"]
    details = store.inspect("committed:v1")
    manifest, config = details.manifest, details.config
    assert manifest.layers[:-1] == store.manifest(parent.digest).layers
    assert config.diff_ids[:-1] == store.config(store.manifest(parent.digest)).diff_ids
    assert config.config["Cmd"] == ["cat", "/new.txt"]
    assert config.config["Env"][-1] == "A=1" and config.config["Env"][0].startswith("PATH=")
    assert (config.history[-1].created_by, config.history[-1].comment) == (
        "mini-docker commit", "my change")
    assert b'"author":"me"' in store.blobs.read(manifest.config.digest)

    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(
            store.blobs.read(manifest.layers[-1].digest)))) as tar:
        entries = {m.name: m for m in tar.getmembers()}
    assert sorted(entries) == ["etc", "etc/.wh.shadow", "new.txt", "usr", "usr/bin",
                               "usr/bin/.wh..wh..opq", "usr/bin/tool"]
    assert entries["etc/.wh.shadow"].isreg() and entries["etc/.wh.shadow"].size == 0
    assert all(m.uname == "" and not m.pax_headers.get("SCHILY.xattr.trusted.overlay.opaque")
               for m in entries.values())

    done = run(store, runtime_root, "committed:v1")
    assert (done.returncode, done.stdout) == (0, "written in the container\n")
    done = run(store, runtime_root, "committed:v1",
               ["sh", "-c", "ls /usr/bin; tool; echo $A; test -e /etc/shadow || echo gone"])
    assert (done.returncode, done.stdout) == (0, "tool\ntool\n1\ngone\n")

    # A container of the committed image starts with nothing to diff, and the new
    # snapshot's layer, seen on its own, is exactly the first container's changes.
    snapshots.mount_rootfs("c2", "committed:v1")
    assert snapshots.diff("c2") == []
    new_layer = snapshots.snapshot_path(snapshots.layers_of("committed:v1")[-1].chain_id)
    assert stat.S_ISCHR(os.lstat(new_layer / "etc/shadow").st_mode)
    assert os.getxattr(new_layer / "usr/bin", "trusted.overlay.opaque") == b"y"
    assert snapshots.diff("c1") == [("C", "/etc"), ("D", "/etc/shadow"), ("A", "/new.txt"),
                                    ("C", "/usr"), ("D", "/usr/bin"), ("A", "/usr/bin/tool")]
    snapshots.remove("c2")
    snapshots.remove("c1")


def test_the_same_upper_directory_gives_the_same_layer(store, snapshots):
    change_container(snapshots, "c1")
    upper = snapshots.container_dir("c1") / "upper"
    first, second = io.BytesIO(), io.BytesIO()
    upper_layer_tar(upper, first)
    upper_layer_tar(upper, second)
    assert first.getvalue() == second.getvalue()
    a = commit(store, snapshots, "c1", created="2024-01-01T00:00:00Z")
    b = commit(store, snapshots, "c1", created="2024-01-01T00:00:00Z")
    assert a.id == b.id and a.references == () and b.digest == a.digest


def test_commit_refuses_a_bad_tag_or_change_before_storing_anything(store, snapshots):
    snapshots.mount_rootfs("c1", "busybox")
    before = blob_digests(store)
    with pytest.raises(InvalidArgument):
        commit(store, snapshots, "c1", "Bad Tag")
    with pytest.raises(InvalidArgument, match="unknown image config key 'Bogus'"):
        commit(store, snapshots, "c1", changes={"Bogus": 1})
    assert blob_digests(store) == before and overlay_mounts_under(store.root)


def test_upper_layer_tar_keeps_extended_attributes(tmp_path):
    from mini_docker.image.lifecycle import upper_layer_tar
    from mini_docker.image.unpack import unpack_layer

    upper = tmp_path / "upper"
    upper.mkdir()
    tool = upper / "ping"
    tool.write_bytes(b"#!/bin/sh\n")
    capability = bytes.fromhex("0000000201200000000000000000000000000000")  # cap_net_raw+ep, v2
    os.setxattr(tool, "security.capability", capability)
    os.setxattr(tool, "user.origin", b"committed")
    os.setxattr(upper, "trusted.overlay.opaque", b"y")  # overlay's own: must stay behind
    layer = io.BytesIO()
    upper_layer_tar(upper, layer)
    layer.seek(0)
    dest = tmp_path / "unpacked"
    dest.mkdir()
    unpack_layer(layer, dest)
    assert os.getxattr(dest / "ping", "security.capability") == capability
    assert os.getxattr(dest / "ping", "user.origin") == b"committed"
