"""How long unpacking a layer takes in mini_docker and in GNU tar, side by side.

    .venv/bin/python tests/bench/bench_unpack.py [--n 5] [--files 5000] [--mb 100] [--profile]

One synthetic layer, made once from a fixed seed so every run unpacks the
same bytes: --files regular files of mixed sizes (most a few KB, a few of
several MB, --mb megabytes in all) in a few hundred directories up to five
deep, plus symlinks (absolute and relative) and hard links, as a real
image's layer has them. Contents are half random bytes and half text, so
gzip shrinks them roughly as it shrinks binaries. The tree is tarred once
by GNU tar (`--sort=name --numeric-owner`) and gzipped once.

Each row unpacks that layer into a fresh directory:

    unpack_layer  tar         from the path: file contents are copied by
                              copy_file_range(2), in the kernel
    unpack_layer  tar, piped  from a stream that cannot seek: contents go
                              through a Python buffer (as from a registry)
    unpack_layer  tar+gzip    from the path, decompressed by the gzip module
    tar -xpf                  GNU tar, as root: owners, modes, times kept
    tar -xzpf                 GNU tar, gzip -d in a second process

`tar` runs with --numeric-owner (as a layer's owners are numbers). Its time
includes starting the process (about 2 ms); unpack_layer runs in this
process, as the engine calls it. Tools take turns round by round, each
destination is removed and the page cache written back between runs
(untimed), and the layer itself stays in the page cache: what is measured is
CPU and system calls, not the disk.

--profile runs cProfile over one unpack of each kind and prints where the
time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import os
import platform
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mini_docker.image.unpack import unpack_layer

SEED = 20240601


@dataclass
class Series:
    name: str
    gzip: bool  # compared with `tar -xzpf`, else with `tar -xpf`
    run: Callable[[Path], None]
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


class Piped(io.RawIOBase):
    """A file read as a stream: no seek, no fileno, like a registry response."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb", buffering=0)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._file.readinto(buffer)

    def close(self) -> None:
        self._file.close()
        super().close()


def make_tree(root: Path, files: int, megabytes: int, rng: random.Random) -> None:
    """A layer-like tree: nested directories, mixed file sizes, symlinks, hard links."""
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
             for _ in range(2000)]
    text = b" ".join(rng.choices(words, k=800_000))[:4 << 20]
    noise = rng.randbytes(4 << 20)
    dirs = [Path(".")]
    for i in range(files // 20):
        parent = rng.choice([d for d in dirs if len(d.parts) < 5])
        dirs.append(parent / f"d{i:03d}")
    for d in dirs:
        (root / d).mkdir(exist_ok=True)
    # sizes: lognormal around 4 KB, scaled so that they add up to the budget
    raw = [rng.lognormvariate(8.3, 1.6) for _ in range(files)]
    scale = megabytes * (1 << 20) / sum(raw)
    made = []
    for i, weight in enumerate(raw):
        size = max(0, int(weight * scale))
        pool = noise if i % 2 else text
        start = rng.randrange(0, len(pool) - min(size, len(pool)) + 1)
        data = (pool * (size // len(pool) + 1))[start:start + size]
        path = root / rng.choice(dirs) / f"f{i:05d}{rng.choice(['', '.so', '.py', '.txt'])}"
        path.write_bytes(data)
        path.chmod(rng.choice([0o644, 0o755, 0o600, 0o4755]))
        made.append(path)
    for i in range(files // 15):
        target = rng.choice(made)
        link = root / rng.choice(dirs) / f"l{i:04d}"
        if i % 2:
            os.symlink("/" + str(target.relative_to(root)), link)
        else:
            os.symlink(os.path.relpath(target, link.parent), link)
    for i in range(files // 25):
        os.link(rng.choice(made), root / rng.choice(dirs) / f"h{i:04d}")
    for d in dirs:
        os.utime(root / d, (1_700_000_000, 1_700_000_000))


def make_layers(work: Path, files: int, megabytes: int) -> tuple[Path, Path]:
    tree = work / "tree"
    tree.mkdir()
    make_tree(tree, files, megabytes, random.Random(SEED))
    plain, packed = work / "layer.tar", work / "layer.tar.gz"
    subprocess.run(["tar", "--sort=name", "--numeric-owner", "-cf", str(plain), "-C", str(tree),
                    "."], check=True)
    with open(plain, "rb") as src, gzip.open(packed, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    shutil.rmtree(tree)
    return plain, packed


def series(plain: Path, packed: Path) -> list[Series]:
    def piped(dest: Path) -> None:
        with io.BufferedReader(Piped(plain), 1 << 20) as stream:
            unpack_layer(stream, dest)

    def gnu(*flags: str, layer: Path) -> Callable[[Path], None]:
        return lambda dest: subprocess.run(["tar", "--numeric-owner", *flags, str(layer),
                                            "-C", str(dest)], check=True)

    return [
        Series("unpack_layer  tar", False, lambda dest: unpack_layer(plain, dest)),
        Series("tar -xpf", False, gnu("-xpf", layer=plain)),
        Series("unpack_layer  tar, piped", False, piped),
        Series("unpack_layer  tar+gzip", True, lambda dest: unpack_layer(packed, dest)),
        Series("tar -xzpf", True, gnu("-xzpf", layer=packed)),
    ]


def run_once(s: Series, where: Path) -> float:
    dest = where / "dest"
    dest.mkdir()
    try:
        start = time.perf_counter()
        s.run(dest)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(dest)
        os.sync()


def profile(s: Series, where: Path, top: int) -> None:
    dest = where / "dest"
    dest.mkdir()
    profiler = cProfile.Profile()
    profiler.runcall(s.run, dest)
    shutil.rmtree(dest)
    print(f"\n-- profile: {s.name}")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--where", type=Path, default=None,
                        help="unpack under this directory (default: beside the layer, in the "
                             "system's temporary directory); /dev/shm takes the disk out")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: a layer sets owners and makes device nodes", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="bench-unpack-"))
    where = Path(tempfile.mkdtemp(prefix="bench-unpack-", dir=args.where)) if args.where else work
    try:
        plain, packed = make_layers(work, args.files, args.mb)
        fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(where)],
                            capture_output=True, text=True).stdout.strip()
        gnu_tar = subprocess.run(["tar", "--version"], capture_output=True,
                                 text=True).stdout.splitlines()[0]
        print(f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"{gnu_tar}, unpacking under {where} ({fs})")
        print(f"layer: {args.files} files + links, tar {plain.stat().st_size / 1e6:.1f} MB, "
              f"gzip {packed.stat().st_size / 1e6:.1f} MB; {args.n} rounds\n")
        rows = series(plain, packed)
        for s in rows:  # one untimed round: page cache warm, imports done
            run_once(s, where)
        for _ in range(args.n):
            for s in rows:
                s.samples.append(run_once(s, where))
        size = plain.stat().st_size / 1e6
        gnu = {False: rows[1].median, True: rows[4].median}
        print(f"{'':28} {'median':>9} {'min':>9} {'MB/s':>7} {'vs GNU tar':>11}")
        for s in rows:
            print(f"{s.name:28} {s.median * 1000:7.0f}ms {min(s.samples) * 1000:7.0f}ms "
                  f"{size / s.median:7.0f} {s.median / gnu[s.gzip]:10.2f}x")
        if args.profile:
            for s in (rows[0], rows[3]):
                profile(s, where, 15)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if where != work:
            shutil.rmtree(where, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
