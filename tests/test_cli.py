"""The `mini-docker` command line: help, errors, and a start-up that stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest


def mini_docker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mini_docker", *args],
                          capture_output=True, text=True, timeout=60)


def test_help_lists_the_commands():
    result = mini_docker("--help")
    assert result.returncode == 0
    assert "check-config" in result.stdout and "usage: mini-docker" in result.stdout


def test_no_arguments_prints_usage_and_fails():
    result = mini_docker()
    assert result.returncode == 2 and "usage: mini-docker" in result.stdout


def test_unknown_command_is_one_line_and_exit_2():
    result = mini_docker("frobnicate")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == "mini-docker: 'frobnicate' is not a mini-docker command."
    assert "Traceback" not in result.stderr


def test_version():
    from mini_docker import __version__

    result = mini_docker("--version")
    assert result.stdout.strip() == f"mini-docker version {__version__}"
    assert mini_docker("version").stdout.startswith(f"mini-docker version {__version__}\n")


def test_bad_option_to_a_command_is_a_usage_error_without_traceback():
    result = mini_docker("version", "--no-such-option")
    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["--help"], ["version"]])
def test_startup_imports_no_heavy_module(command):
    # The command line must start fast: what it does not need, it does not import.
    probe = (
        "import sys\n"
        "from mini_docker.cli import main\n"
        f"main({command!r})\n"
        "heavy = [m for m in ('pyroute2', 'psutil', 'IPython', 'matplotlib', 'nbformat', 'json')"
        " if m in sys.modules]\n"
        "print('heavy=' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "heavy=", f"imported at start-up: {result.stdout}"
