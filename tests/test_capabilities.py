"""Capabilities against the real kernel.

Every change runs in a forked child (`run_isolated`), so the test process keeps
its own capabilities. What the kernel did is read back independently, from
/proc/self/status, never only through the module under test. This machine's
bounding set lacks CAP_SYS_RESOURCE, so no test assumes the full set.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from mini_docker.kernel import CLONE_NEWNET, CLONE_NEWNS, SyscallError, make_mounts_private, mount
from mini_docker.kernel import capabilities as caps
from mini_docker.kernel.capabilities import (
    CAPABILITIES, DOCKER_DEFAULT_CAPS, Credentials, apply_process_capabilities, capget, capset,
    change_user, drop_bounding, last_cap, set_ambient, to_mask, unsupported_caps,
)
from mini_docker.kernel.process import run_isolated

# What `grep CapBnd /proc/self/status` prints in a default `docker run` container.
DOCKER_DEFAULT_MASK = 0x00000000A80425FB
NET_BIND_SERVICE = "CAP_NET_BIND_SERVICE"
USER = Credentials(uid=1000, gid=1000)
PYTHON = "/usr/bin/python3"  # the system's: readable by uid 1000, unlike a venv might be

# Run by the exec'd program as uid 1000: its caps as the kernel reports them, and
# whether it may listen on a port below 1024.
PROBE = """
import os, socket
try:
    socket.socket().bind(("0.0.0.0", 80))
    bound = "bound"
except PermissionError:
    bound = "refused"
print(os.getuid(), bound)
print(open("/proc/self/status").read())
"""


def _status_caps(text: str | None = None) -> dict[str, int]:
    """The Cap* lines of /proc/self/status (or of `text`), as integers."""
    if text is None:
        with open("/proc/self/status") as f:
            text = f.read()
    return {key: int(value, 16) for key, value in
            (line.split(":\t") for line in text.splitlines() if line.startswith("Cap"))}


def _exec_probe_as_user(ambient: frozenset[str]) -> tuple[int, str, dict[str, int]]:
    """In the child: keep only NET_BIND_SERVICE, become uid 1000, exec the probe."""
    keep = {NET_BIND_SERVICE}
    apply_process_capabilities(DOCKER_DEFAULT_CAPS, keep, keep, keep, ambient, user=USER)
    out = subprocess.run([PYTHON, "-S", "-c", PROBE], cwd="/", capture_output=True,
                         text=True, check=True).stdout
    first, status = out.split("\n", 1)
    uid, bound = first.split()
    return int(uid), bound, _status_caps(status)


# --- the tables -----------------------------------------------------------------------


def test_table_numbers_every_capability_of_this_kernel_once():
    assert sorted(CAPABILITIES.values()) == list(range(41))
    assert CAPABILITIES["CAP_CHOWN"] == 0 and CAPABILITIES["CAP_CHECKPOINT_RESTORE"] == 40
    assert 0 < last_cap() <= 40


@pytest.mark.skipif(shutil.which("capsh") is None, reason="capsh (libcap2-bin) not installed")
def test_table_agrees_with_libcap():
    out = subprocess.run(["capsh", f"--decode={(1 << 41) - 1:#x}"], capture_output=True,
                         text=True, check=True).stdout
    libcap = out.strip().split("=", 1)[1].split(",")
    assert [name.upper() for name in libcap] == list(CAPABILITIES)


def test_docker_default_set_is_mobys():
    assert len(DOCKER_DEFAULT_CAPS) == len(set(DOCKER_DEFAULT_CAPS)) == 14
    assert to_mask(DOCKER_DEFAULT_CAPS) == DOCKER_DEFAULT_MASK


# --- reading --------------------------------------------------------------------------


def test_capget_of_self_matches_proc_status():
    sets, status = run_isolated(lambda: (capget(), _status_caps()))
    assert to_mask(sets.effective) == status["CapEff"]
    assert to_mask(sets.permitted) == status["CapPrm"]
    assert to_mask(sets.inheritable) == status["CapInh"]
    assert to_mask(sets.bounding) == status["CapBnd"]
    assert to_mask(sets.ambient) == status["CapAmb"]
    if status["CapBnd"] >> CAPABILITIES["CAP_SYS_ADMIN"] & 1:
        assert "CAP_SYS_ADMIN" in sets.effective


def test_capget_of_another_process_has_no_bounding_or_ambient():
    sets = run_isolated(capget, os.getpid())  # the child reads the test process
    assert to_mask(sets.effective) == _status_caps()["CapEff"]
    assert sets.bounding is None and sets.ambient is None


# --- narrowing a root process to Docker's default set ----------------------------------


def test_drop_bounding_leaves_exactly_dockers_default_set():
    def drop() -> tuple[int, frozenset[str]]:
        drop_bounding(DOCKER_DEFAULT_CAPS)
        return _status_caps()["CapBnd"], capget().bounding

    bounding, read_back = run_isolated(drop)
    assert bounding == DOCKER_DEFAULT_MASK
    assert read_back == frozenset(DOCKER_DEFAULT_CAPS)


def test_mount_is_refused_with_the_default_set(tmp_path):
    def mount_twice() -> None:
        make_mounts_private()  # a mount that wrongly succeeded stays in this namespace
        mount("tmpfs", tmp_path, "tmpfs")  # control: root with every capability may
        apply_process_capabilities(DOCKER_DEFAULT_CAPS, DOCKER_DEFAULT_CAPS,
                                   DOCKER_DEFAULT_CAPS, (), ())
        mount("tmpfs", tmp_path, "tmpfs")  # no CAP_SYS_ADMIN any more

    with pytest.raises(PermissionError) as err:
        run_isolated(mount_twice, flags=CLONE_NEWNS)
    assert isinstance(err.value, SyscallError) and err.value.syscall == "mount"


def test_ip_link_add_is_refused_with_the_default_set():
    add = ["ip", "link", "add", "mdcap0", "type", "veth", "peer", "name", "mdcap1"]

    def add_twice() -> tuple[int, subprocess.CompletedProcess]:
        control = subprocess.run(add, capture_output=True).returncode
        subprocess.run(["ip", "link", "del", "mdcap0"], capture_output=True)
        apply_process_capabilities(DOCKER_DEFAULT_CAPS, DOCKER_DEFAULT_CAPS,
                                   DOCKER_DEFAULT_CAPS, (), ())
        return control, subprocess.run(add, capture_output=True, text=True)

    control, refused = run_isolated(add_twice, flags=CLONE_NEWNET)
    assert control == 0
    assert refused.returncode != 0 and "Operation not permitted" in refused.stderr


# --- across setuid and execve -----------------------------------------------------------


def test_ambient_keeps_net_bind_service_across_setuid_and_exec():
    uid, bound, status = run_isolated(_exec_probe_as_user, frozenset({NET_BIND_SERVICE}),
                                      flags=CLONE_NEWNET)
    one = 1 << CAPABILITIES[NET_BIND_SERVICE]
    assert uid == 1000 and bound == "bound"
    assert status["CapEff"] == status["CapPrm"] == status["CapAmb"] == one
    assert status["CapBnd"] == DOCKER_DEFAULT_MASK


def test_without_ambient_a_non_root_exec_keeps_nothing():
    uid, bound, status = run_isolated(_exec_probe_as_user, frozenset(), flags=CLONE_NEWNET)
    assert uid == 1000 and bound == "refused"
    assert status["CapEff"] == status["CapPrm"] == status["CapAmb"] == 0


def test_change_user_keeps_the_capability_sets():
    def become_user() -> tuple[object, tuple[int, int, int], list[int]]:
        held = {NET_BIND_SERVICE, "CAP_SETUID", "CAP_SETGID"}
        capset(held, held, {NET_BIND_SERVICE})
        set_ambient({NET_BIND_SERVICE})
        change_user(1000, 1000, [1000])
        return capget(), os.getresuid(), os.getgroups()

    sets, uids, groups = run_isolated(become_user)
    assert uids == (1000, 1000, 1000) and groups == [1000]
    assert sets.effective == sets.permitted == {NET_BIND_SERVICE, "CAP_SETUID", "CAP_SETGID"}
    assert sets.inheritable == sets.ambient == {NET_BIND_SERVICE}


def test_change_user_needs_cap_setuid_still_held():
    def too_late() -> None:
        without = set(DOCKER_DEFAULT_CAPS) - {"CAP_SETUID"}
        capset(without, without, ())
        change_user(1000, 1000)

    with pytest.raises(PermissionError, match=r"setuid\(1000\)"):
        run_isolated(too_late)


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda: drop_bounding(["CAP_CHOWN", "CAP_FLY"]),
    lambda: capset(["CAP_FLY"], ["CAP_FLY"], ()),
    lambda: set_ambient(["CAP_FLY"]),
    lambda: apply_process_capabilities(["CAP_FLY"], (), (), (), ()),
])
def test_unknown_name_is_a_value_error_naming_it(call):
    with pytest.raises(ValueError, match="'CAP_FLY'"):
        run_isolated(call)  # in a child: a call that wrongly went ahead drops nothing here


def test_name_without_prefix_gets_a_hint():
    with pytest.raises(ValueError, match="did you mean 'CAP_NET_ADMIN'"):
        to_mask(["NET_ADMIN"])


def test_capset_beyond_permitted_is_eperm():
    def widen() -> None:
        capset({"CAP_CHOWN"}, {"CAP_CHOWN"}, ())
        capset({"CAP_CHOWN", "CAP_KILL"}, {"CAP_CHOWN", "CAP_KILL"}, ())

    with pytest.raises(PermissionError) as err:
        run_isolated(widen)
    assert isinstance(err.value, SyscallError) and err.value.syscall == "capset"
    assert "permitted=CAP_CHOWN|CAP_KILL" in str(err.value)


def test_ambient_needs_the_cap_inheritable():
    def raise_ambient() -> None:
        capset({NET_BIND_SERVICE}, {NET_BIND_SERVICE}, ())  # permitted, not inheritable
        set_ambient({NET_BIND_SERVICE})

    with pytest.raises(PermissionError, match="PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE"):
        run_isolated(raise_ambient)


# --- capabilities this kernel lacks -----------------------------------------------------


def test_unsupported_names_are_those_above_last_cap():
    names = ["CAP_CHOWN", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"]
    assert unsupported_caps(names, last=38) == {"CAP_BPF", "CAP_CHECKPOINT_RESTORE"}
    assert unsupported_caps(names, last=40) == frozenset()


def test_apply_skips_and_reports_what_an_older_kernel_lacks(monkeypatch):
    monkeypatch.setattr(caps, "last_cap", lambda: 39)  # a 5.8 kernel: no CHECKPOINT_RESTORE
    wanted = {*DOCKER_DEFAULT_CAPS, "CAP_CHECKPOINT_RESTORE"}

    def apply() -> tuple[frozenset[str], int]:
        skipped = apply_process_capabilities(wanted, wanted, wanted, (), ())
        return skipped, _status_caps()["CapEff"]

    skipped, effective = run_isolated(apply)
    assert skipped == {"CAP_CHECKPOINT_RESTORE"}
    assert effective == DOCKER_DEFAULT_MASK
