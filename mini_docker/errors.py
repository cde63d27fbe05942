"""The errors mini_docker raises on purpose.

Every layer raises a subclass of `MiniDockerError` for a problem the user can
fix (bad input, a missing host feature). The command line prints these as one
line and exits non-zero; later the daemon maps them to HTTP status codes,
which is why each class carries one.
"""

from __future__ import annotations


class MiniDockerError(Exception):
    """A problem the user can act on, reported as one line."""

    http_status = 500


class InvalidArgument(MiniDockerError):
    """The request itself is wrong: a malformed value, an unknown option."""

    http_status = 400


class NotFound(MiniDockerError):
    """A named thing (container, image, network...) does not exist."""

    http_status = 404


class Conflict(MiniDockerError):
    """The request clashes with the current state (a name taken, a container running)."""

    http_status = 409
