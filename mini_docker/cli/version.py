"""`mini-docker version`: the client's version and the kernel it runs on."""

from __future__ import annotations

import argparse
import os
import platform

from mini_docker import __version__


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="mini-docker version", description=__doc__).parse_args(argv)
    print(f"mini-docker version {__version__}")
    print(f"Python:  {platform.python_version()}")
    print(f"Kernel:  {os.uname().release}")
    print(f"OS/Arch: linux/{platform.machine()}")
    return 0
