"""The runtime layer: an OCI runtime, the part of Docker that runc is (chapter 2).

It takes a bundle (config.json and a root filesystem) and makes it a
running, isolated process, through the lifecycle the OCI runtime
specification defines:

    create   namespaces, mounts and an init blocked before the user's program
    start    the init runs the program
    state    created, running, paused or stopped, as JSON
    kill     a signal to the init, or to every process in the container
    delete   forget a stopped container

plus `run` (create, start, wait, delete) and `exec` (another process in a
running container). It knows nothing of images: that is the layer above.
The `mini-runc` command (cli.py) gives these runc's command line, so that
containerd and dockerd can use it in place of runc.
"""

from __future__ import annotations

import importlib
import sys
import types

# public name -> the module that defines it, imported on first use: each
# mini-runc command loads only what its verb needs.
_EXPORTS = {
    "create": "create", "CreateError": "create", "delete": "delete", "exec_in": "exec",
    "load_process": "exec", "kill": "kill", "parse_signal": "kill", "run": "run",
    "default_spec": "spec", "load": "spec", "parse": "spec", "start": "start",
    "DEFAULT_ROOT": "state", "StateDir": "state", "pause": "pause", "resume": "pause",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mini_docker.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mini_docker.runtime.{module}"), name)
    globals()[name] = value
    return value


def state(container_id: str, *, root: str | None = None) -> dict:
    """The runtime spec's state of a container, as `mini-runc state` prints it."""
    from mini_docker.runtime.state import StateDir

    states = StateDir(root) if root else StateDir()
    return states.report(states.load(container_id))


class _Package(types.ModuleType):
    """This package, keeping its functions when a same-named submodule loads.

    The first import of mini_docker.runtime.create sets the package's attribute
    `create` to that module (the import system does so for every submodule),
    which would hide the function create() from then on. The functions named
    after their modules keep their place; the modules stay in sys.modules.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and name in _SHADOWED:
            return
        super().__setattr__(name, value)


_SHADOWED = {"create", "delete", "kill", "run", "start", "state"}
sys.modules[__name__].__class__ = _Package
