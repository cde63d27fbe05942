"""Checks for exercises/05-containers.ipynb: resolving names, restart policies, detach keys."""

from __future__ import annotations

import hashlib
import random

import pytest

from mini_docker.engine import names
from mini_docker.errors import InvalidArgument, NotFound

NOTEBOOK = "05-containers"


def container_id(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


# Task 1

WEB, CACHE, WORKER = (container_id(n) for n in ("web", "cache", "worker"))
NAMES = {"web": WEB, "cache": CACHE, "worker": WORKER}
IDS = [WEB, CACHE, WORKER]


def test_task1_a_full_id_and_a_name(exercise):
    for ref, wanted in ((WEB, WEB), (CACHE, CACHE), ("web", WEB), ("worker", WORKER),
                        ("/cache", CACHE), ("/web", WEB)):
        found = exercise.resolve(ref, dict(NAMES), list(IDS))
        assert found == wanted, f"resolve({ref!r}) gave {found!r}, not {wanted!r}"


def test_task1_a_unique_id_prefix(exercise):
    for full in IDS:
        for length in (1, 4, 12, 63):
            prefix = full[:length]
            if sum(i.startswith(prefix) for i in IDS) == 1:
                found = exercise.resolve(prefix, dict(NAMES), list(IDS))
                assert found == full, f"resolve({prefix!r}) gave {found!r}, not {full!r}"


def test_task1_an_ambiguous_prefix_is_an_error_not_a_guess(exercise):
    a, b = "3f2a" + "0" * 60, "3f2a" + "1" * 60
    with pytest.raises(InvalidArgument, match="multiple IDs found"):
        exercise.resolve("3f2a", {"one": a, "two": b}, [a, b])
    assert exercise.resolve("3f2a1", {"one": a, "two": b}, [a, b]) == b, (
        "one more digit makes the prefix unique")


@pytest.mark.parametrize("ref", ["nosuch", "", "/", "web2", "WEB", WEB[:6].upper(),
                                 "ffff" * 16, "/" + WEB[:6]])
def test_task1_what_matches_nothing_is_not_found(exercise, ref):
    with pytest.raises(NotFound, match="No such container"):
        exercise.resolve(ref, dict(NAMES), list(IDS))


def test_task1_a_name_beats_an_id_prefix(exercise):
    named_cafe, other = container_id("named cafe"), "cafe" + container_id("x")[4:]
    found = exercise.resolve("cafe", {"cafe": named_cafe, "other": other}, [named_cafe, other])
    assert found == named_cafe, (
        "a container is named 'cafe' and another's ID starts with 'cafe': the exact name wins")


def test_task1_agrees_with_mini_docker(exercise):
    rng = random.Random(5)
    ids = [container_id(f"c{n}") for n in range(40)]
    named = {f"box-{n}": i for n, i in enumerate(ids)}
    refs = [*named, *ids, *(i[:rng.randint(1, 3)] for i in ids), *("/" + n for n in named)]
    for ref in refs:
        try:
            wanted = names.resolve(ref, named, ids)
        except (NotFound, InvalidArgument) as err:
            with pytest.raises(type(err)):
                exercise.resolve(ref, dict(named), list(ids))
        else:
            assert exercise.resolve(ref, dict(named), list(ids)) == wanted, ref


# Task 2

def test_task2_no_always_and_unless_stopped(exercise):
    for code in (0, 1, 137):
        assert exercise.should_restart("no", code, 0, False) is False, f"'no' restarted ({code})"
        assert exercise.should_restart("always", code, 5, False) is True, (
            f"'always' did not restart after exit code {code}")
        assert exercise.should_restart("unless-stopped", code, 5, False) is True


def test_task2_a_container_the_user_stopped_stays_stopped(exercise):
    for policy in ("no", "always", "unless-stopped", "on-failure", "on-failure:3"):
        assert exercise.should_restart(policy, 137, 0, True) is False, (
            f"{policy}: restarted a container that docker stop stopped")


def test_task2_on_failure_restarts_only_after_a_failure(exercise):
    assert exercise.should_restart("on-failure", 0, 0, False) is False, "exit code 0 is success"
    for code in (1, 2, 137, 255):
        assert exercise.should_restart("on-failure", code, 0, False) is True
    assert exercise.should_restart("on-failure", 1, 1000, False) is True, "no count: no limit"


def test_task2_on_failure_counts_its_restarts(exercise):
    results = [exercise.should_restart("on-failure:2", 3, n, False) for n in range(5)]
    assert results == [True, True, False, False, False], (
        f"on-failure:2 after 0, 1, 2, 3 and 4 restarts: {results}; it allows two restarts in all")
    assert exercise.should_restart("on-failure:2", 0, 0, False) is False


def test_task2_the_first_wait_is_100_ms(exercise):
    assert exercise.backoff(0, 0.5) == pytest.approx(0.1)
    assert exercise.backoff(0.0, 0.0) == pytest.approx(0.1)


def test_task2_the_wait_doubles(exercise):
    waits, wait = [], 0.0
    for _ in range(6):
        wait = exercise.backoff(wait, 0.2)
        waits.append(wait)
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2]), waits


def test_task2_the_wait_stops_at_a_minute(exercise):
    wait = 0.0
    for _ in range(30):
        wait = exercise.backoff(wait, 1.0)
        assert wait <= 60, f"waited {wait} s: the back-off is capped at 60 s"
    assert wait == pytest.approx(60)
    assert exercise.backoff(51.2, 1.0) == pytest.approx(60)


def test_task2_a_run_of_10_seconds_resets_the_wait(exercise):
    assert exercise.backoff(6.4, 9.9) == pytest.approx(12.8), "9.9 s is still a crash loop"
    assert exercise.backoff(6.4, 10.0) == pytest.approx(0.1), (
        "a run of 10 s or more starts the back-off again at 0.1 s")
    assert exercise.backoff(60, 3600) == pytest.approx(0.1)


# Task 3

KEYS = b"\x10\x11"  # Ctrl-P Ctrl-Q


def test_task3_typing_goes_through(exercise):
    assert exercise.watch_for(b"ls -l\r", KEYS) == (b"ls -l\r", b"", False)
    assert exercise.watch_for(b"", KEYS) == (b"", b"", False)
    assert exercise.watch_for(b"\x11\x10\x11", KEYS)[2] is True
    assert exercise.watch_for(b"vi\x11x\r", KEYS) == (b"vi\x11x\r", b"", False), (
        "Ctrl-Q alone is not the start of the sequence")


def test_task3_the_keys_detach(exercise):
    assert exercise.watch_for(KEYS, KEYS) == (b"", b"", True)
    assert exercise.watch_for(b"exit" + KEYS + b"more", KEYS) == (b"exit", b"", True), (
        "what comes before the keys is sent; what comes after is dropped")


def test_task3_a_possible_start_is_held_back(exercise):
    send, hold, detach = exercise.watch_for(b"ls\x10", KEYS)
    assert (send, hold, detach) == (b"ls", b"\x10", False), (
        "a Ctrl-P at the end of a read may be the start of the sequence: hold it back")
    assert exercise.watch_for(hold + b"\x11", KEYS) == (b"", b"", True), (
        "the Ctrl-Q of the next read completes it")
    send, hold, detach = exercise.watch_for(b"\x10", KEYS)
    assert exercise.watch_for(hold + b"x", KEYS) == (b"\x10x", b"", False), (
        "a held Ctrl-P that turns out not to start the sequence is sent after all")


def test_task3_other_detach_keys(exercise):
    ctrl_a_d = b"\x01d"  # --detach-keys ctrl-a,d
    assert exercise.watch_for(b"top\x01d", ctrl_a_d) == (b"top", b"", True)
    assert exercise.watch_for(b"\x01x", ctrl_a_d) == (b"\x01x", b"", False)
    assert exercise.watch_for(b"ab\x1acd", b"\x1a") == (b"ab", b"", True), "one key alone"
