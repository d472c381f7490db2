"""`onysoft sweep [--older-than 15m]`: close stale holds now, as the scheduled sweeper does.
`onysoft sweep quarantined [--retry]`: the holds the sweeper quarantined after failing to close them (issue 23),
and, once their cause is fixed, closing them now."""

from __future__ import annotations

import argparse

from onysoft import sweeper

from .output import UsageError, fields, output, table
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
        (f"quarantined (failed {sweeper.MAX_SWEEP_ATTEMPTS} times)", result["quarantined"]),
        ("older than", f"{older_than} s"),
    ]))


def _raw(item: dict, name: str) -> str | None:
    value = item.get(name) or {}
    return next(iter(value.values()), None) if value else None


def _view(item: dict) -> dict:
    """A quarantined hold as the operator reads it (raw: the item may be one the model cannot read)."""
    hold = _raw(item, "hold_micros")
    return {"account_id": (_raw(item, "account_id") or "").partition("#")[0], "sk": _raw(item, "sk"),
            "request_id": _raw(item, "request_id"), "key_id": _raw(item, "key_id"),
            "created_at": _raw(item, "created_at"), "currency": _raw(item, "currency"),
            "hold_micros": int(hold) if hold and hold.isdigit() else hold, "sent": bool(_raw(item, "sent_at")),
            "sweep_attempts": int(_raw(item, "sweep_attempts") or 0), "sweep_error": _raw(item, "sweep_error"),
            "quarantined_at": _raw(item, "quarantined_at")}


def quarantined(args: argparse.Namespace) -> int:
    if args.retry:
        result = sweeper.retry_quarantined()
        return output(args, result, lambda: fields([(name.replace("_", " "), n) for name, n in result.items()]))
    holds = [_view(item) for item in sweeper.quarantined_holds()]
    return output(args, {"holds": holds}, lambda: table(
        ["ACCOUNT", "REQUEST", "CREATED", "HOLD", "TRIES", "QUARANTINED", "ERROR"],
        [[h["account_id"], h["request_id"], h["created_at"], h["hold_micros"], h["sweep_attempts"],
          h["quarantined_at"], h["sweep_error"]] for h in holds], right=[3, 4]) if holds
        else "no quarantined holds")


def register(commands, leaf) -> None:
    p = leaf(commands, "sweep", sweep, "close stale holds now, as the scheduled sweeper does: settle those "
                                       "whose request was sent upstream, release the others")
    p.add_argument("--older-than", metavar="DURATION",
                   help="holds older than this, like 20m (default 20m; never below the proxy's deadline + 1m)")
    sub = p.add_subparsers(dest="sweep_what", metavar="quarantined", required=False)
    q = leaf(sub, "quarantined", quarantined,
             f"holds the sweeper failed to close {sweeper.MAX_SWEEP_ATTEMPTS} runs in a row, set aside with their "
             "money still held; --retry closes them now (once their cause is fixed)")
    q.add_argument("--retry", action="store_true", help="close them now, as the sweeper would (at most once each)")
