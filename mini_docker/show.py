"""Showing the library's own source in the book.

Each chapter explains a layer by showing the code that implements it, taken
from the module at the moment the chapter runs, never pasted: what the reader
sees is what runs. The source is returned as Markdown, so the book renders it
with the same highlighting as any other code block.
"""

from __future__ import annotations

import inspect
import textwrap
from typing import Any


def source(obj: Any, *, title: bool = True) -> Any:
    """The source of a function, class or module, for display in a notebook.

    With `title`, a line above the code names where it lives
    (``mini_docker/kernel/syscalls.py``, function ``unshare``).
    """
    from IPython.display import Markdown  # only notebooks need IPython

    code = textwrap.dedent(inspect.getsource(obj)).rstrip()
    header = ""
    if title:
        module = inspect.getmodule(obj)
        path = "?"
        if module is not None and module.__file__:
            # mini_docker/cgroups/__init__.py, not mini_docker/cgroups.py
            package_root = module.__name__.split(".")[0]
            tail = module.__file__.rsplit(f"/{package_root}/", 1)[-1]
            path = f"{package_root}/{tail}"
        if inspect.ismodule(obj):
            header = f"`{path}`\n\n"
        else:
            header = f"`{path}`, `{obj.__qualname__}`\n\n"
    return Markdown(f"{header}```python\n{code}\n```")
