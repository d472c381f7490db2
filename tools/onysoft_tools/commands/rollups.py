"""`onysoft rollups quarantined`: usage stream records the rollup set aside whole because it could not count them
(issue 23: onysoft.rollup_quarantine); `onysoft rollups replay [--id ID]`: count them now, once the cause is fixed
(exactly once: the rollup's per-record markers)."""

from __future__ import annotations

import argparse

from onysoft import rollup_quarantine

from .output import fields, output, table


def quarantined(args: argparse.Namespace) -> int:
    records = rollup_quarantine.quarantined()
    document = {"records": records if args.full else [{k: v for k, v in r.items() if k != "record"}
                                                     for r in records]}
    return output(args, document, lambda: table(
        ["ID", "QUARANTINED", "TRIES", "REASON"],
        [[r["id"], r["quarantined_at"], r["attempts"], r["reason"]] for r in records], right=[2]) if records
        else "no records set aside")


def replay(args: argparse.Namespace) -> int:
    result = rollup_quarantine.replay(args.ids or None)
    return output(args, result, lambda: fields([
        ("replayed (counted now)", result["replayed"]), ("still set aside", result["still_quarantined"]),
        *((f"  {failure['id']}", failure["reason"]) for failure in result["failures"])]))


def register(commands, leaf) -> None:
    group = commands.add_parser("rollups", help="usage stream records the rollup set aside (quarantined, replay)")
    sub = group.add_subparsers(dest="rollups", metavar="COMMAND", required=True)
    p = leaf(sub, "quarantined", quarantined, "usage stream records the rollup could not count, kept whole")
    p.add_argument("--full", action="store_true", help="with each stream record itself (--json)")
    p = leaf(sub, "replay", replay, "count the records set aside now, through the rollup (exactly once); those "
                                    "that still fail stay set aside")
    p.add_argument("--id", dest="ids", action="append", metavar="ID", help="only this one (repeatable)")
