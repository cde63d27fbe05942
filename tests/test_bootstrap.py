"""The offline base image: a busybox rootfs that really runs, made the same way every time."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mini_docker.errors import Conflict, InvalidArgument, NotFound
from mini_docker.hostcheck import default_path, elf_interpreter, which
from mini_docker.image.bootstrap import (
    EPOCH,
    applets,
    busybox_rootfs,
    find_busybox,
    is_busybox_rootfs,
    rootfs_tar,
)


CHROOT = which("chroot", default_path()) or "chroot"  # the host's, found before PATH=/bin


def in_chroot(rootfs: Path, script: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROOT, str(rootfs), "/bin/sh", "-c", script],
                          capture_output=True, text=True, timeout=30, env={"PATH": "/bin"})


def mini_docker(*args: str, root: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MINI_DOCKER_ROOT", None)
    if root is not None:
        env["MINI_DOCKER_ROOT"] = str(root)
    return subprocess.run([sys.executable, "-m", "mini_docker", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def listing(rootfs: Path) -> list[tuple]:
    """What a tree is made of: every entry's name, type and mode, owner, mtime, size, target."""
    entries = []
    for directory, dirs, files in os.walk(rootfs):
        for name in dirs + files:
            path = Path(directory, name)
            st = path.lstat()
            target = os.readlink(path) if path.is_symlink() else ""
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            entries.append((path.relative_to(rootfs).as_posix(), st.st_mode, st.st_uid,
                            st.st_gid, st.st_mtime, st.st_nlink, size, target))
    return sorted(entries)


def tar_of(rootfs: Path) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    digest = rootfs_tar(rootfs, buffer)
    return buffer.getvalue(), digest


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory) -> Path:
    return busybox_rootfs(tmp_path_factory.mktemp("bootstrap") / "busybox")


def test_the_rootfs_runs_a_shell(rootfs):
    result = in_chroot(rootfs, "echo hi; ls /bin | wc -l; id")
    assert result.returncode == 0, result.stderr
    hi, count, ident = result.stdout.splitlines()
    assert hi == "hi"
    assert int(count) == len(os.listdir(rootfs / "bin")) > 100
    assert ident.startswith("uid=0(root) gid=0(root)")


def test_every_applet_is_a_hard_link_to_busybox_in_bin(rootfs):
    busybox = (rootfs / "bin/busybox").stat()
    names = set(applets(find_busybox())) | {"busybox"}
    assert set(os.listdir(rootfs / "bin")) == names
    assert {"sh", "ls", "wget", "env"} <= names
    for name in names:
        assert (rootfs / "bin" / name).lstat().st_ino == busybox.st_ino
    assert busybox.st_nlink == len(names)
    assert in_chroot(rootfs, "ls /").stdout.split() == [
        "bin", "dev", "etc", "home", "proc", "root", "sys", "tmp", "usr", "var"]
    assert in_chroot(rootfs, "/usr/bin/env sh -c 'echo via env'").stdout == "via env\n"


def test_the_copy_is_the_hosts_busybox_byte_for_byte(rootfs):
    assert (rootfs / "bin/busybox").read_bytes() == Path(find_busybox()).read_bytes()


def test_etc_passwd_and_group_parse_and_busybox_reads_them(rootfs):
    users = {}
    for line in (rootfs / "etc/passwd").read_text().splitlines():
        name, password, uid, gid, gecos, home, shell = line.split(":")
        users[name] = (int(uid), int(gid), home, shell)
    assert users["root"] == (0, 0, "/root", "/bin/sh")
    assert users["nobody"] == (65534, 65534, "/home", "/bin/false")
    for uid, gid, home, shell in users.values():
        assert (rootfs / home.lstrip("/")).is_dir()  # every home exists, as in the official image
    groups = {line.split(":")[0]: int(line.split(":")[2])
              for line in (rootfs / "etc/group").read_text().splitlines()}
    assert groups["root"] == 0 and groups["nogroup"] == 65534 and groups["www-data"] == 33
    result = in_chroot(rootfs, "id -u nobody; id -gn nobody; id -un")
    assert result.stdout.split() == ["65534", "nogroup", "root"]
    assert all(line.split(":")[1] == "*" for line in
               (rootfs / "etc/shadow").read_text().splitlines())  # no empty password
    assert "127.0.0.1\tlocalhost" in (rootfs / "etc/hosts").read_text()
    assert (rootfs / "etc/resolv.conf").read_text() == ""


def test_modes_owners_and_times_are_fixed(rootfs):
    assert stat.S_IMODE((rootfs / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((rootfs / "root").stat().st_mode) == 0o700
    assert stat.S_IMODE((rootfs / "etc/shadow").stat().st_mode) == 0o600
    assert stat.S_IMODE((rootfs / "bin/busybox").stat().st_mode) == 0o755
    for name, mode, uid, gid, mtime, *_ in listing(rootfs):
        assert (uid, gid, mtime) == (0, 0, EPOCH), name


def test_nobody_may_write_tmp_but_not_root(tmp_path):
    rootfs = busybox_rootfs(tmp_path / "rootfs")  # its own: writing changes /tmp's mtime
    result = subprocess.run([CHROOT, "--userspec=65534:65534", str(rootfs), "/bin/sh", "-c",
                             "id -un; touch /tmp/mine && echo tmp ok; touch /root/x || echo no"],
                            capture_output=True, text=True, timeout=30, env={"PATH": "/bin"})
    assert result.stdout.split() == ["nobody", "tmp", "ok", "no"], result.stderr
    assert (rootfs / "tmp/mine").stat().st_uid == 65534


def test_two_builds_are_identical_and_so_are_their_tars(rootfs, tmp_path):
    again = busybox_rootfs(tmp_path / "again")
    assert listing(again) == listing(rootfs)
    first, first_digest = tar_of(rootfs)
    second, second_digest = tar_of(again)
    assert first == second and first_digest == second_digest
    assert first_digest == "sha256:" + hashlib.sha256(first).hexdigest()


def test_the_tar_stores_busybox_once_with_numeric_owners(rootfs):
    data, _ = tar_of(rootfs)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == "bin" and "bin/sh" in names and "etc/passwd" in names
    regular = [m for m in members if m.isreg() and m.name.startswith("bin/")]
    assert len(regular) == 1 and regular[0].size == (rootfs / "bin/busybox").stat().st_size
    links = {m.name: m.linkname for m in members if m.islnk()}
    assert links["bin/sh"] == links["bin/wget"] == regular[0].name
    assert all(m.uid == m.gid == 0 and m.uname == m.gname == "" and m.mtime == EPOCH
               for m in members)
    by_name = {m.name: m for m in members}
    assert by_name["tmp"].mode == 0o1777 and by_name["usr/bin/env"].linkname == "../../bin/env"


def test_gnu_tar_unpacks_it_to_the_same_tree(rootfs, tmp_path):
    # Another implementation reads it back: GNU tar, which also restores symlink
    # mtimes (Python's tarfile does not).
    if which("tar", default_path()) is None:
        pytest.skip("no tar on this host")
    data, _ = tar_of(rootfs)
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-x", "-p", "--numeric-owner", "-C", str(unpacked)],
                   input=data, check=True, timeout=60)
    assert listing(unpacked) == listing(rootfs)


def test_a_dynamically_linked_busybox_is_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="dynamically linked.*ld-linux"):
        busybox_rootfs(tmp_path / "rootfs", "/bin/ls")
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_an_executable_is_refused(tmp_path):
    script = tmp_path / "busybox"
    script.write_text("#!/bin/sh\necho sh\n")
    script.chmod(0o755)
    with pytest.raises(InvalidArgument, match="not an ELF"):
        busybox_rootfs(tmp_path / "rootfs", str(script))
    with pytest.raises(NotFound):
        busybox_rootfs(tmp_path / "rootfs", str(tmp_path / "missing"))
    assert list(tmp_path.iterdir()) == [script]


def test_a_static_binary_that_is_not_busybox_is_refused(tmp_path):
    # /sbin/ldconfig is static on Debian: a real static ELF that has no applets
    ldconfig = "/sbin/ldconfig"
    if not os.path.exists(ldconfig) or elf_interpreter(ldconfig) is not None:
        pytest.skip("no static non-busybox binary on this host")
    with pytest.raises(InvalidArgument, match="not busybox"):
        busybox_rootfs(tmp_path / "rootfs", ldconfig)
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_destination_is_refused_and_left_alone(tmp_path):
    dest = tmp_path / "rootfs"
    dest.mkdir()
    (dest / "precious").write_text("keep me")
    with pytest.raises(Conflict, match="not empty"):
        busybox_rootfs(dest)
    with pytest.raises(Conflict, match="not a busybox rootfs"):
        busybox_rootfs(dest, replace=True)
    assert os.listdir(dest) == ["precious"] and os.listdir(tmp_path) == ["rootfs"]


def test_an_empty_destination_is_filled_and_no_staging_is_left(tmp_path):
    dest = tmp_path / "deep" / "rootfs"
    dest.parent.mkdir()
    dest.mkdir()
    assert busybox_rootfs(dest) == dest and is_busybox_rootfs(dest)
    assert os.listdir(dest.parent) == ["rootfs"]


def test_replace_swaps_a_rootfs_for_a_new_one(tmp_path):
    dest = busybox_rootfs(tmp_path / "rootfs")
    (dest / "tmp/left-behind").write_text("from a container")
    busybox_rootfs(dest, replace=True)
    assert not (dest / "tmp/left-behind").exists() and is_busybox_rootfs(dest)
    assert os.listdir(tmp_path) == ["rootfs"]


def test_cli_bootstrap_twice_says_it_is_there(tmp_path):
    dest = tmp_path / "rootfs"
    first = mini_docker("image", "bootstrap", "busybox", "--rootfs", str(dest))
    assert first.returncode == 0, first.stderr
    assert str(dest) in first.stdout and is_busybox_rootfs(dest)
    second = mini_docker("image", "bootstrap", "busybox:latest", "--rootfs", str(dest))
    assert second.returncode == 0, second.stderr
    assert "already exists" in second.stdout and str(dest) in second.stdout
    forced = mini_docker("image", "bootstrap", "busybox", "--rootfs", str(dest), "--force")
    assert forced.returncode == 0 and "made" in forced.stdout, forced.stderr
    assert os.listdir(tmp_path) == ["rootfs"]


def test_cli_honours_mini_docker_root(tmp_path):
    result = mini_docker("image", "bootstrap", "busybox", root=tmp_path)
    assert result.returncode == 0, result.stderr
    dest = tmp_path / "rootfs" / "busybox"
    assert is_busybox_rootfs(dest) and str(dest) in result.stdout


@pytest.mark.parametrize("args, message", [
    (["alpine"], "mini-docker: cannot bootstrap 'alpine': only busybox"),
    (["busybox:1.36"], "mini-docker: cannot bootstrap 'busybox:1.36'"),
    (["busybox", "--busybox", "/bin/ls"], "mini-docker: /bin/ls is dynamically linked"),
])
def test_cli_refusals_are_one_line_and_exit_1(tmp_path, args, message):
    result = mini_docker("image", "bootstrap", *args, root=tmp_path)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(message)
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


def test_cli_refuses_a_non_empty_rootfs_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = mini_docker("image", "bootstrap", "busybox", "--rootfs", str(tmp_path), "--force")
    assert result.returncode == 1 and "not a busybox rootfs" in result.stderr
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_cli_image_without_a_verb_is_a_usage_error():
    result = mini_docker("image")
    assert result.returncode == 2 and "usage: mini-docker image" in result.stderr


def test_bootstrap_puts_a_real_image_in_the_store(tmp_path):
    import subprocess
    import sys

    from mini_docker.image.store import ImageStore

    env = {**os.environ, "MINI_DOCKER_ROOT": str(tmp_path / "state")}
    ids = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "mini_docker", "image", "bootstrap", "busybox"],
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        ids.append(done.stdout.split("busybox:latest is image ")[1].split()[0])
    assert ids[0] == ids[1]  # the same busybox gives the same image, run after run
    store = ImageStore(tmp_path / "state" / "image")
    image = store.image("busybox")
    assert image.id == ids[0]
    config = store.config(store.manifest(image.digest))
    assert config.config["Cmd"] == ["sh"] and len(config.diff_ids) == 1
