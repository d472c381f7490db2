"""`onysoft sweep [--older-than 15m]`: close stale holds now, as the scheduled sweeper does."""

from __future__ import annotations

import argparse

from onysoft import sweeper

from .output import UsageError, fields, output
from .values import parse_duration


def sweep(args: argparse.Namespace) -> int:
    older_than = (sweeper.DEFAULT_OLDER_THAN_SECONDS if args.older_than is None
                  else parse_duration(args.older_than, "--older-than"))
    try:
        result = {**sweeper.close_stale_holds(older_than_seconds=older_than), "older_than_seconds": older_than}
    except sweeper.TooYoung:
        raise UsageError(f"--older-than must be at least {sweeper.min_older_than_seconds():g} s (the proxy's deadline "
                         "ONYSOFT_PROXY_DEADLINE_SECONDS and a minute to settle): a younger hold may belong to a "
                         "request still running") from None
    return output(args, result, lambda: fields([
        ("settled (sent upstream, charged the hold)", result["settled"]),
        ("released (never sent upstream)", result["released"]), ("already closed", result["already_closed"]),
        ("could not close (left for the next run)", result["close_failures"]),
        ("older than", f"{older_than} s"),
    ]))


def register(commands, leaf) -> None:
    p = leaf(commands, "sweep", sweep, "close stale holds now, as the scheduled sweeper does: settle those "
                                       "whose request was sent upstream, release the others")
    p.add_argument("--older-than", metavar="DURATION",
                   help="holds older than this, like 20m (default 20m; never below the proxy's deadline + 1m)")
