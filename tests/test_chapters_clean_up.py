"""Running a chapter, or an exercise solution, leaves nothing behind on the host.

nbval compares each chapter's outputs; this test runs every notebook once more,
top to bottom in a fresh kernel, and compares the host before and after: no
mount, process, network link, network namespace or cgroup may remain.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from leaks import HostSnapshot

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb")) + sorted(
    (ROOT / "exercises" / "solutions").glob("*.ipynb"))


def _namespaces_in_use() -> set[str]:
    """Every namespace any process on the host is in, as 'kind:[inode]'."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                found.update(str(p.readlink()) for p in (proc / "ns").iterdir())
            except OSError:  # the process exited meanwhile
                continue
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_leaves_nothing_behind(path):
    notebook = nbformat.read(path, as_version=4)
    # The "check your work" cell of an exercise starts pytest itself; the
    # exercise tests cover it, so only the learner's cells are run here.
    if path.parent.name == "solutions":
        notebook.cells = [c for c in notebook.cells if "exercise" in c.metadata.get("tags", [])]
    before, namespaces_before = HostSnapshot(), _namespaces_in_use()
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    assert HostSnapshot().leaked_since(before) == {}
    assert _namespaces_in_use() - namespaces_before == set()
