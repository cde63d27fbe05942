"""`mini-docker check-config`: what this host supports for containers, and what is missing.

Like Docker's contrib/check-config.sh and lxc-checkconfig, it prints one line
per feature, grouped by layer, with a fix under every problem, and exits 1
when something required is missing. The checks themselves live in
`mini_docker.hostcheck`, which the daemon reuses; this module only turns a
`HostReport` into text or JSON.

The hidden options --proc, --sys, --path, --euid and --modules point the
checks at a fake host, so the tests can simulate a machine that lacks things.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mini_docker.hostcheck import SECTIONS, Check, HostReport, run_checks

NAME_WIDTH = 24  # the dotted column: the longest check name is 19 characters
COLOURS = {"ok": "32", "missing": "31", "warning": "33"}  # ANSI green, red, yellow


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mini-docker check-config",
        description="Report what this host supports for containers and what is missing.")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the problems")
    hidden = argparse.SUPPRESS  # for tests: check a fake host instead of this one
    parser.add_argument("--proc", default="/proc", help=hidden)
    parser.add_argument("--sys", default="/sys", help=hidden)
    parser.add_argument("--path", default=None, help=hidden)
    parser.add_argument("--euid", type=int, default=None, help=hidden)
    parser.add_argument("--modules", default="/lib/modules", help=hidden)
    return parser


def _paint(text: str, status: str, colour: bool) -> str:
    code = COLOURS.get(status)
    return f"\033[{code}m{text}\033[0m" if colour and code else text


def format_check(check: Check, colour: bool = False) -> list[str]:
    """The line (and the fix line under a problem) that show one check.

    colour: wrap the status in ANSI colour codes.
    """
    dots = "." * max(NAME_WIDTH - len(check.name), 3)
    if check.status == "info":
        verdict = check.detail
    else:
        verdict = _paint(check.status, check.status, colour)
        verdict += f" ({check.detail})" if check.detail else ""
    lines = [f"  {check.name} {dots} {verdict}".rstrip()]
    if check.fix and check.status in ("missing", "warning"):
        lines.append(f"  {' ' * NAME_WIDTH}  fix: {check.fix}")  # under the status
    return lines


def format_report(report: HostReport, quiet: bool = False, colour: bool = False) -> str:
    """The whole report as text: sections, checks, then the summary line.

    quiet: show only missing and warning checks (and the sections that hold them).
    colour: wrap each status in ANSI colour codes.
    """
    lines: list[str] = []
    for section in SECTIONS:
        checks = [c for c in report.checks if c.section == section
                  and (not quiet or c.status in ("missing", "warning"))]
        if checks:
            lines.append(section)
            for check in checks:
                lines += format_check(check, colour)
    lines.append(report.summary())
    return "\n".join(lines)


def _wants_colour() -> bool:
    """Colour only for a person at a terminal who has not asked for none (no-color.org)."""
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def main(argv: list[str]) -> int:
    """Run every check, print the report, and return 1 if something required is missing."""
    args = _parser().parse_args(argv)
    report = run_checks(proc=args.proc, sys=args.sys, path=args.path, euid=args.euid,
                        modules=args.modules)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report, quiet=args.quiet, colour=_wants_colour()))
    return 0 if report.ok else 1
