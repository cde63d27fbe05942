"""`mini-docker runtime ...` is `mini-runc ...`: the OCI runtime's own command line."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from mini_docker.runtime.cli import main as runc_main

    return runc_main(argv, prog="mini-docker runtime")
