"""`onysoft accounts create|show|topup|update|list`: balances."""

from __future__ import annotations

import argparse

from onysoft import ceilings, money
from onysoft.key_types import ACCOUNT_KINDS
from onysoft.operations import accounts
from onysoft.operations.access import cli_operator

from .output import UsageError, fields, output, table
from .values import parse_amount, parse_markup, parse_threshold


def _human(view: dict, title: str | None = None) -> str:
    text = fields([
        ("account_id", view["account_id"]),
        ("kind", view["kind"]),
        ("name", view["name"]),
        ("owner", view["owner"]),
        ("currency", view["currency"]),
        ("balance", f"{view['balance']} {view['currency']}"),
        ("topped up", f"{view['topped_up']} {view['currency']}"),
        ("markup", f"{view['markup_pct']}%"),
        ("shards", str(view["shards"])),
        ("max parallel", str(view["max_parallel"] or "no limit")),
        ("alert below", f"{view['alert_below']} {view['currency']}" if view["alert_below"] else None),
        ("balance alert", view["balance_alert"]),
        ("created_at", view["created_at"]),
        ("ceilings", _ceilings(view["ceilings"])),
    ])
    return f"{title}\n{text}" if title else text


def _ceilings(shown: dict) -> str:
    """One line: each ceiling (`*`: the key type's default), with the counts where they are kept."""
    def one(name: str) -> str | None:
        if shown[name] is None:
            return None
        used = shown.get(f"{name}_used")
        count = f" ({used} used)" if used is not None else ""
        return f"{name} {shown[name]}{'*' if shown[f'{name}_is_default'] else ''}{count}"
    return ", ".join(filter(None, map(one, ceilings.NAMES))) + "  (*: the key type's default)"


def _markup(args: argparse.Namespace) -> int | None:
    return parse_markup(args.markup) if args.markup is not None else None


def create(args: argparse.Namespace) -> int:
    view = accounts.create_account(cli_operator(), kind=args.kind, name=args.name or "", owner=args.owner,
                                   markup_bp=_markup(args), shards=args.shards)
    return output(args, view, lambda: _human(view, "Created account:"))


def show(args: argparse.Namespace) -> int:
    view = accounts.get_account(cli_operator(), args.account_id)
    return output(args, view, lambda: _human(view))


def topup(args: argparse.Namespace) -> int:
    micros = parse_amount(args.amount)
    view, _ = accounts.top_up(cli_operator(), args.account_id, micros)
    view.update(topup=money.format_micros(micros), topup_micros=micros)
    return output(args, view, lambda: _human(view, f"Added {view['topup']} {view['currency']} to "
                                                   f"{view['account_id']}:"))


def update(args: argparse.Namespace) -> int:
    given = {name: getattr(args, f"ceiling_{name}") for name in ceilings.NAMES}
    if args.markup is None and args.name is None and args.shards is None and args.alert_below is None \
            and args.max_parallel is None and all(value is None for value in given.values()):
        raise UsageError("nothing to change: give --markup, --name, --shards, --alert-below, --max-parallel "
                         "and/or --ceiling-…")
    if args.max_parallel is not None and args.max_parallel < 0:
        raise UsageError("--max-parallel must be 0 (no limit) or a positive number")
    for name, value in given.items():
        if value is not None and value < 0:
            raise UsageError(f"--ceiling-{name.replace('_', '-')} must be 0 (the default) or more")
    alert = parse_threshold(args.alert_below, "--alert-below") if args.alert_below is not None else None
    view = accounts.update_account(cli_operator(), args.account_id, markup_bp=_markup(args), name=args.name,
                                   shards=args.shards, alert_below_micros=alert, max_parallel=args.max_parallel,
                                   ceiling_values=given)
    return output(args, view, lambda: _human(view, "Updated account:"))


def list_(args: argparse.Namespace) -> int:
    """One page (--limit, --next) or, without --limit, every page in turn: by name, never a scan."""
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be a positive number")
    views, skipped, cursor = [], 0, args.next
    while True:
        found = accounts.list_accounts(cli_operator(), owner=args.owner, kind=args.kind, search=args.search,
                                       cursor=cursor, limit=args.limit)
        views += found["accounts"]
        skipped += found["skipped"]
        cursor = found["next"]
        if args.limit is not None or not cursor:
            break
    answer = {"accounts": views, "next": cursor, "skipped": skipped}

    def human() -> str:
        text = table(
            ["ACCOUNT_ID", "KIND", "NAME", "OWNER", "CURRENCY", "BALANCE", "MARKUP", "CREATED_AT", "CEILINGS"],
            [[v["account_id"], v["kind"], v["name"], v["owner"], v["currency"], v["balance"], f"{v['markup_pct']}%",
              v["created_at"], _ceilings_short(v["ceilings"])] for v in views],
            right=(5, 6),
        ) if views else "No accounts."
        if skipped:
            text += f"\n{skipped} unreadable account item(s) skipped (logged)."
        if cursor:
            text += f"\nMore: --next {cursor}"
        return text

    return output(args, answer, human)


def _ceilings_short(shown: dict) -> str:
    """rpm/tpm/max_parallel/keys/accounts, as a list column."""
    return "/".join("-" if shown[name] is None else str(shown[name]) for name in ceilings.NAMES)


CEILING_HELP = {
    "rpm": "the most requests per minute a tenant may give one of the account's keys",
    "tpm": "the most tokens per minute a tenant may give one key",
    "max_parallel": "the most requests in flight a tenant may give one key",
    "keys": "how many keys (not deleted) the account may have",
    "accounts": "how many accounts of this kind the account's owner (org or partner) may have",
}
SHARDS_HELP = "balance shards, 1-64: one busy account's holds spread over N items (docs/BILLING.md)"


def register(commands, leaf) -> None:
    group = commands.add_parser("accounts", help="create, show, top up, update and list accounts (balances)")
    sub = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(sub, "create", create, "create an account (its kind sets currency and markup)")
    p.add_argument("--kind", required=True, choices=ACCOUNT_KINDS)
    p.add_argument("--name", default="", help="a name for people")
    p.add_argument("--owner", metavar="ORG_OR_PARTNER_ID", help="the org (project) or partner that owns it")
    p.add_argument("--markup", metavar="PCT", help="markup in percent (30 means 30%%); default: the kind's")
    p.add_argument("--shards", type=int, metavar="N", help=SHARDS_HELP + " (default 1)")
    p = leaf(sub, "show", show, "show an account's balance, currency and markup")
    p.add_argument("account_id", metavar="ACCOUNT_ID")
    p = leaf(sub, "topup", topup, "add to an account's balance")
    p.add_argument("account_id", metavar="ACCOUNT_ID")
    p.add_argument("amount", metavar="AMOUNT", help="in the account's currency units, e.g. 12.5 (at most 6 decimals)")
    p = leaf(sub, "update", update, "change an account's markup, name, balance shards, balance alert or ceilings")
    p.add_argument("account_id", metavar="ACCOUNT_ID")
    p.add_argument("--markup", metavar="PCT", help="markup in percent (30 means 30%%)")
    p.add_argument("--name")
    p.add_argument("--shards", type=int, metavar="N", help=SHARDS_HELP)
    p.add_argument("--alert-below", metavar="AMOUNT",
                   help="a Balance Low event when the balance crosses below AMOUNT (the account's currency); 0: none")
    p.add_argument("--max-parallel", type=int, metavar="N",
                   help="requests in flight at once over all the account's keys; 0: no limit")
    for name, what in CEILING_HELP.items():
        p.add_argument(f"--ceiling-{name.replace('_', '-')}", dest=f"ceiling_{name}", type=int, metavar="N",
                       help=f"the platform's ceiling: {what}; 0 = back to the key type's default")
    p = leaf(sub, "list", list_, "list accounts by name (all, or one owner's), a page at a time with --limit")
    p.add_argument("--owner", metavar="ORG_OR_PARTNER_ID")
    p.add_argument("--kind", choices=ACCOUNT_KINDS)
    p.add_argument("--search", metavar="TEXT", help="names starting with TEXT (any case), or the account whose id "
                                                    "TEXT is")
    p.add_argument("--limit", type=int, metavar="N", help="one page of at most N accounts (1-1000), and its `next`")
    p.add_argument("--next", metavar="CURSOR", help="the page after the one whose `next` this is")
