"""`docker ps --filter` and `docker container prune --filter`: which containers match.

Filters come as docker-py passes them, a dict of names to a value or a list
of values: {"status": "exited", "label": ["app", "tier=web"]}. Values of one
filter are alternatives (any may match); different filters must all match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from mini_docker.engine.record import STATUSES, ContainerRecord
from mini_docker.errors import InvalidArgument

PS_FILTERS = ("id", "name", "label", "status", "exited", "ancestor", "before", "since")


def check_container_filters(filters: Mapping[str, Any] | None,
                            allowed: Sequence[str] = PS_FILTERS) -> dict[str, list[str]]:
    """The filters as lists of strings, each name and status checked."""
    checked: dict[str, list[str]] = {}
    for key, value in (filters or {}).items():
        if key not in allowed:
            raise InvalidArgument(f"invalid filter '{key}'")
        values = [value] if isinstance(value, (str, int, bool)) else list(value)
        checked[key] = [str(v) for v in values]
    for status in checked.get("status", []):
        if status not in STATUSES:
            raise InvalidArgument(f"invalid filter 'status={status}'")
    for code in checked.get("exited", []):
        if not code.lstrip("-").isdigit():
            raise InvalidArgument(f"invalid filter 'exited={code}'")
    return checked


def container_matches(record: ContainerRecord, filters: Mapping[str, list[str]]) -> bool:
    """Whether the container passes every filter."""
    for key, wanted in filters.items():
        if key == "id":
            ok = any(record.Id.startswith(w) for w in wanted)
        elif key == "name":  # a substring, as Docker matches names
            ok = any(w.lstrip("/") in record.Name for w in wanted)
        elif key == "label":
            ok = all(_label_matches(record.Config.get("Labels") or {}, w) for w in wanted)
        elif key == "status":
            ok = record.State.Status in wanted
        elif key == "exited":
            ok = record.State.Status == "exited" and str(record.State.ExitCode) in wanted
        elif key == "ancestor":
            ok = any(w in (record.Config["Image"], record.Image) or record.Image.startswith(
                "sha256:" + w) for w in wanted)
        elif key == "until":
            ok = all(record.Created < _timestamp(w) for w in wanted)
        else:  # before / since: relative to another container, by creation time
            ok = True  # resolved by the engine before matching (see Engine.list)
        if not ok:
            return False
    return True


def _label_matches(labels: Mapping[str, str], wanted: str) -> bool:
    key, has_value, value = wanted.partition("=")
    return key in labels and (not has_value or labels[key] == value)


def _timestamp(text: str) -> str:
    """An `until` value (unix seconds or RFC 3339) as a comparable RFC 3339 string."""
    from mini_docker.engine.logs import parse_time

    seconds = parse_time(text)
    stamp = datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return stamp + f".{int((seconds % 1) * 1e9):09d}Z"
