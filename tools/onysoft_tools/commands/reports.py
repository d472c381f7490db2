"""`onysoft report margin --from DATE --to DATE [--by partner|account|model|day]`: the platform's margin."""

from __future__ import annotations

import argparse

from onysoft import margin
from onysoft.operations import reports
from onysoft.operations.access import cli_operator
from onysoft.operations.reports import GROUP_FIELD

from .output import fields, output, table


def _pct(value) -> str:
    return "-" if value is None else f"{value}%"


def _human(document: dict) -> str:
    by = document["by"]
    rows = document["rows"]
    totals = document["totals"]
    title = f"Margin by {by}, {document['from']} to {document['to']} (UTC days, both included)"
    if not rows:
        return f"{title}\nNo usage in these days."
    body = table(
        [by.upper(), "CURRENCY", "REQUESTS", "CHARGED", "CHARGED_USD", "PROVIDER_COST_USD", "MARGIN_USD",
         "MARGIN"],
        [[row[GROUP_FIELD[by]] or ("(platform)" if by == "partner" else "-"), row["currency"], row["requests"],
          row["charged"], row["charged_usd"], row["provider_cost_usd"], row["margin_usd"], _pct(row["margin_pct"])]
         for row in rows],
        right=(2, 3, 4, 5, 6, 7),
    )
    charged = ", ".join(f"{c['charged']} {c['currency']}" for c in totals["charged_by_currency"])
    summary = fields([
        ("requests", totals["requests"]),
        ("charged", charged),
        ("charged (USD)", totals["charged_usd"]),
        ("provider cost (USD)", totals["provider_cost_usd"]),
        ("margin (USD)", f"{totals['margin_usd']} ({_pct(totals['margin_pct'])})"),
    ])
    note = (f"\n{totals['uncosted_requests']} settled requests were counted before the rollup kept USD figures: "
            "their charges are in CHARGED, not in the USD columns." if totals["uncosted_requests"] else "")
    return f"{title}\n{body}\n\n{summary}{note}"


def margin_report(args: argparse.Namespace) -> int:
    document = reports.margin_report(cli_operator(), start=args.start, end=args.end, by=args.by)
    return output(args, document, lambda: _human(document))


def register(commands, leaf) -> None:
    group = commands.add_parser("report", help="reports from the usage rollups (margin)")
    sub = group.add_subparsers(dest="report", metavar="REPORT", required=True)
    p = leaf(sub, "margin", margin_report, "what was charged, what the providers billed, and the margin")
    p.add_argument("--from", dest="start", required=True, metavar="DATE", help="first UTC day, YYYY-MM-DD")
    p.add_argument("--to", dest="end", required=True, metavar="DATE", help="last UTC day (included), YYYY-MM-DD")
    p.add_argument("--by", choices=margin.GROUPS, default="account", help="one row per … (default: account)")
