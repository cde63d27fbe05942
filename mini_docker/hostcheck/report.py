"""The verdicts: one `Check` per feature, gathered into a `HostReport`.

The result of checking a host is plain data, so that each reader can show it
its own way: the command line prints it as text or JSON, the daemon's /info
serves it, a notebook displays it. A check says what it looked at, what it
found and, for a problem, the one step that fixes it; the report adds the
verdicts up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from mini_docker.hostcheck.cgroups import CgroupLayout

Status = Literal["ok", "missing", "warning", "info"]
"""ok: present. missing: required and absent. warning: optional and absent. info: a fact."""

SECTIONS = ("Kernel", "Namespaces", "cgroups", "Filesystems", "Networking", "Tools", "Security")


@dataclass(frozen=True)
class Check:
    """One verdict: `section` and `name` say what was checked, `detail` what was
    found, `fix` the one command or step that would turn a problem into ok."""

    section: str
    name: str
    status: Status
    detail: str = ""
    fix: str = ""


@dataclass
class HostReport:
    """Every check, in order, plus the cgroup layout they were judged against."""

    checks: list[Check]
    cgroups: CgroupLayout

    @property
    def missing(self) -> list[Check]:
        return [c for c in self.checks if c.status == "missing"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warning"]

    @property
    def ok(self) -> bool:
        """True when nothing required is missing."""
        return not self.missing

    def get(self, section: str, name: str) -> Check | None:
        """The check called `name` in `section`, or None."""
        return next((c for c in self.checks if (c.section, c.name) == (section, name)), None)

    def summary(self) -> str:
        """The last line of the report: counts, and the names of what is missing."""
        names = ", ".join(c.name for c in self.missing)
        missing = f"{len(self.missing)} required missing" + (f" ({names})" if names else "")
        count = len(self.warnings)
        return f"Summary: {missing}, {count} warning{'' if count == 1 else 's'}"

    def to_dict(self) -> dict:
        """A JSON-ready dict: sections -> check name -> {status, detail, fix}."""
        sections: dict[str, dict[str, dict[str, str]]] = {}
        for c in self.checks:
            sections.setdefault(c.section, {})[c.name] = {
                "status": c.status, "detail": c.detail, "fix": c.fix}
        return {"ok": self.ok, "summary": self.summary(),
                "missing": [f"{c.section}/{c.name}" for c in self.missing],
                "warnings": [f"{c.section}/{c.name}" for c in self.warnings],
                "cgroups": self.cgroups.to_dict(), "sections": sections}
