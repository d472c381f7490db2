"""`onysoft statement ACCOUNT_ID --month YYYY-MM [--json|--csv]`: an account's monthly statement."""

from __future__ import annotations

import argparse
import sys

from onysoft.operations import statements
from onysoft.operations.access import cli_operator

from .output import EXIT_OK, UsageError, fields, output, table


def _human(document: dict) -> str:
    currency = document["currency"]
    head = fields([
        ("account", f"{document['name'] or '-'} ({document['account_id']})"),
        ("month", f"{document['month']} ({document['status']}: "
                  f"{'final' if document['status'] == 'closed' else 'may still change'})"),
        ("currency", currency),
    ])
    lines = table(
        ["DATE", "DESCRIPTION", "REQUESTS", "AMOUNT", "IDEMPOTENCY_KEY", "BY"],
        [[(line["date"] or "")[:19].replace("T", " "), line["description"], line.get("requests"),
          f"{line['amount']} {currency}", line.get("idempotency_key"),
          line.get("made_by_person") or line.get("made_by")] for line in document["lines"]],
        right=(2, 3),
    )
    keys = table(["KEY", "NAME", "REQUESTS", "CHARGES"],
                 [[k["display"], k["name"], k["requests"], f"{k['charge']} {currency}"]
                  for k in document["charges_by_key"]], right=(2, 3)) if document["charges_by_key"] else "No charges."
    debts = f"\nDebts (overruns beyond their holds, in the charges): {document['debts']} {currency}" \
        if document["debts_micros"] else ""
    return f"{head}\n\n{lines}{debts}\n\nCharges by key:\n{keys}"


def statement(args: argparse.Namespace) -> int:
    if args.json and args.csv:
        raise UsageError("give --json or --csv, not both")
    document = statements.statement(cli_operator(), args.account_id, args.month)
    if args.csv:
        sys.stdout.write(statements.to_csv(document))
        return EXIT_OK
    return output(args, document, lambda: _human(document))


def register(commands, leaf) -> None:
    p = leaf(commands, "statement", statement,
             "an account's statement for a month: opening balance, top-ups, charges, debts, closing balance")
    p.add_argument("account_id", metavar="ACCOUNT_ID")
    p.add_argument("--month", required=True, metavar="YYYY-MM", help="a calendar month (UTC)")
    p.add_argument("--csv", action="store_true", help="print the statement's lines as CSV (and nothing else)")
