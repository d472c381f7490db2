"""Rendering: one JSON object on stdout (`--json`), or aligned text for people; and the CLI's exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

PROG = "onysoft"
EXIT_OK = 0
EXIT_FAILURE = 1  # DynamoDB unreachable or failing
EXIT_USAGE = 2  # bad input (as argparse's own errors)
_EMPTY = "-"


class UsageError(Exception):
    """Bad input found by the CLI itself: exit code 2."""


def write(text: str) -> None:
    try:
        sys.stdout.write(text + "\n")
    except UnicodeEncodeError:  # a terminal that cannot show "…" (display forms)
        sys.stdout.write(text.replace("…", "...").encode("ascii", "replace").decode("ascii") + "\n")


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def cell(value: Any) -> str:
    if value is None or value == "" or value == []:
        return _EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A plain-text table with aligned columns (columns in `right` are right-aligned: numbers)."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(values)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in cells)])


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """`label  value` lines, labels aligned."""
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label.ljust(width)}  {cell(value)}" for label, value in pairs)


def output(args: argparse.Namespace, document: dict, human: Callable[[], str]) -> int:
    if args.json:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        write(human())
    return EXIT_OK
