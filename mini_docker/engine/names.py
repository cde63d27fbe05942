"""Who a container is: its ID, its name, and how a user may refer to it.

Docker gives every container two identities. The ID is 64 hexadecimal
digits, 256 random bits: unique without asking anyone, which matters when
several clients create containers at once. Nobody types 64 digits, so any
prefix that matches one container only will do (`docker stop 3f2a`), and
every container also has a name: the one given with `--name`, or one made
up of an adjective and a scientist's surname (`keen_hopper`) when none is.

Names follow Docker's rule, `[a-zA-Z0-9][a-zA-Z0-9_.-]+`: at least two
characters, no slash (Docker stores a name as "/web", a leading "/" is
accepted on input and stripped here) and nothing a shell or a URL would
mangle. Resolution tries, in Docker's order, the full ID, then the exact
name, then an ID prefix; a prefix matching two containers is an error, not
a guess.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping

from mini_docker.errors import Conflict, InvalidArgument, NotFound

NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
ID_PATTERN = re.compile(r"[0-9a-f]{64}")

ADJECTIVES = (
    "agile", "bold", "brave", "bright", "calm", "clever", "cool", "curious", "eager",
    "elated", "fervent", "gentle", "happy", "jolly", "keen", "kind", "lucid", "merry",
    "modest", "nimble", "patient", "quiet", "quirky", "serene", "sharp", "steady", "sunny",
    "swift", "tender", "vivid", "wise", "zealous",
)
SCIENTISTS = (
    "babbage", "bohr", "curie", "darwin", "dijkstra", "einstein", "euler", "faraday",
    "fermat", "feynman", "gauss", "goodall", "hamilton", "hopper", "hypatia", "johnson",
    "kepler", "knuth", "lamport", "liskov", "lovelace", "maxwell", "meitner", "noether",
    "pascal", "ritchie", "shannon", "thompson", "torvalds", "turing", "wing", "wozniak",
)


def new_id() -> str:
    """A fresh container ID: 64 hex digits from the system's random source."""
    return secrets.token_hex(32)


def short_id(container_id: str) -> str:
    """The 12 digits Docker shows (`docker ps`) and uses as the hostname."""
    return container_id[:12]


def check_name(name: str) -> str:
    """The name without its optional leading "/", or InvalidArgument in Docker's words."""
    bare = name[1:] if isinstance(name, str) and name.startswith("/") else name
    if not isinstance(bare, str) or not NAME_PATTERN.fullmatch(bare):
        raise InvalidArgument(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                              "are allowed")
    return bare


def generate_name(taken: Iterable[str]) -> str:
    """An unused "adjective_scientist" name; a digit is appended if all are taken."""
    taken = set(taken)
    for attempt in range(len(ADJECTIVES) * len(SCIENTISTS)):
        name = f"{secrets.choice(ADJECTIVES)}_{secrets.choice(SCIENTISTS)}"
        if attempt > 10:  # crowded: add a digit, as Docker does after a clash
            name += str(secrets.randbelow(10))
        if name not in taken:
            return name
    raise Conflict("no free container name left: give one with --name")


def resolve(ref: str, names: Mapping[str, str], ids: Iterable[str]) -> str:
    """The container ID that `ref` (an ID, a name or an ID prefix) means.

    names: name -> ID of every container; ids: every container's ID.
    """
    if not isinstance(ref, str) or not ref:
        raise NotFound("No such container: (empty name)")
    ids = list(ids)
    if ID_PATTERN.fullmatch(ref) and ref in ids:
        return ref
    bare = ref.removeprefix("/")
    if bare in names:
        return names[bare]
    if re.fullmatch(r"[0-9a-f]+", ref):
        matches = [i for i in ids if i.startswith(ref)]
        if len(matches) > 1:
            raise InvalidArgument(f"multiple IDs found with provided prefix: {ref}")
        if matches:
            return matches[0]
    raise NotFound(f"No such container: {ref}")
