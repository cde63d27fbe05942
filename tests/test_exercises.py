"""Every exercise check passes on its solution and fails on the unsolved skeleton.

A check that passes on the skeleton proves nothing; a check that fails on the
solution is wrong. Both are run here, each in its own pytest process, exactly
as a learner's "check your work" cell runs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKS = sorted((ROOT / "exercises" / "checks").glob("test_*.py"))


def run_checks(check: Path, tmp_path: Path, **env: str) -> dict[str, int]:
    """Run one check file; return its counts of tests, failures, errors, skipped."""
    report = tmp_path / "report.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         str(check)],
        cwd=ROOT / "exercises", env={**os.environ, **env}, capture_output=True, text=True,
        timeout=300,
    )
    suite = ET.parse(report).getroot().find("testsuite")
    return {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")}


def test_there_are_exercise_checks():
    assert CHECKS, "no exercises/checks/test_*.py found"


@pytest.mark.parametrize("check", CHECKS, ids=lambda p: p.stem)
def test_check_passes_on_the_solution(check, tmp_path):
    counts = run_checks(check, tmp_path, EXERCISES_FROM="solutions")
    assert counts["tests"] > 0
    assert counts["failures"] == counts["errors"] == counts["skipped"] == 0, counts


@pytest.mark.parametrize("check", CHECKS, ids=lambda p: p.stem)
def test_check_fails_on_the_skeleton(check, tmp_path):
    counts = run_checks(check, tmp_path, EXERCISES_FROM="skeleton")
    assert counts["tests"] > 0
    assert counts["failures"] + counts["errors"] == counts["tests"], (
        f"some checks pass on the unsolved skeleton: {counts}")


# Plausible wrong answers, each of which exactly one check must catch.
WRONG_ANSWERS = {
    "forgets private mounts": ("01-namespaces", "mount_tmpfs_privately", """
def mount_tmpfs_privately(path: str) -> bool:
    def inside() -> bool:
        kernel.mount("tmpfs", path, "tmpfs", 0, "size=1m")
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == path for line in f)
    return kernel.run_isolated(inside, flags=kernel.CLONE_NEWNS)
"""),
    "chroot is not a jail": ("02-root-filesystems", "enter_root", """
def enter_root(rootfs: str) -> None:
    os.chroot(rootfs)
    os.chdir("/")
"""),
    "any SIGKILL taken for an OOM kill": ("03-cgroups", "run_limited", """
def run_limited(argv: list[str], memory_bytes: int) -> tuple[int, bool]:
    limits = Resources(memory=memory_bytes, memory_swap=memory_bytes)
    with cgroups.create(f"mini-docker-exercises/run-{os.getpid()}-{time.monotonic_ns()}", limits) as group:
        proc = subprocess.Popen(["sh", "-c", 'read -r go; exec "$@"', "sh", *argv],
                                stdin=subprocess.PIPE)
        group.add(proc.pid)
        proc.stdin.write(b"go\\n")
        proc.stdin.close()
        returncode = proc.wait()
        return returncode, returncode == -signal.SIGKILL
"""),
    "lower layers in the config's order": ("04-images", "mount_layers", """
def mount_layers(lower_dirs: list[Path], upper: Path, work: Path, merged: Path) -> None:
    lowers = ":".join(str(d) for d in lower_dirs)
    kernel.mount("overlay", merged, "overlay", 0,
                 f"lowerdir={lowers},upperdir={upper},workdir={work}")
"""),
    "an ID prefix tried before the name": ("05-containers", "resolve", """
def resolve(ref: str, names: dict[str, str], ids: list[str]) -> str:
    ids = list(ids)
    if re.fullmatch(r"[0-9a-f]{64}", ref or "") and ref in ids:
        return ref
    if re.fullmatch(r"[0-9a-f]+", ref or ""):
        matches = [i for i in ids if i.startswith(ref)]
        if len(matches) > 1:
            raise InvalidArgument(f"multiple IDs found with provided prefix: {ref}")
        if matches:
            return matches[0]
    bare = (ref or "").removeprefix("/")
    if bare in names:
        return names[bare]
    raise NotFound(f"No such container: {ref}")
"""),
    "on-failure:N allows one restart too many": ("05-containers", "should_restart", """
def should_restart(policy: str, exit_code: int, restarts: int, stopped_by_user: bool) -> bool:
    name, _, count = policy.partition(":")
    if stopped_by_user or name == "no":
        return False
    if name == "on-failure":
        limit = int(count or 0)
        return exit_code != 0 and (limit == 0 or restarts <= limit)
    return name in ("always", "unless-stopped")
"""),
    "the restart back-off never resets": ("05-containers", "backoff", """
def backoff(previous: float, ran: float) -> float:
    if not previous:
        return 0.1
    return min(previous * 2, 60.0)
"""),
    "detach keys split between two reads are missed": ("05-containers", "watch_for", """
def watch_for(data: bytes, keys: bytes) -> tuple[bytes, bytes, bool]:
    at = data.find(keys)
    if at >= 0:
        return data[:at], b"", True
    return data, b"", False
"""),
}


@pytest.mark.parametrize("mistake", WRONG_ANSWERS)
def test_checks_catch_a_plausible_wrong_answer(mistake, tmp_path):
    notebook_name, function, wrong_source = WRONG_ANSWERS[mistake]
    solution = nbformat.read(ROOT / f"exercises/solutions/{notebook_name}.ipynb", as_version=4)
    replaced = 0
    for cell in solution.cells:
        if cell.source.startswith(f"def {function}("):
            cell.source = wrong_source.strip()
            replaced += 1
    assert replaced == 1, f"no solution cell defines {function}"
    broken = tmp_path / f"{notebook_name}.ipynb"
    nbformat.write(solution, broken)
    check = ROOT / "exercises/checks" / f"test_{notebook_name.replace('-', '_')}.py"
    counts = run_checks(check, tmp_path, EXERCISE_NOTEBOOK=str(broken))
    assert counts["failures"] == 1, counts


def test_exercise_notebooks_have_solutions():
    skeletons = sorted(p.name for p in (ROOT / "exercises").glob("*.ipynb"))
    solutions = sorted(p.name for p in (ROOT / "exercises/solutions").glob("*.ipynb"))
    assert skeletons and skeletons == solutions
