"""Constants of the Linux system calls in this package, named as in the man pages.

Python's `os` module has some of these (`os.CLONE_NEWNS` arrived in 3.12), but
not all, and not on every version we support, so they are spelled out once here
with the values from the kernel's uapi headers (<linux/sched.h>, <linux/mount.h>,
<linux/prctl.h>).
"""

from __future__ import annotations

# clone(2), unshare(2), setns(2): namespace flags, <linux/sched.h>
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_FS = 0x00000200
CLONE_PARENT = 0x00008000  # the child is our parent's, not ours
CLONE_FILES = 0x00000400
CLONE_SYSVSEM = 0x00040000

# mount(2) flags, <linux/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_POSIXACL = 1 << 16
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

# umount2(2) flags
MNT_FORCE = 1
MNT_DETACH = 2
MNT_EXPIRE = 4
UMOUNT_NOFOLLOW = 8

# prctl(2) options, <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NAME = 15
PR_GET_NAME = 16
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_LOWER = 3
PR_CAP_AMBIENT_CLEAR_ALL = 4

# System call numbers for the calls glibc does not wrap, per architecture.
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
# The newer mount API (Linux 5.2): numbered alike on every architecture, from 424 on.
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
OPEN_TREE_CLONE = 0x1  # a copy of the mount, not the mount itself
OPEN_TREE_CLOEXEC = 0o2000000  # O_CLOEXEC
AT_FDCWD = -100
AT_RECURSIVE = 0x8000  # the mounts below it too, as MS_REC
MOVE_MOUNT_F_EMPTY_PATH = 0x4  # the source is the descriptor itself
SYS_CLONE3 = 435  # clone3(2), Linux 5.3
CLONE_INTO_CGROUP = 0x200000000  # clone3: the child is born in a cgroup v2 group (Linux 5.7)
