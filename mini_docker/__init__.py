"""mini_docker: a working Docker, built layer by layer in Python.

Each sub-package is one layer of the engine, and one chapter of the book:

    kernel/    the system calls Python lacks (chapter 1)
    runtime/   the OCI runtime, the layer runc is (chapter 2)
    cgroups/   limits and accounting (chapter 3)
    image/     layers, the content store, overlayfs (chapter 4)
    engine/    containers and their lifecycle (chapter 5)

Modules are imported lazily by whoever needs them, so that `mini-docker`
starts fast.
"""

__version__ = "0.1.0"
