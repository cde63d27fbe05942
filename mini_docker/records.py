"""Records as plain classes, for the modules the `mini-runc` command imports.

Most of mini_docker writes its records as dataclasses. The runtime's command
line cannot afford them: containerd starts `mini-runc` for every step of
every container, and runc, the program it stands in for, takes some 20 ms
to run one. Importing `dataclasses` (it brings `inspect`) costs the command
about 7 ms, and building each of its two dozen records another 0.4 (a
dataclass writes its methods as source code and exec()s them): as
dataclasses, they took `mini-runc run` from 31 ms to 49.

So the records on that path are plain classes. Each one lists its fields
twice, where a reader expects them: in `__slots__` (which also keeps a
misspelt attribute from being set) and as the parameters of `__init__`,
with their types and defaults. The base classes below add what a dataclass
would have written: a `__repr__` that shows every field, and an `__eq__`
that compares them, both in the order of `__slots__`: so `__slots__` lists
the fields in the order `__init__` takes them, not sorted (the modules tell
ruff as much).
"""

from __future__ import annotations


class Record:
    """A mutable record, like a @dataclass: compared by its fields, not hashable."""

    __slots__ = ()

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None  # as a dataclass's: a record that can change cannot be a dict key

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{self.__class__.__qualname__}({shown})"


class Value(Record):
    """A record that is a value, like a @dataclass(frozen=True): hashable by its fields.

    Nothing stops an assignment to a field, but nothing in mini_docker makes
    one: a Value is built whole by its `__init__` and is never changed after.
    """

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self._values())
