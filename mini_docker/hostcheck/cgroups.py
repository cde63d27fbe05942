"""Where this host's cgroup controllers live, and whether the engine's are there.

A host mounts cgroups in one of three ways. cgroup v1 gives each controller
(or a few, co-mounted) a hierarchy of its own under /sys/fs/cgroup; cgroup v2
puts them all in one unified tree; a hybrid host does v1 for the controllers
and mounts an (often empty) v2 tree beside them. Rather than guess from the
kernel version or the distribution, we read the answer where the kernel
writes it: /proc/self/mountinfo lists every cgroup mount and, for v1, the
controllers in its options; the v2 root's cgroup.controllers lists the
controllers it holds; /proc/cgroups says which ones the kernel has enabled.

`cgroup_layout()` returns that as a `CgroupLayout`, which the cgroups layer
reads to find its controllers; the checks below judge it against what the
engine needs and say how to mount what is missing.

Records here are plain classes, not dataclasses: the mini-runc command
imports this module, importing dataclasses costs it 7 ms of its ~30, and
runc's speed is the target.
"""

from __future__ import annotations

import re

from mini_docker.hostcheck.host import Host, _read, kernel_version
from mini_docker.records import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the cost of importing typing
if TYPE_CHECKING:
    from mini_docker.hostcheck.report import Check


# ruff: noqa: RUF023 - a record's __slots__ list its fields in their order, not sorted


class Controller(Value):
    """A cgroup controller the engine uses: its name in v1 and in v2 (only the
    block I/O one differs), whether it is required, and the kernel option behind it."""

    __slots__ = ("shown", "v1", "v2", "required", "config")

    def __init__(self, shown: str, v1: str, v2: str, required: bool, config: str) -> None:
        self.shown = shown
        self.v1 = v1
        self.v2 = v2
        self.required = required
        self.config = config


CONTROLLERS = (
    Controller("memory", "memory", "memory", True, "CONFIG_MEMCG"),
    Controller("cpu", "cpu", "cpu", True, "CONFIG_CGROUP_SCHED"),
    Controller("pids", "pids", "pids", True, "CONFIG_CGROUP_PIDS"),
    Controller("freezer", "freezer", "freezer", True, "CONFIG_CGROUP_FREEZER"),
    Controller("cpuset", "cpuset", "cpuset", False, "CONFIG_CPUSETS"),
    Controller("blkio/io", "blkio", "io", False, "CONFIG_BLK_CGROUP"),
    Controller("devices", "devices", "devices", False, "CONFIG_CGROUP_DEVICE"),
)
V1_CONTROLLERS = ("cpuset", "cpu", "cpuacct", "blkio", "memory", "devices", "freezer",
                  "net_cls", "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc")
CGROUP_ROOT = "/sys/fs/cgroup"


class Mount(Value):
    """One line of /proc/self/mountinfo, the fields this module needs."""

    __slots__ = ("mount_point", "fstype", "source", "options")

    def __init__(self, mount_point: str, fstype: str, source: str,
                 options: tuple[str, ...]) -> None:
        self.mount_point = mount_point
        self.fstype = fstype
        self.source = source
        self.options = options  # the superblock options: for cgroup v1, its controllers


class CgroupLayout(Value):
    """Where the cgroup controllers live on this host.

    mode: "v1", "v2" (cgroup2 mounted on /sys/fs/cgroup), "hybrid" (v1
    controllers plus a cgroup2 mount elsewhere) or "none".
    unified: where cgroup2 is mounted, or None.
    v1: v1 controller name -> mount point of its hierarchy.
    v2: the controllers listed in the cgroup2 root's cgroup.controllers.
    enabled: /proc/cgroups, controller name -> enabled by the kernel.
    """

    __slots__ = ("mode", "unified", "v1", "v2", "enabled")

    def __init__(self, mode: str, unified: str | None = None, v1: dict[str, str] | None = None,
                 v2: tuple[str, ...] = (), enabled: dict[str, bool] | None = None) -> None:
        self.mode = mode
        self.unified = unified
        self.v1 = {} if v1 is None else v1
        self.v2 = v2
        self.enabled = {} if enabled is None else enabled

    def to_dict(self) -> dict[str, object]:
        """Every field by name, ready for JSON (the report's "cgroups")."""
        return {"mode": self.mode, "unified": self.unified, "v1": dict(self.v1),
                "v2": self.v2, "enabled": dict(self.enabled)}

    def where(self, controller: str) -> str | None:
        """"v1: <mount point>" or "v2: <mount point>" for `controller`, or None."""
        if controller in self.v1:
            return f"v1: {self.v1[controller]}"
        if controller in self.v2:
            return f"v2: {self.unified}"
        return None

    def describe(self) -> str:
        """One line for people, e.g. "hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified)"."""
        return {
            "v1": f"v1 (controllers under {CGROUP_ROOT})",
            "v2": f"v2 (unified at {self.unified})",
            "hybrid": f"hybrid (v1 controllers, v2 at {self.unified})",
        }.get(self.mode, f"{self.mode}: no cgroup filesystem mounted")


def _unescape(field_text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field_text)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts in the text of /proc/<pid>/mountinfo (see proc(5)).

    Each line is: id parent major:minor root mount-point options [optional...]
    - fstype source super-options. The optional fields vary in number, so the
    lone "-" is what separates the two halves.
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        dash = fields.index("-", 6)
        if len(fields) < dash + 3:
            continue
        options = tuple(fields[dash + 3].split(",")) if len(fields) > dash + 3 else ()
        mounts.append(Mount(_unescape(fields[4]), fields[dash + 1], fields[dash + 2], options))
    return mounts


def _proc_cgroups(host: Host) -> dict[str, bool]:
    """/proc/cgroups: controller -> enabled (the last column)."""
    enabled = {}
    for line in (_read(f"{host.proc}/cgroups") or "").splitlines():
        fields = line.split()
        if len(fields) == 4 and not line.startswith("#"):
            enabled[fields[0]] = fields[3] == "1"
    return enabled


def cgroup_layout(proc: str = "/proc", sys: str = "/sys") -> CgroupLayout:
    """Find the cgroup mode and each controller's place from `proc`/self/mountinfo.

    proc, sys: where procfs and sysfs are (a fake tree in tests).
    """
    host = Host(proc=proc, sys=sys)
    enabled = _proc_cgroups(host)
    known = set(V1_CONTROLLERS) | set(enabled)
    mounts = parse_mountinfo(_read(f"{proc}/self/mountinfo") or "")
    v1: dict[str, str] = {}
    for m in mounts:
        if m.fstype == "cgroup":
            for name in m.options:
                if name in known:
                    v1.setdefault(name, m.mount_point)
    cgroup2 = [m.mount_point for m in mounts if m.fstype == "cgroup2"]
    unified = next((p for p in cgroup2 if p == CGROUP_ROOT),
                   next((p for p in cgroup2 if p == f"{CGROUP_ROOT}/unified"),
                        cgroup2[0] if cgroup2 else None))
    v2: tuple[str, ...] = ()
    if unified:
        v2 = tuple((_read(host.sys_path(f"{unified}/cgroup.controllers")) or "").split())
    if unified == CGROUP_ROOT or (unified and not v1):
        mode = "v2"
    elif v1:
        mode = "hybrid" if unified else "v1"
    else:
        mode = "none"
    return CgroupLayout(mode, unified, v1, v2, enabled)


def cgroup_mode(proc: str = "/proc", sys: str = "/sys") -> str:
    """"v1", "v2", "hybrid" or "none": how this host mounts cgroups."""
    return cgroup_layout(proc, sys).mode


def _controller_check(layout: CgroupLayout, controller: Controller, release: str) -> Check:
    """Where `controller` is mounted, or why it is not and how to get it."""
    # imported here: the cgroups layer reads the layout above on every container,
    # and needs none of the report's machinery
    from mini_docker.hostcheck.report import Check

    c = controller
    where = layout.where(c.v1) or layout.where(c.v2)
    if where is None and layout.mode == "v2":
        # v2 has no freezer or devices controller: freezing is core (cgroup.freeze,
        # kernel 5.2+) and device access is an eBPF program attached to the cgroup
        if c.v2 == "freezer" and kernel_version(release) >= (5, 2):
            where = f"v2: cgroup.freeze, core since 5.2, at {layout.unified}"
        elif c.v2 == "devices":
            where = f"v2: an eBPF program per cgroup, at {layout.unified}"
    if where:
        return Check("cgroups", c.shown, "ok", where)
    if layout.enabled.get(c.v1) is False:
        fix = f"boot with cgroup_enable={c.v1} on the kernel command line"
    elif c.v1 not in layout.enabled and c.v2 not in layout.v2:
        fix = f"use a kernel built with {c.config}=y"
    elif layout.mode == "v2":
        fix = f"{c.v1} is held by a cgroup v1 hierarchy: unmount it or boot with cgroup_no_v1=all"
    elif layout.mode == "none":
        fix = f"mount -t cgroup2 cgroup2 {CGROUP_ROOT}"
    else:
        target = f"{CGROUP_ROOT}/{c.v1}"
        fix = f"mkdir -p {target} && mount -t cgroup -o {c.v1} cgroup {target}"
    return Check("cgroups", c.shown, "missing" if c.required else "warning", "not mounted", fix)


def _cgroup_checks(layout: CgroupLayout, release: str) -> list[Check]:
    from mini_docker.hostcheck.report import Check

    if layout.mode == "none":
        mode = Check("cgroups", "mode", "missing", layout.describe(),
                     f"mount -t cgroup2 cgroup2 {CGROUP_ROOT}")
    else:
        mode = Check("cgroups", "mode", "info", layout.describe())
    checks = [mode] + [_controller_check(layout, c, release) for c in CONTROLLERS]
    listed = {name for c in CONTROLLERS for name in (c.v1, c.v2)}
    others = [n for n in dict.fromkeys([*layout.enabled, *layout.v1, *layout.v2])
              if n not in listed]
    mounted = ", ".join(f"{n} ({where[:2]})" for n in others if (where := layout.where(n)))
    # in v1 a controller works only once mounted; v2 has no place for v1-only ones
    unmounted = ", ".join(n for n in others if not layout.where(n)) \
        if layout.mode in ("v1", "hybrid") else ""
    text = "; ".join(filter(None, [mounted, unmounted and f"not mounted: {unmounted}"]))
    if text:
        checks.append(Check("cgroups", "other", "info", text))
    return checks
