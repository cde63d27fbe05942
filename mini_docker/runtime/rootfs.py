"""Building the container's root filesystem, inside its new mount namespace.

This runs in the container's init process, after it has entered its new
namespaces and before it runs the user's program. In order:

1. Set the propagation of every mount (private unless the config says
   otherwise), so that nothing mounted here appears on the host.
2. Bind-mount the rootfs onto itself: pivot_root needs its new root to be a
   mount point, and a plain directory is not one.
3. Mount what config.json lists, each destination resolved *inside* the
   rootfs (a symlink in the image must not point a mount at the host's /etc).
4. Populate /dev with the few safe device nodes and the usual symlinks.
5. pivot_root into the rootfs and detach the old root, so that no path leads
   back to the host's files. (chroot alone would leave one: chapter 2 shows it.)
6. Mask the paths that leak host information (an empty tmpfs or /dev/null on
   top), make others read-only, and make / read-only if asked.
"""

from __future__ import annotations

import errno
import os
import stat

from mini_docker.kernel import constants as C
from mini_docker.kernel import mount, move_mount, pivot_root, umount2
from mini_docker.runtime.spec import Mount, Spec

# mount(8) option -> (flags to set, flags to clear)
MOUNT_FLAGS: dict[str, tuple[int, int]] = {
    "ro": (C.MS_RDONLY, 0), "rw": (0, C.MS_RDONLY),
    "nosuid": (C.MS_NOSUID, 0), "suid": (0, C.MS_NOSUID),
    "nodev": (C.MS_NODEV, 0), "dev": (0, C.MS_NODEV),
    "noexec": (C.MS_NOEXEC, 0), "exec": (0, C.MS_NOEXEC),
    "sync": (C.MS_SYNCHRONOUS, 0), "async": (0, C.MS_SYNCHRONOUS),
    "dirsync": (C.MS_DIRSYNC, 0), "remount": (C.MS_REMOUNT, 0),
    "mand": (C.MS_MANDLOCK, 0), "nomand": (0, C.MS_MANDLOCK),
    "atime": (0, C.MS_NOATIME), "noatime": (C.MS_NOATIME, 0),
    "diratime": (0, C.MS_NODIRATIME), "nodiratime": (C.MS_NODIRATIME, 0),
    "relatime": (C.MS_RELATIME, 0), "norelatime": (0, C.MS_RELATIME),
    "strictatime": (C.MS_STRICTATIME, 0), "nostrictatime": (0, C.MS_STRICTATIME),
    "lazytime": (C.MS_LAZYTIME, 0), "nolazytime": (0, C.MS_LAZYTIME),
    "nosymfollow": (C.MS_NOSYMFOLLOW, 0), "symfollow": (0, C.MS_NOSYMFOLLOW),
    "bind": (C.MS_BIND, 0), "rbind": (C.MS_BIND | C.MS_REC, 0),
}
PROPAGATION: dict[str, int] = {
    "private": C.MS_PRIVATE, "rprivate": C.MS_PRIVATE | C.MS_REC,
    "shared": C.MS_SHARED, "rshared": C.MS_SHARED | C.MS_REC,
    "slave": C.MS_SLAVE, "rslave": C.MS_SLAVE | C.MS_REC,
    "unbindable": C.MS_UNBINDABLE, "runbindable": C.MS_UNBINDABLE | C.MS_REC,
}

# The device nodes every container gets: (name, type, major, minor), all mode 0666.
DEVICES = [("null", stat.S_IFCHR, 1, 3), ("zero", stat.S_IFCHR, 1, 5), ("full", stat.S_IFCHR, 1, 7),
           ("random", stat.S_IFCHR, 1, 8), ("urandom", stat.S_IFCHR, 1, 9),
           ("tty", stat.S_IFCHR, 5, 0)]
DEV_SYMLINKS = [("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"),
                ("/proc/self/fd/1", "stdout"), ("/proc/self/fd/2", "stderr"),
                ("pts/ptmx", "ptmx")]


def parse_options(options: list[str]) -> tuple[int, int, str]:
    """Mount options -> (flags, propagation flags, data for the filesystem)."""
    flags, propagation, data = 0, 0, []
    for option in options:
        if option in MOUNT_FLAGS:
            set_, clear = MOUNT_FLAGS[option]
            flags = (flags | set_) & ~clear
        elif option in PROPAGATION:
            propagation |= PROPAGATION[option]
        else:
            data.append(option)
    return flags, propagation, ",".join(data)


def secure_join(root: str, path: str) -> str:
    """`path` inside `root`, following symlinks as if `root` were /.

    A symlink in the image, absolute or full of "..", is resolved against the
    rootfs, never against the host: `etc -> /../../host/etc` stays inside.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        current = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                raise OSError(errno.ELOOP, f"too many symlinks resolving {path!r} in {root!r}")
            target = os.readlink(current)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def prepare(spec: Spec, rootfs: str, bundle: str, *, propagated: bool = False,
            bind_trees: list[int] | None = None) -> None:
    """Steps 1 to 4: propagation, the rootfs as a mount point, the mounts, /dev.

    For an init prepared in advance (prepared.py): `propagated`, step 1 is
    done already; `bind_trees`, the sources of the bind mounts, in order, as
    detached mounts from open_tree.
    """
    propagation = PROPAGATION.get(spec.linux.rootfs_propagation or "rprivate")
    # The whole tree becomes a slave or private first; a "shared" request is
    # honoured on the rootfs itself below, after it is its own mount.
    if not propagated:
        mount(None, "/", None, propagation if not propagation & C.MS_SHARED else
              C.MS_SLAVE | C.MS_REC)
    mount(rootfs, rootfs, None, C.MS_BIND | C.MS_REC)
    if propagation & C.MS_SHARED:
        mount(None, rootfs, None, propagation)
    dev_is_tmpfs = False
    trees = iter(bind_trees or ())
    for m in spec.mounts:
        _mount_one(m, rootfs, bundle, next(trees) if bind_trees and is_bind(m) else None)
        dev_is_tmpfs |= m.destination == "/dev" and m.type == "tmpfs"
    if dev_is_tmpfs:
        populate_dev(secure_join(rootfs, "/dev"))


def _make_target(target: str, like_source: str | None) -> None:
    if os.path.lexists(target):
        return
    if like_source and os.path.exists(like_source) and not os.path.isdir(like_source):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    else:
        os.makedirs(target, exist_ok=True)


def is_bind(m: Mount) -> bool:
    return m.type == "bind" or bool(parse_options(m.options)[0] & C.MS_BIND)


def bind_source(m: Mount, bundle: str) -> str:
    """A bind mount's source: absolute, or relative to the bundle."""
    source = m.source or ""
    return source if source.startswith("/") else os.path.join(bundle, source)


def open_tree_flags(m: Mount) -> int:
    """open_tree's flags for a bind mount's source: "rbind" takes the mounts below it too."""
    recursive = parse_options(m.options)[0] & C.MS_REC
    return C.OPEN_TREE_CLONE | (C.AT_RECURSIVE if recursive else 0)


def _mount_one(m: Mount, rootfs: str, bundle: str, tree: int | None = None) -> None:
    target = secure_join(rootfs, m.destination)
    flags, propagation, data = parse_options(m.options)
    if is_bind(m):
        source = bind_source(m, bundle)
        _make_target(target, source if tree is None else f"/proc/self/fd/{tree}")
        if tree is None:
            mount(source, target, None, flags & (C.MS_BIND | C.MS_REC) | C.MS_BIND)
        else:  # made by open_tree in the runtime's mount namespace
            move_mount(tree, target)
            os.close(tree)
        rest = flags & ~(C.MS_BIND | C.MS_REC)
        if rest:  # bind mounts take their flags only on a remount
            mount(None, target, None, C.MS_BIND | C.MS_REMOUNT | rest | _locked_flags(target))
    elif m.type == "cgroup":
        _make_target(target, None)
        _mount_cgroups(target, flags)
    else:
        _make_target(target, None)
        try:
            mount(m.source or m.type, target, m.type, flags, data or None)
        except PermissionError:
            if m.type != "sysfs":
                raise
            # sysfs refuses a mount from a process that shares the host's
            # network namespace; show the host's, read-only, as runc does.
            mount("/sys", target, None, C.MS_BIND | C.MS_REC)
            mount(None, target, None, C.MS_BIND | C.MS_REMOUNT | flags | _locked_flags(target))
    if propagation:
        mount(None, target, None, propagation)


def _locked_flags(path: str) -> int:
    """The flags of the mount at `path` that a remount must keep (or get EPERM)."""
    f = os.statvfs(path).f_flag
    return f & (C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC)


def _mount_cgroups(target: str, flags: int) -> None:
    """Show the container its own cgroups at /sys/fs/cgroup, read-only.

    On a cgroup v2 host that is one cgroup2 mount. On v1 and hybrid hosts it
    is a small tmpfs with one bind mount per controller hierarchy, of the
    directory this process is in.
    """
    ro = flags & C.MS_RDONLY
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        mount("cgroup2", target, "cgroup2", C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC | ro)
        return
    mount("tmpfs", target, "tmpfs", C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC, "mode=755")
    with open("/proc/self/cgroup") as f:
        entries = [line.rstrip("\n").split(":", 2) for line in f]
    for _, controllers, path in entries:
        if not controllers or controllers.startswith("name="):
            continue  # the hybrid host's v2 tree and named hierarchies (runc shows name=systemd) stay hidden
        host_dir = f"/sys/fs/cgroup/{controllers}"
        if not os.path.isdir(host_dir):
            continue
        name = controllers
        inside = os.path.join(target, name)
        os.makedirs(inside, exist_ok=True)
        mount(host_dir + path, inside, None, C.MS_BIND | C.MS_REC)
        mount(None, inside, None, C.MS_BIND | C.MS_REMOUNT | C.MS_NOSUID | C.MS_NODEV |
              C.MS_NOEXEC | ro)
    if ro:
        mount(None, target, None, C.MS_REMOUNT | C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC |
              C.MS_RDONLY, "mode=755")


def populate_dev(dev: str) -> None:
    """The safe device nodes and the standard symlinks, in a fresh /dev tmpfs."""
    old = os.umask(0)
    try:
        for name, kind, major, minor in DEVICES:
            path = os.path.join(dev, name)
            if not os.path.lexists(path):
                try:
                    os.mknod(path, kind | 0o666, os.makedev(major, minor))
                except PermissionError:  # in a user namespace: borrow the host's node
                    open(path, "a").close()
                    mount(f"/dev/{name}", path, None, C.MS_BIND)
        for target, name in DEV_SYMLINKS:
            path = os.path.join(dev, name)
            if not os.path.lexists(path):
                os.symlink(target, path)
    finally:
        os.umask(old)


def enter(rootfs: str) -> None:
    """Step 5: make `rootfs` the root and let go of the old one.

    pivot_root(".", ".") stacks the old root on top of the new one at "/";
    detaching it then leaves the new root alone, with no directory needed to
    hold the old root (runc does the same).
    """
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY)
    new_root = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY)
    try:
        os.fchdir(new_root)
        pivot_root(".", ".")
        os.fchdir(old_root)
        # Detaching must not propagate to the host's mounts, so demote first.
        mount(None, ".", None, C.MS_SLAVE | C.MS_REC)
        umount2(".", C.MNT_DETACH)
    finally:
        os.close(old_root)
        os.close(new_root)
    os.chdir("/")


def finish(spec: Spec) -> None:
    """Step 6, inside the new root: masked and read-only paths, a read-only /."""
    for path in spec.linux.masked_paths:
        mask(path)
    for path in spec.linux.readonly_paths:
        make_readonly(path)
    if spec.root_readonly:
        mount(None, "/", None, C.MS_BIND | C.MS_REMOUNT | C.MS_RDONLY | _locked_flags("/"))


def mask(path: str) -> None:
    """Hide `path`: an empty read-only tmpfs over a directory, /dev/null over a file."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):  # one stat: most of runc's list is absent
            mount("tmpfs", path, "tmpfs", C.MS_RDONLY, None)
        else:  # a file, or a symlink
            mount("/dev/null", path, None, C.MS_BIND)
    except FileNotFoundError:
        pass  # nothing there to hide


def make_readonly(path: str) -> None:
    try:
        mount(path, path, None, C.MS_BIND | C.MS_REC)
    except FileNotFoundError:
        return
    mount(None, path, None, C.MS_BIND | C.MS_REMOUNT | C.MS_RDONLY | C.MS_REC | _locked_flags(path))
