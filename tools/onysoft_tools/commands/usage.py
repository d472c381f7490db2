"""`onysoft usage --account ID`: usage records, newest first."""

from __future__ import annotations

import argparse

from onysoft.operations import usage as operations
from onysoft.operations.access import cli_operator

from .output import output, table


def usage(args: argparse.Namespace) -> int:
    views = operations.all_records(cli_operator(), args.account, limit=args.limit)["records"]
    return output(args, {"records": views}, lambda: table(
        ["CREATED_AT", "REQUEST_ID", "KEY_ID", "MODEL", "STATUS", "PROMPT", "COMPLETION", "CHARGE"],
        [[v["created_at"], v["request_id"], v["key_id"], v["model"], v["status"], v["prompt_tokens"],
          v["completion_tokens"], f"{v['charge']} {v['currency'] or ''}".rstrip()] for v in views],
        right=(5, 6, 7),
    ) if views else f"No usage on {args.account}.")


def register(commands, leaf) -> None:
    p = leaf(commands, "usage", usage, "list an account's usage records, newest first")
    p.add_argument("--account", required=True, metavar="ACCOUNT_ID")
    p.add_argument("--limit", type=int, metavar="N", help="at most N records (default: all)")
