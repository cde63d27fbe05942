"""The engine: containers with names and lives, shims, logs, events and stats (chapter 5).

This is what dockerd and containerd are in Docker, in one package:

    engine.py    the Engine: every container's state, and each change of it
    exits.py     exits recorded, restart policies, recovery after an engine restart
    inside.py    attach, logs, exec, top and stats of a running container
    execs.py     exec instances: create, start, inspect, resize, as the Engine API splits them
    record.py    a container's record on disk, written atomically
    names.py     IDs, names, and resolving what the user typed
    config.py    docker run's options -> Config, HostConfig, the OCI spec
    shim.py      one small process per container: its parent, stdio and logs
    zygote.py    the fork server that makes shims without a new interpreter
    monitor.py   one thread that notices shims exit (pidfds) and runs restart timers
    janitor.py   one thread that deletes removed containers' files after rm returns
    logs.py      Docker's json-file log driver
    events.py    the event stream
    stats.py     docker stats, from the cgroup's accounts
    top.py       docker top
    models.py    the Python API in docker-py's shape

`Engine` is loaded on first use, so importing the package costs nothing.
"""

from __future__ import annotations


def __getattr__(name: str) -> object:
    if name in ("Engine", "NotModified"):
        from mini_docker.engine import engine

        return getattr(engine, name)
    if name in ("Container", "ContainerError", "ExecResult", "Image"):
        from mini_docker.engine import models

        return getattr(models, name)
    raise AttributeError(f"module 'mini_docker.engine' has no attribute {name!r}")
