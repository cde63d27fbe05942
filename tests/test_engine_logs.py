"""The json-file log driver: the bytes it writes, rotation, and reading them back.

Pure file tests in a temporary directory: what Docker's json-file driver
would have on disk, line for line, and what `docker logs` would show.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time

import pytest

from mini_docker.engine import logs
from mini_docker.engine.logs import MAX_LINE, JsonFileLogger, LogEntry, read_logs
from mini_docker.errors import InvalidArgument

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


def entries_on_disk(path) -> list[dict]:
    with open(path, "rb") as f:
        return [json.loads(line) for line in f]


def write_entries(path, rows: list[tuple[str, str, str]]) -> None:
    """A log file written by hand: (stream, time, text) per line."""
    with open(path, "w") as f:
        f.writelines(json.dumps({"log": text, "stream": stream, "time": when}) + "\n"
                     for stream, when, text in rows)


def test_each_line_becomes_one_json_object_as_docker_writes_it(tmp_path):
    path = tmp_path / "c-json.log"
    with JsonFileLogger(str(path)) as logger:
        logger.log("stdout", b"hello\nworld\n")
    raw = path.read_bytes().splitlines()
    assert len(raw) == 2
    first = json.loads(raw[0])
    assert list(first) == ["log", "stream", "time"]
    assert first["log"] == "hello\n" and first["stream"] == "stdout"
    assert TIME.fullmatch(first["time"])
    assert raw[0].startswith(b'{"log":"hello\\n","stream":"stdout","time":"')
    assert abs(logs.parse_timestamp(first["time"]) - time.time()) < 5
    assert oct(path.stat().st_mode & 0o777) == "0o640"


def test_a_partial_line_waits_in_its_own_streams_buffer(tmp_path):
    path = tmp_path / "c-json.log"
    logger = JsonFileLogger(str(path))
    logger.log("stdout", b"hel")
    logger.log("stderr", b"oops\n")
    logger.log("stdout", b"lo\nwor")
    assert [(e["stream"], e["log"]) for e in entries_on_disk(path)] == [
        ("stderr", "oops\n"), ("stdout", "hello\n")]
    logger.close()
    assert entries_on_disk(path)[-1]["log"] == "wor"  # written without a newline on close
    logger.close()  # twice is harmless


def test_flush_writes_unfinished_lines_as_they_are(tmp_path):
    path = tmp_path / "c-json.log"
    with JsonFileLogger(str(path)) as logger:
        logger.log("stdout", b"prompt> ")
        logger.log("stderr", b"half")
        logger.flush()
        assert sorted(e["log"] for e in entries_on_disk(path)) == ["half", "prompt> "]
        logger.log("stdout", b"next\n")
    assert entries_on_disk(path)[-1]["log"] == "next\n"


def test_a_long_line_is_cut_into_16k_entries_only_the_last_with_a_newline(tmp_path):
    path = tmp_path / "c-json.log"
    with JsonFileLogger(str(path)) as logger:
        logger.log("stdout", b"a" * 40000 + b"\n")
        logger.log("stdout", b"b" * MAX_LINE + b"\n")  # fills the buffer before its newline
        logger.log("stdout", b"c" * 20000)  # no newline yet: the first 16 KiB go now
        assert len(entries_on_disk(path)) == 6
        logger.log("stdout", b"c" * 10 + b"\n")
    lengths = [len(e["log"]) for e in entries_on_disk(path)]
    assert lengths == [MAX_LINE, MAX_LINE, 40000 - 2 * MAX_LINE + 1, MAX_LINE, 1, MAX_LINE,
                       20010 - MAX_LINE + 1]
    pieces = [entry.data for entry in read_logs(str(path))]
    assert b"".join(pieces[:3]) == b"a" * 40000 + b"\n"


def test_output_that_is_not_utf8_is_kept_with_replacement_characters(tmp_path):
    path = tmp_path / "c-json.log"
    with JsonFileLogger(str(path)) as logger:
        logger.log("stderr", b"caf\xc3\xa9 \xff\xfe <tag> \x1b[0m\n")
    assert entries_on_disk(path)[0]["log"] == "café \ufffd\ufffd <tag> \x1b[0m\n"


def test_a_chunk_of_many_lines_reaches_the_file_in_one_write(tmp_path, monkeypatch):
    path = tmp_path / "c-json.log"
    writes = []
    real_write = os.write
    monkeypatch.setattr(logs.os, "write", lambda fd, data: writes.append(len(data)) or real_write(fd, data))
    with JsonFileLogger(str(path)) as logger:
        logger.log("stdout", b"".join(b"line %d\n" % i for i in range(100)))
    assert len(writes) == 1 and len(entries_on_disk(path)) == 100


def test_an_unknown_stream_or_bad_rotation_settings_are_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="stream"), JsonFileLogger(str(tmp_path / "a.log")) as logger:
        logger.log("stdin", b"x\n")
    with pytest.raises(InvalidArgument, match="max-size"):
        JsonFileLogger(str(tmp_path / "b.log"), max_size=0)
    with pytest.raises(InvalidArgument, match="max-file"):
        JsonFileLogger(str(tmp_path / "c.log"), max_size=100, max_file=0)


# --- rotation ------------------------------------------------------------------------------


def write_numbered(logger: JsonFileLogger, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        logger.log("stdout", b"line %05d\n" % n)


def test_rotation_keeps_max_file_files_each_about_max_size(tmp_path):
    path = tmp_path / "c-json.log"
    max_size = 1000
    with JsonFileLogger(str(path), max_size=max_size, max_file=3) as logger:
        write_numbered(logger, 200)
    names = sorted(os.listdir(tmp_path))
    assert names == ["c-json.log", "c-json.log.1", "c-json.log.2"]
    entry_size = len(path.read_bytes().splitlines()[0]) + 1
    for name in ("c-json.log.1", "c-json.log.2"):  # rotated once they had reached max_size
        assert max_size <= (tmp_path / name).stat().st_size < max_size + entry_size
    assert path.stat().st_size < max_size + entry_size
    numbers = [int(e.data.split()[1]) for e in read_logs(str(path))]
    assert numbers == list(range(numbers[0], 200))  # oldest first, nothing missing at the end
    assert (tmp_path / "c-json.log.2").read_bytes() < (tmp_path / "c-json.log.1").read_bytes()


def test_max_file_one_empties_the_file_instead_of_keeping_another(tmp_path):
    path = tmp_path / "c-json.log"
    with JsonFileLogger(str(path), max_size=500, max_file=1) as logger:
        write_numbered(logger, 100)
    assert os.listdir(tmp_path) == ["c-json.log"]
    assert path.stat().st_size < 600
    assert [e.data for e in read_logs(str(path))][-1] == b"line 00099\n"


def test_a_reopened_log_appends_and_counts_what_is_there(tmp_path):
    path = tmp_path / "c-json.log"
    with JsonFileLogger(str(path), max_size=300, max_file=2) as logger:
        write_numbered(logger, 3)
    with JsonFileLogger(str(path), max_size=300, max_file=2) as logger:
        write_numbered(logger, 3, start=3)
    numbers = [int(e.data.split()[1]) for e in read_logs(str(path))]
    assert numbers == list(range(6))
    assert (tmp_path / "c-json.log.1").exists()


def test_remove_logs_deletes_the_log_and_its_rotated_files_only(tmp_path):
    path = tmp_path / "c-json.log"
    with JsonFileLogger(str(path), max_size=200, max_file=4) as logger:
        write_numbered(logger, 50)
    (tmp_path / "c-json.log.notes").write_text("keep me")
    logs.remove_logs(str(path))
    assert os.listdir(tmp_path) == ["c-json.log.notes"]
    logs.remove_logs(str(path))  # nothing there: fine


# --- reading -------------------------------------------------------------------------------


@pytest.fixture
def mixed_log(tmp_path) -> str:
    """Six entries, one a second from 1700000000, stdout and stderr in turn."""
    path = tmp_path / "c-json.log"
    write_entries(path, [("stdout" if n % 2 == 0 else "stderr",
                          f"2023-11-14T22:13:{20 + n:02d}.000000001Z", f"entry {n}\n")
                         for n in range(6)])
    return str(path)


def texts(entries) -> list[str]:
    return [e.data.decode().strip() for e in entries]


def test_streams_can_be_read_apart(mixed_log):
    assert texts(read_logs(mixed_log, stderr=False)) == ["entry 0", "entry 2", "entry 4"]
    assert texts(read_logs(mixed_log, stdout=False)) == ["entry 1", "entry 3", "entry 5"]
    assert texts(read_logs(mixed_log, stdout=False, stderr=False)) == []


def test_since_and_until_keep_the_entries_between_them(mixed_log):
    start = 1700000000  # 2023-11-14T22:13:20Z
    assert texts(read_logs(mixed_log, since=start + 2)) == ["entry 2", "entry 3", "entry 4", "entry 5"]
    assert texts(read_logs(mixed_log, until=start + 1.5)) == ["entry 0", "entry 1"]
    assert texts(read_logs(mixed_log, since=start + 1, until=start + 3.5)) == [
        "entry 1", "entry 2", "entry 3"]


def test_tail_is_the_last_entries_of_the_chosen_streams(mixed_log):
    assert texts(read_logs(mixed_log, tail=2)) == ["entry 4", "entry 5"]
    assert texts(read_logs(mixed_log, tail=2, stdout=False)) == ["entry 3", "entry 5"]
    assert texts(read_logs(mixed_log, tail=0)) == []
    assert len(list(read_logs(mixed_log, tail=-1))) == 6
    assert len(list(read_logs(mixed_log, tail=100))) == 6


def test_tail_reaches_back_into_rotated_files(tmp_path):
    path = tmp_path / "c-json.log"
    with JsonFileLogger(str(path), max_size=200, max_file=5) as logger:
        write_numbered(logger, 12)
    assert len(os.listdir(tmp_path)) > 2
    assert texts(read_logs(str(path), tail=7)) == [f"line {n:05d}" for n in range(5, 12)]


def test_a_read_while_the_writer_rotates_sees_each_line_once_and_in_order(tmp_path):
    # Names shift at every rotation (path.1 becomes path.2): a reader that
    # went by name could read a file twice or skip one.
    path = tmp_path / "c-json.log"
    logger = JsonFileLogger(str(path), max_size=1000, max_file=200)  # nothing is dropped

    def writer() -> None:
        for n in range(0, 2400, 3):
            write_numbered(logger, 3, n)
    thread = threading.Thread(target=writer)
    thread.start()
    reads = []
    try:
        while thread.is_alive():
            reads.append([e.data for e in read_logs(str(path))])
    finally:
        thread.join()
        logger.close()
    assert len(os.listdir(tmp_path)) > 100 and len(reads) > 10
    for lines in reads:
        assert lines == [b"line %05d\n" % n for n in range(len(lines))]


def test_a_torn_or_garbled_line_is_skipped_not_raised(mixed_log):
    with open(mixed_log, "ab") as f:
        f.write(b'{"log":"half a line","str')  # a crash in the middle of a write
    with open(mixed_log, "r+b") as f:
        lines = f.read().split(b"\n")
        lines.insert(2, b"not json at all")
        lines.insert(3, b'{"log": 5, "stream": "stdout"}')
        f.seek(0)
        f.write(b"\n".join(lines))
    assert texts(read_logs(mixed_log)) == [f"entry {n}" for n in range(6)]


def test_a_missing_log_has_no_entries(tmp_path):
    assert list(read_logs(str(tmp_path / "none.log"))) == []


def test_format_entry_prints_like_docker_logs_with_and_without_timestamps():
    entry = LogEntry("stdout", "2026-11-30T19:20:21.123456789Z", b"hi\n")
    assert logs.format_entry(entry, timestamps=False) == b"hi\n"
    assert logs.format_entry(entry, timestamps=True) == b"2026-11-30T19:20:21.123456789Z hi\n"


# --- following -----------------------------------------------------------------------------


def test_follow_sees_every_line_across_rotations_and_ends_when_the_writer_stops(tmp_path):
    path = tmp_path / "c-json.log"
    total = 3000
    logger = JsonFileLogger(str(path), max_size=4096, max_file=10)
    write_numbered(logger, 5)  # already there when following starts

    def writer() -> None:
        for start in range(5, total, 25):
            write_numbered(logger, min(25, total - start), start)
            time.sleep(0.002)
        logger.log("stderr", b"no newline at the end")
        logger.close()
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = list(read_logs(str(path), follow=True, is_running=thread.is_alive, poll=0.005))
    finally:
        thread.join()
    assert len(os.listdir(tmp_path)) > 5  # it did rotate, many times
    lines = [e.data for e in seen]
    assert lines[:-1] == [b"line %05d\n" % n for n in range(total)]
    assert lines[-1] == b"no newline at the end"


def test_follow_with_tail_starts_from_the_last_entries_then_waits_for_more(tmp_path):
    path = tmp_path / "c-json.log"
    logger = JsonFileLogger(str(path))
    write_numbered(logger, 10)
    stopped = threading.Event()
    reader = read_logs(str(path), tail=2, follow=True, is_running=lambda: not stopped.is_set(),
                       poll=0.01)
    assert texts([next(reader), next(reader)]) == ["line 00008", "line 00009"]
    write_numbered(logger, 1, start=10)
    assert texts([next(reader)]) == ["line 00010"]
    write_numbered(logger, 1, start=11)
    logger.close()
    stopped.set()
    assert texts(reader) == ["line 00011"]


def test_follow_waits_for_a_log_that_does_not_exist_yet(tmp_path):
    path = tmp_path / "c-json.log"

    def writer() -> None:
        time.sleep(0.1)
        with JsonFileLogger(str(path)) as logger:
            logger.log("stdout", b"late\n")
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = list(read_logs(str(path), follow=True, is_running=thread.is_alive, poll=0.01))
    finally:
        thread.join()
    assert texts(seen) == ["late"]


def test_follow_ends_at_an_entry_after_until(tmp_path):
    path = tmp_path / "c-json.log"
    logger = JsonFileLogger(str(path))
    write_numbered(logger, 2)
    until = time.time() + 0.2
    start = time.monotonic()
    seen = list(read_logs(str(path), follow=True, until=until, poll=0.01))  # no is_running
    logger.close()
    assert texts(seen) == ["line 00000", "line 00001"]
    assert time.monotonic() - start < 2


# --- options -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("100", 100), ("1k", 1024), ("10m", 10 << 20), ("2g", 2 << 30), ("10MB", 10 << 20),
    ("1.5k", 1536), (4096, 4096)])
def test_parse_size_takes_dockers_units(text, expected):
    assert logs.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "10x", "-1", "0", "1..5m", "m"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(InvalidArgument, match="invalid size") as err:
        logs.parse_size(text)
    assert "\n" not in str(err.value)


def test_log_options_are_dockers_json_file_options():
    assert logs.log_options({}) == (None, 1)
    assert logs.log_options({"max-size": "10m", "max-file": "3"}) == (10 << 20, 3)
    with pytest.raises(InvalidArgument, match="compress"):
        logs.log_options({"compress": "true"})
    with pytest.raises(InvalidArgument, match="max-file"):
        logs.log_options({"max-size": "1m", "max-file": "0"})


NOW = 1_800_000_000.0


@pytest.mark.parametrize("value, expected", [
    ("1700000000", 1700000000.0),
    ("1700000000.5", 1700000000.5),
    (1700000000, 1700000000.0),
    (1700000000.25, 1700000000.25),
    ("2023-11-14T22:13:20Z", 1700000000.0),
    ("2023-11-14T22:13:20.123456789Z", 1700000000.123456789),
    ("2023-11-14T23:13:20+01:00", 1700000000.0),
    ("2023-11-14T21:13:20.5-01:00", 1700000000.5),
    ("10m", NOW - 600),
    ("1h30m", NOW - 5400),
    ("5s", NOW - 5),
    ("1.5h", NOW - 5400),
    ("250ms", NOW - 0.25),
])
def test_parse_time_takes_what_docker_logs_since_takes(value, expected):
    assert logs.parse_time(value, now=NOW) == pytest.approx(expected, abs=1e-6)


def test_parse_time_reads_a_time_without_a_zone_as_local_time():
    local = time.mktime((2023, 11, 14, 22, 13, 20, 0, 0, -1))
    assert logs.parse_time("2023-11-14T22:13:20") == local
    assert logs.parse_time("2023-11-14") == time.mktime((2023, 11, 14, 0, 0, 0, 0, 0, -1))


@pytest.mark.parametrize("value", ["", "yesterday", "10x", "1h30", "2023-13-01T00:00:00Z",
                                   "2023-11-14T25:00:00Z", "17000000001700.5.5", "-5m"])
def test_parse_time_refuses_anything_else_in_one_line(value):
    with pytest.raises(InvalidArgument, match="invalid time") as err:
        logs.parse_time(value, now=NOW)
    assert "\n" not in str(err.value)
