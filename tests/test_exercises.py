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


def test_mount_check_catches_a_solution_that_forgets_private_mounts(tmp_path):
    solution = nbformat.read(ROOT / "exercises/solutions/01-namespaces.ipynb", as_version=4)
    for cell in solution.cells:
        cell.source = cell.source.replace("kernel.make_mounts_private()\n        kernel.mount(\"tmpfs\", path",
                                          "kernel.mount(\"tmpfs\", path")
    task3 = [c.source for c in solution.cells if "def mount_tmpfs_privately" in c.source]
    assert task3 and "make_mounts_private" not in task3[0]
    broken = tmp_path / "forgot-private.ipynb"
    nbformat.write(solution, broken)
    counts = run_checks(ROOT / "exercises/checks/test_01_namespaces.py", tmp_path,
                        EXERCISE_NOTEBOOK=str(broken))
    assert counts["failures"] == 1, counts  # the host saw the mount: exactly that check fails


def test_exercise_notebooks_have_solutions():
    skeletons = sorted(p.name for p in (ROOT / "exercises").glob("*.ipynb"))
    solutions = sorted(p.name for p in (ROOT / "exercises/solutions").glob("*.ipynb"))
    assert skeletons and skeletons == solutions
