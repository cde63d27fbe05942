"""Loading a learner's exercise notebook so that pytest can check its functions.

The checks read the *saved* notebook, run its cells tagged "exercise" (the
imports and the functions the learner writes) in a fresh module, and test the
functions in it. By default that is the learner's notebook next to this folder;
`EXERCISES_FROM=solutions` checks the solutions instead, and
`EXERCISE_NOTEBOOK=PATH` any other copy.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import nbformat
import pytest

EXERCISES = Path(__file__).resolve().parent.parent


def notebook_path(name: str) -> Path:
    if os.environ.get("EXERCISE_NOTEBOOK"):
        return Path(os.environ["EXERCISE_NOTEBOOK"])
    if os.environ.get("EXERCISES_FROM") == "solutions":
        return EXERCISES / "solutions" / f"{name}.ipynb"
    return EXERCISES / f"{name}.ipynb"


def load_exercise(name: str) -> types.ModuleType:
    """Run the "exercise" cells of notebook `name` in a new module and return it."""
    path = notebook_path(name)
    notebook = nbformat.read(path, as_version=4)
    module = types.ModuleType(f"exercise_{name.replace('-', '_')}")
    module.__file__ = str(path)
    for cell in notebook.cells:
        if cell.cell_type == "code" and "exercise" in cell.metadata.get("tags", []):
            exec(compile(cell.source, f"{path.name}:cell", "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def exercise(request) -> types.ModuleType:
    """The learner's notebook named by the test module's NOTEBOOK, as a module."""
    if os.geteuid() != 0:
        pytest.skip("the exercises create namespaces: run them as root")
    return load_exercise(request.module.NOTEBOOK)
