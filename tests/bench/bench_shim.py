"""What a shim adds to starting a container: Zygote.spawn + ShimClient.start vs the runtime in-process.

    .venv/bin/python tests/bench/bench_shim.py [--n 60] [--cold]

Two ways to take a busybox `sleep` container from nothing to running, one
after the other, taking turns:

    in-process   runtime.create + runtime.start, called by this process
    shim         Zygote.spawn (an idle shim runs runtime.create) + ShimClient.start

Each sample is wall time from the call to the container running; the kill
and delete that follow are not timed. The difference is what the shim costs
on the path of `docker start`: the hand-over to the zygote's idle shim, the
shim's own set-up (pipes, its socket, shim.json), and two round trips.

Both pay for one thing that depends on timing, not on them: moving the
container's first process into its cgroup takes a lock that, if no process
has been moved for a few milliseconds, first waits for an RCU grace period
(about 10 ms here). By default a process is moved into a cgroup just before
each sample, so that neither pays it; `--cold` sleeps 50 ms instead, so that
both do, as after an idle moment.

Then it shows what one running shim costs in memory: USS (the pages only it
has) and PSS (its share of the pages it shares with the zygote and the other
shims).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime_support import base_config, make_bundle

from mini_docker.engine.shim import ShimSpec
from mini_docker.engine.shimclient import ShimClient
from mini_docker.engine.zygote import Zygote
from mini_docker.image.bootstrap import busybox_rootfs
from mini_docker.kernel import constants as C
from mini_docker.kernel.syscalls import prctl
from mini_docker.runtime.create import create
from mini_docker.runtime.delete import delete
from mini_docker.runtime.kill import kill
from mini_docker.runtime.start import start
from mini_docker.runtime.state import process_state_letter


def prepare(cold: bool) -> None:
    if cold:
        time.sleep(0.05)
    else:  # any move into a cgroup will do: ourselves, into the one we are in
        with open("/sys/fs/cgroup/pids/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))


def wait_gone(pid: int) -> None:
    while process_state_letter(pid) not in (None, "Z", "X"):
        time.sleep(0.001)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def in_process(bundle: Path, root: str, cid: str, cold: bool) -> float:
    prepare(cold)
    t = time.perf_counter()
    create(cid, bundle, root=root)
    start(cid, root=root)
    elapsed = time.perf_counter() - t
    delete(cid, force=True, root=root)
    return elapsed * 1000


def through_shim(zygote: Zygote, bundle: Path, root: str, state: Path, cid: str, cold: bool,
                 memory: list | None = None) -> float:
    spec = ShimSpec(container_id=cid, bundle=str(bundle), runtime_root=root,
                    state_dir=str(state / cid), log_path=str(state / cid / "log"))
    prepare(cold)
    t = time.perf_counter()
    shim = zygote.spawn(spec)
    with ShimClient(shim.socket) as client:
        client.start()
    elapsed = time.perf_counter() - t
    if memory is not None:
        import psutil

        info = psutil.Process(shim.pid).memory_full_info()
        memory.append((info.uss / 2**20, info.pss / 2**20))
    kill(cid, "KILL", root=root)
    wait_gone(shim.pid)
    return elapsed * 1000


def summary(name: str, samples: list[float]) -> str:
    s = sorted(samples)
    return (f"{name:36s} median {statistics.median(s):6.2f} ms   p10 {s[len(s) // 10]:6.2f}"
            f"   p90 {s[len(s) * 9 // 10]:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--cold", action="store_true")
    args = parser.parse_args()
    prctl(C.PR_SET_CHILD_SUBREAPER, 1)  # for the in-process containers' inits
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bundle = make_bundle(tmp / "bundle", busybox_rootfs(tmp / "rootfs"),
                             base_config("sleep", "1000"))
        root, state = str(tmp / "runtime"), tmp / "state"
        local, shimmed, memory = [], [], []
        with Zygote() as zygote:
            in_process(bundle, root, "warm-a", args.cold)
            through_shim(zygote, bundle, root, state, "warm-b", args.cold)
            for i in range(args.n):
                local.append(in_process(bundle, root, f"a{i}", args.cold))
                shimmed.append(through_shim(zygote, bundle, root, state, f"b{i}", args.cold,
                                            memory if i < 5 else None))
    print(f"{args.n} containers each way, {'cold' if args.cold else 'warm'} cgroup attach lock")
    print(summary("runtime.create + start, in-process", local))
    print(summary("Zygote.spawn + ShimClient.start", shimmed))
    print(f"the shim adds (difference of medians):  "
          f"{statistics.median(shimmed) - statistics.median(local):.2f} ms")
    uss, pss = (statistics.median(m) for m in zip(*memory))
    print(f"one running shim: USS {uss:.1f} MiB, PSS {pss:.1f} MiB")


if __name__ == "__main__":
    main()
