"""Image references parse as Docker's distribution/reference parses them, and bad ones
are refused with a one-line reason."""

from __future__ import annotations

import pytest

from mini_docker.errors import InvalidArgument
from mini_docker.image.reference import (Reference, check_digest, is_tag, parse_reference)

A64 = "a" * 64
B64 = "b" * 64

# input -> (full form with the default tag, familiar form, domain, path, tag, digest)
GOOD = [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest",
     "docker.io", "library/busybox", None, None),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36",
     "docker.io", "library/busybox", "1.36", None),
    ("user/app", "docker.io/user/app:latest", "user/app:latest",
     "docker.io", "user/app", None, None),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest",
     "docker.io", "library/busybox", None, None),
    ("docker.io/library/busybox:musl", "docker.io/library/busybox:musl", "busybox:musl",
     "docker.io", "library/busybox", "musl", None),
    ("index.docker.io/user/app", "docker.io/user/app:latest", "user/app:latest",
     "docker.io", "user/app", None, None),
    ("localhost:5000/team/app:v1", "localhost:5000/team/app:v1", "localhost:5000/team/app:v1",
     "localhost:5000", "team/app", "v1", None),
    ("localhost/app", "localhost/app:latest", "localhost/app:latest",
     "localhost", "app", None, None),
    (f"127.0.0.1:5000/x@sha256:{A64}", f"127.0.0.1:5000/x@sha256:{A64}",
     f"127.0.0.1:5000/x@sha256:{A64}", "127.0.0.1:5000", "x", None, f"sha256:{A64}"),
    (f"busybox:1.36@sha256:{B64}", f"docker.io/library/busybox:1.36@sha256:{B64}",
     f"busybox:1.36@sha256:{B64}", "docker.io", "library/busybox", "1.36", f"sha256:{B64}"),
    ("registry.example.com/a/b/c:rc_1-2.x", "registry.example.com/a/b/c:rc_1-2.x",
     "registry.example.com/a/b/c:rc_1-2.x", "registry.example.com", "a/b/c", "rc_1-2.x", None),
    ("[::1]:5000/app:v2", "[::1]:5000/app:v2", "[::1]:5000/app:v2", "[::1]:5000", "app", "v2",
     None),
    ("my-registry.local/x__y/a.b-c", "my-registry.local/x__y/a.b-c:latest",
     "my-registry.local/x__y/a.b-c:latest", "my-registry.local", "x__y/a.b-c", None, None),
    # With no slash, "localhost:5000" is the repository localhost, tag 5000, as in Docker.
    ("localhost:5000", "docker.io/library/localhost:5000", "localhost:5000",
     "docker.io", "library/localhost", "5000", None),
    ("busybox:" + "t" * 128, "docker.io/library/busybox:" + "t" * 128, "busybox:" + "t" * 128,
     "docker.io", "library/busybox", "t" * 128, None),
]


@pytest.mark.parametrize("text,full,familiar,domain,path,tag,digest", GOOD,
                         ids=[g[0][:40] for g in GOOD])
def test_good_references(text, full, familiar, domain, path, tag, digest):
    ref = parse_reference(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert str(ref.with_default_tag()) == full
    assert ref.with_default_tag().familiar() == familiar
    assert parse_reference(str(ref)) == ref  # the full form parses back to the same thing


BAD = [
    ("", 'invalid reference "": it is empty'),
    ("Busybox", 'invalid reference "Busybox": repository name must be lowercase'),
    ("user/App:v1", 'invalid reference "user/App:v1": repository name must be lowercase'),
    ("Foo/bar", 'invalid reference "Foo/bar": repository name must be lowercase'),
    (":latest", 'invalid reference ":latest": the repository name is empty'),
    ("busybox:", 'invalid reference "busybox:": the tag after ":" is empty'),
    ("busybox:1.36!", 'invalid reference "busybox:1.36!": tag "1.36!" may contain only letters, '
                      "digits, '_', '.' and '-', and may not start with '.' or '-'"),
    ("busybox:-rc", 'invalid reference "busybox:-rc": tag "-rc" may contain only letters, '
                    "digits, '_', '.' and '-', and may not start with '.' or '-'"),
    ("busybox:" + "t" * 129, f'invalid reference "busybox:{"t" * 129}": the tag is 129 '
                             "characters long; the limit is 128"),
    ("busybox@sha256:abc", 'invalid reference "busybox@sha256:abc": digest "sha256:abc": '
                           "sha256 must be followed by exactly 64 lowercase hex digits"),
    (f"busybox@sha256:{A64.upper()}", f'invalid reference "busybox@sha256:{A64.upper()}": digest '
                                      f'"sha256:{A64.upper()}": sha256 must be followed by exactly '
                                      "64 lowercase hex digits"),
    (f"busybox@md5:{A64}", f'invalid reference "busybox@md5:{A64}": digest "md5:{A64}": '
                           'algorithm "md5" is not supported (only sha256 is)'),
    ("busybox@", 'invalid reference "busybox@": digest "": it must look like '
                 "sha256:<64 hex digits>"),
    ("a//b", 'invalid reference "a//b": repository path has an empty component '
             '(a "//", or a "/" at an end)'),
    ("a..b", 'invalid reference "a..b": repository path component "a..b" is not valid: use '
             "lowercase letters and digits, joined by '.', '_', '__' or dashes"),
    ("-app", 'invalid reference "-app": repository path component "-app" is not valid: use '
             "lowercase letters and digits, joined by '.', '_', '__' or dashes"),
    ("a___b", 'invalid reference "a___b": repository path component "a___b" is not valid: use '
              "lowercase letters and digits, joined by '.', '_', '__' or dashes"),
    ("localhost:port/x", 'invalid reference "localhost:port/x": registry "localhost:port" has a '
                         "port that is not a number"),
    ("my_registry.com/x", 'invalid reference "my_registry.com/x": registry "my_registry.com" is '
                          "not a valid host name (letters, digits, '-' and '.', and an optional "
                          ":port)"),
    (A64, f'invalid reference "{A64}": 64 hex digits are an image ID, not a repository name'),
    ("a/" + "b" * 250, f'invalid reference "a/{"b" * 250}": the repository name is longer than '
                       "255 characters"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[b[0][:30] or "empty" for b in BAD])
def test_bad_references_are_refused_with_a_one_line_reason(text, message):
    with pytest.raises(InvalidArgument) as caught:
        parse_reference(text)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_the_familiar_name_drops_only_docker_hub_and_library():
    assert parse_reference("busybox").familiar_name == "busybox"
    assert parse_reference("docker.io/library/a/b").familiar_name == "library/a/b"
    assert parse_reference("quay.io/library/busybox").familiar_name == "quay.io/library/busybox"


def test_with_tag_replaces_tag_and_digest_and_checks_the_tag():
    ref = parse_reference(f"busybox:1@sha256:{A64}")
    assert ref.with_tag("2") == Reference("docker.io", "library/busybox", "2", None)
    with pytest.raises(InvalidArgument, match='invalid tag "no/slash"'):
        ref.with_tag("no/slash")


def test_a_digest_alone_gets_no_default_tag():
    ref = parse_reference(f"busybox@sha256:{A64}")
    assert ref.with_default_tag() == ref


@pytest.mark.parametrize("digest,ok", [
    (f"sha256:{A64}", True), (f"sha256:{A64[:63]}", False), (f"sha256:{A64}0", False),
    (f"sha512:{A64}", False), (A64, False), ("", False), (f"SHA256:{A64}", False),
    (f"sha256:{'g' * 64}", False)])
def test_check_digest(digest, ok):
    if ok:
        assert check_digest(digest) == digest
    else:
        with pytest.raises(InvalidArgument, match="invalid digest"):
            check_digest(digest)


@pytest.mark.parametrize("tag,ok", [("latest", True), ("1.36.1", True), ("_x", True),
                                    ("A-b_C.d", True), (".x", False), ("-x", False),
                                    ("a:b", False), ("a/b", False), ("t" * 129, False),
                                    ("", False), ("é", False)])
def test_is_tag(tag, ok):
    assert is_tag(tag) is ok
