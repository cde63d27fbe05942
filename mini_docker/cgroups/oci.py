"""Reading the OCI runtime spec's linux.resources into `Resources`.

A runtime gets its limits as JSON, in config.json:

    "linux": {"resources": {
        "memory": {"limit": 536870912, "swap": 536870912},
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000},
        "pids": {"limit": 100},
        "devices": [{"allow": false, "access": "rwm"}]}}

JSON arrives from someone else, so every value is checked for its type and
every rejection names its JSON path ("linux.resources.memory.limit: must be
an integer"). A key the spec defines but these drivers do not apply
(swappiness, realtime CPU time, hugepage limits...) is refused when it asks
for something, rather than dropped in silence; set to its default it
passes, since runc's and docker's configs carry such keys.
"""

from __future__ import annotations

from mini_docker.cgroups.resources import (DeviceRule, Resources, ThrottleDevice,
                                           validate_pids_limit)
from mini_docker.errors import InvalidArgument

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the cost of importing typing
if TYPE_CHECKING:
    from typing import Any


def resources_from_oci(doc: Any) -> Resources:
    """`Resources` from a linux.resources object; InvalidArgument naming the path of a bad value."""
    return _OciReader(doc).resources()


# What each OCI object may hold that these drivers do not apply, with the
# values that mean "nothing asked", so that a config saying nothing passes.
UNSUPPORTED = {
    "memory": ("kernel", "kernelTCP", "swappiness", "disableOOMKiller", "useHierarchy",
               "checkBeforeUpdate"),
    "cpu": ("realtimeRuntime", "realtimePeriod", "idle", "burst"),
    "blockIO": ("leafWeight", "weightDevice"),
    "": ("hugepageLimits", "network", "rdma", "unified"),
}
SUPPORTED = {
    "memory": ("limit", "reservation", "swap"),
    "cpu": ("shares", "quota", "period", "cpus", "mems"),
    "pids": ("limit",),
    "blockIO": ("weight", "throttleReadBpsDevice", "throttleWriteBpsDevice",
                "throttleReadIOPSDevice", "throttleWriteIOPSDevice"),
    "": ("devices", "memory", "cpu", "pids", "blockIO"),
}


class _OciReader:
    """Walks linux.resources, naming the JSON path of whatever it rejects."""

    def __init__(self, doc: Any) -> None:
        self.doc = self._object(doc, "")

    def _fail(self, path: str, message: str) -> InvalidArgument:
        return InvalidArgument(f"linux.resources{path}: {message}")

    def _object(self, value: Any, path: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._fail(path, f"must be an object, not {type(value).__name__}")
        section = path.rsplit(".", 1)[-1]
        for key, item in value.items():
            if key in UNSUPPORTED.get(section, ()):
                if item not in (None, False, 0, [], {}):
                    raise self._fail(f"{path}.{key}", "is not supported by mini_docker's cgroup drivers")
            elif key not in SUPPORTED.get(section, ()):
                raise self._fail(f"{path}.{key}", "unknown key")
        return value

    def _int(self, section: dict[str, Any], key: str, path: str, zero_unset: bool = True) -> int | None:
        value = section.get(key)
        if value is None or (zero_unset and value == 0):
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(f"{path}.{key}", f"must be an integer, not {value!r}")
        return value

    def _str(self, section: dict[str, Any], key: str, path: str) -> str | None:
        value = section.get(key)
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise self._fail(f"{path}.{key}", f"must be a string, not {value!r}")
        return value

    def _throttles(self, block: dict[str, Any], key: str) -> tuple[ThrottleDevice, ...]:
        entries = block.get(key) or []
        if not isinstance(entries, list):
            raise self._fail(f".blockIO.{key}", "must be a list")
        found = []
        for i, entry in enumerate(entries):
            path = f".blockIO.{key}[{i}]"
            if not isinstance(entry, dict):
                raise self._fail(path, "must be an object")
            numbers = [self._int(entry, k, path, zero_unset=False) for k in ("major", "minor", "rate")]
            if None in numbers:
                raise self._fail(path, "needs major, minor and rate")
            found.append(ThrottleDevice(*numbers))  # type: ignore[arg-type]
        return tuple(found)

    def _devices(self) -> tuple[DeviceRule, ...]:
        entries = self.doc.get("devices") or []
        if not isinstance(entries, list):
            raise self._fail(".devices", "must be a list")
        rules = []
        for i, entry in enumerate(entries):
            path = f".devices[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("allow"), bool):
                raise self._fail(path, "must be an object with a boolean 'allow'")
            numbers = [self._int(entry, k, path, zero_unset=False) for k in ("major", "minor")]
            major, minor = (None if n is None or n == -1 else n for n in numbers)
            rules.append(DeviceRule(entry["allow"], self._str(entry, "type", path) or "a",
                                    major, minor, self._str(entry, "access", path) or "rwm"))
        return tuple(rules)

    def resources(self) -> Resources:
        memory = self._object(self.doc.get("memory"), ".memory")
        cpu = self._object(self.doc.get("cpu"), ".cpu")
        pids = self._object(self.doc.get("pids"), ".pids")
        block = self._object(self.doc.get("blockIO"), ".blockIO")
        pids_limit = self._int(pids, "limit", ".pids", zero_unset=False)
        if pids_limit is not None:
            try:
                validate_pids_limit(pids_limit)
            except InvalidArgument as err:
                raise self._fail(".pids.limit", str(err)) from None
        return Resources(
            memory=self._int(memory, "limit", ".memory"),
            memory_reservation=self._int(memory, "reservation", ".memory"),
            memory_swap=self._int(memory, "swap", ".memory"),
            cpu_shares=self._int(cpu, "shares", ".cpu"),
            cpu_quota=self._int(cpu, "quota", ".cpu"),
            cpu_period=self._int(cpu, "period", ".cpu"),
            cpuset_cpus=self._str(cpu, "cpus", ".cpu"),
            cpuset_mems=self._str(cpu, "mems", ".cpu"),
            pids_limit=pids_limit,
            blkio_weight=self._int(block, "weight", ".blockIO"),
            throttle_read_bps=self._throttles(block, "throttleReadBpsDevice"),
            throttle_write_bps=self._throttles(block, "throttleWriteBpsDevice"),
            throttle_read_iops=self._throttles(block, "throttleReadIOPSDevice"),
            throttle_write_iops=self._throttles(block, "throttleWriteIOPSDevice"),
            devices=self._devices(),
        )
