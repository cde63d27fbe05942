import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from leaks import HostSnapshot  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail any test that leaves a mount, a process, a link, a netns or a cgroup behind."""
    if os.geteuid() != 0:
        pytest.skip("mini_docker's tests run as root: they create real namespaces and mounts")
    before = HostSnapshot()
    yield
    leaks = HostSnapshot().leaked_since(before)
    assert not leaks, f"the test left these behind: {leaks}"


@pytest.fixture
def project_root() -> Path:
    return ROOT
