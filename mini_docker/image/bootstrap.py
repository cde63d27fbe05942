"""The base image, made offline: a busybox root filesystem.

Every image descends from a root filesystem that someone made without Docker:
`FROM scratch` plus one tarball. The official busybox image is the smallest
useful one, and its recipe (docker-library/busybox, Dockerfile.builder) is
short: a static busybox binary, a hard link to it in /bin for every applet
it was built with, the /etc/passwd, /etc/group and /etc/shadow of buildroot's
skeleton, and a few empty directories with the right modes.

We follow that recipe with the host's own busybox instead of one compiled for
the purpose. It must be statically linked. A container has no /lib, so a
dynamically linked binary dies before its first instruction, because the
loader it asks for is not there ("no such file or directory", for a file that
is plainly there). `elf_interpreter` reads the answer from the ELF program
headers, so we refuse such a binary up front.

Two properties matter to the layers above this one:

- All or nothing. The tree is built in a hidden sibling directory and renamed
  into place, so a crash never leaves a half-made rootfs where a whole one is
  expected.
- Reproducible. Every entry has a stated mode, owner root:root and mtime
  EPOCH, and `rootfs_tar` writes entries in sorted order with numeric owners
  only. The same busybox binary therefore always gives the same tar, byte for
  byte, and the image store, which names a layer by the sha256 of its tar,
  gives it the same digest on every machine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from mini_docker.errors import Conflict, InvalidArgument, NotFound
from mini_docker.hostcheck import default_path, elf_interpreter, which

EPOCH = 0
"""The mtime of every entry: 1970-01-01, so that a file's time never changes a digest."""

# Directories and their modes, as the official image has them, plus the mount
# points /proc and /sys. The official image gives /home, /usr/sbin,
# /var/spool/mail and /var/www to the users whose home they are; here
# everything belongs to root, so the tree is the same whoever builds it.
DIRECTORIES: dict[str, int] = {
    "bin": 0o755, "dev": 0o755, "etc": 0o755, "home": 0o755, "proc": 0o755,
    "root": 0o700, "sys": 0o755, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755,
    "usr/sbin": 0o755, "var": 0o755, "var/spool": 0o755, "var/spool/mail": 0o755,
    "var/www": 0o755,
}

# Users and groups from buildroot's skeleton, as the official image ships them.
PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""

GROUP = """\
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
users:x:100:
staff:x:50:
nogroup:x:65534:
"""

# Every password locked ("*"): buildroot's skeleton leaves root's empty, which
# the official image fixed after CVE-2019-5021.
SHADOW = "".join(f"{line.split(':')[0]}:*:::::::\n" for line in PASSWD.splitlines())

HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"

NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"

# path -> (mode, contents). /etc/resolv.conf is empty: the runtime binds the
# container's own over it, and over /etc/hosts, when it starts one.
FILES: dict[str, tuple[int, str]] = {
    "etc/group": (0o644, GROUP),
    "etc/hosts": (0o644, HOSTS),
    "etc/nsswitch.conf": (0o644, NSSWITCH),
    "etc/passwd": (0o644, PASSWD),
    "etc/resolv.conf": (0o644, ""),
    "etc/shadow": (0o600, SHADOW),
}


def find_busybox(busybox: str | None = None) -> str:
    """The path of a statically linked busybox, ready to copy into a rootfs.

    busybox: the binary to use; None means the first `busybox` on PATH (or in
    the standard sbin and bin directories).

    Raises NotFound if there is none, InvalidArgument if it is not a static
    ELF executable.
    """
    fix = "install a static one (apt-get install busybox-static)"
    path = busybox or which("busybox", default_path())
    if path is None:
        raise NotFound(f"no busybox found on PATH: {fix}")
    try:
        interpreter = elf_interpreter(path)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    except ValueError as err:
        raise InvalidArgument(f"{path} cannot be busybox: {err}") from None
    except OSError as err:
        raise InvalidArgument(f"{path}: {err.strerror}") from None
    if interpreter:
        raise InvalidArgument(f"{path} is dynamically linked (it needs {interpreter}, which "
                              f"a container does not have): {fix}")
    return path


def applets(busybox: str) -> list[str]:
    """The names of the applets `busybox` was built with, sorted.

    `busybox --list-full` would give each one's conventional place
    (usr/bin/wget, sbin/ifconfig); the official image ignores that and puts
    them all in /bin, and so do we, so the bare names are all we need.
    """
    try:
        result = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                                timeout=30)
    except OSError as err:
        raise InvalidArgument(f"cannot run {busybox}: {err.strerror}") from None
    names = sorted(set(result.stdout.split()))
    if result.returncode != 0 or "sh" not in names:
        raise InvalidArgument(f"{busybox} is not busybox: '{busybox} --list' names no sh applet")
    if any("/" in name or name in (".", "..") for name in names):
        raise InvalidArgument(f"{busybox} --list gave a name that is not a file name")
    return names


def is_busybox_rootfs(path: Path) -> bool:
    """Whether `path` holds a rootfs that `busybox_rootfs` made.

    One built here is complete or absent (it is renamed into place whole), so
    its essential entries are enough to recognise it.
    """
    path = Path(path)
    return ((path / "bin/busybox").is_file() and (path / "bin/sh").is_file()
            and (path / "etc/passwd").is_file())


def busybox_rootfs(dest: Path, busybox: str | None = None, *, replace: bool = False) -> Path:
    """Build the busybox image's root filesystem in `dest` and return `dest`.

    dest: where the rootfs goes. It must not exist, or be an empty directory;
        its parent directories are made if need be.
    busybox: the static busybox binary to copy; None means the one on PATH.
    replace: allow `dest` to be a busybox rootfs already, and swap it for the
        new one (what `--force` asks for). Anything else in `dest` is never
        replaced.

    Raises NotFound or InvalidArgument for an unusable busybox, Conflict for
    an occupied `dest`. On failure `dest` is as it was before.
    """
    dest = Path(dest)
    binary = find_busybox(busybox)
    names = applets(binary)
    _check_destination(dest, replace)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".new", dir=dest.parent))
    try:
        _populate(staging, binary, names)
        _move_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _check_destination(dest: Path, replace: bool) -> None:
    if not dest.exists() and not dest.is_symlink():
        return
    if dest.is_symlink() or not dest.is_dir():
        raise Conflict(f"{dest} exists and is not a directory")
    if not any(dest.iterdir()):
        return
    if replace and is_busybox_rootfs(dest):
        return
    if replace:
        raise Conflict(f"{dest} is not empty and is not a busybox rootfs: not replacing it")
    raise Conflict(f"{dest} is not empty")


def _populate(root: Path, busybox: str, names: list[str]) -> None:
    """Make the whole tree under `root`, then give every entry its owner, mode and time."""
    modes = {"": 0o755}
    for rel, mode in DIRECTORIES.items():  # parents come first: "usr" before "usr/bin"
        (root / rel).mkdir()
        modes[rel] = mode
    binary = root / "bin/busybox"
    shutil.copyfile(busybox, binary)  # the bytes only: not the host's owner, mode or time
    modes["bin/busybox"] = 0o755
    for name in names:
        if name != "busybox":  # Debian's busybox lists itself
            os.link(binary, root / "bin" / name)
            modes[f"bin/{name}"] = 0o755
    for rel, (mode, text) in FILES.items():
        (root / rel).write_text(text)
        modes[rel] = mode
    if "env" in names:  # scripts start with #!/usr/bin/env; the official image has it too
        os.symlink("../../bin/env", root / "usr/bin/env")
    _normalise(root, modes)


def _normalise(root: Path, modes: dict[str, int]) -> None:
    """Owner root:root, the stated mode and mtime EPOCH on every entry under `root`.

    Modes are set after the owner (a chown may clear set-id bits) and set
    explicitly (what mkdir and open leave depends on the umask). Times go
    last: adding an entry to a directory changes the directory's mtime.
    """
    for path in [root, *walk_tree(root)]:
        rel = path.relative_to(root).as_posix() if path != root else ""
        if os.geteuid() == 0:  # anyone else owns what they make, and cannot give it away
            os.chown(path, 0, 0, follow_symlinks=False)
        if not path.is_symlink():  # a symlink's own mode means nothing on Linux
            os.chmod(path, modes[rel])
        os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)


def _move_into_place(staging: Path, dest: Path) -> None:
    """Rename the finished tree to `dest`, moving aside a rootfs that is there.

    rename(2) replaces a missing or empty directory in one step. A full one
    must go first, so it is renamed aside and removed only once the new tree
    is in place.
    """
    if not dest.is_dir() or not any(dest.iterdir()):
        os.rename(staging, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    os.rename(dest, old)
    try:
        os.rename(staging, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old)


def walk_tree(root: Path) -> Iterator[Path]:
    """Every entry under `root`, each directory before its contents, siblings by name."""
    for name in sorted(os.listdir(root)):
        path = root / name
        yield path
        if path.is_dir() and not path.is_symlink():
            yield from walk_tree(path)


class _HashingWriter:
    """Passes bytes on to `out` and keeps their sha256."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.out.write(data)


def rootfs_tar(rootfs: Path, fileobj: BinaryIO) -> str:
    """Write the tree under `rootfs` to `fileobj` as a reproducible tar.

    Returns "sha256:<hex>" of the bytes written: the layer's DiffID in OCI
    terms.

    The tar records what is on disk (type, mode, numeric owner, mtime,
    contents) and nothing that is not: entries come in name order, not in the
    directory's order; owners are numbers only, since a rootfs's user names
    are defined by its own /etc/passwd, not the host's; access and change
    times are left out. Hard links stay hard links, so the busybox binary is
    stored once. Names are relative ("bin/sh"), the root itself is not an
    entry, and sockets are skipped. `fileobj` needs only a `write` method.
    """
    rootfs = Path(rootfs)
    out = _HashingWriter(fileobj)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in walk_tree(rootfs):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(rootfs).as_posix())
            if info is None:  # a socket: tar has no type for it
                continue
            info.uname = info.gname = ""
            info.mtime = int(info.mtime)
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return f"sha256:{out.sha256.hexdigest()}"
