"""How long a container takes, from `run` to its exit, in runc, crun and mini_docker.

    .venv/bin/python tests/bench/bench_runtime.py [--n 30] [--block 10] [--gap-ms 0]

Every runtime runs the same bundle (busybox, `true`, the `runc spec` defaults)
N times, one container after another. The N are run in blocks of back-to-back
containers, each block after one untimed container, and the runtimes take
turns block by block, so that whatever else the machine is doing slows them
all alike. Four ways to run it:

    runc run            Go; re-executes itself as the container's init
    crun run            C; the fastest OCI runtime there is
    mini-runc run       our command line: a fresh Python interpreter each time
    in-process          create + start + wait + delete through the Python API,
                        from one Python process that is already running
    in-process,         the same, given an init prepared in advance
      prepared init     (runtime/prepared.py: forked, namespaces made, mounts
                        private), as the engine's spare shim has one ready; it
                        is made between two containers, untimed; the row after
                        it times that making, to its "prepared" report (its
                        warm-up comes after)

Each sample is wall time, as the caller sees it: from before fork to after the
runtime has exited (or, in-process, from `create` to the end of `delete`).

Back to back is the best case. On a small VM a container started after the
machine has idled costs more (the idle CPUs must be woken), for every runtime:
`--gap-ms 50` sleeps that long before each container to show it.

crun refuses a hybrid cgroup host (v1 controllers and a cgroup2 mount at
/sys/fs/cgroup/unified). It is run from a helper process in a private mount
namespace where that cgroup2 mount is detached, so crun sees a plain v1 host;
a second row shows what it costs to do that on every call (`unshare -m sh -c
'...; exec crun ...'`). runc and mini-runc run in the host's own namespace.

All of them put each container in cgroups of their own (a directory per
controller, made and removed, with runc's default device rules).

Then it shows where the command line's time goes: the bare interpreter's
start, `mini-runc --version` (start, imports, argument parser, no container),
and the slowest imports, from `python -X importtime`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mini_docker.image.bootstrap import busybox_rootfs
from mini_docker.kernel import constants as C
from mini_docker.kernel.process import exit_status, fork, make_mounts_private
from mini_docker.kernel.syscalls import prctl, umount2, unshare
from mini_docker.runtime.create import create
from mini_docker.runtime.delete import delete
from mini_docker.runtime.prepared import PreparedInit
from mini_docker.runtime.spec import default_spec
from mini_docker.runtime.start import start

UNIFIED = "/sys/fs/cgroup/unified"  # the cgroup2 mount of a hybrid host
HIDE_UNIFIED = f"mount --make-rprivate / && umount -l {UNIFIED} && exec \"$0\" \"$@\""
CID = "bench"


class BenchError(Exception):
    """A runtime failed; the message says which and why."""


@dataclass
class Series:
    """One way of running a container, and its samples in milliseconds."""

    name: str
    run_once: Callable[[], float]
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        ordered = sorted(self.samples)
        return ordered[math.ceil(0.9 * len(ordered)) - 1]


# --- running things and timing them -----------------------------------------------------


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Run `cmd` to completion; its wall time in ms. A non-zero exit is a BenchError."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=err, env=env)
        elapsed = (time.perf_counter() - started) * 1000
        if done.returncode != 0:
            err.seek(0)
            reason = err.read().decode(errors="replace").strip().splitlines()[-3:]
            raise BenchError(f"{' '.join(cmd)} exited {done.returncode}: "
                             f"{' / '.join(reason) or 'no message'}")
    return elapsed


def in_process(bundle: Path, root: Path, prepare: bool = False) -> float:
    """One container through the Python API; the caller must be a child subreaper."""
    prepared = None
    if prepare:
        prepared = PreparedInit()
        prepared.wait_until_made()
    started = time.perf_counter()
    state = create(CID, bundle, root=root, prepared=prepared)
    start(CID, root=root)
    _, status = os.waitpid(state.pid, 0)  # the init was re-parented to us
    delete(CID, root=root)
    elapsed = (time.perf_counter() - started) * 1000
    if exit_status(status) != 0:
        raise BenchError(f"in-process: the container exited {exit_status(status)}")
    return elapsed


def making_prepared_init() -> float:
    """What the prepared row does beforehand, untimed there: fork the init into its
    namespaces and cgroup, until it says it is ready (then it is discarded)."""
    started = time.perf_counter()
    prepared = PreparedInit()
    prepared.wait_until_made()
    elapsed = (time.perf_counter() - started) * 1000
    prepared.discard()
    return elapsed


class HiddenUnifiedWorker:
    """A child in a private mount namespace without the hybrid host's cgroup2 mount.

    It runs the commands it is sent, one at a time, and answers each with its
    wall time, so that crun takes its turn among the others.
    """

    def __init__(self) -> None:
        request_r, self._request_w = os.pipe()
        self._answer_r, answer_w = os.pipe()
        self.pid = fork()
        if self.pid == 0:
            os.close(self._request_w), os.close(self._answer_r)
            self._serve(request_r, answer_w)  # never returns
        os.close(request_r), os.close(answer_w)
        self._requests = os.fdopen(self._request_w, "w", buffering=1)
        self._answers = os.fdopen(self._answer_r, "r")
        self._answer()  # "ready", or why not

    @staticmethod
    def _serve(request_r: int, answer_w: int) -> None:
        answers = os.fdopen(answer_w, "w", buffering=1)
        try:
            prctl(C.PR_SET_PDEATHSIG, signal.SIGKILL)
            unshare(C.CLONE_NEWNS)
            make_mounts_private()  # so the unmount below stays in here
            umount2(UNIFIED, C.MNT_DETACH)
            answers.write(json.dumps({"ms": 0}) + "\n")
            for line in os.fdopen(request_r):
                try:
                    answers.write(json.dumps({"ms": timed(json.loads(line))}) + "\n")
                except Exception as err:
                    answers.write(json.dumps({"error": str(err)}) + "\n")
        except BaseException as err:
            answers.write(json.dumps({"error": f"cannot hide {UNIFIED}: {err}"}) + "\n")
        finally:
            os._exit(0)

    def _answer(self) -> float:
        answer = json.loads(self._answers.readline() or '{"error": "the worker died"}')
        if "error" in answer:
            raise BenchError(answer["error"])
        return answer["ms"]

    def timed(self, cmd: list[str]) -> float:
        self._requests.write(json.dumps(cmd) + "\n")
        return self._answer()

    def close(self) -> None:
        self._requests.close()
        self._answers.close()
        os.waitpid(self.pid, 0)


# --- the bundle and the runtimes ----------------------------------------------------------


def make_bundle(workdir: Path) -> Path:
    bundle = workdir / "bundle"
    bundle.mkdir()
    config = default_spec(["true"], terminal=False)
    config["root"]["path"] = str(busybox_rootfs(workdir / "rootfs"))
    (bundle / "config.json").write_text(json.dumps(config, indent="\t"))
    return bundle


def mini_runc_command() -> list[str]:
    script = Path(sys.executable).with_name("mini-runc")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mini_docker.runtime.cli"]


def python_env(workdir: Path) -> tuple[dict[str, str], str]:
    """The environment for the fresh interpreters, and a note on their bytecode.

    An installed package has its .pyc files; PYTHONDONTWRITEBYTECODE would make
    every run compile mini_docker again, which no user pays. Keep the bytecode
    in a private cache instead (nothing is written to the source tree).
    """
    env = dict(os.environ)
    if env.pop("PYTHONDONTWRITEBYTECODE", None) is None:
        return env, "bytecode: the usual __pycache__"
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    return env, "bytecode: PYTHONDONTWRITEBYTECODE was set; cached under a private PYTHONPYCACHEPREFIX"


def runtimes(bundle: Path, workdir: Path, env: dict[str, str],
             worker: HiddenUnifiedWorker | None) -> list[Series]:
    def run_args(name: str) -> list[str]:
        return ["--root", str(workdir / f"{name}-root"), "run", "--bundle", str(bundle), CID]

    series = []
    if runc := shutil.which("runc"):
        series.append(Series("runc run", lambda: timed([runc, *run_args("runc")])))
    if crun := shutil.which("crun"):
        if worker:
            series.append(Series("crun run (unified hidden)",
                                 lambda: worker.timed([crun, *run_args("crun")])))
            series.append(Series("crun run (unshare wrapper)", lambda: timed(
                ["unshare", "-m", "sh", "-c", HIDE_UNIFIED, crun, *run_args("crun")])))
        else:
            series.append(Series("crun run", lambda: timed([crun, *run_args("crun")])))
    cli = mini_runc_command()
    series.append(Series("mini-runc run (CLI)", lambda: timed([*cli, *run_args("mini")], env)))
    in_root = workdir / "in-process-root"
    series.append(Series("in-process API", lambda: in_process(bundle, in_root)))
    series.append(Series("in-process, prepared init",
                         lambda: in_process(bundle, in_root, prepare=True)))
    series.append(Series("  making the prepared init", making_prepared_init))
    return series


def interpreter_costs(env: dict[str, str]) -> list[Series]:
    python, cli = sys.executable, mini_runc_command()
    return [Series("python -c pass", lambda: timed([python, "-c", "pass"], env)),
            Series("python -S -c pass", lambda: timed([python, "-S", "-c", "pass"], env)),
            Series("mini-runc --version", lambda: timed([*cli, "--version"], env))]


def clean_up(workdir: Path) -> None:
    """Delete whatever a failed run left, with the runtime that made it.

    A container whose `create` failed half-way may have left its init behind;
    we are a subreaper, so it is our child by now: kill and reap our children.
    """
    for pid in _own_children():
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    for tool in ("runc", "crun"):
        if (workdir / f"{tool}-root").exists() and shutil.which(tool):
            hide = ["unshare", "-m", "sh", "-c", HIDE_UNIFIED] if tool == "crun" and \
                os.path.ismount(UNIFIED) else []
            subprocess.run([*hide, tool, "--root", str(workdir / f"{tool}-root"), "delete",
                            "--force", CID], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for root in (workdir / "mini-root", workdir / "in-process-root"):
        try:
            delete(CID, force=True, root=root)
        except Exception:
            pass


def _own_children() -> list[int]:
    """The pids whose parent is this process (field 4 of /proc/PID/stat)."""
    me, found = os.getpid(), []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                    found.append(int(entry))
        except OSError:  # gone meanwhile
            continue
    return found


# --- the report -----------------------------------------------------------------------------


def importtime(cli_args: list[str], env: dict[str, str],
               top: int = 10) -> tuple[float, list[tuple[float, float, str]]]:
    """Total import time and the `top` slowest imports of `mini-runc <cli_args>`.

    Each entry is (cumulative ms, self ms, name indented as in the import tree);
    only the first levels of the tree are listed, so that one import is not
    counted under each of its parents.
    """
    with tempfile.TemporaryFile("w+") as err:  # a file: a container keeps its stderr
        subprocess.run([sys.executable, "-X", "importtime", "-m", "mini_docker.runtime.cli",
                        *cli_args], env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=err, check=True)
        err.seek(0)
        lines = err.read().splitlines()
    rows = []
    for line in lines:
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, total, name = line.removeprefix("import time:").split("|")
        rows.append((int(total) / 1000, int(own) / 1000, name.rstrip()))
    total = sum(own for _, own, _ in rows)
    shallow = [r for r in rows if len(r[2]) - len(r[2].lstrip()) <= 5]  # depth 0 to 2
    return total, sorted(shallow, reverse=True)[:top]


def host_line() -> str:
    hybrid = os.path.ismount(UNIFIED)
    v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    cgroups = "v2" if v2 else "v1, hybrid" if hybrid else "v1"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"host: Linux {platform.release()}, {os.cpu_count()} CPUs, cgroup {cgroups}, "
            f"Python {platform.python_version()}, load average {load}")


def versions() -> str:
    found = []
    for tool in ("runc", "crun"):
        if shutil.which(tool):
            first = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
            found.append(first.splitlines()[0] if first else tool)
    return "; ".join(found) or "neither runc nor crun is installed"


def ratio_line(label: str, top: Series | None, bottom: Series | None, target: str,
               limit: float) -> str:
    if not top or not bottom:
        return f"{label:<26} n/a (not measured)"
    ratio = top.median / bottom.median
    verdict = "met" if ratio <= limit else "MISSED"
    return f"{label:<26} {ratio:5.2f}x   target {target:<22} {verdict}"


def report(args: argparse.Namespace, measured: list[Series], startup: list[Series],
           env: dict[str, str], bytecode: str, run_args: list[str]) -> None:
    by_name = {s.name: s for s in measured + startup}
    gap = f", {args.gap_ms:g} ms of sleep before each" if args.gap_ms else ", back to back"
    print(f"\n{args.n} containers per runtime, each running `true` in a busybox bundle "
          f"(blocks of {args.block}{gap}; runtimes take turns by block)")
    print(host_line())
    print(versions())
    print(bytecode)
    print(f"\n{'':<30}{'median ms':>10}{'p90 ms':>10}")
    for s in measured:
        print(f"{s.name:<30}{s.median:>10.1f}{s.p90:>10.1f}")

    crun = by_name.get("crun run (unified hidden)") or by_name.get("crun run")
    print("\nratios of medians")
    print(ratio_line("mini-runc CLI / runc", by_name["mini-runc run (CLI)"], by_name.get("runc run"),
                     "<= 2x (aim 1.5x)", 2.0))
    print(ratio_line("in-process / crun", by_name["in-process API"], crun, "<= 1x", 1.0))
    print(ratio_line("in-process, prepared / crun", by_name["in-process, prepared init"], crun,
                     "<= 1x", 1.0))

    print("\nwhere the command line's time goes")
    for s in startup:
        print(f"{s.name:<30}{s.median:>10.1f}{s.p90:>10.1f}")
    version, bare = by_name["mini-runc --version"].median, by_name["python -c pass"].median
    run = by_name["mini-runc run (CLI)"].median
    print(f"  --version - python -c pass   {version - bare:6.1f} ms  (the CLI's imports and parser)")
    print(f"  run - --version              {run - version:6.1f} ms  (the run verb's imports and "
          "the container)")
    print(f"  in-process API               {by_name['in-process API'].median:6.1f} ms  "
          "(the container alone)")
    for cli_args in (["--version"], run_args):
        total, top = importtime(cli_args, env)
        shown = " ".join("B" if a.startswith("/") else a for a in cli_args)
        print(f"\npython -X importtime -m mini_docker.runtime.cli {shown}: {total:.1f} ms of "
              "imports (one run, slowed by importtime itself); the slowest:")
        print(f"  {'cumulative':>10} {'self':>7}  module")
        for cumulative, own, name in top:
            print(f"  {cumulative:>10.1f} {own:>7.1f}  {name}")


def measure(every: list[Series], args: argparse.Namespace) -> None:
    """Fill every series with args.n samples, block by block, the series taking turns."""
    blocks = math.ceil(args.n / args.block)
    for block in range(blocks):
        size = min(args.block, args.n - block * args.block)
        for s in every[block % len(every):] + every[:block % len(every)]:
            s.run_once()  # untimed: the first container of a block follows another runtime
            for _ in range(size):
                time.sleep(args.gap_ms / 1000)
                s.samples.append(s.run_once())
        if sys.stderr.isatty():
            print(f"\rblock {block + 1}/{blocks}", end="", file=sys.stderr)
    if sys.stderr.isatty():
        print(file=sys.stderr)


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30, help="containers per runtime (default 30)")
    parser.add_argument("--block", type=int, default=10,
                        help="containers run back to back before the next runtime's turn "
                             "(default 10)")
    parser.add_argument("--gap-ms", type=float, default=0,
                        help="sleep this long before each container (default 0)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_runtime: run as root: containers need it", file=sys.stderr)
        return 1
    if args.n < 1 or args.block < 1 or args.gap_ms < 0:
        print("bench_runtime: --n and --block must be at least 1, --gap-ms at least 0",
              file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    worker = None
    try:
        bundle = make_bundle(workdir)
        env, bytecode = python_env(workdir)
        if shutil.which("crun") and os.path.ismount(UNIFIED):
            worker = HiddenUnifiedWorker()
        measured = runtimes(bundle, workdir, env, worker)
        startup = interpreter_costs(env)
        prctl(C.PR_SET_CHILD_SUBREAPER, 1)  # for the in-process init (see runtime/run.py)
        measure(measured + startup, args)
        report(args, measured, startup, env, bytecode,
               ["--root", str(workdir / "mini-root"), "run", "--bundle", str(bundle), CID])
        return 0
    except BenchError as err:
        print(f"\nbench_runtime: {err}", file=sys.stderr)
        return 1
    finally:
        if worker:
            worker.close()
        clean_up(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
