"""mini-runc and runc side by side: each runs the other's bundles, and both agree.

A runtime that containerd or dockerd can use in place of runc must accept the
config.json they write and build the same container from it. So the same
bundle, written by `runc spec` or by `mini-runc spec` and edited only as a
user would (no terminal, a program to run, the busybox rootfs), runs under
both runtimes, and the container's view of itself must be the same: hostname,
user, environment, root directory, capabilities, /dev, the mount table, the
exit status. Where the two may rightly differ (under /sys/fs/cgroup runc also
shows the named systemd hierarchy and leaves the tmpfs above them writable;
mini-runc shows the controllers alone, all read-only), the test says so and
compares only what they must agree on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from runtime_support import mini_runc

RUNC = shutil.which("runc")
pytestmark = pytest.mark.skipif(
    RUNC is None, reason="runc is not installed (lab/host-setup.sh --test installs it)")

RUNTIMES = ("runc", "mini-runc")


def runc(root: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run runc with --root `root`, capturing through files (see runtime_support.mini_runc)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        done = subprocess.run([RUNC, "--root", str(root), *args], stdout=out, stderr=err,
                              stdin=subprocess.DEVNULL, timeout=timeout)
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(done.args, done.returncode, out.read().decode(),
                                           err.read().decode())


def runtime(name: str, root: Path, *args: str) -> subprocess.CompletedProcess:
    return (runc if name == "runc" else mini_runc)(root, *args)


def spec_bundle(tool: str, path: Path, rootfs: Path, args: list[str]) -> Path:
    """`<tool> spec` in `path`, then the three edits a user makes to run it unattended."""
    path.mkdir(parents=True, exist_ok=True)
    written = runtime(tool, path / "unused-root", "spec", "--bundle", str(path))
    assert written.returncode == 0, written.stderr
    config = json.loads((path / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["root"]["path"] = str(rootfs)
    (path / "config.json").write_text(json.dumps(config, indent="\t"))
    return path


@pytest.fixture(params=RUNTIMES, ids=lambda tool: f"{tool}-spec")
def spec_tool(request) -> str:
    """Which runtime's `spec` wrote the bundle."""
    return request.param


@pytest.fixture
def run_both(tmp_path, busybox_rootfs, runtime_root, spec_tool):
    """Run one program from a `spec_tool` bundle under runc and under mini-runc."""
    roots = {"runc": tmp_path / "runc-root", "mini-runc": runtime_root}

    def run(*args: str) -> dict[str, subprocess.CompletedProcess]:
        bundle = spec_bundle(spec_tool, tmp_path / "bundle", busybox_rootfs, list(args))
        results = {}
        for name in RUNTIMES:
            results[name] = runtime(name, roots[name], "run", "--bundle", str(bundle), "interop")
            assert "Traceback" not in results[name].stderr
        return results

    yield run
    for name, root in roots.items():  # a run that failed half-way must not leave a container
        runtime(name, root, "delete", "--force", "interop")
    assert not roots["runc"].exists() or list(roots["runc"].iterdir()) == []


def same(results: dict[str, subprocess.CompletedProcess]) -> tuple[str, int]:
    """The one (stdout, exit status) both runtimes gave; fails showing both if they differ."""
    seen = {name: (r.stdout, r.returncode) for name, r in results.items()}
    assert seen["mini-runc"] == seen["runc"], results["mini-runc"].stderr
    return seen["runc"]


# --- the container's view of itself ----------------------------------------------------

IDENTITY = ('hostname; id; echo "$PATH"; ls /; '
            'cat /proc/self/status | grep -E "^(Cap|NoNewPrivs|Seccomp)"')


def test_hostname_user_path_root_and_capabilities_agree(run_both):
    stdout, status = same(run_both("sh", "-c", IDENTITY))
    assert status == 0
    assert "uid=0(root) gid=0(root)" in stdout
    assert "CapBnd:\t0000000020000420" in stdout  # AUDIT_WRITE, KILL, NET_BIND_SERVICE
    assert "NoNewPrivs:\t1" in stdout
    assert "Seccomp:\t0" in stdout  # neither `spec` writes a seccomp profile


def test_environment_agrees(run_both):
    stdout, status = same(run_both("sh", "-c", "env | sort"))
    assert status == 0 and "PATH=/usr/local/sbin" in stdout
    assert "HOME=/root" in stdout.split()  # neither config sets it: root's, from /etc/passwd


def test_dev_agrees(run_both):
    stdout, status = same(run_both("ls", "/dev"))
    assert status == 0 and "null" in stdout.split()


def _mount_lines(stdout: str) -> tuple[set[str], set[str]]:
    """(mounts outside /sys/fs/cgroup, cgroup hierarchies mounted inside it)."""
    lines = stdout.splitlines()
    outside = {line for line in lines if " on /sys/fs/cgroup" not in line}
    hierarchies = {line for line in lines if line.startswith("cgroup on /sys/fs/cgroup/")}
    return outside, hierarchies


def test_mount_table_agrees_outside_the_cgroup_mounts(run_both):
    results = run_both("mount")
    assert {r.returncode for r in results.values()} == {0}
    runc_outside, runc_cgroups = _mount_lines(results["runc"].stdout)
    mini_outside, mini_cgroups = _mount_lines(results["mini-runc"].stdout)
    # The same mounts with the same options; only the order differs (runc makes
    # the read-only paths before masking, mini-runc after).
    assert mini_outside == runc_outside
    assert any(" on / type " in line and "(ro," in line for line in mini_outside)
    # Each controller runc shows, mini-runc shows, read-only. runc also shows
    # the named hierarchy (name=systemd), which mini-runc hides.
    controllers = {line for line in runc_cgroups if "name=" not in line}
    assert mini_cgroups == controllers
    assert all("(ro," in line for line in mini_cgroups)


def test_exit_status_agrees(run_both):
    assert same(run_both("sh", "-c", "echo bye; exit 7")) == ("bye\n", 7)


# --- state ------------------------------------------------------------------------------


@pytest.mark.parametrize("annotations", [{}, {"org.example.owner": "interop"}],
                         ids=["no-annotations", "annotations"])
def test_state_of_a_created_container_has_the_same_keys_and_types(
        tmp_path, busybox_rootfs, runtime_root, annotations):
    bundle = spec_bundle("runc", tmp_path / "bundle", busybox_rootfs, ["true"])
    if annotations:
        config = json.loads((bundle / "config.json").read_text())
        config["annotations"] = annotations
        (bundle / "config.json").write_text(json.dumps(config))
    roots = {"runc": tmp_path / "runc-root", "mini-runc": runtime_root}
    states: dict[str, dict[str, Any]] = {}
    try:
        for name in RUNTIMES:
            created = runtime(name, roots[name], "create", "--bundle", str(bundle), "interop")
            assert created.returncode == 0, created.stderr
            shown = runtime(name, roots[name], "state", "interop")
            assert shown.returncode == 0, shown.stderr
            states[name] = json.loads(shown.stdout)
    finally:
        for name in RUNTIMES:
            runtime(name, roots[name], "delete", "--force", "interop")
    types = {name: {key: type(value).__name__ for key, value in state.items()}
             for name, state in states.items()}
    assert types["mini-runc"] == types["runc"]
    for name, state in states.items():
        assert (state["status"], state["id"], state["bundle"]) == ("created", "interop", str(bundle))
        assert state["pid"] > 0
        assert state.get("annotations", {}) == annotations
    assert list(roots["runc"].iterdir()) == []
