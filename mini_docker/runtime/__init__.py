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

from mini_docker.runtime.create import CreateError, create  # noqa: F401
from mini_docker.runtime.delete import delete  # noqa: F401
from mini_docker.runtime.exec import exec_in, load_process  # noqa: F401
from mini_docker.runtime.kill import kill, parse_signal  # noqa: F401
from mini_docker.runtime.run import run  # noqa: F401
from mini_docker.runtime.spec import default_spec, load, parse  # noqa: F401
from mini_docker.runtime.start import start  # noqa: F401
from mini_docker.runtime.state import DEFAULT_ROOT, StateDir  # noqa: F401


def state(container_id: str, *, root: str | None = None) -> dict:
    """The runtime spec's state of a container, as `mini-runc state` prints it."""
    states = StateDir(root) if root else StateDir()
    return states.report(states.load(container_id))
