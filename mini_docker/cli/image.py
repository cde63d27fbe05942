"""`mini-docker image`: manage images.

Only `image bootstrap busybox` exists here; the other image commands go
through the daemon, as docker's do. It makes the base image offline from the
host's static busybox (the recipe is in `mini_docker.image.bootstrap`): a root
filesystem directory under the state root, and from its reproducible tar a
real one-layer image, busybox:latest, in the image store
($MINI_DOCKER_ROOT/image). Running it again is harmless: a rootfs that is
there already is kept, unless --force asks for a new one, and the same
busybox always gives the same image ID.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mini_docker.errors import InvalidArgument, MiniDockerError
from mini_docker.image.bootstrap import busybox_rootfs, find_busybox, is_busybox_rootfs

BOOTSTRAPPABLE = ("busybox", "busybox:latest")  # the images that can be made offline
DEFAULT_ROOT = "/var/lib/mini-docker"


def state_root() -> Path:
    """Where mini-docker keeps its state: $MINI_DOCKER_ROOT, or /var/lib/mini-docker."""
    return Path(os.environ.get("MINI_DOCKER_ROOT") or DEFAULT_ROOT)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mini-docker image", description="Manage images.")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    bootstrap = verbs.add_parser(
        "bootstrap", help="Make the busybox base image offline, from the host's busybox",
        description="Make the root filesystem of busybox:latest from the host's static "
                    "busybox, without a network.")
    bootstrap.add_argument("image", help="the image to make: busybox (or busybox:latest)")
    bootstrap.add_argument("--rootfs", metavar="DIR", type=Path,
                           help="where to put it (default: $MINI_DOCKER_ROOT/rootfs/busybox)")
    bootstrap.add_argument("--busybox", metavar="PATH",
                           help="the static busybox to copy (default: the one on PATH)")
    bootstrap.add_argument("--force", action="store_true",
                           help="make it again even if it is there already")
    return parser


def _bootstrap(args: argparse.Namespace) -> int:
    if args.image not in BOOTSTRAPPABLE:
        raise InvalidArgument(f"cannot bootstrap '{args.image}': only busybox (busybox:latest) "
                              "can be made offline")
    dest = args.rootfs or state_root() / "rootfs" / "busybox"
    if is_busybox_rootfs(dest) and not args.force:
        print(f"busybox rootfs already exists at {dest} (--force makes it again)")
        return _store_image(dest)
    binary = find_busybox(args.busybox)
    try:
        busybox_rootfs(dest, binary, replace=args.force)
    except OSError as err:  # e.g. a state root this user may not write to
        raise MiniDockerError(f"cannot make {dest}: {err.strerror or err}") from None
    print(f"busybox rootfs made at {dest} from {binary}")
    return _store_image(dest)


def _store_image(rootfs: Path) -> int:
    """Put busybox:latest, made from `rootfs`, in the image store."""
    import tempfile

    from mini_docker.image.bootstrap import rootfs_tar
    from mini_docker.image.oci import image_from_rootfs_tar
    from mini_docker.image.store import ImageStore

    store = ImageStore(state_root() / "image")
    with tempfile.TemporaryFile() as tar:
        rootfs_tar(rootfs, tar)
        tar.seek(0)
        image = image_from_rootfs_tar(store, tar, {"Cmd": ["sh"]}, "busybox:latest")
    print(f"busybox:latest is image {image.id} in {store.root}")
    return 0


VERBS = {"bootstrap": _bootstrap}


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return VERBS[args.verb](args)
