"""The engine's speed: `run --rm busybox true` from a warm engine, and 100 containers at once.

    .venv/bin/python tests/bench/bench_engine.py [--n 30] [--block 10] [--many 100]

Part 1 times a whole `docker run --rm busybox true` through the engine's
Python API, from an engine that is already running (its zygote and monitor
warm): create (name, record, rootfs, config.json), start (overlay mount, a
shim forked by the zygote, the runtime's create and start), wait for the
exit, remove (unmount, delete the writable layer and the record). Next to
it, the OCI runtimes alone run the same busybox root filesystem (the very
directory the image was made from) with `true`: crun and runc, which do no
image, overlay, record, log or shim work at all. The runs take turns block
by block, as in bench_runtime.py, so that the machine's moods hit them all.

Part 2 starts --many containers running `sleep`, then measures what one
shim costs in memory (USS: the pages only that shim has; PSS: its fair
share of the pages it shares with the other shims, which are forked from
one zygote), how long `ps` (Engine.list) and `ps -a` take with them all
there, and how long stopping and removing them all takes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_runtime import (UNIFIED, HiddenUnifiedWorker, Series, host_line,  # noqa: E402
                           ratio_line, timed, versions)

from mini_docker.engine import Engine  # noqa: E402
from mini_docker.runtime.spec import default_spec  # noqa: E402


def engine_run(engine: Engine) -> float:
    started = time.perf_counter()
    out = engine.containers.run("busybox", ["true"], remove=True)
    elapsed = (time.perf_counter() - started) * 1000
    assert out == b"", out
    return elapsed


def runtime_series(workdir: Path, rootfs: Path,
                   worker: HiddenUnifiedWorker | None) -> list[Series]:
    bundle = workdir / "bundle"
    bundle.mkdir()
    config = default_spec(["true"], terminal=False)
    config["root"] = {"path": str(rootfs), "readonly": True}
    (bundle / "config.json").write_text(json.dumps(config))
    series = []
    for tool in ("crun", "runc"):
        path = shutil.which(tool)
        if not path:
            continue
        cmd = [path, "--root", str(workdir / f"{tool}-root"), "run", "--bundle", str(bundle),
               "bench"]
        if tool == "crun" and worker is not None:
            series.append(Series("crun run (unified hidden)", lambda c=cmd: worker.timed(c)))
        else:
            series.append(Series(f"{tool} run", lambda c=cmd: timed(c)))
    return series


def part_one(engine: Engine, workdir: Path, n: int, block: int) -> None:
    worker = HiddenUnifiedWorker() if os.path.ismount(UNIFIED) and shutil.which("crun") else None
    try:
        rootfs = engine.root / "rootfs" / "busybox"
        series = [Series("engine run --rm (warm)", lambda: engine_run(engine)),
                  *runtime_series(workdir, rootfs, worker)]
        for s in series:
            s.run_once()  # untimed: warms the zygote, the page cache, the layer
        for _ in range(max(1, n // block)):
            for s in series:
                s.run_once()
                s.samples.extend(s.run_once() for _ in range(block))
    finally:
        if worker:
            worker.close()
    print(f"\n== run --rm busybox true, {len(series[0].samples)} sequential runs each ==")
    print(f"{'':<28}{'median':>10}{'p90':>10}")
    for s in series:
        print(f"{s.name:<28}{s.median:>8.1f}ms{s.p90:>8.1f}ms")
    crun = next((s for s in series if s.name.startswith("crun")), None)
    runc = next((s for s in series if s.name.startswith("runc")), None)
    print(ratio_line("engine / crun", series[0], crun, "<= 1.5x", 1.5))
    print(ratio_line("engine / runc", series[0], runc, "(for scale)", 99))


def part_two(engine: Engine, many: int) -> None:
    import psutil

    from mini_docker.engine.shim import read_shim

    print(f"\n== {many} containers running at once ==")
    started = time.perf_counter()
    containers = [engine.containers.run("busybox", ["sleep", "600"], detach=True)
                  for _ in range(many)]
    print(f"start {many}: {(time.perf_counter() - started):.2f} s")
    try:
        uss, pss, rss = [], [], []
        for c in containers:
            shim = read_shim(str(engine.records.directory(c.id)))
            info = psutil.Process(shim.pid).memory_full_info()
            uss.append(info.uss)
            pss.append(info.pss)
            rss.append(info.rss)
        mib = 1 << 20
        print(f"shim memory, median per container: USS {statistics.median(uss) / mib:.2f} MiB, "
              f"PSS {statistics.median(pss) / mib:.2f} MiB, RSS {statistics.median(rss) / mib:.2f}"
              f" MiB; all {many} shims: PSS {sum(pss) / mib:.1f} MiB")
        for label, all_ in (("ps", False), ("ps -a", True)):
            samples = []
            for _ in range(20):
                t = time.perf_counter()
                listed = engine.containers.list(all=all_)
                samples.append((time.perf_counter() - t) * 1000)
            assert len(listed) >= many
            print(f"{label:<6} with {many} running: median {statistics.median(samples):.2f} ms")
    finally:
        started = time.perf_counter()
        for c in containers:
            c.remove(force=True)
        print(f"rm -f {many}: {(time.perf_counter() - started):.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="timed runs per way (default 30)")
    parser.add_argument("--block", type=int, default=10, help="runs per turn (default 10)")
    parser.add_argument("--many", type=int, default=100, help="containers at once (default 100)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_engine: run as root", file=sys.stderr)
        return 1
    print(host_line())
    print(versions())
    workdir = Path(tempfile.mkdtemp(prefix="mini-docker-bench-"))
    try:
        with Engine(workdir / "root") as engine:
            engine.images.bootstrap()
            try:
                part_one(engine, workdir, args.n, args.block)
                part_two(engine, args.many)
            finally:
                for record in engine.list(all=True):
                    engine.remove(record.Id, force=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
