"""`onysoft backfill`: add issue 23's index attributes to items written before them (idempotent, paged)."""

from __future__ import annotations

import argparse

from onysoft import backfill as job

from .output import fields, output


def backfill(args: argparse.Namespace) -> int:
    result = job.run()
    return output(args, result, lambda: fields([
        ("accounts read", result["accounts_seen"]), ("accounts given their listing keys", result["accounts_updated"]),
        ("audit records read", result["audit_records_seen"]),
        ("per-account audit copies written", result["audit_copies_written"]),
    ]))


def register(commands, leaf) -> None:
    leaf(commands, "backfill", backfill, "give items written before issue 23 what its indexes need: accounts their "
                                         "listing keys (the dashboard's pages by name), audit records their "
                                         "per-account copy; safe to run again")
