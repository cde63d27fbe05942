"""Image references: what `busybox`, `user/app:v1` and `localhost:5000/x@sha256:...` mean.

A reference names an image the way a URL names a page. Its full form has
four parts, and Docker lets you leave out most of them:

    docker.io / library/busybox : latest @ sha256:<64 hex digits>
    domain      path              tag      digest

- The domain is the registry. It is there only if the first path component
  looks like a host name: it contains a "." or a ":", or it is `localhost`.
  Otherwise the registry is Docker Hub, `docker.io`. So `localhost:5000/app`
  lives on a registry at port 5000, while `user/app` is user's app on Hub.
- On Docker Hub a one-component name is an official image, in `library/`:
  `busybox` is `docker.io/library/busybox`.
- The tag is a movable label, `latest` when none is given. The digest is
  the sha256 of the image's manifest: it never moves. A reference may carry
  both (`name:tag@digest`); the digest then decides which image it is.

Docker's grammar (distribution/reference, the Go package that docker,
containerd and skopeo share) is strict: a path is lowercase letters and
digits joined by single separators (".", "_", "__" or dashes), a tag is at
most 128 characters of letters, digits, "_", "." and "-". This module
parses with the same grammar, but piece by piece rather than with one large
regular expression, so that a refusal can say which piece is wrong.

The familiar form is the short one that `docker images` prints: it drops
`docker.io/` and `library/` again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable

from mini_docker.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"  # what old clients wrote; the same registry
OFFICIAL_REPOSITORY_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255
TAG_MAX = 128

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?")
_IPV6_HOST = re.compile(r"\[[a-fA-F0-9:]+\]")
_TAG = re.compile(r"[\w][\w.-]*", re.ASCII)
_HEX64 = re.compile(r"[a-f0-9]{64}")


def check_digest(digest: str) -> str:
    """Return `digest` if it is `sha256:` and 64 lowercase hex digits; raise InvalidArgument if not.

    Every blob in mini_docker is named this way. Other algorithms exist in
    the OCI spec (sha512), but no tool writes them in practice, and a store
    that knows one algorithm cannot be tricked into trusting a weaker one.
    """
    problem = _digest_problem(digest)
    if problem:
        raise InvalidArgument(f'invalid digest "{digest}": {problem}')
    return digest


def is_tag(text: str) -> bool:
    """Whether `text` is a valid tag: `latest`, `1.36`, `v1_rc-2`."""
    return len(text) <= TAG_MAX and _TAG.fullmatch(text) is not None


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised image reference.

    domain: the registry, `docker.io` for Docker Hub.
    path: the repository inside it, `library/busybox` for an official image.
    tag: the tag, or None if the reference gave none.
    digest: the manifest digest, or None.
    """

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The repository's full name: `docker.io/library/busybox`."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository's short name, as Docker prints it: `busybox`, `user/app`."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        short = self.path.removeprefix(OFFICIAL_REPOSITORY_PREFIX)
        return short if "/" not in short else self.path

    def familiar(self) -> str:
        """The whole reference in short form: `busybox:latest`, `localhost:5000/x@sha256:...`."""
        return self.familiar_name + self._suffix()

    def __str__(self) -> str:
        return self.name + self._suffix()

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def with_tag(self, tag: str) -> Reference:
        """The same repository with `tag` and no digest."""
        if not is_tag(tag):
            raise InvalidArgument(f'invalid tag "{tag}": {_tag_problem(tag)}')
        return replace(self, tag=tag, digest=None)

    def with_default_tag(self) -> Reference:
        """This reference, with tag `latest` if it names neither a tag nor a digest."""
        return self if self.tag or self.digest else replace(self, tag=DEFAULT_TAG)


def parse_reference(text: str) -> Reference:
    """Parse `text` as Docker does, and normalise it (`busybox` -> docker.io/library/busybox).

    No default tag is added: `Reference.with_default_tag` does that, where
    the caller means "latest". Raises InvalidArgument with a one-line
    reason for anything Docker would refuse.
    """
    if not isinstance(text, str) or not text:
        raise InvalidArgument('invalid reference "": it is empty')

    def refuse(why: str) -> InvalidArgument:
        return InvalidArgument(f'invalid reference "{text}": {why}')

    if _HEX64.fullmatch(text):
        raise refuse("64 hex digits are an image ID, not a repository name")
    rest, at, digest = text.partition("@")
    if at and _digest_problem(digest):
        raise refuse(f'digest "{digest}": {_digest_problem(digest)}')
    tag: str | None = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):  # a colon after the last slash starts the tag
        rest, tag = rest[:colon], rest[colon + 1:]
        if not is_tag(tag):
            raise refuse(_tag_problem(tag))
    if not rest:
        raise refuse("the repository name is empty")
    domain, path = _split_domain(rest)
    if domain is not None:
        _check_domain(domain, refuse)
    else:
        domain = DEFAULT_DOMAIN
        if "/" not in path:
            path = OFFICIAL_REPOSITORY_PREFIX + path
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    _check_path(path, refuse)
    if len(domain) + 1 + len(path) > NAME_MAX:
        raise refuse(f"the repository name is longer than {NAME_MAX} characters")
    return Reference(domain, path, tag, digest or None)


def tag_reference(text: str | Reference) -> Reference:
    """Parse a reference that is to be used as a tag: `latest` if none is given, no digest
    (a digest names content; it cannot be pointed somewhere else)."""
    ref = text if isinstance(text, Reference) else parse_reference(text)
    if ref.digest:
        raise InvalidArgument(f"cannot use {ref.familiar()} as a tag: a tag has no digest")
    return ref.with_default_tag()


def _split_domain(name: str) -> tuple[str | None, str]:
    """Split off the registry: the first of several components is a host if it
    has a "." or a ":", or is `localhost`.

    Docker also takes a first component with an uppercase letter for a host
    (host names are case-insensitive), so `Foo/bar` sends it looking for a
    registry called Foo. Here that is a repository that must be lowercase,
    which is what the user almost always meant.
    """
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first, remainder
    return None, name


def _check_domain(domain: str, refuse: Callable[[str], InvalidArgument]) -> None:
    host, colon, port = domain.rpartition(":") if not domain.endswith("]") else (domain, "", "")
    if not colon:
        host = domain
    elif not port.isdigit() or not port.isascii():
        raise refuse(f'registry "{domain}" has a port that is not a number')
    if _IPV6_HOST.fullmatch(host):
        return
    if not host or not all(_DOMAIN_COMPONENT.fullmatch(part) for part in host.split(".")):
        raise refuse(f'registry "{domain}" is not a valid host name '
                     "(letters, digits, '-' and '.', and an optional :port)")


def _check_path(path: str, refuse: Callable[[str], InvalidArgument]) -> None:
    for component in path.split("/"):
        if component != component.lower():
            raise refuse("repository name must be lowercase")
        if not component:
            raise refuse('repository path has an empty component (a "//", or a "/" at an end)')
        if not _PATH_COMPONENT.fullmatch(component):
            raise refuse(f'repository path component "{component}" is not valid: use lowercase '
                         "letters and digits, joined by '.', '_', '__' or dashes")


def _tag_problem(tag: str) -> str:
    if not tag:
        return 'the tag after ":" is empty'
    if len(tag) > TAG_MAX:
        return f"the tag is {len(tag)} characters long; the limit is {TAG_MAX}"
    return (f'tag "{tag}" may contain only letters, digits, \'_\', \'.\' and \'-\', '
            "and may not start with '.' or '-'")


def _digest_problem(digest: object) -> str:
    """Why `digest` is not a sha256 digest, or "" if it is one."""
    if not isinstance(digest, str):
        return "it is not a string"
    algorithm, colon, encoded = digest.partition(":")
    if not colon:
        return "it must look like sha256:<64 hex digits>"
    if algorithm != "sha256":
        return f'algorithm "{algorithm}" is not supported (only sha256 is)'
    if not _HEX64.fullmatch(encoded):
        return "sha256 must be followed by exactly 64 lowercase hex digits"
    return ""
