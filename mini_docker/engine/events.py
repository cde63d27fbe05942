"""Events: everything that happens to a container, as a stream anyone can follow.

`docker events` prints a line for each thing the engine does: create, start,
die (with the exit code), oom, kill (with the signal), stop, pause, unpause,
rename, destroy. The engine writes them here as they happen, and readers
either look back (`--since`, `--until`) or follow the stream live.

The log is in memory, as dockerd's is: the last MAX_EVENTS events, and a
queue per live reader, so a slow reader never holds the engine up (a reader
that falls more than a queue behind loses the oldest events, as Docker's
does). Each event has Docker's shape, so the API server can send it as is:

    {"Type": "container", "Action": "die", "Actor": {"ID": "3f2a...",
     "Attributes": {"name": "web", "image": "busybox", "exitCode": "0"}},
     "scope": "local", "time": 1764530421, "timeNano": 1764530421123456789,
     "status": "die", "id": "3f2a...", "from": "busybox"}
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mini_docker.errors import InvalidArgument

MAX_EVENTS = 1024  # kept for --since
QUEUE_SIZE = 4096  # per live reader
FILTERS = ("type", "event", "container", "image", "label")


def make_event(kind: str, action: str, actor_id: str, attributes: Mapping[str, str]) -> dict:
    """An event in the Engine API's shape, stamped now."""
    now = time.time_ns()
    event: dict[str, Any] = {"Type": kind, "Action": action,
                             "Actor": {"ID": actor_id, "Attributes": dict(attributes)},
                             "scope": "local", "time": now // 1_000_000_000, "timeNano": now}
    if kind == "container":  # the older fields, still sent by dockerd for containers
        event.update(status=action, id=actor_id, **({"from": attributes["image"]}
                                                   if "image" in attributes else {}))
    return event


def check_filters(filters: Mapping[str, str | Sequence[str]] | None) -> dict[str, list[str]]:
    """Filters as docker-py passes them ({"event": "die"} or lists), checked."""
    checked: dict[str, list[str]] = {}
    for key, value in (filters or {}).items():
        if key not in FILTERS:
            raise InvalidArgument(f"invalid filter '{key}'")
        checked[key] = [value] if isinstance(value, str) else list(value)
    return checked


def matches(event: dict, filters: Mapping[str, list[str]]) -> bool:
    """Whether `event` passes every filter; values of one filter are alternatives."""
    actor = event["Actor"]
    attributes = actor["Attributes"]
    for key, wanted in filters.items():
        if key == "type":
            ok = event["Type"] in wanted
        elif key == "event":  # "die" matches "exec_start: sh" style actions by their verb too
            ok = event["Action"] in wanted or event["Action"].split(":")[0] in wanted
        elif key == "container":
            ok = event["Type"] == "container" and any(
                w in (actor["ID"], attributes.get("name")) or actor["ID"].startswith(w)
                for w in wanted)
        elif key == "image":
            ok = attributes.get("image") in wanted
        else:  # label: "key" or "key=value"
            ok = any((w.partition("=")[0] in attributes) if "=" not in w else
                     attributes.get(w.partition("=")[0]) == w.partition("=")[2]
                     for w in wanted)
        if not ok:
            return False
    return True


class EventLog:
    """The engine's events: recent ones kept, and a queue for each live reader."""

    def __init__(self) -> None:
        self._recent: deque[dict] = deque(maxlen=MAX_EVENTS)
        self._readers: list[queue.Queue] = []
        self._lock = threading.Lock()

    def emit(self, kind: str, action: str, actor_id: str, **attributes: str) -> dict:
        event = make_event(kind, action, actor_id, attributes)
        with self._lock:
            self._recent.append(event)
            for reader in self._readers:
                try:
                    reader.put_nowait(event)
                except queue.Full:  # a reader too far behind loses its oldest event
                    reader.get_nowait()
                    reader.put_nowait(event)
        return event

    def stream(self, *, since: float | None = None, until: float | None = None,
               filters: Mapping[str, str | Sequence[str]] | None = None,
               follow: bool = True) -> Iterator[dict]:
        """Events from `since` (unix seconds; None: only new ones) until `until`.

        With an `until` in the past, or follow=False, the iterator ends after
        the recorded events; otherwise it waits for new ones (and ends at
        `until`, if given). Close it to stop following.
        """
        checked = check_filters(filters)
        since_ns = None if since is None else int(since * 1e9)
        until_ns = None if until is None else int(until * 1e9)
        live: queue.Queue = queue.Queue(QUEUE_SIZE)
        with self._lock:
            past = [e for e in self._recent if since_ns is not None and e["timeNano"] >= since_ns]
            if follow:
                self._readers.append(live)
        try:
            for event in past:
                if until_ns is not None and event["timeNano"] > until_ns:
                    return
                if matches(event, checked):
                    yield event
            if not follow or (until_ns is not None and time.time_ns() > until_ns):
                return
            while True:
                timeout = None if until_ns is None else max(0, (until_ns - time.time_ns()) / 1e9)
                try:
                    event = live.get(timeout=timeout if timeout is None else min(timeout, 1.0))
                except queue.Empty:
                    if until_ns is not None and time.time_ns() > until_ns:
                        return
                    continue
                if until_ns is not None and event["timeNano"] > until_ns:
                    return
                if matches(event, checked):
                    yield event
        finally:
            with self._lock:
                if live in self._readers:
                    self._readers.remove(live)
