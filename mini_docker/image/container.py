"""Running an image: `docker run busybox echo hi`, from the image store to a process.

The runtime (chapter 2) runs a *bundle*, a config.json beside a root
filesystem, and knows nothing of images. An image is layers and a config in
Docker's vocabulary. Three steps turn one into the other, and this module is
those steps, in the order dockerd and containerd take them:

1. The root filesystem. The snapshotter stacks the image's layers with
   overlayfs, an empty writable layer on top (snapshot.py). The container's
   directory there is also its bundle: config.json next to merged/.
2. The config: `runc spec`'s defaults, adjusted by the image's config (what to
   run, in which environment, where, as whom) and by the caller (docker run's
   flags), combined by Docker's rules:
   - Env: the image's, then the caller's; a name set twice keeps its first
     place and takes the last value. PATH and HOSTNAME are always set.
   - The command is Entrypoint + Cmd. A command from the caller replaces the
     image's Cmd; an entrypoint from the caller replaces the image's and
     drops its Cmd too.
   - WorkingDir is made (root's, 0755) if the image lacks it.
   - User is "name", "uid", "name:group" or "uid:gid". Names are looked up in
     the image's /etc/passwd and /etc/group, never the host's. Without a
     group, the user also gets the groups that list it as a member.
   - Capabilities: Docker's default fourteen, not `runc spec`'s three. Root
     has them all; any other user has them in the bounding set only, as
     execve(2) would leave a non-root program.
   - Labels become annotations, as the OCI image spec's conversion rules
     say; so do StopSignal and ExposedPorts.
   - The hostname is the container ID's first 12 characters; the rootfs is
     writable (that is what the upper layer is for); there is no terminal.
3. The run and the clean-up: the runtime's state deleted, the overlay
   unmounted, and the writable layer removed unless the caller keeps it
   (a commit needs it).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from mini_docker.errors import Conflict, InvalidArgument, NotFound
from mini_docker.image.oci import DEFAULT_PATH, ImageConfig
from mini_docker.image.reference import parse_reference
from mini_docker.image.snapshot import Snapshotter
from mini_docker.image.store import ImageStore
from mini_docker.kernel.capabilities import DOCKER_DEFAULT_CAPS
from mini_docker.runtime.rootfs import secure_join
from mini_docker.runtime.spec import default_spec

MAX_ID = 2**31 - 1  # runc refuses uids and gids above this
MAX_USER_FILE = 4 << 20  # a passwd or group file bigger than this is not one
STOP_SIGNAL = "org.opencontainers.image.stopSignal"
EXPOSED_PORTS = "org.opencontainers.image.exposedPorts"


def run_image(store_root: str | os.PathLike, image_ref: str, cmd: Sequence[str] | None = None,
              *, container_id: str | None = None, entrypoint: Sequence[str] | None = None,
              env: Sequence[str] = (), workdir: str | None = None, user: str | None = None,
              hostname: str | None = None, detach: bool = False, keep: bool = False,
              runtime_root: str | os.PathLike | None = None) -> int:
    """Run `image_ref` as a container, as `docker run` does; return its exit status.

    store_root: the image store's directory ($MINI_DOCKER_ROOT/image).
    cmd, entrypoint: replace the image's Cmd, or its Entrypoint (and Cmd).
    container_id: the container's ID; by default 64 random hex digits.
    env: NAME=value entries added to (or overriding) the image's Env.
    workdir, user, hostname: override the image's WorkingDir and User, and the
        hostname (by default the ID's first 12 characters).
    detach: return 0 as soon as the container runs; remove it later with
        `remove_container`.
    keep: keep the writable layer (unmounted) once the container exits, for
        a diff or a commit; `remove_container` removes it.
    runtime_root: the runtime's state directory (mini-runc --root).

    The caller becomes a child subreaper (runtime.run sets
    PR_SET_CHILD_SUBREAPER, to wait for the container's init, which is not
    its child) and forwards signals to the container while it waits: call
    it from a process of its own, such as a command or a test's subprocess.

    Raises NotFound ("Unable to find image 'x:latest' locally"),
    InvalidArgument for a bad option or a corrupt or hostile layer; nothing
    is left mounted then.
    """
    store = ImageStore(store_root)
    digest = find_image(store, image_ref)
    config = store.config(store.manifest(digest))
    snapshots = Snapshotter(store)
    container_id = container_id or secrets.token_hex(32)
    bundle = snapshots.container_dir(container_id)
    if bundle.exists():
        raise Conflict(f'the container name "{container_id}" is already in use')
    from mini_docker import runtime  # the runtime's modules load only when a container runs

    rootfs = snapshots.mount_rootfs(container_id, digest)
    try:
        spec = container_spec(config, rootfs, container_id=container_id, cmd=cmd,
                              entrypoint=entrypoint, env=env, workdir=workdir, user=user,
                              hostname=hostname)
        make_workdir(rootfs, spec["process"]["cwd"])
        (bundle / "config.json").write_text(json.dumps(spec, indent=1) + "\n")
        status = runtime.run(container_id, bundle, root=runtime_root, detach=detach)
    except BaseException:
        snapshots.remove(container_id)  # it never ran, or it was interrupted
        raise
    if not detach:
        if keep:
            snapshots.unmount(container_id)
        else:
            snapshots.remove(container_id)
    return status


def remove_container(store_root: str | os.PathLike, container_id: str, *,
                     runtime_root: str | os.PathLike | None = None, force: bool = False) -> None:
    """Forget a container: its runtime state (force: kill it first), its rootfs, its layer."""
    from mini_docker import runtime

    snapshots = Snapshotter(ImageStore(store_root))
    known = False
    try:
        runtime.delete(container_id, force=force, root=runtime_root)
        known = True
    except NotFound:
        pass
    if snapshots.container_dir(container_id).is_dir():
        snapshots.remove(container_id)
        known = True
    if not known:
        raise NotFound(f"No such container: {container_id}")


def find_image(store: ImageStore, image_ref: str) -> str:
    """The manifest digest of `image_ref`, or NotFound in Docker's words."""
    try:
        return store.resolve(image_ref)
    except NotFound:
        raise NotFound(f"Unable to find image '{_familiar(image_ref)}' locally") from None


def _familiar(image_ref: str) -> str:
    try:
        return parse_reference(image_ref).with_default_tag().familiar()
    except InvalidArgument:  # an ID prefix
        return image_ref


# --- config.json from the image config ---------------------------------------------------


def container_spec(image: ImageConfig, rootfs: str | os.PathLike, *, container_id: str,
                   cmd: Sequence[str] | None = None, entrypoint: Sequence[str] | None = None,
                   env: Sequence[str] = (), workdir: str | None = None, user: str | None = None,
                   hostname: str | None = None) -> dict[str, Any]:
    """The bundle's config.json for running `image` from `rootfs` (the mounted merged dir).

    rootfs is read for the user's and groups' names; root.path is "merged",
    relative to the bundle, which is the rootfs's parent directory.
    """
    settings = image.config
    hostname = hostname or container_id[:12]
    identity = resolve_user(rootfs, user if user is not None else settings.get("User", ""))
    cwd = workdir or settings.get("WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise InvalidArgument(f"the working directory '{cwd}' is invalid, it needs to be an "
                              "absolute path")
    spec = default_spec(command(settings, cmd, entrypoint), terminal=False)
    process = spec["process"]
    process["env"] = merge_env([DEFAULT_PATH, f"HOSTNAME={hostname}"],
                               settings.get("Env") or [], checked_env(env))
    process["cwd"] = cwd
    process["user"] = {"uid": identity.uid, "gid": identity.gid,
                       **({"additionalGids": identity.additional_gids}
                          if identity.additional_gids else {})}
    process["capabilities"] = capabilities(identity.uid)
    process["noNewPrivileges"] = False  # Docker's default; --security-opt no-new-privileges sets it
    spec["root"] = {"path": "merged", "readonly": False}
    spec["hostname"] = hostname
    annotations = dict(settings.get("Labels") or {})
    if settings.get("StopSignal"):
        annotations[STOP_SIGNAL] = settings["StopSignal"]
    if settings.get("ExposedPorts"):
        annotations[EXPOSED_PORTS] = ",".join(sorted(settings["ExposedPorts"]))
    if annotations:
        spec["annotations"] = annotations
    return spec


def command(settings: Mapping[str, Any], cmd: Sequence[str] | None = None,
            entrypoint: Sequence[str] | None = None) -> list[str]:
    """Entrypoint + Cmd, with the caller's replacing the image's as `docker run` does."""
    for name, value in (("cmd", cmd), ("entrypoint", entrypoint)):
        if value is not None and (isinstance(value, str)
                                  or not all(isinstance(v, str) for v in value)):
            raise InvalidArgument(f"{name} must be a list of strings, not {value!r}")
    if entrypoint is not None:  # a new entrypoint does not go with the image's Cmd
        args = [*entrypoint, *(cmd or [])]
    else:
        args = [*(settings.get("Entrypoint") or []),
                *(cmd if cmd is not None else settings.get("Cmd") or [])]
    if not args:
        raise InvalidArgument("no command specified: the image has no Cmd or Entrypoint, "
                              "and none was given")
    return args


def merge_env(*layers: Sequence[str]) -> list[str]:
    """NAME=value lists merged in order: a later value replaces an earlier one in place."""
    merged: dict[str, str] = {}
    for entries in layers:
        for entry in entries:
            merged[entry.partition("=")[0]] = entry
    return list(merged.values())


def checked_env(env: Sequence[str]) -> list[str]:
    """NAME=value entries, each checked: a bad one is a one-line error."""
    if isinstance(env, str):
        raise InvalidArgument("env must be a list of NAME=value strings")
    for entry in env:
        if not isinstance(entry, str) or "=" not in entry or entry.startswith("="):
            raise InvalidArgument(f"invalid environment variable {entry!r}: not NAME=value")
    return list(env)


def capabilities(uid: int) -> dict[str, list[str]]:
    """Docker's default capabilities: all in effect for root, only bounding for others."""
    caps = list(DOCKER_DEFAULT_CAPS)
    granted = caps if uid == 0 else []
    return {"bounding": caps, "effective": list(granted), "permitted": list(granted),
            "inheritable": [], "ambient": []}


def make_workdir(rootfs: str | os.PathLike, cwd: str) -> None:
    """Make the working directory in the rootfs if it is missing, as Docker does."""
    path = secure_join(os.fspath(rootfs), cwd)
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
    except FileExistsError:
        raise InvalidArgument(f"the working directory {cwd} is not a directory") from None
    except NotADirectoryError:
        raise InvalidArgument(f"the working directory {cwd}: a part of it is not a "
                              "directory") from None


# --- users and groups, by the image's own names --------------------------------------------


@dataclass(frozen=True)
class ExecUser:
    uid: int
    gid: int
    additional_gids: list[int]


def resolve_user(rootfs: str | os.PathLike, spec: str) -> ExecUser:
    """The uid, gid and supplementary gids that `spec` ("user[:group]") means in the image.

    As runc's user.GetExecUser: a name or a number found in the image's
    /etc/passwd gives its uid and primary gid; a number not there is used as
    it is, with gid 0; a name not there is an error. The same for the group
    in /etc/group. Without a group, every group listing the user joins it.
    """
    user, _, group = spec.partition(":")
    user = user or "0"
    passwd = _user_file(rootfs, "/etc/passwd")
    entry = next((e for e in passwd if len(e) >= 4 and user in (e[0], e[2])), None)
    if entry is not None:
        uid, gid, name = _id(entry[2], "uid"), _id(entry[3], "gid"), entry[0]
    elif user.isdigit():
        uid, gid, name = _id(user, "uid"), 0, None
    else:
        raise InvalidArgument(f"unable to find user {user}: no matching entries in passwd file")
    groups = _user_file(rootfs, "/etc/group")
    extra: list[int] = []
    if group:
        found = next((e for e in groups if len(e) >= 3 and group in (e[0], e[2])), None)
        if found is not None:
            gid = _id(found[2], "gid")
        elif group.isdigit():
            gid = _id(group, "gid")
        else:
            raise InvalidArgument(f"unable to find group {group}: no matching entries in "
                                  "group file")
    elif name is not None:
        for e in groups:
            if len(e) >= 4 and name in e[3].split(","):
                member_of = _id(e[2], "gid")
                if member_of not in extra:
                    extra.append(member_of)
    return ExecUser(uid, gid, extra)


def _id(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f"invalid {what} {text!r} in the image's user files") from None
    if not 0 <= value <= MAX_ID:
        raise InvalidArgument(f"{what} {value}: uids and gids must be in range 0-{MAX_ID}")
    return value


def _user_file(rootfs: str | os.PathLike, path: str) -> list[list[str]]:
    """The colon-separated lines of a file in the rootfs; [] if it is missing.

    The path is resolved inside the rootfs (a symlink /etc/passwd -> /etc/shadow
    means the image's shadow, never the host's), opened without following a
    last symlink and without blocking (a FIFO there would hang us), and only a
    regular file of reasonable size is read.
    """
    try:
        fd = os.open(secure_join(os.fspath(rootfs), path),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as err:
        raise InvalidArgument(f"cannot read the image's {path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"the image's {path} is not a regular file")
        text = f.read(MAX_USER_FILE + 1)
    if len(text) > MAX_USER_FILE:
        raise InvalidArgument(f"the image's {path} is larger than {MAX_USER_FILE} bytes")
    return [line.split(":") for line in text.decode("utf-8", "replace").splitlines()
            if line and not line.startswith("#")]
