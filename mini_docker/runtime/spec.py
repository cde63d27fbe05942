"""The OCI runtime bundle: a config.json and a root filesystem.

The Open Container Initiative's runtime specification is the contract between
whoever prepares a container (dockerd, containerd, podman, a learner) and the
runtime that creates it (runc, crun, mini_docker). The preparer writes a
*bundle*: a directory holding `config.json` and, usually, the root filesystem
it names. The runtime reads nothing else.

This module turns config.json into typed records and checks it before anything
is created, so that a mistake is reported as one clear line ("process.args
must be a non-empty list of strings") rather than as a failed system call deep
inside the container's set-up. Fields this runtime does not implement are kept
in `Spec.raw`, untouched, so nothing a caller wrote is lost.

Records here are plain classes, not dataclasses: importing dataclasses costs
the mini-runc command 7 ms of its ~30, and runc's speed is the target
(mini_docker/records.py says more).
"""

from __future__ import annotations

import json
import os

from mini_docker.errors import InvalidArgument
from mini_docker.kernel import constants as C
from mini_docker.records import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the cost of importing typing
if TYPE_CHECKING:
    from typing import Any

OCI_VERSION = "1.0.2-dev"

# linux.namespaces[].type -> (clone flag, name in /proc/PID/ns)
NAMESPACE_TYPES: dict[str, tuple[int, str]] = {
    "pid": (C.CLONE_NEWPID, "pid"),
    "network": (C.CLONE_NEWNET, "net"),
    "mount": (C.CLONE_NEWNS, "mnt"),
    "ipc": (C.CLONE_NEWIPC, "ipc"),
    "uts": (C.CLONE_NEWUTS, "uts"),
    "user": (C.CLONE_NEWUSER, "user"),
    "cgroup": (C.CLONE_NEWCGROUP, "cgroup"),
    "time": (C.CLONE_NEWTIME, "time"),
}

RLIMITS = {
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}


# ruff: noqa: RUF023 - a record's __slots__ list its fields in their order, not sorted


class User(Record):
    __slots__ = ("uid", "gid", "additional_gids", "umask")

    def __init__(self, uid: int = 0, gid: int = 0, additional_gids: list[int] | None = None,
                 umask: int | None = None) -> None:
        self.uid = uid
        self.gid = gid
        self.additional_gids = [] if additional_gids is None else additional_gids
        self.umask = umask


class Capabilities(Record):
    __slots__ = ("bounding", "effective", "permitted", "inheritable", "ambient")

    def __init__(self, bounding: list[str] | None = None, effective: list[str] | None = None,
                 permitted: list[str] | None = None, inheritable: list[str] | None = None,
                 ambient: list[str] | None = None) -> None:
        self.bounding = [] if bounding is None else bounding
        self.effective = [] if effective is None else effective
        self.permitted = [] if permitted is None else permitted
        self.inheritable = [] if inheritable is None else inheritable
        self.ambient = [] if ambient is None else ambient


class Rlimit(Record):
    __slots__ = ("type", "soft", "hard")

    def __init__(self, type: str, soft: int, hard: int) -> None:
        self.type = type
        self.soft = soft
        self.hard = hard


class Process(Record):
    """What runs in the container, and as whom."""

    __slots__ = ("args", "env", "cwd", "user", "terminal", "capabilities", "no_new_privileges",
                 "rlimits", "oom_score_adj", "console_size")

    def __init__(self, args: list[str], env: list[str] | None = None, cwd: str = "/",
                 user: User | None = None, terminal: bool = False,
                 capabilities: Capabilities | None = None, no_new_privileges: bool = False,
                 rlimits: list[Rlimit] | None = None, oom_score_adj: int | None = None,
                 console_size: tuple[int, int] | None = None) -> None:
        self.args = args
        self.env = [] if env is None else env
        self.cwd = cwd
        self.user = User() if user is None else user
        self.terminal = terminal
        self.capabilities = capabilities
        self.no_new_privileges = no_new_privileges
        self.rlimits = [] if rlimits is None else rlimits
        self.oom_score_adj = oom_score_adj
        self.console_size = console_size  # (height, width)


class Mount(Record):
    __slots__ = ("destination", "type", "source", "options")

    def __init__(self, destination: str, type: str | None = None, source: str | None = None,
                 options: list[str] | None = None) -> None:
        self.destination = destination
        self.type = type
        self.source = source
        self.options = [] if options is None else options


class Namespace(Record):
    __slots__ = ("type", "path")

    def __init__(self, type: str, path: str | None = None) -> None:
        self.type = type
        self.path = path  # join this existing namespace instead of making one


class IDMapping(Record):
    __slots__ = ("container_id", "host_id", "size")

    def __init__(self, container_id: int, host_id: int, size: int) -> None:
        self.container_id = container_id
        self.host_id = host_id
        self.size = size


class Linux(Record):
    __slots__ = ("namespaces", "uid_mappings", "gid_mappings", "masked_paths", "readonly_paths",
                 "rootfs_propagation", "sysctl", "cgroups_path", "resources")

    def __init__(self, namespaces: list[Namespace] | None = None,
                 uid_mappings: list[IDMapping] | None = None,
                 gid_mappings: list[IDMapping] | None = None,
                 masked_paths: list[str] | None = None, readonly_paths: list[str] | None = None,
                 rootfs_propagation: str | None = None, sysctl: dict[str, str] | None = None,
                 cgroups_path: str | None = None,
                 resources: dict[str, Any] | None = None) -> None:
        self.namespaces = [] if namespaces is None else namespaces
        self.uid_mappings = [] if uid_mappings is None else uid_mappings
        self.gid_mappings = [] if gid_mappings is None else gid_mappings
        self.masked_paths = [] if masked_paths is None else masked_paths
        self.readonly_paths = [] if readonly_paths is None else readonly_paths
        self.rootfs_propagation = rootfs_propagation
        self.sysctl = {} if sysctl is None else sysctl
        self.cgroups_path = cgroups_path
        self.resources = {} if resources is None else resources

    def namespace(self, kind: str) -> Namespace | None:
        return next((ns for ns in self.namespaces if ns.type == kind), None)


class Spec(Record):
    """A parsed config.json. `raw` is the document as read."""

    __slots__ = ("oci_version", "process", "root_path", "root_readonly", "hostname", "mounts",
                 "linux", "annotations", "raw")

    def __init__(self, oci_version: str, process: Process | None, root_path: str,
                 root_readonly: bool, hostname: str | None, mounts: list[Mount], linux: Linux,
                 annotations: dict[str, str], raw: dict[str, Any]) -> None:
        self.oci_version = oci_version
        self.process = process
        self.root_path = root_path
        self.root_readonly = root_readonly
        self.hostname = hostname
        self.mounts = mounts
        self.linux = linux
        self.annotations = annotations
        self.raw = raw


# --- reading and checking --------------------------------------------------------


def _fail(where: str, what: str) -> InvalidArgument:
    return InvalidArgument(f"config.json: {where} {what}")


def _get(doc: dict, key: str, kind: type | tuple, where: str, default: Any = None) -> Any:
    value = doc.get(key, default)
    if value is not None and not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(f"{where}.{key}", f"must be {_article(names)}, not {json.dumps(value)}")
    return value


def _article(noun: str) -> str:
    return {"list": "a list", "dict": "an object", "str": "a string", "int": "an integer",
            "bool": "true or false"}.get(noun, noun)


def _strings(doc: dict, key: str, where: str) -> list[str]:
    values = _get(doc, key, list, where, []) or []
    if not all(isinstance(v, str) for v in values):
        raise _fail(f"{where}.{key}", "must be a list of strings")
    return list(values)


def _parse_process(doc: dict) -> Process:
    args = _strings(doc, "args", "process")
    if not args:
        raise _fail("process.args", "must be a non-empty list of strings")
    user_doc = _get(doc, "user", dict, "process", {}) or {}
    user = User(
        uid=_get(user_doc, "uid", int, "process.user", 0),
        gid=_get(user_doc, "gid", int, "process.user", 0),
        additional_gids=list(_get(user_doc, "additionalGids", list, "process.user", []) or []),
        umask=_get(user_doc, "umask", int, "process.user"),
    )
    cwd = _get(doc, "cwd", str, "process", "/")
    if not cwd.startswith("/"):
        raise _fail("process.cwd", f"must be an absolute path, not {cwd!r}")
    caps = None
    if (caps_doc := _get(doc, "capabilities", dict, "process")) is not None:
        caps = Capabilities(**{k: _strings(caps_doc, k, "process.capabilities")
                               for k in ("bounding", "effective", "permitted", "inheritable",
                                         "ambient")})
    rlimits = []
    for i, r in enumerate(_get(doc, "rlimits", list, "process", []) or []):
        where = f"process.rlimits[{i}]"
        if not isinstance(r, dict) or r.get("type") not in RLIMITS:
            raise _fail(where, f"has an unknown type {r.get('type') if isinstance(r, dict) else r!r}")
        rlimits.append(Rlimit(r["type"], _get(r, "soft", int, where, 0), _get(r, "hard", int, where, 0)))
    size = _get(doc, "consoleSize", dict, "process")
    return Process(
        args=args,
        env=_strings(doc, "env", "process"),
        cwd=cwd,
        user=user,
        terminal=bool(_get(doc, "terminal", bool, "process", False)),
        capabilities=caps,
        no_new_privileges=bool(_get(doc, "noNewPrivileges", bool, "process", False)),
        rlimits=rlimits,
        oom_score_adj=_get(doc, "oomScoreAdj", int, "process"),
        console_size=(size.get("height", 0), size.get("width", 0)) if size else None,
    )


def _parse_mounts(items: list) -> list[Mount]:
    mounts = []
    for i, m in enumerate(items):
        where = f"mounts[{i}]"
        if not isinstance(m, dict):
            raise _fail(where, "must be an object")
        dest = _get(m, "destination", str, where)
        if not dest or not dest.startswith("/"):
            raise _fail(f"{where}.destination", f"must be an absolute path, not {dest!r}")
        mounts.append(Mount(dest, _get(m, "type", str, where), _get(m, "source", str, where),
                            _strings(m, "options", where)))
    return mounts


def _parse_mappings(items: list, where: str) -> list[IDMapping]:
    try:
        return [IDMapping(int(m["containerID"]), int(m["hostID"]), int(m["size"])) for m in items]
    except (KeyError, TypeError, ValueError):
        raise _fail(where, "entries need integer containerID, hostID and size") from None


def _parse_linux(doc: dict) -> Linux:
    namespaces = []
    seen = set()
    for i, ns in enumerate(_get(doc, "namespaces", list, "linux", []) or []):
        kind = ns.get("type") if isinstance(ns, dict) else None
        if kind not in NAMESPACE_TYPES:
            raise _fail(f"linux.namespaces[{i}].type", f"is not a namespace type: {kind!r}")
        if kind in seen:
            raise _fail("linux.namespaces", f"lists {kind!r} twice")
        seen.add(kind)
        namespaces.append(Namespace(kind, ns.get("path") or None))
    propagation = _get(doc, "rootfsPropagation", str, "linux")
    if propagation not in (None, "", "private", "rprivate", "slave", "rslave", "shared", "rshared",
                           "unbindable", "runbindable"):
        raise _fail("linux.rootfsPropagation", f"is not a propagation type: {propagation!r}")
    return Linux(
        namespaces=namespaces,
        uid_mappings=_parse_mappings(_get(doc, "uidMappings", list, "linux", []) or [],
                                     "linux.uidMappings"),
        gid_mappings=_parse_mappings(_get(doc, "gidMappings", list, "linux", []) or [],
                                     "linux.gidMappings"),
        masked_paths=_strings(doc, "maskedPaths", "linux"),
        readonly_paths=_strings(doc, "readonlyPaths", "linux"),
        rootfs_propagation=propagation or None,
        sysctl=dict(_get(doc, "sysctl", dict, "linux", {}) or {}),
        cgroups_path=_get(doc, "cgroupsPath", str, "linux"),
        resources=dict(_get(doc, "resources", dict, "linux", {}) or {}),
    )


def parse(doc: dict[str, Any]) -> Spec:
    """Check a config.json document and return it as a `Spec`."""
    if not isinstance(doc, dict):
        raise InvalidArgument("config.json: must be a JSON object")
    version = _get(doc, "ociVersion", str, "(top level)")
    if not version:
        raise _fail("ociVersion", "is missing")
    root = _get(doc, "root", dict, "(top level)")
    if not root or not _get(root, "path", str, "root"):
        raise _fail("root.path", "is missing")
    process_doc = _get(doc, "process", dict, "(top level)")
    linux_doc = _get(doc, "linux", dict, "(top level)", {}) or {}
    return Spec(
        oci_version=version,
        process=_parse_process(process_doc) if process_doc is not None else None,
        root_path=root["path"],
        root_readonly=bool(_get(root, "readonly", bool, "root", False)),
        hostname=_get(doc, "hostname", str, "(top level)"),
        mounts=_parse_mounts(_get(doc, "mounts", list, "(top level)", []) or []),
        linux=_parse_linux(linux_doc),
        annotations=dict(_get(doc, "annotations", dict, "(top level)", {}) or {}),
        raw=doc,
    )


def load(bundle: str | os.PathLike) -> Spec:
    """Read and check `bundle`/config.json."""
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            text = f.read()
    except FileNotFoundError:
        raise InvalidArgument(f"no config.json in the bundle {os.fspath(bundle)!r}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidArgument(f"config.json is not valid JSON: {err}") from None
    spec = parse(doc)
    rootfs = root_path(spec, bundle)
    if not os.path.isdir(rootfs):
        raise InvalidArgument(f"root.path {spec.root_path!r}: no such directory ({rootfs})")
    return spec


def root_path(spec: Spec, bundle: str | os.PathLike) -> str:
    """The rootfs directory: root.path is relative to the bundle unless absolute."""
    return os.path.realpath(os.path.join(bundle, spec.root_path))


# --- the default config, as `runc spec` writes it -------------------------------------

DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]

MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def default_spec(args: list[str] | None = None, terminal: bool = True) -> dict[str, Any]:
    """The config.json `runc spec` writes: a shell in every namespace but user and cgroup."""
    caps = list(DEFAULT_CAPS)
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args or ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted",
                                                     "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "mini-docker",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }
