"""How long save and load take in mini_docker and in skopeo, side by side.

    .venv/bin/python tests/bench/bench_image.py [--n 5] [--mb 100] [--layers 4]

Two images: busybox, as `image_from_rootfs_tar` makes it from the host's
busybox (one gzip layer, about 1 MB), and a synthetic one of --layers
layers holding --mb megabytes of random files in all, made from a fixed
seed so that every run moves the same bytes. Random bytes do not compress:
the layers are gzip streams of about their tar's size, the worst case for
anything that compresses or decompresses.

Each operation, and the skopeo command that does the same work:

    save OCI layout       store -> layout dir   skopeo copy oci:A:tag oci:B:tag
    load OCI layout       layout dir -> store   skopeo copy oci:A:tag oci:B:tag
    save docker-archive   store -> tar          skopeo copy oci:A:tag docker-archive:X:name
    load docker-archive   tar -> store          skopeo copy docker-archive:X oci:B:tag

Loading verifies every blob's digest and every layer's diff_id (a gzip
layer is decompressed to check it); saving a docker-archive decompresses
every gzip layer, as `docker save` stores layers uncompressed. skopeo reads
and writes an OCI layout by copying blobs; converting a docker-archive to
OCI, it gzips the layers (Go's compress/gzip), which dominates its time.

Every run writes to a fresh destination that is then removed (untimed);
the tools take turns round by round; all data is in the page cache after
the first round, so these are CPU and system-call costs, not disk costs.
mini_docker fsyncs each blob it stores, as a store must.
"""

from __future__ import annotations

import argparse
import io
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mini_docker.image import layout
from mini_docker.image.bootstrap import busybox_rootfs, rootfs_tar
from mini_docker.image.oci import (OCI_CONFIG, OCI_LAYER_GZIP, Descriptor, GzipLayerReader,
                                   HistoryEntry, ImageConfig, Manifest, canonical_json,
                                   host_platform, image_from_rootfs_tar)
from mini_docker.image.store import ImageStore

SEED = 20240601


@dataclass
class Series:
    name: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def random_tar(rng: random.Random, megabytes: float, layer: int) -> bytes:
    """A tar of random files (64 KiB to 4 MiB each) adding up to `megabytes`."""
    out = io.BytesIO()
    left = int(megabytes * 1_000_000)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        n = 0
        while left > 0:
            size = min(left, rng.randint(64 << 10, 4 << 20))
            info = tarfile.TarInfo(f"layer{layer}/file{n:04d}")
            info.size, info.mode = size, 0o644
            tar.addfile(info, io.BytesIO(rng.randbytes(size)))
            left -= size
            n += 1
    return out.getvalue()


def synthetic_image(store: ImageStore, megabytes: float, layers: int, tag: str) -> None:
    """A several-layer image of random files, built with the same pieces as
    image_from_rootfs_tar: gzip layers, a config with their diff_ids, a manifest."""
    rng = random.Random(SEED)
    descriptors, diff_ids = [], []
    for n in range(layers):
        reader = GzipLayerReader(io.BytesIO(random_tar(rng, megabytes / layers, n)))
        blob = store.blobs.put(reader)  # type: ignore[arg-type]
        descriptors.append(Descriptor(OCI_LAYER_GZIP, blob.digest, blob.size))
        diff_ids.append(reader.diff_id)
    plat = host_platform()
    config = ImageConfig(plat.architecture, plat.os, {"Cmd": ["sh"]}, tuple(diff_ids),
                         tuple(HistoryEntry("1970-01-01T00:00:00Z", f"layer {n}")
                               for n in range(layers)), "1970-01-01T00:00:00Z")
    config_blob = store.blobs.put_bytes(canonical_json(config.to_json()))
    manifest = Manifest(Descriptor(OCI_CONFIG, config_blob.digest, config_blob.size),
                        tuple(descriptors))
    store.add_image(store.blobs.put_bytes(canonical_json(manifest.to_json())).digest, [tag])


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def skopeo(*args: str) -> Callable[[], None]:
    def run() -> None:
        result = subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", *args],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"skopeo copy {' '.join(args)}: {result.stderr.strip()}")
    return run


def remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def bench_image(store: ImageStore, name: str, tag: str, work: Path, n: int,
                has_skopeo: bool) -> list[tuple[str, Series, Series | None]]:
    """Time the four operations for image `name` (`tag` is its tag), n rounds each."""
    src_layout = layout.save_oci_layout(store, [name], work / "src-layout")
    src_archive = work / "src.tar"
    layout.save_docker_archive(store, [name], src_archive)
    out_dir, out_tar, out_store = work / "out", work / "out.tar", work / "out-store"
    ops: list[tuple[str, Callable[[], object], Callable[[], None] | None]] = [
        ("save OCI layout", lambda: layout.save_oci_layout(store, [name], out_dir),
         skopeo(f"oci:{src_layout}:{tag}", f"oci:{out_dir}:{tag}")),
        ("load OCI layout", lambda: layout.load(ImageStore(out_store), src_layout),
         skopeo(f"oci:{src_layout}:{tag}", f"oci:{out_dir}:{tag}")),
        ("save docker-archive", lambda: layout.save_docker_archive(store, [name], out_tar),
         skopeo(f"oci:{src_layout}:{tag}", f"docker-archive:{out_tar}:{name}")),
        ("load docker-archive", lambda: layout.load(ImageStore(out_store), src_archive),
         skopeo(f"docker-archive:{src_archive}", f"oci:{out_dir}:{tag}")),
    ]
    rows = []
    for label, ours, theirs in ops:
        mine, peer = Series("mini_docker"), Series("skopeo")
        for _ in range(n):
            mine.samples.append(timed(ours))
            remove(out_dir, out_tar, out_store)
            if has_skopeo and theirs:
                peer.samples.append(timed(theirs))
                remove(out_dir, out_tar, out_store)
        rows.append((label, mine, peer if peer.samples else None))
    remove(src_layout, src_archive)
    return rows


def report(title: str, size: int, rows: list[tuple[str, Series, Series | None]]) -> None:
    mb = size / 1e6
    print(f"\n{title} ({mb:.1f} MB of blobs)")
    print(f"{'':<22}{'mini_docker':>12}{'MB/s':>8}{'skopeo':>10}{'MB/s':>8}{'ratio':>8}")
    for label, mine, peer in rows:
        line = f"{label:<22}{mine.median * 1000:>10.0f}ms{mb / mine.median:>8.0f}"
        if peer:
            line += (f"{peer.median * 1000:>8.0f}ms{mb / peer.median:>8.0f}"
                     f"{mine.median / peer.median:>7.2f}x")
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5, help="rounds per operation (default 5)")
    parser.add_argument("--mb", type=float, default=100, help="synthetic image size (default 100)")
    parser.add_argument("--layers", type=int, default=4, help="synthetic image layers (default 4)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.mb <= 0 or args.layers < 1:
        print("bench_image: --n and --layers must be at least 1, --mb above 0", file=sys.stderr)
        return 2
    has_skopeo = shutil.which("skopeo") is not None
    work = Path(tempfile.mkdtemp(prefix="bench-image-"))
    try:
        store = ImageStore(work / "store")
        rootfs = busybox_rootfs(work / "rootfs")
        with open(work / "busybox.tar", "wb") as f:
            rootfs_tar(rootfs, f)
        busybox = image_from_rootfs_tar(store, work / "busybox.tar", {"Cmd": ["sh"]}, "busybox")
        print(f"building the {args.mb:g} MB synthetic image ({args.layers} layers)...",
              file=sys.stderr)
        synthetic_image(store, args.mb, args.layers, "synthetic")
        synthetic = store.image("synthetic")
        print(f"{platform.node()}: {platform.machine()}, Python {platform.python_version()}, "
              f"{args.n} rounds each, medians; ratio = mini_docker / skopeo")
        if has_skopeo:
            version = subprocess.run(["skopeo", "--version"], capture_output=True, text=True)
            print(version.stdout.strip())
        else:
            print("skopeo is not installed: mini_docker only "
                  "(lab/host-setup.sh --test installs it)")
        report("busybox", busybox.size,
               bench_image(store, "busybox", "latest", work, args.n, has_skopeo))
        report(f"synthetic, {args.layers} layers of random files", synthetic.size,
               bench_image(store, "synthetic", "latest", work, args.n, has_skopeo))
    finally:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
