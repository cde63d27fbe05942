"""Layer unpacking: faithful for real layers, confined for hostile ones.

Every hostile archive is built here, in memory, with tarfile. Each is
unpacked into tmp_path/dest next to tmp_path/outside, which holds a sentinel
file; after each attempt, nothing under tmp_path but dest may have changed.
The breakout cases port the intent of containerd's archive TestBreakouts, with
the targets aimed at the sandbox's `outside` rather than the host's /etc.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import random
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from mini_docker.errors import InvalidArgument, MiniDockerError, NotFound
from mini_docker.image.bootstrap import rootfs_tar
from mini_docker.image.unpack import LayerStats, UnsafeLayer, unpack_layer

CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service=ep
MTIME = 1_700_000_000


# -- building archives --------------------------------------------------------------------------


def _info(name: str, kind: bytes, *, mode: int, uid: int = 0, gid: int = 0, mtime=MTIME,
          xattrs: dict[str, bytes] | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, mtime
    info.uname = info.gname = ""
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                            for k, v in xattrs.items()}
    return info


def File(name, data=b"", mode=0o644, **kw):
    info = _info(name, tarfile.REGTYPE, mode=mode, **kw)
    info.size = len(data)
    return info, data


def Dir(name, mode=0o755, **kw):
    return _info(name, tarfile.DIRTYPE, mode=mode, **kw), None


def Symlink(name, target, **kw):
    info = _info(name, tarfile.SYMTYPE, mode=0o777, **kw)
    info.linkname = target
    return info, None


def Link(name, target, **kw):
    info = _info(name, tarfile.LNKTYPE, mode=0o644, **kw)
    info.linkname = target
    return info, None


def Device(name, kind, major=0, minor=0, mode=0o666, **kw):
    info = _info(name, kind, mode=mode, **kw)
    info.devmajor, info.devminor = major, minor
    return info, None


def Whiteout(path):
    parent, _, name = path.rpartition("/")
    return File(f"{parent}/.wh.{name}" if parent else f".wh.{name}")


def Opaque(directory):
    return File(f"{directory}/.wh..wh..opq")


def tar_bytes(*entries, format=tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def layer(*entries, **kw) -> io.BytesIO:
    return io.BytesIO(tar_bytes(*entries, **kw))


class Pipe(io.RawIOBase):
    """A stream that cannot seek, like a registry download."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._data.read(min(len(buffer), 4096))
        buffer[:len(data)] = data
        return len(data)


# -- looking at trees -----------------------------------------------------------------------------


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        return {k: os.getxattr(path, k, follow_symlinks=False)
                for k in sorted(os.listxattr(path, follow_symlinks=False))}
    except OSError:
        return {}


def tree(root: Path, *, times: bool = True, symlink_times: bool = True) -> dict:
    """Every entry under `root`: type, mode, owner, size, device, target, time, xattrs, links."""
    entries, inodes = {}, {}
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            entry = {
                "mode": oct(st.st_mode), "owner": (st.st_uid, st.st_gid),
                "size": st.st_size if kind == stat.S_IFREG else None,
                "rdev": st.st_rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else None,
                "target": os.readlink(path) if kind == stat.S_IFLNK else None,
                "xattrs": _xattrs(path),
            }
            if kind == stat.S_IFREG:
                entry["sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            if times and (symlink_times or kind != stat.S_IFLNK):
                entry["mtime"] = st.st_mtime_ns
            if kind != stat.S_IFDIR and st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(rel)
            entries[rel] = entry
    links = sorted(sorted(group) for group in inodes.values())
    return {"entries": entries, "hardlinks": links}


def host_side(tmp_path: Path, *skip: Path) -> dict:
    """All of tmp_path but the directories a layer may write: what must never change."""
    seen = {}
    for directory, dirs, files in os.walk(tmp_path):
        dirs[:] = [d for d in dirs if Path(directory, d) not in skip]
        for name in [".", *dirs, *files]:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            content = None
            if stat.S_ISREG(st.st_mode):
                content = Path(path).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            seen[os.path.normpath(path)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                            st.st_mtime_ns, st.st_nlink, content, _xattrs(path))
    return seen


@dataclass
class Sandbox:
    root: Path
    dest: Path
    outside: Path
    scratch: Path  # for a test's own files (archives, other trees): not checked

    @property
    def sentinel(self) -> Path:
        return self.outside / "sentinel"

    def inside(self, host_path: Path | str) -> Path:
        """Where an absolute host path lands when a layer's symlink names it."""
        return self.dest / str(host_path).lstrip("/")


@pytest.fixture
def sandbox(tmp_path):
    """dest to unpack into, outside with a sentinel; on exit, outside must be as it was."""
    dest, outside, scratch = tmp_path / "dest", tmp_path / "outside", tmp_path / "scratch"
    dest.mkdir()
    outside.mkdir()
    scratch.mkdir()
    (outside / "sentinel").write_text("do not touch")
    (outside / "sentinel").chmod(0o400)
    (outside / "subdir").mkdir()
    (outside / "subdir" / "file").write_text("nor this")
    before = host_side(tmp_path, dest, scratch)
    yield Sandbox(tmp_path, dest, outside, scratch)
    assert host_side(tmp_path, dest, scratch) == before, "something outside dest changed"


# -- hostile layers: refused --------------------------------------------------------------------

REFUSED = {
    "dotdot": ([File("../outside/pwned", b"x")], "path escapes the layer root"),
    "dotdot-deep": ([Dir("etc"), File("etc/../../outside/pwned", b"x")], "path escapes"),
    "dotdot-absolute": ([File("/../outside/pwned", b"x")], "path escapes"),
    "dotdot-dir": ([Dir("../outside/newdir")], "path escapes"),
    "dotdot-symlink-name": ([Symlink("../outside/link", "/")], "path escapes"),
    "symlink-named-dotdot": ([Dir("etc"), Symlink("..", "/etc/")], "path escapes"),
    "symlink-replacing-root": ([Symlink(".", "/etc/")], "would replace the layer root"),
    "symlink-empty-name": ([Symlink("", "/etc/")], "would replace the layer root"),
    "file-replacing-root": ([File("./", b"x")], "would replace the layer root"),
    "hardlink-dotdot": ([Link("localpasswd", "../outside/sentinel")], "hard link target escapes"),
    "hardlink-dotdot-long": ([Dir("etc"), File("etc/passwd", b"inside"),
                              Link("localpasswd", "../../../../../etc/passwd")],
                             "hard link target escapes"),
    "hardlink-to-root": ([Link("root", "/")], "hard link to the layer root"),
    "whiteout-root": ([Whiteout(".")], "whiteout of the directory itself"),
    "whiteout-root-parent": ([File(".wh...")], "whiteout of its parent"),
    "whiteout-empty": ([File(".wh.")], "whiteout of the directory itself"),
    "whiteout-parent": ([Dir("etc"), File("etc/.wh...")], "whiteout of its parent"),
    "whiteout-current": ([Dir("etc"), File("etc/.wh..")], "whiteout of the directory itself"),
    "whiteout-dotdot-path": ([File("../.wh.outside")], "path escapes"),
    "symlink-loop": ([Symlink("a", "b"), Symlink("b", "a"), File("a/file", b"x")],
                     "too many levels of symbolic links"),
}


@pytest.mark.parametrize("whiteouts", ["overlay", "delete"])
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_hostile_entries_are_refused_with_the_entry_named(sandbox, case, whiteouts):
    entries, reason = REFUSED[case]
    with pytest.raises(UnsafeLayer) as caught:
        unpack_layer(layer(*entries), sandbox.dest, whiteouts=whiteouts)
    message = str(caught.value)
    assert reason in message and "\n" not in message
    assert message.startswith("layer entry ")
    assert isinstance(caught.value, InvalidArgument)


def test_the_error_reads_like_the_issue_says(sandbox):
    with pytest.raises(UnsafeLayer, match=r"^layer entry '\.\./\.\./etc/passwd': "
                                          r"path escapes the layer root$"):
        unpack_layer(layer(File("../../etc/passwd", b"root::0:0::/:/bin/sh\n")), sandbox.dest)


# -- hostile layers: confined (symlinks are resolved with dest as "/") -------------------------


def test_absolute_symlink_parent_lands_inside(sandbox):
    """containerd SymlinkAbsolute: localetc -> /etc, then localetc/unbroken.

    The symlinks in these tests name the sandbox's `outside`, an absolute host
    path that exists, rather than the host's /etc: an unpacker that followed
    them would write into the sandbox, where the fixture sees it, and not
    into the machine running the tests.
    """
    out = str(sandbox.outside)
    unpack_layer(layer(Symlink("localetc", out), File("localetc/sentinel", b"pwned"),
                       File("localetc/subdir/file", b"pwned")), sandbox.dest)
    assert sandbox.inside(out).joinpath("sentinel").read_bytes() == b"pwned"
    assert sandbox.inside(out).joinpath("subdir/file").read_bytes() == b"pwned"
    assert os.readlink(sandbox.dest / "localetc") == out


def test_relative_symlink_parents_climb_no_higher_than_the_root(sandbox):
    """containerd SymlinkUpAndOut, HardlinkRelativeLong, HardlinkRelativeUpAndOut.

    Each target climbs to the host's "/" if followed by the kernel, and comes
    back down to the sandbox's outside.
    """
    out = str(sandbox.outside).lstrip("/")
    targets = {"up1": "../outside", "many": "../" * 30 + out, "abs-up": f"/dummy/../../{out}",
               "up-and-out": f"up/../../{out}", "dots": "./../outside/."}
    entries = [Dir("dummy"), Dir("up")]
    for name, target in targets.items():
        entries += [Symlink(name, target), File(f"{name}/{name}", b"pwned")]
    unpack_layer(layer(*entries), sandbox.dest)
    assert (sandbox.dest / "outside/up1").read_bytes() == b"pwned"
    assert (sandbox.dest / "outside/dots").read_bytes() == b"pwned"
    for name in ("many", "abs-up", "up-and-out"):
        assert (sandbox.dest / out / name).read_bytes() == b"pwned"


def test_chained_symlinks_resolve_inside(sandbox):
    """containerd SymlinkMultipleAbsolute and SymlinkMultipleRelative."""
    out = str(sandbox.outside)
    unpack_layer(layer(Dir("dummy"), Symlink("dummy/etc", out),
                       Symlink("localetc", "/dummy/etc"), Symlink("relative", "./dummy/etc"),
                       File("localetc/a", b"a"), File("relative/b", b"b"),
                       File("dummy/etc/c", b"c")), sandbox.dest)
    landed = sandbox.inside(out)
    assert sorted(p.name for p in landed.iterdir()) == ["a", "b", "c"]


def test_a_file_entry_replaces_a_symlink_rather_than_writing_through_it(sandbox):
    """containerd SymlinkEmptyFile: a later regular file never truncates the link's target."""
    unpack_layer(layer(Symlink("sentinel", str(sandbox.sentinel)),
                       Symlink("rel", "../outside/sentinel"),
                       File("sentinel", b""), File("rel", b"pwned", mode=0o666)), sandbox.dest)
    assert (sandbox.dest / "sentinel").read_bytes() == b""
    assert not (sandbox.dest / "rel").is_symlink()


def test_a_symlink_left_by_a_lower_layer_is_resolved_inside_too(sandbox):
    os.symlink(str(sandbox.outside), sandbox.dest / "lib")
    os.symlink("../outside", sandbox.dest / "lib2")
    unpack_layer(layer(File("lib/sentinel", b"pwned"), Dir("lib2/subdir", mode=0o700),
                       File("lib2/subdir/file", b"pwned")), sandbox.dest, whiteouts="delete")
    assert sandbox.inside(sandbox.outside).joinpath("sentinel").read_bytes() == b"pwned"
    assert (sandbox.dest / "outside/subdir/file").read_bytes() == b"pwned"


@pytest.mark.parametrize("link", ["../../etc", "../downandout/../../etc", "/etc"])
def test_hardlinks_through_symlinks_resolve_inside(sandbox, link):
    """containerd HardlinkRelative, HardlinkDownAndOut, HardlinkAbsolute."""
    unpack_layer(layer(Dir("etc", mode=0o770), File("etc/passwd", b"inside"), Dir("breakouts"),
                       Dir("downandout"), Symlink("breakouts/d1", link),
                       Link("breakouts/mypasswd", "/breakouts/d1/passwd"),
                       Link("localpasswd", "/etc/passwd")), sandbox.dest)
    passwd = (sandbox.dest / "etc/passwd").stat()
    assert (sandbox.dest / "breakouts/mypasswd").stat().st_ino == passwd.st_ino
    assert (sandbox.dest / "localpasswd").stat().st_ino == passwd.st_ino


def test_a_hardlink_to_an_outside_file_through_a_symlink_is_refused(sandbox):
    with pytest.raises(InvalidArgument, match="'localetc/sentinel' is not in the layer"):
        unpack_layer(layer(Symlink("localetc", str(sandbox.outside)),
                           Link("stolen", "localetc/sentinel")), sandbox.dest)
    assert not (sandbox.dest / "stolen").exists()
    assert sandbox.sentinel.stat().st_nlink == 1


def test_a_hardlink_to_a_symlink_links_the_symlink_itself(sandbox):
    """containerd HardlinkSymlinkRelative / Absolute / BeforeCreateTarget."""
    unpack_layer(layer(Dir("etc"), Symlink("passwdlink", "../../../../../etc/passwd"),
                       Symlink("abslink", "/etc/passwd"), Link("localpasswd", "/passwdlink"),
                       Link("localabs", "abslink"), File("etc/passwd", b"after")), sandbox.dest)
    for link, original in [("localpasswd", "passwdlink"), ("localabs", "abslink")]:
        assert os.readlink(sandbox.dest / link) == os.readlink(sandbox.dest / original)
        assert os.lstat(sandbox.dest / link).st_ino == os.lstat(sandbox.dest / original).st_ino


def test_a_hardlink_entry_never_changes_the_mode_of_what_it_names(sandbox):
    """containerd HardlinkSymlinkChmod: link to a symlink pointing out, mode on the link entry."""
    symlink = Symlink(str(sandbox.outside / "also-exists"), str(sandbox.sentinel))
    sketchy = Link("sketchylink", str(sandbox.outside / "also-exists"))
    sketchy[0].mode, sketchy[0].uid = 0o777, 1234
    unpack_layer(layer(symlink, sketchy), sandbox.dest)
    assert stat.S_IMODE(sandbox.sentinel.stat().st_mode) == 0o400
    assert os.readlink(sandbox.dest / "sketchylink") == str(sandbox.sentinel)


def test_a_symlink_replaces_a_lower_directory_then_is_followed_inside(sandbox):
    """containerd SymlinkOverrideDirectory and ...Relative."""
    (sandbox.dest / "etc").mkdir()
    (sandbox.dest / "etc/passwd").write_text("inside")
    (sandbox.dest / "localetc").mkdir()
    (sandbox.dest / "localetc/old").write_text("old")
    unpack_layer(layer(Symlink("localetc", "../../etc"),
                       Link("/localetc/localpasswd", "/etc/passwd")), sandbox.dest,
                 whiteouts="delete")
    assert os.readlink(sandbox.dest / "localetc") == "../../etc"
    assert (sandbox.dest / "etc/localpasswd").samefile(sandbox.dest / "etc/passwd")


def test_a_directory_replaces_a_lower_symlink(sandbox):
    """containerd DirectoryOverrideSymlink and ...AndHardlink."""
    (sandbox.dest / "etc").mkdir()
    (sandbox.dest / "etc/passwd").write_text("inside")
    os.symlink(str(sandbox.outside), sandbox.dest / "localetc")
    unpack_layer(layer(Dir("localetc"), File("localetc/sentinel", b"different"),
                       Link("localetc/localpasswd", "etc/passwd")), sandbox.dest,
                 whiteouts="delete")
    assert not (sandbox.dest / "localetc").is_symlink()
    assert (sandbox.dest / "localetc/sentinel").read_bytes() == b"different"
    assert (sandbox.dest / "localetc/localpasswd").samefile(sandbox.dest / "etc/passwd")


@pytest.mark.parametrize("whiteouts", ["overlay", "delete"])
def test_whiteouts_and_opaques_through_symlinks_stay_inside(sandbox, whiteouts):
    """containerd WhiteoutSymlinkPath and WhiteoutDeadSymlinkParent, aimed at outside."""
    os.symlink(str(sandbox.outside), sandbox.dest / "abs")
    os.symlink("../outside", sandbox.dest / "rel")
    os.symlink(str(sandbox.outside / "dne"), sandbox.dest / "dead")
    unpack_layer(layer(Whiteout("abs/sentinel"), Whiteout("rel/sentinel"), Opaque("abs"),
                       Opaque("rel/subdir"), Whiteout("dead/etc")), sandbox.dest,
                 whiteouts=whiteouts)
    if whiteouts == "delete":  # nothing of that exists inside dest: nothing is created either
        assert sorted(os.listdir(sandbox.dest)) == ["abs", "dead", "rel"]


def test_whiteout_through_a_symlink_removes_the_copy_inside(sandbox):
    inside = sandbox.inside(sandbox.outside)
    (inside / "subdir").mkdir(parents=True)
    (inside / "sentinel").write_text("inside")
    (inside / "subdir/file").write_text("inside")
    os.symlink(str(sandbox.outside), sandbox.dest / "abs")
    unpack_layer(layer(Whiteout("abs/sentinel"), Opaque("abs/subdir")), sandbox.dest,
                 whiteouts="delete")
    assert sorted(os.listdir(inside)) == ["subdir"]
    assert os.listdir(inside / "subdir") == []


def test_whiteout_of_a_symlink_removes_the_link_only(sandbox):
    """containerd WhiteoutSymlink and WhiteoutRelativePath."""
    (sandbox.dest / "etc").mkdir()
    (sandbox.dest / "etc/passwd").write_text("all users")
    os.symlink("etc", sandbox.dest / "localetc")
    os.symlink(str(sandbox.outside), sandbox.dest / "out")
    unpack_layer(layer(Whiteout("localetc"), Whiteout("out"), File("dne/../.wh.nothing")),
                 sandbox.dest, whiteouts="delete")
    assert sorted(os.listdir(sandbox.dest)) == ["etc"]
    assert sorted(os.listdir(sandbox.dest / "etc")) == ["passwd"]


def test_a_whiteout_prefix_on_a_directory_is_just_a_name(sandbox):
    """containerd WhiteoutDirectoryName: only the last component can be a whiteout."""
    unpack_layer(layer(File(".wh.etc/somefile", b"non-empty")), sandbox.dest, whiteouts="delete")
    assert (sandbox.dest / ".wh.etc/somefile").read_bytes() == b"non-empty"


def test_a_file_that_is_not_a_directory_cannot_be_a_parent(sandbox):
    with pytest.raises(InvalidArgument, match="'etc' is not a directory"):
        unpack_layer(layer(File("etc", b"x"), File("etc/passwd", b"y")), sandbox.dest)


def test_overlay_xattrs_from_the_layer_are_not_applied(sandbox):
    stats = unpack_layer(layer(Dir("d", xattrs={"trusted.overlay.redirect": b"/etc",
                                                "trusted.overlay.opaque": b"y"})), sandbox.dest)
    assert stats.xattrs_skipped == 2
    assert _xattrs(str(sandbox.dest / "d")) == {}


def test_a_failed_layer_leaves_what_came_before_and_nothing_after(sandbox):
    with pytest.raises(UnsafeLayer):
        unpack_layer(layer(File("first", b"1"), File("../escape", b"2"), File("third", b"3")),
                     sandbox.dest)
    assert sorted(os.listdir(sandbox.dest)) == ["first"]


# -- real layers: faithful ------------------------------------------------------------------------


def rich_entries(sandbox_hint: str = "") -> list:
    """A layer with every kind of entry a real image has."""
    long_dir = "usr/share/" + "/".join(["a-rather-long-directory-name"] * 5)
    return [
        Dir(".", mode=0o755),
        Dir("bin", mode=0o755),
        File("bin/busybox", b"\x7fELF" + bytes(range(256)) * 40, mode=0o755),
        Link("bin/ls", "bin/busybox"),
        Link("bin/cat", "/bin/busybox"),
        Symlink("bin/sh", "/bin/busybox"),
        Symlink("bin/rel", "busybox"),
        Symlink("bin/dangling", "../nowhere/at/all"),
        File("bin/su", b"su", mode=0o4755),
        File("bin/wall", b"wall", mode=0o2755, gid=5),
        File("bin/ping", b"ping", mode=0o755, xattrs={"security.capability": CAPABILITY}),
        Dir("home", mode=0o755),
        Dir("home/user", mode=0o700, uid=1000, gid=1000),
        File("home/user/.profile", b"export PS1\n", mode=0o600, uid=1000, gid=1000,
             xattrs={"user.origin": b"test", "user.binary": b"\x00\xff\xfe"}),
        Dir("tmp", mode=0o1777),
        Dir("readonly", mode=0o500),
        Dir("readonly/inner", mode=0o555),
        File("readonly/inner/file", b"still written", mode=0o444),
        Dir("dev", mode=0o755),
        Device("dev/null", tarfile.CHRTYPE, 1, 3, mode=0o666),
        Device("dev/loop0", tarfile.BLKTYPE, 7, 0, mode=0o660, gid=6),
        Device("dev/initctl", tarfile.FIFOTYPE, mode=0o600),
        Dir("usr", mode=0o755),
        Dir("usr/share", mode=0o755),
        *[Dir("/".join(long_dir.split("/")[:i]), mode=0o755)
          for i in range(3, len(long_dir.split("/")) + 1)],
        File(f"{long_dir}/{'f' * 200}", b"long", mode=0o644, mtime=1_600_000_000.5),
        Symlink(f"{long_dir}/link", "/" + long_dir + "/" + "f" * 200),
        File("nobody", b"", mode=0o644, uid=65534, gid=65534, mtime=0),
        File("empty-mode", b"", mode=0o000),
    ]


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_legitimate_layer_is_unpacked_faithfully(sandbox, compression):
    data = tar_bytes(*rich_entries())
    if compression == "gzip":
        data = gzip.compress(data)
    stats = unpack_layer(io.BytesIO(data), sandbox.dest)
    d = sandbox.dest
    assert isinstance(stats, LayerStats) and stats.compression == compression
    assert os.readlink(d / "bin/sh") == "/bin/busybox"
    assert os.readlink(d / "bin/rel") == "busybox"
    assert os.readlink(d / "bin/dangling") == "../nowhere/at/all"
    assert (d / "bin/ls").stat().st_ino == (d / "bin/busybox").stat().st_ino
    assert (d / "bin/cat").stat().st_ino == (d / "bin/busybox").stat().st_ino
    assert (d / "bin/busybox").stat().st_nlink == 3
    assert stat.S_IMODE((d / "bin/su").stat().st_mode) == 0o4755
    assert stat.S_IMODE((d / "bin/wall").stat().st_mode) == 0o2755
    assert (d / "bin/wall").stat().st_gid == 5
    assert os.getxattr(d / "bin/ping", "security.capability") == CAPABILITY
    assert os.getxattr(d / "home/user/.profile", "user.binary") == b"\x00\xff\xfe"
    st = (d / "home/user").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o700)
    assert stat.S_IMODE((d / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((d / "readonly").stat().st_mode) == 0o500
    assert (d / "readonly/inner/file").read_bytes() == b"still written"
    null = (d / "dev/null").stat()
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISBLK((d / "dev/loop0").stat().st_mode)
    assert stat.S_ISFIFO((d / "dev/initctl").lstat().st_mode)
    long_files = list(d.glob("usr/share/**/" + "f" * 200))
    assert len(long_files) == 1 and long_files[0].stat().st_mtime_ns == 1_600_000_000_500_000_000
    assert (d / "nobody").stat().st_uid == 65534 and (d / "nobody").stat().st_mtime == 0
    assert (d / "bin").stat().st_mtime == MTIME  # set after its files were written
    assert os.lstat(d / "bin/sh").st_mtime == MTIME
    assert stat.S_IMODE(d.stat().st_mode) == 0o755
    assert stats.hardlinks == 2 and stats.symlinks == 4 and stats.devices == 3
    assert stats.xattrs == 3


@pytest.mark.parametrize("format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_and_link_targets_in_both_formats(sandbox, format):
    name = "/".join(["d" * 99] * 4) + "/" + "n" * 150
    target = "/" + "t" * 300
    unpack_layer(layer(File(name, b"long"), Symlink("s" * 180, target),
                       Link("l" * 120, name), format=format), sandbox.dest)
    assert (sandbox.dest / name).read_bytes() == b"long"
    assert os.readlink(sandbox.dest / ("s" * 180)) == target
    assert (sandbox.dest / ("l" * 120)).samefile(sandbox.dest / name)


@pytest.mark.parametrize("format", ["gnu", "posix"])
def test_gnu_tar_sparse_files_are_unpacked_whole(sandbox, format):
    source = sandbox.scratch / "src"
    source.mkdir()
    with open(source / "sparse", "wb") as f:
        f.truncate(8 << 20)
        f.seek(3 << 20)
        f.write(b"middle")
        f.seek((8 << 20) - 3)
        f.write(b"end")
    archive = sandbox.scratch / "sparse.tar"
    subprocess.run(["tar", "--sparse", f"--format={format}", "-cf", str(archive), "-C",
                    str(source), "sparse"], check=True)
    unpack_layer(archive, sandbox.dest)
    assert (sandbox.dest / "sparse").read_bytes() == (source / "sparse").read_bytes()


def test_later_entries_replace_earlier_ones(sandbox):
    d = sandbox.dest
    unpack_layer(layer(File("f", b"one"), File("f", b"two"),
                       Dir("dir-then-file"), File("dir-then-file/child", b"c"),
                       File("dir-then-file", b"now a file"),
                       File("file-then-dir", b"x"), Dir("file-then-dir", mode=0o711),
                       Dir("kept", mode=0o755), File("kept/child", b"c"), Dir("kept", mode=0o750),
                       Dir("dir-then-link"), Symlink("dir-then-link", "/bin"),
                       Symlink("link-then-dir", "/bin"), Dir("link-then-dir")), d)
    assert (d / "f").read_bytes() == b"two" and (d / "f").stat().st_nlink == 1
    assert (d / "dir-then-file").read_bytes() == b"now a file"
    assert (d / "file-then-dir").is_dir()
    assert stat.S_IMODE((d / "file-then-dir").stat().st_mode) == 0o711
    assert (d / "kept/child").read_bytes() == b"c"
    assert stat.S_IMODE((d / "kept").stat().st_mode) == 0o750
    assert os.readlink(d / "dir-then-link") == "/bin"
    assert (d / "link-then-dir").is_dir() and not (d / "link-then-dir").is_symlink()


def test_a_file_is_replaced_not_rewritten_so_hardlinks_of_a_lower_layer_keep_their_content(sandbox):
    (sandbox.dest / "a").write_text("lower")
    os.link(sandbox.dest / "a", sandbox.dest / "b")
    unpack_layer(layer(File("b", b"upper")), sandbox.dest, whiteouts="delete")
    assert (sandbox.dest / "a").read_text() == "lower"
    assert (sandbox.dest / "b").read_text() == "upper"


def test_absolute_names_are_relative_to_the_root(sandbox):
    unpack_layer(layer(File("/etc/hostname", b"inside"), Dir("//usr/./lib/"),
                       Symlink("/usr/lib/libc.so", "/lib/libc.so.6")), sandbox.dest)
    assert (sandbox.dest / "etc/hostname").read_bytes() == b"inside"
    assert os.readlink(sandbox.dest / "usr/lib/libc.so") == "/lib/libc.so.6"


def test_parents_the_archive_does_not_list_are_made(sandbox):
    unpack_layer(layer(File("a/b/c/file", b"x")), sandbox.dest)
    assert (sandbox.dest / "a/b/c/file").read_bytes() == b"x"
    assert stat.S_IMODE((sandbox.dest / "a/b").stat().st_mode) == 0o755


# -- whiteouts --------------------------------------------------------------------------------


def lower_tree(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/motd").write_text("hello")
    (root / "etc/keep").write_text("keep")
    (root / "var/cache/apt").mkdir(parents=True)
    (root / "var/cache/apt/pkgcache.bin").write_text("cache")
    (root / "var/cache/apt/archives").mkdir()
    (root / "var/cache/apt/archives/lock").write_text("")
    (root / "opt/app").mkdir(parents=True)
    (root / "opt/app/old").write_text("old")


WHITEOUT_LAYER = [
    Dir("etc"), Whiteout("etc/motd"),
    Whiteout("opt"),
    Dir("var"), Dir("var/cache"), Dir("var/cache/apt"),
    File("var/cache/apt/before", b"listed before the marker"),
    Dir("var/cache/apt/archives"), File("var/cache/apt/archives/new.deb", b"deb"),
    Opaque("var/cache/apt"),
    File("var/cache/apt/after", b"listed after the marker"),
]


def test_delete_mode_removes_whited_out_paths(sandbox):
    lower_tree(sandbox.dest)
    stats = unpack_layer(layer(*WHITEOUT_LAYER), sandbox.dest, whiteouts="delete")
    d = sandbox.dest
    assert sorted(os.listdir(d / "etc")) == ["keep"]
    assert not (d / "opt").exists()
    # opaque: the lower content goes, at any depth; this layer's stays, before or after the marker
    assert sorted(os.listdir(d / "var/cache/apt")) == ["after", "archives", "before"]
    assert sorted(os.listdir(d / "var/cache/apt/archives")) == ["new.deb"]
    assert (stats.whiteouts, stats.opaques) == (2, 1)


def test_overlay_mode_writes_overlayfs_whiteouts(sandbox):
    stats = unpack_layer(layer(*WHITEOUT_LAYER), sandbox.dest, whiteouts="overlay")
    d = sandbox.dest
    for hidden in ("etc/motd", "opt"):
        st = os.lstat(d / hidden)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(d / "var/cache/apt", "trusted.overlay.opaque") == b"y"
    assert not os.path.lexists(d / "var/cache/apt/.wh..wh..opq")
    assert sorted(os.listdir(d / "var/cache/apt")) == ["after", "archives", "before"]
    assert (stats.whiteouts, stats.opaques) == (2, 1)


def test_overlayfs_agrees_with_delete_mode(sandbox):
    """Mount the overlay snapshot for real: it must show what delete mode made."""
    lower, flat, merged, work = (sandbox.scratch / n for n in ("lower", "flat", "merged", "work"))
    for p in (lower, flat, merged, work):
        p.mkdir()
    lower_tree(lower)
    lower_tree(flat)
    unpack_layer(layer(*WHITEOUT_LAYER), sandbox.dest, whiteouts="overlay")
    unpack_layer(layer(*WHITEOUT_LAYER), flat, whiteouts="delete")
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={sandbox.dest},workdir={work}", str(merged)],
                   check=True)
    try:
        seen = tree(merged, times=False)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    assert seen == tree(flat, times=False)


def test_aufs_metadata_entries_are_skipped(sandbox):
    unpack_layer(layer(Dir(".wh..wh.plnk"), File(".wh..wh.plnk/1.2"), File(".wh..wh.aufs"),
                       File("ok", b"ok")), sandbox.dest, whiteouts="delete")
    assert sorted(os.listdir(sandbox.dest)) == ["ok"]


def test_an_opaque_root_in_delete_mode_keeps_only_this_layer(sandbox):
    lower_tree(sandbox.dest)
    unpack_layer(layer(File("new", b"n"), Opaque("."), Dir("etc"), File("etc/x", b"x")),
                 sandbox.dest, whiteouts="delete")
    assert sorted(os.listdir(sandbox.dest)) == ["etc", "new"]
    assert sorted(os.listdir(sandbox.dest / "etc")) == ["x"]


# -- compression and broken archives ------------------------------------------------------------


def test_compressions_are_detected_or_named(sandbox):
    data = tar_bytes(File("f", b"data"))
    for i, (packed, name) in enumerate([(data, "none"), (gzip.compress(data), "gzip"),
                                        (bz2.compress(data), "bzip2"),
                                        (lzma.compress(data), "xz")]):
        dest = sandbox.dest / str(i)
        dest.mkdir()
        assert unpack_layer(io.BytesIO(packed), dest).compression == name
        assert (dest / "f").read_bytes() == b"data"
    named = sandbox.dest / "named"
    named.mkdir()
    stats = unpack_layer(io.BytesIO(gzip.compress(data)), named,
                         compression="application/vnd.oci.image.layer.v1.tar+gzip")
    assert stats.compression == "gzip"


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="the standard library has zstd")
def test_zstd_is_refused_with_its_media_type(sandbox):
    frame = bytes.fromhex("28b52ffd0058610000") + b"\0" * 16
    with pytest.raises(InvalidArgument, match=r"tar\+zstd.*3\.14"):
        unpack_layer(io.BytesIO(frame), sandbox.dest)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_stream_that_cannot_seek_and_a_path_both_work(sandbox, compression):
    data = tar_bytes(*rich_entries())
    if compression == "gzip":
        data = gzip.compress(data)
    piped, from_path = sandbox.dest / "piped", sandbox.dest / "path"
    piped.mkdir()
    from_path.mkdir()
    unpack_layer(io.BufferedReader(Pipe(data)), piped)
    archive = sandbox.scratch / "layer.tar"
    archive.write_bytes(data)
    unpack_layer(archive, from_path)
    assert tree(piped) == tree(from_path)


class ReadOnly:
    """An object with nothing but read(), as a hashing or decompressing wrapper has."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(size)


def test_an_object_with_only_read_is_enough(sandbox):
    stats = unpack_layer(ReadOnly(gzip.compress(tar_bytes(File("f", b"x" * 100_000)))),
                         sandbox.dest, compression="gzip")
    assert (sandbox.dest / "f").read_bytes() == b"x" * 100_000
    assert stats.bytes == 100_000


def open_descriptors() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("hostile", [False, True])
def test_no_descriptor_is_left_open(sandbox, hostile):
    entries = rich_entries() + [Symlink("up", "/"), File("up/up/x", b"x"), Whiteout("up/x")]
    if hostile:
        entries.append(File("../escape", b"x"))
    before = open_descriptors()
    try:
        unpack_layer(layer(*entries), sandbox.dest, whiteouts="delete")
    except UnsafeLayer:
        assert hostile
    assert open_descriptors() == before


@pytest.mark.parametrize("damage", ["truncated-gzip", "corrupt-gzip", "garbage",
                                    "truncated-tar", "empty"])
def test_a_broken_archive_is_one_line(sandbox, damage):
    # fixed bytes: the same damage every run (a chance header in random ones may parse)
    data = tar_bytes(File("a", random.Random(2).randbytes(200_000)), File("b", b"b"))
    packed = gzip.compress(data)
    broken = {
        "truncated-gzip": packed[:len(packed) // 2],
        "corrupt-gzip": packed[:5000] + bytes(b ^ 0xFF for b in packed[5000:5100])
        + packed[5100:],
        "garbage": b"this is not a layer at all" * 100,
        "truncated-tar": data[:100_000],
        "empty": b"",
    }[damage]
    with pytest.raises(InvalidArgument) as caught:
        unpack_layer(io.BytesIO(broken), sandbox.dest)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("layer ")
    assert not isinstance(caught.value, UnsafeLayer)


def test_a_truncated_tar_file_is_caught_on_the_in_kernel_copy_too(sandbox):
    archive = sandbox.scratch / "cut.tar"
    archive.write_bytes(tar_bytes(File("big", os.urandom(300_000)))[:200_000])
    with pytest.raises(InvalidArgument, match=r"^layer is not a valid tar archive "
                                              r"\(in entry 'big'\): unexpected end of data$"):
        unpack_layer(archive, sandbox.dest)


def test_a_gzip_with_a_bad_checksum_is_caught_at_the_end(sandbox):
    packed = bytearray(gzip.compress(tar_bytes(File("a", b"abc"))))
    packed[-8] ^= 0xFF  # the CRC32 in the trailer
    with pytest.raises(InvalidArgument, match="CRC check failed"):
        unpack_layer(io.BytesIO(bytes(packed)), sandbox.dest)


def test_a_write_the_filesystem_refuses_is_one_line_naming_the_entry(sandbox):
    name = "d/" + "n" * 300  # longer than a file name may be (255 bytes)
    with pytest.raises(MiniDockerError, match=r"^layer entry 'd/n+': File name too long$"):
        unpack_layer(layer(File(name, b"x")), sandbox.dest)


def test_bad_arguments(sandbox):
    with pytest.raises(InvalidArgument, match="whiteouts must be"):
        unpack_layer(layer(), sandbox.dest, whiteouts="aufs")
    with pytest.raises(NotFound):
        unpack_layer(layer(), sandbox.dest / "missing")
    with pytest.raises(NotFound):
        unpack_layer(sandbox.dest / "missing.tar", sandbox.dest)
    with pytest.raises(InvalidArgument, match="unknown layer compression"):
        unpack_layer(layer(), sandbox.dest, compression="lz4")


# -- against the bootstrap image and GNU tar ------------------------------------------------------


def test_the_busybox_layer_round_trips(tmp_path):
    # A rootfs of its own: the session's shared one may have had mount points
    # made (and directory mtimes changed) by the tests that ran containers in it.
    from mini_docker.image.bootstrap import busybox_rootfs as build

    busybox_rootfs = build(tmp_path / "rootfs")
    buffer = io.BytesIO()
    rootfs_tar(busybox_rootfs, buffer)
    for whiteouts in ("overlay", "delete"):
        dest = tmp_path / whiteouts
        dest.mkdir()
        buffer.seek(0)
        stats = unpack_layer(buffer, dest, whiteouts=whiteouts)
        assert tree(dest) == tree(busybox_rootfs)
        assert stats.hardlinks > 100 and stats.whiteouts == 0


def test_gnu_tar_unpacks_the_same_tree(sandbox):
    archive = sandbox.scratch / "rich.tar"
    archive.write_bytes(tar_bytes(*rich_entries()))
    gnu = sandbox.scratch / "gnu"
    gnu.mkdir()
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf",
                    str(archive), "-C", str(gnu)], check=True, capture_output=True)
    unpack_layer(archive, sandbox.dest)
    assert tree(sandbox.dest) == tree(gnu)
