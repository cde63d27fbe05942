"""Container logs: Docker's json-file log driver.

A container writes to its stdout and stderr and forgets about it; the
shim reads those pipes and hands every chunk to a log driver. Docker's
default driver, json-file, keeps one file per container in which every
line of output becomes one JSON object on a line of its own:

    {"log":"hello\\n","stream":"stdout","time":"2026-11-30T19:20:21.123456789Z"}

Writing is the hot path (the shim calls `log()` for every chunk a
container prints), so the file stays open in append mode, a chunk's lines
are encoded together and reach the kernel in one write(2). Output arrives
in arbitrary chunks, not lines, so a line without its newline yet waits in
a buffer of its own stream until the rest comes (or until `flush()`). A
line longer than 16 KiB is cut into several entries, as Docker's log
copier cuts them: every piece but the last lacks the newline, which is how
a reader can glue them back together. Output that is not UTF-8 is kept,
with the bad bytes replaced by U+FFFD.

`max_size` and `max_file` rotate the file as Docker's `--log-opt
max-size=10m --log-opt max-file=3` do: before an entry is written, a file
that has reached max_size is renamed to path.1 (path.1 to path.2, and so
on, the oldest dropped), and writing goes on in a new, empty path.

Reading (`docker logs`) goes through the rotated files oldest first,
filters by stream and time, and can keep following the file as it grows,
across rotations, until the container has stopped and all is read. A line
that does not parse (a write torn by a crash) is skipped: logs are evidence,
and one bad line must not hide the others.
"""

from __future__ import annotations

import calendar
import functools
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring  # json.dumps's C encoder, minus its overhead
from typing import BinaryIO, Self

from mini_docker.cgroups import parse_memory
from mini_docker.errors import InvalidArgument, MiniDockerError

STREAMS = ("stdout", "stderr")
MAX_LINE = 16 * 1024  # Docker's copier buffer: a longer line becomes several entries
FILE_MODE = 0o640


@dataclass(frozen=True)
class LogEntry:
    """One line of a log file: the stream, the time it was read (RFC3339Nano, as
    stored) and the bytes, with their newline unless a longer line was cut here."""

    stream: str
    time: str
    data: bytes


class JsonFileLogger:
    """Appends a container's output to `path` in Docker's json-file format."""

    def __init__(self, path: str, *, max_size: int | None = None, max_file: int = 1) -> None:
        if max_size is not None and max_size <= 0:
            raise InvalidArgument(f"invalid log max-size {max_size}: must be a positive number")
        if max_file < 1:
            raise InvalidArgument(f"invalid log max-file {max_file}: must be at least 1")
        self.path = str(path)
        self.max_size = max_size
        self.max_file = max_file
        self._fd: int | None = _open_for_append(self.path)
        self._size = os.fstat(self._fd).st_size
        self._partial = {stream: b"" for stream in STREAMS}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log(self, stream: str, data: bytes) -> None:
        """Log a chunk of `stream` as it was read: whole lines now, the rest when it ends."""
        if stream not in self._partial:
            raise InvalidArgument(f"unknown log stream {stream!r}: use stdout or stderr")
        lines = (self._partial[stream] + data).split(b"\n")
        rest = lines.pop()  # after the last newline: a line not finished yet
        pieces = []
        for line in lines:
            if len(line) < MAX_LINE:
                pieces.append(line + b"\n")
            else:
                pieces += _cut_long(line)
                pieces[-1] += b"\n"
        while len(rest) >= MAX_LINE:
            pieces.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self._partial[stream] = rest
        if pieces:
            self._write(stream, pieces)

    def flush(self) -> None:
        """Write every unfinished line as it is, without a newline (the stream ended)."""
        for stream, rest in self._partial.items():
            if rest:
                self._partial[stream] = b""
                self._write(stream, [rest])

    def close(self) -> None:
        """Flush and close the file; closing twice is harmless."""
        if self._fd is None:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._fd = None

    def _write(self, stream: str, pieces: list[bytes]) -> None:
        """Encode `pieces` as entries and write them, one write(2) between two rotations."""
        if self._fd is None:
            raise MiniDockerError(f"log file {self.path} is closed")
        now = rfc3339_nano()
        batch: list[bytes] = []
        pending = 0
        for piece in pieces:
            entry = _encode(piece, stream, now)
            if self.max_size is not None and self._size + pending >= self.max_size:
                self._write_all(b"".join(batch))
                batch, pending = [], 0
                self._rotate()
            batch.append(entry)
            pending += len(entry)
        self._write_all(b"".join(batch))

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a regular file takes it all at once, unless the disk is full
            written = os.write(self._fd, view)
            self._size += written
            view = view[written:]

    def _rotate(self) -> None:
        """path.N-2 -> path.N-1, ..., path -> path.1, then a new empty path.

        With max_file 1 there is nowhere to keep the old lines: the file is
        emptied, as Docker does.
        """
        os.close(self._fd)
        self._fd = None
        for index in range(self.max_file - 1, 1, -1):
            older = f"{self.path}.{index - 1}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{index}")
        if self.max_file > 1:
            os.replace(self.path, f"{self.path}.1")
        self._fd = _open_for_append(self.path, truncate=True)
        self._size = 0


def _open_for_append(path: str, truncate: bool = False) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0)
    return os.open(path, flags, FILE_MODE)


def _cut_long(line: bytes) -> list[bytes]:
    """A line in pieces of at most MAX_LINE bytes (an empty line is one empty piece).

    A line of exactly MAX_LINE bytes fills Docker's buffer before its newline
    arrives, so its newline becomes an entry of its own: the same here.
    """
    pieces = [line[i:i + MAX_LINE] for i in range(0, len(line), MAX_LINE)]
    if not pieces or len(pieces[-1]) == MAX_LINE:
        pieces.append(b"")
    return pieces


def _encode(piece: bytes, stream: str, now: str) -> bytes:
    text = encode_basestring(piece.decode("utf-8", "replace"))
    return f'{{"log":{text},"stream":"{stream}","time":"{now}"}}\n'.encode()


def rfc3339_nano(ns: int | None = None) -> str:
    """A time (now by default), in ns since 1970, as RFC3339 with nanoseconds, UTC:
    2026-11-30T19:20:21.123456789Z, as Docker stamps log entries and stats."""
    seconds, nanos = divmod(time.time_ns() if ns is None else ns, 1_000_000_000)
    return f"{_date_and_time(seconds)}.{nanos:09d}Z"


@functools.lru_cache(maxsize=4)
def _date_and_time(seconds: int) -> str:
    """The whole-second part, worked out once per second however many lines arrive in it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


# --- reading -------------------------------------------------------------------------------


def read_logs(path: str, *, stdout: bool = True, stderr: bool = True, since: float | None = None,
              until: float | None = None, tail: int | None = None, follow: bool = False,
              is_running: Callable[[], bool] | None = None,
              poll: float = 0.05,
              pause: Callable[[float], object] = time.sleep) -> Iterator[LogEntry]:
    """The entries of the log at `path` and its rotated files, oldest first.

    since/until: unix times; entries outside [since, until] are left out.
    tail: only the last `tail` entries of those (None or negative: all).
    follow: then wait for new entries, every `poll` seconds, until an entry
    comes after `until` or `is_running()` returns False and all is read
    (with no `is_running`, until the caller stops iterating).
    pause: how to wait `poll` seconds; the engine passes one that also ends
    at the container's exit, so that a follower notices it at once.

    The log is opened now, not at the first entry asked for: a follower
    then reads to the end even if the container is removed meanwhile (an
    open file outlives its name), as `docker run --rm` needs.
    """
    reader = _LogReader(path)
    return _entries(reader, stdout=stdout, stderr=stderr, since=since, until=until, tail=tail,
                    follow=follow, is_running=is_running, poll=poll, pause=pause)


def _entries(reader: _LogReader, *, stdout: bool, stderr: bool, since: float | None,
             until: float | None, tail: int | None, follow: bool,
             is_running: Callable[[], bool] | None, poll: float,
             pause: Callable[[float], object]) -> Iterator[LogEntry]:
    streams = {name for name, wanted in (("stdout", stdout), ("stderr", stderr)) if wanted}

    def wanted(entry: LogEntry) -> bool:
        if entry.stream not in streams:
            return False
        if since is None and until is None:
            return True
        when = parse_timestamp(entry.time)
        return (since is None or when >= since) and (until is None or when <= until)

    try:
        backlog: Iterable[LogEntry] = filter(wanted, reader.backlog())
        if tail is not None and tail >= 0:
            backlog = deque(backlog, maxlen=tail) if tail else ()
        yield from backlog
        if not follow:
            return
        while True:
            running = is_running is None or is_running()
            new = reader.read_new(final=not running)
            for entry in new:
                if until is not None and parse_timestamp(entry.time) > until:
                    return
                if wanted(entry):
                    yield entry
            if not running or (until is not None and time.time() > until and not new):
                return
            if not new:
                pause(poll)
    finally:
        reader.close()  # the files opened and not read yet (a tail, a stop early)


class _LogReader:
    """Reads a log file that may be written and rotated at the same time.

    Names move under a reader's feet: between listing path.2 and opening
    it, a rotation may have made it path.3. So the reader never reads by
    name. It opens the current file and every rotated one at once, checks
    that no rotation came in between (each name still has the inode that
    was opened), and reads the open files: an open file keeps its content
    whatever its name becomes. When `path` names another inode, the writer
    has rotated: what remains in the old file is read, then, from a new
    such snapshot, the files rotated after it, then the new path. A reader
    that falls more rotations behind than there are files kept loses what
    was deleted, as a docker logs -f would.
    """

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.older, self.file = _snapshot(self.path)
        self.partial = b""  # the start of a line whose end has not been written yet
        self.last: int | None = None  # the inode of the newest file read from

    def backlog(self) -> Iterator[LogEntry]:
        """Every entry already there: the rotated files, then the current one to its end."""
        older, self.older = self.older, []
        for f in older:
            with f:
                self.last = os.fstat(f.fileno()).st_ino
                found = _parse_lines(f)
            yield from found
        yield from self.read_new(final=False)

    def close(self) -> None:
        for f in [*self.older, self.file]:
            if f is not None:
                f.close()
        self.older, self.file = [], None

    def read_new(self, final: bool) -> list[LogEntry]:
        """The entries written since the last call; `final`: the writer is done, so an
        unfinished last line will never be completed and is tried as it is."""
        found = self._drain()
        if self.file is None or _inode(self.path) != os.fstat(self.file.fileno()).st_ino:
            found += self._follow_rotation()
        if final and self.partial:
            found += _parse_lines([self.partial])
            self.partial = b""
        return found

    def _drain(self) -> list[LogEntry]:
        if self.file is None:
            return []
        info = os.fstat(self.file.fileno())
        self.last = info.st_ino
        if info.st_size < self.file.tell():
            self.file.seek(0)  # emptied in place (max_file 1): start again
            self.partial = b""
        data = self.file.read()
        if not data:
            return []
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        return _parse_lines(lines)

    def _follow_rotation(self) -> list[LogEntry]:
        """Switch to the new path, reading first the files rotated after the old one."""
        found: list[LogEntry] = []
        if self.file is not None:
            found += self._drain()  # what was written before the rename
            self.file.close()
            found += _parse_lines([self.partial]) if self.partial else []
            self.partial = b""
        older, self.file = _snapshot(self.path)
        inodes = [os.fstat(f.fileno()).st_ino for f in older]
        after = inodes.index(self.last) + 1 if self.last in inodes else 0
        for index, f in enumerate(older):
            with f:
                if index >= after:
                    found += _parse_lines(f)
                    self.last = inodes[index]
        if self.file is not None:
            self.last = os.fstat(self.file.fileno()).st_ino
        return found + self._drain()


def _snapshot(path: str) -> tuple[list[BinaryIO], BinaryIO | None]:
    """path's rotated files (oldest first) and path itself, opened together.

    Tried again until no rotation came between listing and opening: then
    every name still names the inode opened for it. A rotation always
    changes path's inode (the old one stays linked as path.1), so none can
    pass unseen.
    """
    while True:
        names = _rotated(path)
        files = [_open_for_reading(name) for name in [*names, path]]
        opened = [os.fstat(f.fileno()).st_ino if f else None for f in files]
        if _rotated(path) == names and [_inode(name) for name in [*names, path]] == opened \
                and all(files[:-1]):
            return files[:-1], files[-1]
        for f in files:
            if f is not None:
                f.close()


def _open_for_reading(path: str) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _rotated(path: str) -> list[str]:
    """path's rotated files, oldest (highest number) first."""
    numbered = []
    directory, base = os.path.split(path)
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    for name in names:  # not glob: it compiles a pattern for every new path
        suffix = name[len(base) + 1:] if name.startswith(base + ".") else ""
        if suffix.isdigit():
            numbered.append((int(suffix), os.path.join(directory, name)))
    return [name for _, name in sorted(numbered, reverse=True)]


def _parse_lines(lines: Iterable[bytes]) -> list[LogEntry]:
    """Entries from raw lines; a line that is not a whole entry is skipped."""
    found = []
    for line in lines:
        try:
            doc = json.loads(line)
            found.append(LogEntry(doc["stream"], doc["time"], doc["log"].encode()))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return found


def format_entry(entry: LogEntry, timestamps: bool) -> bytes:
    """An entry as `docker logs` prints it; with `timestamps` (-t), its time first."""
    return f"{entry.time} ".encode() + entry.data if timestamps else entry.data


def remove_logs(path: str) -> None:
    """Delete the log at `path` and its rotated files; missing ones are fine."""
    for name in [str(path), *_rotated(str(path))]:
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


# --- options -------------------------------------------------------------------------------

RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)(?:[Tt](\d\d)(?::(\d\d)(?::(\d\d)(\.\d{1,9})?)?)?)?"
                     r"([Zz]|[+-]\d\d:\d\d)?")
UNIX_SECONDS = re.compile(r"\d+(\.\d{1,9})?")
DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_size(text: str | int) -> int:
    """Bytes from a log option such as max-size: "10m", "1k", "2g", "100" (bytes).

    The units are docker's: powers of 1024, "m", "mb" and "MiB" alike.
    """
    try:
        size = parse_memory(text)
    except InvalidArgument:
        raise InvalidArgument(f"invalid size {str(text)!r}: use a number of bytes with an"
                              " optional unit, such as 100, 1k, 10m or 2g") from None
    if size <= 0:
        raise InvalidArgument(f"invalid size {str(text)!r}: must be a positive number")
    return size


def log_options(options: dict[str, str]) -> tuple[int | None, int]:
    """(max_size, max_file) from json-file's --log-opt pairs; unknown options are refused."""
    unknown = sorted(set(options) - {"max-size", "max-file"})
    if unknown:
        raise InvalidArgument(f"unknown log opt {unknown[0]!r} for json-file log driver")
    max_size = parse_size(options["max-size"]) if "max-size" in options else None
    text = options.get("max-file", "1")
    if not text.isdigit() or int(text) < 1:
        raise InvalidArgument(f"invalid max-file {text!r}: must be a whole number, at least 1")
    return max_size, int(text)


def parse_time(value: str | float, now: float | None = None) -> float:
    """A unix time from what `docker logs --since/--until` accept.

    A number of seconds since 1970 ("1700000000.5"), an RFC3339 date or
    time ("2026-11-30", "2026-11-30T19:20:21Z", with a fraction or an
    offset; without a zone, local time), or a duration back from `now`
    ("10m", "1h30m", "5s").
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    now = time.time() if now is None else now
    if DURATION_PART.match(text):
        parts = DURATION_PART.findall(text)
        if "".join(number + unit for number, unit in parts) == text:
            return now - sum(float(number) * DURATION_UNITS[unit] for number, unit in parts)
    if UNIX_SECONDS.fullmatch(text):
        return float(text)
    try:
        return parse_timestamp(text)
    except ValueError:
        raise InvalidArgument(f"invalid time {text!r}: use unix seconds (1700000000.5), RFC3339"
                              " (2026-11-30T19:20:21Z) or a duration (10m, 1h30m)") from None


def parse_timestamp(text: str) -> float:
    """Unix time of an RFC3339 timestamp (any fraction, Z or an offset; none: local time).

    ValueError if it is not one.
    """
    found = RFC3339.fullmatch(text)
    if not found:
        raise ValueError(f"not an RFC3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(part or 0) for part in found.groups()[:6])
    fields = (year, month, day, hour, minute, second)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ValueError(f"not an RFC3339 time: {text!r}")
    fraction = float(found[7]) if found[7] else 0.0
    zone = found[8]
    if zone is None:
        return time.mktime((*fields, 0, 0, -1)) + fraction
    offset = 0 if zone in "Zz" else (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 3600 + int(zone[4:]) * 60)
    return calendar.timegm((*fields, 0, 0, 0)) + fraction - offset
