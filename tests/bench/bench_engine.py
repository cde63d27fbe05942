"""The engine's speed next to Docker's: `run --rm busybox true`, and 100 containers at once.

    .venv/bin/python tests/bench/bench_engine.py [--n 30] [--block 10] [--many 100] [--gap-ms 0]

Part 1 times a whole `docker run --rm busybox true` through the engine's
Python API, from an engine that is already running (its zygote and monitor
warm): create (name, record, rootfs, config.json), start (overlay mount, a
shim forked by the zygote, the runtime's create and start), wait for the
exit, remove (unmount, delete the writable layer and the record). As the
docker CLI does for --rm, the container is auto-removed (auto_remove=True,
HostConfig.AutoRemove: the engine removes it as it exits); a second row
removes it the way docker-py's remove=True does, a remove after the wait. Next to
it, the OCI runtimes alone run the same busybox root filesystem (the very
directory the image was made from) with `true`: crun and runc, which do no
image, overlay, record, log or shim work at all. The runs take turns block
by block, as in bench_runtime.py, so that the machine's moods hit them all.
Back to back is the case the target is set for; `--gap-ms 50` sleeps before
each run, to time what one `docker run` costs on a machine that was idle (its
CPUs must be woken, which on a small VM costs every row, unequally).

When docker.io is installed (dockerd, the docker CLI, containerd), the real
Docker runs the same image beside them: a private dockerd (tests/docker_support.py:
its own data root, exec root and socket, its own containerd, no bridge, no
iptables rules, no registry) is given our busybox image as a docker-archive
(`engine.images.save`, then `docker load`: the image ID is the same in both).
Two more rows take their turns with the others:

    docker run --rm     the CLI, `docker run --rm --pull never --network none
                        busybox true`: a Go program's start, then the API calls
                        below, and an attach to the container's output
    docker API          the same through the Engine API on the unix socket, from
                        this process over kept-alive connections, as the CLI
                        makes them: POST /containers/create (AutoRemove,
                        NetworkMode none), POST /wait?condition=removed (its
                        headers come back once the wait is registered), POST
                        /start, then the wait's answer; no attach, no CLI start

Both go dockerd -> containerd -> containerd-shim-runc-v2 -> runc, the same
runc as the row above.

Part 2 starts --many containers running `sleep`, then measures what one
shim costs in memory (USS: the pages only that shim has; PSS: its fair
share of the pages it shares with the other shims, which are forked from
one zygote; a shim that came back from an earlier container counts with its
init maker), how long `ps` (Engine.list) and `ps -a` take with them all
there, and how long stopping and removing them all takes. Then the same in
the private dockerd, through the Engine API: --many `sleep` containers
(--network none) created and started one after another, the memory of
their containerd-shim-runc-v2 processes (one per container), GET
/containers/json (and ?all=1) with them all there, and DELETE ?force=1 of
each. dockerd's and containerd's own memory is not counted, nor the engine's.

At the end the host is checked for what the private dockerd could have
left: its processes, mounts, links, cgroups and files.
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
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for docker_support

import docker_support  # noqa: E402
from bench_runtime import (UNIFIED, BenchError, HiddenUnifiedWorker, Series,  # noqa: E402
                           host_line, ratio_line, timed, versions)
from docker_support import Daemon, DockerdError, EngineAPI, read_answer  # noqa: E402

from mini_docker.engine import Engine  # noqa: E402
from mini_docker.runtime.spec import default_spec  # noqa: E402

MIB = 1 << 20


def engine_run(engine: Engine, **remove: bool) -> float:
    started = time.perf_counter()
    out = engine.containers.run("busybox", ["true"], **remove)
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


# --- the real Docker, beside us -----------------------------------------------------------


@dataclass
class Docker:
    """A private dockerd with our busybox image, and two connections to its Engine API."""

    daemon: Daemon
    version: dict
    api: EngineAPI = field(init=False)
    waiter: EngineAPI = field(init=False)  # the /wait that is pending while /start is sent
    prefix: str = field(init=False)  # /v1.41: the API version its own CLI asks for

    def __post_init__(self) -> None:
        self.api = EngineAPI(self.daemon.socket)
        self.waiter = EngineAPI(self.daemon.socket)
        self.prefix = f"/v{self.version['ApiVersion']}"

    @property
    def release(self) -> str:
        """dockerd's release, major.minor: 20.10."""
        return ".".join(self.version["Version"].split(".")[:2])

    def cli_run(self) -> float:
        return timed([docker_support.DOCKER_CLI, "run", "--rm", "--pull", "never", "--network",
                      "none", "busybox", "true"], env=self.daemon.env())

    def api_run(self) -> float:
        """What `docker run --rm` asks of dockerd, without the CLI and without an attach."""
        started = time.perf_counter()
        cid = self.create(["true"], auto_remove=True)
        wait = f"{self.prefix}/containers/{cid}/wait?condition=removed"
        self.waiter.send_request("POST", wait)
        answer = self.waiter.getresponse()  # its headers: the wait is registered
        self.api.call("POST", f"{self.prefix}/containers/{cid}/start", expect=204)
        status = read_answer(answer, "POST", wait)
        elapsed = (time.perf_counter() - started) * 1000
        if status.get("StatusCode") != 0:
            raise BenchError(f"docker API run: the container ended with {status}")
        return elapsed

    def create(self, cmd: list[str], auto_remove: bool = False) -> str:
        body = {"Image": "busybox", "Cmd": cmd,
                "HostConfig": {"AutoRemove": auto_remove, "NetworkMode": "none"}}
        return self.api.call("POST", f"{self.prefix}/containers/create", body, expect=201)["Id"]

    def close(self) -> None:
        self.api.close()
        self.waiter.close()


def start_docker(stack: ExitStack, engine: Engine, workdir: Path) -> Docker | None:
    """A private dockerd with our busybox image loaded, or None (and why) if there is none."""
    reason = docker_support.missing()
    if reason:
        print(f"docker: not compared: {reason}")
        return None
    try:
        daemon = stack.enter_context(docker_support.private_dockerd())
    except DockerdError as err:
        print(f"docker: not compared: {err}")
        return None
    archive = workdir / "busybox.tar"
    engine.images.save("busybox", archive)  # a docker-archive
    loaded = daemon.docker("load", "--quiet", "--input", str(archive))
    if loaded.returncode != 0:
        raise BenchError(f"docker load of our busybox failed: {loaded.stderr.strip()}")
    docker = Docker(daemon, EngineAPI(daemon.socket).call("GET", "/version"))
    stack.callback(docker.close)
    ours, theirs = engine.images.get("busybox").id, docker.api.call(
        "GET", f"{docker.prefix}/images/busybox/json")["Id"]
    if ours != theirs:
        raise BenchError(f"docker loaded busybox as {theirs}, ours is {ours}")
    components = {c["Name"]: c["Version"] for c in docker.version.get("Components", [])}
    cli = daemon.docker("version", "--format", "{{.Client.Version}}").stdout.strip()
    print(f"docker: dockerd {docker.version['Version']} (Engine API {docker.version['ApiVersion']}"
          f"), containerd {components.get('containerd', '?')}, runc {components.get('runc', '?')}"
          f"; CLI {docker_support.DOCKER_CLI} {cli}; a private daemon under {daemon.home}")
    print(f"the same busybox image in both: {ours[:19]}")
    return docker


# --- part one: run --rm busybox true ------------------------------------------------------


def part_one(engine: Engine, docker: Docker | None, workdir: Path, n: int, block: int,
             gap_ms: float = 0) -> None:
    worker = HiddenUnifiedWorker() if os.path.ismount(UNIFIED) and shutil.which("crun") else None
    try:
        rootfs = engine.root / "rootfs" / "busybox"
        series = [Series("engine run --rm (warm)", lambda: engine_run(engine, auto_remove=True)),
                  Series("engine run, remove=True",
                         lambda: engine_run(engine, remove=True)),
                  *runtime_series(workdir, rootfs, worker)]
        if docker:
            series += [Series(f"docker run --rm (dockerd {docker.release} + runc)",
                              docker.cli_run),
                       Series("docker API create+wait+start", docker.api_run)]
        for s in series:
            s.run_once()  # untimed: warms the zygote, the page cache, the layer
        for _ in range(max(1, n // block)):
            for s in series:
                s.run_once()
                for _ in range(block):
                    time.sleep(gap_ms / 1000)  # 0: back to back
                    s.samples.append(s.run_once())
    finally:
        if worker:
            worker.close()
    width = max(len(s.name) for s in series) + 2
    gap = f", {gap_ms:g} ms of sleep before each" if gap_ms else ""
    print(f"\n== run --rm busybox true, {len(series[0].samples)} sequential runs each{gap} ==")
    print(f"{'':<{width}}{'median':>10}{'p90':>10}")
    for s in series:
        print(f"{s.name:<{width}}{s.median:>8.1f}ms{s.p90:>8.1f}ms")
    crun = next((s for s in series if s.name.startswith("crun")), None)
    runc = next((s for s in series if s.name.startswith("runc")), None)
    print(ratio_line("engine / crun", series[0], crun, "<= 1.5x", 1.5))
    print(ratio_line("engine / runc", series[0], runc, "(for scale)", 99))
    if docker:
        cli, api = series[-2:]
        print(ratio_line("engine / docker run (CLI)", series[0], cli, "(for scale)", 99))
        print(ratio_line("engine / docker API", series[0], api, "(for scale)", 99))
    else:
        print(ratio_line("engine / docker", series[0], None, "", 99))


# --- part two: many containers at once ----------------------------------------------------


@dataclass
class Many:
    """What --many running containers cost one engine: times in s or ms, memory in bytes."""

    start_s: float = 0.0
    uss: list[int] = field(default_factory=list)
    pss: list[int] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    ps_ms: float = 0.0
    ps_all_ms: float = 0.0
    rm_s: float = 0.0

    def add_memory(self, *pids: int) -> None:
        """One container's: the memory of `pids` (its shim, and the shim's helpers) summed."""
        import psutil

        infos = [psutil.Process(pid).memory_full_info() for pid in pids]
        self.uss.append(sum(info.uss for info in infos))
        self.pss.append(sum(info.pss for info in infos))
        self.rss.append(sum(info.rss for info in infos))


def median_ms(call, times: int = 20) -> float:
    samples = []
    for _ in range(times):
        t = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def mini_many(engine: Engine, many: int) -> Many:
    import psutil

    from mini_docker.engine.shim import read_shim

    result = Many()
    started = time.perf_counter()
    containers = []
    try:
        for _ in range(many):
            containers.append(engine.containers.run("busybox", ["sleep", "600"], detach=True))
        result.start_s = time.perf_counter() - started
        for c in containers:
            shim = psutil.Process(read_shim(str(engine.records.directory(c.id))).pid)
            makers = [p.pid for p in shim.children() if p.name() == "mini-initmaker"]
            result.add_memory(shim.pid, *makers)  # a shim back from a container has a maker
        assert len(engine.containers.list()) >= many
        result.ps_ms = median_ms(lambda: engine.containers.list())
        result.ps_all_ms = median_ms(lambda: engine.containers.list(all=True))
    finally:
        started = time.perf_counter()
        for c in containers:
            c.remove(force=True)
        result.rm_s = time.perf_counter() - started
    return result


def docker_many(docker: Docker, many: int) -> Many:
    result = Many()
    api, prefix = docker.api, docker.prefix
    started = time.perf_counter()
    ids = []
    try:
        for _ in range(many):
            ids.append(docker.create(["sleep", "600"]))
            api.call("POST", f"{prefix}/containers/{ids[-1]}/start", expect=204)
        result.start_s = time.perf_counter() - started
        shims = docker.daemon.shims()
        if len(shims) != many:
            raise BenchError(f"{len(shims)} {docker_support.SHIM} for {many} containers")
        for shim in shims:
            result.add_memory(shim.pid)
        assert len(api.call("GET", f"{prefix}/containers/json")) >= many
        result.ps_ms = median_ms(lambda: api.call("GET", f"{prefix}/containers/json"))
        result.ps_all_ms = median_ms(lambda: api.call("GET", f"{prefix}/containers/json?all=1"))
    finally:
        started = time.perf_counter()
        for cid in ids:
            api.call("DELETE", f"{prefix}/containers/{cid}?force=1", expect=204)
        result.rm_s = time.perf_counter() - started
    return result


def part_two(engine: Engine, docker: Docker | None, many: int) -> None:
    print(f"\n== {many} containers running `sleep 600` at once ==")
    mini = mini_many(engine, many)
    theirs = docker_many(docker, many) if docker else None
    print(f"{'':<38}{'mini_docker':>14}" + (f"{'docker':>14}" if theirs else ""))

    def row(label: str, value, unit: str, digits: int = 2) -> None:
        cells = [value(m) for m in (mini, theirs) if m]
        print(f"{label:<38}" + "".join(f"{c:>10.{digits}f} {unit:<3}" for c in cells))

    row(f"start {many}, one after another", lambda m: m.start_s, "s")
    row("shim USS per container, median", lambda m: statistics.median(m.uss) / MIB, "MiB")
    row("shim PSS per container, median", lambda m: statistics.median(m.pss) / MIB, "MiB")
    row("shim RSS per container, median", lambda m: statistics.median(m.rss) / MIB, "MiB")
    row(f"all {many} shims, PSS", lambda m: sum(m.pss) / MIB, "MiB", 1)
    row(f"ps with {many} running, median of 20", lambda m: m.ps_ms, "ms", 3)
    row(f"ps -a with {many} running, median of 20", lambda m: m.ps_all_ms, "ms", 3)
    row(f"rm -f {many}, one after another", lambda m: m.rm_s, "s")
    if theirs:
        ratios = [("shim PSS", statistics.median(mini.pss) / statistics.median(theirs.pss)),
                  ("shim USS", statistics.median(mini.uss) / statistics.median(theirs.uss)),
                  ("ps", mini.ps_ms / theirs.ps_ms), ("ps -a", mini.ps_all_ms / theirs.ps_all_ms)]
        print("mini_docker / docker: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios))
        print(f"(mini_docker: the zygote's shims, Engine.list in this process; docker: the "
              f"{docker_support.SHIM} processes of the private containerd, the Engine API "
              "on its unix socket over a kept-alive connection)")


# --- main ---------------------------------------------------------------------------------


def left_behind(before: dict[str, set[str]], home: Path | None) -> str:
    after = docker_support.traces(home)
    new = {kind: sorted(after[kind] - before[kind]) for kind in after if after[kind] - before[kind]}
    return f"LEFT BEHIND: {new}" if new else "nothing (processes, mounts, links, cgroups, files)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="timed runs per way (default 30)")
    parser.add_argument("--block", type=int, default=10, help="runs per turn (default 10)")
    parser.add_argument("--many", type=int, default=100,
                        help="containers at once (default 100; 0: no part two)")
    parser.add_argument("--gap-ms", type=float, default=0,
                        help="sleep before each timed run, to time it from an idle machine")
    args = parser.parse_args()
    if args.n < 1 or args.block < 1 or args.many < 0 or args.gap_ms < 0:
        parser.error("--n and --block must be at least 1, --many and --gap-ms at least 0")
    if os.geteuid() != 0:
        print("bench_engine: run as root", file=sys.stderr)
        return 1
    print(host_line())
    print(versions())
    workdir = Path(tempfile.mkdtemp(prefix="mini-docker-bench-"))
    before, home = docker_support.traces(), None
    try:
        with Engine(workdir / "root") as engine, ExitStack() as stack:
            engine.images.bootstrap()
            try:
                docker = start_docker(stack, engine, workdir)
                home = docker.daemon.home if docker else None
                part_one(engine, docker, workdir, args.n, args.block, args.gap_ms)
                if args.many:
                    part_two(engine, docker, args.many)
            finally:
                for record in engine.list(all=True):
                    engine.remove(record.Id, force=True)
    except (BenchError, DockerdError) as err:
        print(f"\nbench_engine: {err}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if home:
            print(f"\nthe private dockerd left behind: {left_behind(before, home)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
