"""Running images: the overlay rootfs, the image config reaching the process, clean-up.

run_image makes its caller a child subreaper and forwards signals, so the
containers here run from a subprocess, as the command line would run them;
the failures that come before any container exists are checked in process.
Each test ends with no overlay mount, no container directory and no runtime
state left (conftest's leak check looks at mounts, processes and cgroups).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mini_docker.errors import InvalidArgument, NotFound
from mini_docker.image.bootstrap import HOSTS
from mini_docker.image.container import container_spec, remove_container, run_image
from mini_docker.image.snapshot import Snapshotter
from mini_docker.image.store import ImageStore
from mini_docker.image.unpack import UnsafeLayer
from mini_docker.kernel.capabilities import DOCKER_DEFAULT_CAPS

from test_snapshot import (File, add_image, busybox_tar, layer_tar,  # noqa: F401 (fixtures)
                           overlay_mounts_under, store)

ROOT = Path(__file__).resolve().parent.parent
RUNNER = """\
import json, sys
from mini_docker.errors import MiniDockerError
from mini_docker.image.container import run_image
try:
    sys.exit(run_image(**json.loads(sys.argv[1])))
except MiniDockerError as err:
    print(f"mini-docker: {err}", file=sys.stderr)
    sys.exit(125)
"""


def run(store: ImageStore, runtime_root: Path, image: str, cmd: list[str] | None = None,
        **kwargs) -> subprocess.CompletedProcess:
    """run_image in a subprocess; output through files (a detached container keeps them)."""
    args = {"store_root": str(store.root), "image_ref": image, "cmd": cmd,
            "runtime_root": str(runtime_root), **kwargs}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(args)], cwd=ROOT,
                              stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=60)
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(done.args, done.returncode, out.read().decode(),
                                           err.read().decode())


@pytest.fixture
def nothing_left(store, tmp_path):
    """After the test: no overlay mount and no container directory left."""
    yield
    assert overlay_mounts_under(tmp_path) == []
    assert Snapshotter(store).in_use() == {}


# --- the image config reaches the process ---------------------------------------------------


def test_env_cmd_entrypoint_workdir_and_user_come_from_the_image(store, runtime_root,
                                                                 nothing_left):
    done = run(store, runtime_root, "layered")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "hello from the image\n/srv/app\n33\n"


def test_the_callers_options_override_the_images(store, runtime_root, nothing_left):
    done = run(store, runtime_root, "layered", ["echo $GREETING; pwd; id -u; id -g; id -G"],
               env=["GREETING=bye"], workdir="/tmp", user="nobody")
    assert done.stdout == "bye\n/tmp\n65534\n65534\n65534\n"
    done = run(store, runtime_root, "layered", ["id -u; id -g"], user="1000:staff")
    assert done.stdout == "1000\n50\n"
    done = run(store, runtime_root, "layered", ["a", "b"], entrypoint=["echo"], user="0")
    assert done.stdout == "a b\n"  # a new entrypoint drops the image's Cmd
    done = run(store, runtime_root, "busybox", ["sh", "-c", "id; hostname; echo $HOSTNAME"],
               container_id="0123456789abcdef0123")
    assert done.stdout == ("uid=0(root) gid=0(root) groups=10(wheel)\n"
                           "0123456789ab\n0123456789ab\n")


def test_exit_codes_pass_through(store, runtime_root, nothing_left):
    assert run(store, runtime_root, "busybox", ["sh", "-c", "exit 7"]).returncode == 7
    assert run(store, runtime_root, "busybox", ["false"]).returncode == 1


def test_config_json_is_runc_spec_adjusted_by_the_image(store, busybox_rootfs):
    config = store.config(store.manifest(store.resolve("layered")))
    spec = container_spec(config, busybox_rootfs, container_id="f" * 64, env=["EXTRA=1"])
    process = spec["process"]
    assert process["args"] == ["sh", "-c", "echo $GREETING; pwd; id -u"]
    assert process["env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                              "HOSTNAME=ffffffffffff", "GREETING=hello from the image", "EXTRA=1"]
    assert (process["cwd"], process["user"], process["terminal"]) == (
        "/srv/app", {"uid": 33, "gid": 33}, False)
    assert process["capabilities"]["bounding"] == list(DOCKER_DEFAULT_CAPS)
    assert process["capabilities"]["effective"] == []  # not root: bounding set only
    root = container_spec(config, busybox_rootfs, container_id="c", user="root")["process"]
    assert root["capabilities"]["effective"] == list(DOCKER_DEFAULT_CAPS)
    assert root["user"] == {"uid": 0, "gid": 0, "additionalGids": [10]}
    assert spec["root"] == {"path": "merged", "readonly": False}
    assert spec["hostname"] == "ffffffffffff"
    assert spec["annotations"] == {"org.example.book": "mini-docker",
                                   "org.opencontainers.image.stopSignal": "SIGQUIT"}


@pytest.mark.parametrize("user, message", [
    ("nobody-here", "unable to find user nobody-here: no matching entries in passwd file"),
    ("root:nogroup-here", "unable to find group nogroup-here: no matching entries in group file"),
    ("4294967296", "uids and gids must be in range 0-2147483647"),
])
def test_an_unknown_user_is_refused_before_anything_runs(store, runtime_root, nothing_left,
                                                        user, message):
    with pytest.raises(InvalidArgument, match=message):
        run_image(store.root, "busybox", ["true"], user=user, runtime_root=runtime_root)


# --- layers inside the container -------------------------------------------------------------


def test_the_second_layer_adds_deletes_and_hides(store, runtime_root, nothing_left):
    done = run(store, runtime_root, "layered", ["cat /etc/added.txt; ls /etc/nsswitch.conf; "
                                                "ls /usr/bin; ls /bin/busybox"])
    assert done.stdout == "added in layer 2\nfresh\n/bin/busybox\n"
    assert "nsswitch.conf: No such file or directory" in done.stderr


def test_writes_are_copied_up_and_the_diff_shows_them(store, runtime_root, nothing_left):
    snapshots = Snapshotter(store)
    done = run(store, runtime_root, "busybox",
               ["sh", "-c", "echo 10.1.1.1 mine >> /etc/hosts; echo new > /new.txt; "
                            "rm /etc/shadow; cat /etc/hosts"], container_id="keeper", keep=True)
    assert (done.returncode, done.stdout) == (0, HOSTS + "10.1.1.1 mine\n")
    assert overlay_mounts_under(snapshots.root) == []  # kept, but unmounted
    upper = snapshots.container_dir("keeper") / "upper"
    assert (upper / "etc/hosts").read_text() == HOSTS + "10.1.1.1 mine\n"
    [base] = snapshots.prepare("busybox")
    assert (base / "etc/hosts").read_text() == HOSTS and (base / "etc/shadow").is_file()
    assert snapshots.diff("keeper") == [("C", "/etc"), ("C", "/etc/hosts"),
                                        ("D", "/etc/shadow"), ("A", "/new.txt")]
    remove_container(store.root, "keeper", runtime_root=runtime_root)
    assert not snapshots.container_dir("keeper").exists()
    with pytest.raises(NotFound, match="No such container: keeper"):
        remove_container(store.root, "keeper", runtime_root=runtime_root)


def test_a_detached_container_keeps_its_rootfs_until_removed(store, runtime_root, tmp_path,
                                                             nothing_left):
    done = run(store, runtime_root, "busybox", ["sleep", "60"], container_id="bg", detach=True)
    assert done.returncode == 0, done.stderr
    assert len(overlay_mounts_under(tmp_path)) == 1
    remove_container(store.root, "bg", runtime_root=runtime_root, force=True)


# --- what must fail cleanly -------------------------------------------------------------------


def test_an_unknown_image_is_not_found_in_dockers_words(store, runtime_root, nothing_left):
    with pytest.raises(NotFound, match=r"^Unable to find image 'nope:latest' locally$"):
        run_image(store.root, "nope", runtime_root=runtime_root)
    done = run(store, runtime_root, "nope")
    assert (done.returncode, done.stdout) == (125, "")
    assert done.stderr == "mini-docker: Unable to find image 'nope:latest' locally\n"


def test_a_hostile_layer_is_one_line_and_leaves_no_mount_or_snapshot(store, runtime_root,
                                                                      tmp_path, nothing_left):
    add_image(store, [layer_tar(File("../../../escaped", b"gotcha"))],
              base=store.image("busybox"), tag="hostile")
    with pytest.raises(UnsafeLayer) as raised:
        run_image(store.root, "hostile", ["true"], runtime_root=runtime_root)
    assert "\n" not in str(raised.value) and "escapes the layer root" in str(raised.value)
    snapshots = Snapshotter(store)
    assert snapshots.snapshots() == [snapshots.layers_of("busybox")[0].chain_id]
    assert [n for n in os.listdir(snapshots.snapshot_dir) if n.startswith(".")] == [".lock"]
    done = run(store, runtime_root, "hostile", ["true"])
    assert done.returncode == 125 and len(done.stderr.splitlines()) == 1
    assert not (tmp_path.parent / "escaped").exists()
