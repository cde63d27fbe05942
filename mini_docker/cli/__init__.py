"""The `mini-docker` command.

Each sub-command lives in its own module and is imported only when it is
run: `mini-docker check-config` must not pay for importing the image store
or the HTTP client. The table below is all that is loaded at start-up.
"""

from __future__ import annotations

import importlib
import sys

from mini_docker import __version__
from mini_docker.errors import MiniDockerError

# sub-command -> (module under mini_docker.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "check-config": ("check_config", "Report what this host supports and what is missing"),
    "image": ("image", "Manage images"),
    "runtime": ("runtime", "The OCI runtime (runc's command line): create, start, run..."),
    "version": ("version", "Show the mini-docker version"),
}

USAGE = "usage: mini-docker [-h] [--version] COMMAND [ARG...]"


def _help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [USAGE, "", "A working Docker, built layer by layer in Python.", "", "Commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run 'mini-docker COMMAND --help' for more on a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command and return its exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_help())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"mini-docker version {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"mini-docker: '{name}' is not a mini-docker command.\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"mini_docker.cli.{COMMANDS[name][0]}")
    try:
        return int(module.main(rest) or 0)
    except MiniDockerError as err:
        print(f"mini-docker: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
