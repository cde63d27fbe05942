"""Checks for exercises/04-images.ipynb: digests, chain IDs, and a real overlay mount."""

from __future__ import annotations

import hashlib
import io
import os
import random
import stat
import tarfile
from pathlib import Path

import pytest

from mini_docker import kernel
from mini_docker.image.oci import chain_ids, image_from_rootfs_tar
from mini_docker.image.store import ImageStore

NOTEBOOK = "04-images"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# Task 1

def small_rootfs_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("etc/hostname", b"exercise\n"), ("srv/hello.txt", b"hello\n" * 1000)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def store(tmp_path) -> ImageStore:
    """A store holding one small image: a layer, a config, a manifest."""
    store = ImageStore(tmp_path / "image")
    image_from_rootfs_tar(store, io.BytesIO(small_rootfs_tar()), {"Cmd": ["sh"]}, "small")
    return store


def test_task1_digest_of_small_files(exercise, tmp_path):
    hello, empty = tmp_path / "hello", tmp_path / "empty"
    hello.write_bytes(b"hello\n")
    empty.write_bytes(b"")
    assert exercise.digest_of(hello) == (
        "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
    assert exercise.digest_of(str(empty)) == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"), (
        "a path may be given as a str too")


def test_task1_digest_of_a_file_of_several_megabytes(exercise, tmp_path):
    data = random.Random(4).randbytes(5 * (1 << 20) + 17)
    big = tmp_path / "big"
    big.write_bytes(data)
    assert exercise.digest_of(big) == sha(data)


def test_task1_every_blob_of_a_store_verifies(exercise, store):
    digests = [blob.digest for blob in store.blobs.walk()]
    assert len(digests) == 3
    for digest in digests:
        assert exercise.verify_blob(store.root, digest) is True, f"{digest} is intact"


def test_task1_a_flipped_byte_is_caught(exercise, store):
    layer = store.manifest(store.resolve("small")).layers[0].digest
    path = store.blobs.path(layer)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    assert exercise.verify_blob(store.root, layer) is False, "a blob with one byte changed passed"
    others = [b.digest for b in store.blobs.walk() if b.digest != layer]
    assert all(exercise.verify_blob(store.root, d) is True for d in others)


def test_task1_a_missing_blob_is_not_intact(exercise, store):
    assert exercise.verify_blob(store.root, sha(b"never stored")) is False


@pytest.mark.parametrize("digest", ["sha256:../../../../etc/passwd", "sha256:" + "AB" * 32,
                                    "sha512:" + "ab" * 64, "5891b5b522d5df086d0ff0b110fbd9d2"])
def test_task1_a_digest_is_not_a_path(exercise, store, digest):
    with pytest.raises(ValueError):
        exercise.verify_blob(store.root, digest)


# Task 2

def diff_ids(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [sha(rng.randbytes(32)) for _ in range(count)]


def test_task2_a_base_layers_chain_id_is_its_diff_id(exercise):
    [base] = diff_ids(1, 1)
    assert exercise.chain_id([base]) == base


def test_task2_the_definition_in_the_oci_image_spec(exercise):
    # ChainID(L0) = DiffID(L0); ChainID(L0|...|Ln) = Digest(ChainID(L0|...|Ln-1) + " " + DiffID(Ln))
    a, b, c = diff_ids(3, 2)
    ab = sha(f"{a} {b}".encode())
    assert exercise.chain_id([a, b]) == ab
    assert exercise.chain_id([a, b, c]) == sha(f"{ab} {c}".encode())
    assert exercise.chain_id([b, a]) != ab, "the order of the layers matters"


def test_task2_agrees_with_mini_docker(exercise):
    for count in range(1, 8):
        ids = diff_ids(count, 10 + count)
        assert exercise.chain_id(ids) == chain_ids(ids)[-1], f"{count} layers"
        assert exercise.chain_id(tuple(ids)) == chain_ids(ids)[-1], "a tuple must do too"


def test_task2_images_on_the_same_base_share_its_snapshots(exercise):
    base, middle, x, y = diff_ids(4, 3)
    assert exercise.shared_snapshots([base, x], [base, y]) == [base]
    assert exercise.shared_snapshots([base, middle, x], [base, middle, y]) == chain_ids([base, middle])
    assert exercise.shared_snapshots([base], [base, x]) == [base]
    assert exercise.shared_snapshots([base, x], [base, x]) == chain_ids([base, x])


def test_task2_the_same_layer_on_another_base_shares_nothing(exercise):
    base, other, x = diff_ids(3, 4)
    assert exercise.shared_snapshots([base, x], [other, x]) == [], (
        "x on base and x on other are different filesystems: they share no snapshot")
    assert exercise.shared_snapshots([x, base], [base, x]) == []


# Task 3

def _mounted(path: Path) -> list[str]:
    """The filesystem types mounted at `path`, from /proc/self/mountinfo."""
    with open("/proc/self/mountinfo") as f:
        return [line.split(" - ")[1].split()[0] for line in f if line.split()[4] == str(path)]


LAYERS = [  # base first, as an image config lists them
    {"bin/tool": "the base's tool\n", "etc/motd": "from the base\n",
     "etc/config": "setting=1\n", "etc/old": "deleted by the container\n"},
    {"etc/motd": "from the middle\n", "lib/one": "a library\n"},
    {"etc/motd": "from the top\n", "app/run": "the application\n"},
]


class Stack:
    def __init__(self, root: Path) -> None:
        self.layers = []
        for n, files in enumerate(LAYERS):
            layer = root / f"layer{n}"
            for name, text in files.items():
                (layer / name).parent.mkdir(parents=True, exist_ok=True)
                (layer / name).write_text(text)
            self.layers.append(layer)
        self.upper, self.work, self.merged = root / "upper", root / "work", root / "merged"
        for d in (self.upper, self.work, self.merged):
            d.mkdir()

    def mount(self, exercise) -> Path:
        exercise.mount_layers(list(self.layers), self.upper, self.work, self.merged)
        return self.merged


@pytest.fixture
def stack(tmp_path):
    """Three layer directories, an upper, a work and a merged one; unmounted afterwards."""
    made = Stack(tmp_path)
    yield made
    while _mounted(made.merged):  # whatever a wrong answer left mounted
        kernel.umount2(made.merged, kernel.MNT_DETACH)


def test_task3_every_layer_shows(exercise, stack):
    merged = stack.mount(exercise)
    assert _mounted(merged) == ["overlay"], f"expected one overlay mount at merged, found {_mounted(merged)}"
    for name in ("bin/tool", "lib/one", "app/run"):
        assert (merged / name).is_file(), f"{name} is missing from the merged view"


def test_task3_the_top_layer_wins(exercise, stack):
    merged = stack.mount(exercise)
    found = (merged / "etc/motd").read_text()
    assert found == "from the top\n", (
        f"/etc/motd is in every layer; the merged view should show the top layer's, not {found!r}"
        " (overlayfs's lowerdir lists the topmost layer first)")


def test_task3_writes_are_copied_up(exercise, stack):
    merged = stack.mount(exercise)
    with open(merged / "etc/config", "a") as f:
        f.write("setting=2\n")
    assert (stack.upper / "etc/config").read_text() == "setting=1\nsetting=2\n", (
        "the upper directory should hold the whole file, copied up, with the write")
    assert (stack.layers[0] / "etc/config").read_text() == "setting=1\n", "a layer was written to"
    assert (merged / "etc/config").read_text() == "setting=1\nsetting=2\n"


def test_task3_a_deletion_is_a_whiteout(exercise, stack):
    merged = stack.mount(exercise)
    (merged / "etc/old").unlink()
    assert not (merged / "etc/old").exists()
    st = os.lstat(stack.upper / "etc/old")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, "upper/etc/old should be a 0:0 character device"
    assert (stack.layers[0] / "etc/old").read_text() == "deleted by the container\n", "a layer was changed"


def test_task3_unmount_leaves_nothing_but_the_upper_directory(exercise, stack):
    merged = stack.mount(exercise)
    (merged / "new.txt").write_text("written in the container\n")
    exercise.unmount_layers(merged)
    assert _mounted(merged) == [], "merged is still a mount point"
    assert os.listdir(merged) == [], "merged should be an empty directory again"
    assert (stack.upper / "new.txt").read_text() == "written in the container\n", (
        "the container's writes should stay in the upper directory")
    assert not any((layer / "new.txt").exists() for layer in stack.layers)
