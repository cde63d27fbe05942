"""Small images for the image tests: digests and tars built in memory."""

from __future__ import annotations

import hashlib
import io
import tarfile


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def small_tar(files: dict[str, bytes]) -> bytes:
    """A reproducible tar of `files`, as rootfs_tar would write it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
