"""`onysoft keys create|update|list|rotate|delete`: API keys (a plaintext is shown once: at creation, at rotation)."""

from __future__ import annotations

import argparse

from onysoft.operations import catalog, keys
from onysoft.operations.access import cli_operator

from .output import UsageError, fields, output, table, warn
from .values import expiry, model_list, parse_amount, parse_duration


def create(args: argparse.Namespace) -> int:
    actor = cli_operator()
    expires_at = expiry(args)
    models = model_list(args.models)
    fallbacks = model_list(args.fallbacks)
    if models and fallbacks and not set(fallbacks) <= set(models):
        raise UsageError("--fallbacks must be models the key may use (--models)")
    spend_limit = parse_amount(args.spend_limit, "--spend-limit") if args.spend_limit is not None else None
    view = keys.create_key(actor, args.account, name=args.name or "", rpm=args.rpm, tpm=args.tpm, models=models,
                           expires_at=expires_at, spend_limit_micros=spend_limit, limit_reset=args.limit_reset,
                           fallbacks=fallbacks, max_parallel=args.max_parallel)
    for model in catalog.unknown_models(actor, list(dict.fromkeys([*(models or ()), *(fallbacks or ())]))):
        warn(f"{model} is not in the catalog (yet): requests for it fail until it is")

    def human() -> str:
        details = fields([
            ("key_id", view["key_id"]), ("type", view["type"]), ("account_id", view["account_id"]),
            ("currency", view["currency"]), ("name", view["name"]), ("display", view["display"]),
            ("expires_at", view["expires_at"] or "never"), ("rpm", view["rpm"] or "type default"),
            ("tpm", view["tpm"] or "type default"), ("max_parallel", view["max_parallel"] or "no limit"),
            ("models", view["models"] or "all"),
            ("fallbacks", ", ".join(view["fallbacks"] or ()) or "none"), ("created_at", view["created_at"]),
        ])
        return (f"{details}\n\nKey:\n\n    {view['key']}\n\n"
                "This key will not be shown again: store it now (clients read it from ONYSOFT_API_KEY).")

    return output(args, view, human)


def list_(args: argparse.Namespace) -> int:
    views = keys.list_keys(cli_operator(), args.account, include_deleted=args.all, with_state=True)["keys"]
    return output(args, {"keys": views}, lambda: table(
        ["KEY_ID", "DISPLAY", "NAME", "TYPE", "STATUS", "CREATED_AT", "LAST_USED_AT", "EXPIRES_AT", "REQUESTS",
         "SPEND"],
        [[v["key_id"], v["display"], v["name"], v["type"], v["status"], v["created_at"], v["last_used_at"],
          v["expires_at"], v["request_count"], f"{v['spend']} {v['currency']}"] for v in views],
        right=(8, 9),
    ) if views else f"No {'' if args.all else 'active '}keys on {args.account}.")


DEFAULT_GRACE = "24h"


def parse_grace(text: str) -> int:
    """--grace: a duration (90s, 15m, 12h, 30d) or `now` (0: the old secret stops at once)."""
    if text.strip().lower() in ("now", "0"):
        return 0
    return parse_duration(text, "--grace")


def rotate(args: argparse.Namespace) -> int:
    grace = parse_grace(args.grace)
    view, replayed = keys.rotate_key(cli_operator(), args.key_id, grace_seconds=grace,
                                     idempotency_key=args.idempotency_key)
    if replayed:
        warn(f"key {view['key_id']} was already rotated with this idempotency key: no new secret was made (the one "
             "made then was shown once, then; if it was lost, rotate again with a new idempotency key)")

    def human() -> str:
        if replayed:
            return f"Key {view['key_id']} ({view['display']}): already rotated at {view['rotated_at']}."
        until = "stopped working now" if grace == 0 else f"keeps working until {view['grace_until']}"
        return (f"Rotated key {view['key_id']} ({view['name'] or 'unnamed'}): same id, limits and history.\n"
                f"The previous secret {view['previous_display']} {until}.\n\nNew key:\n\n    {view['key']}\n\n"
                "This key will not be shown again: store it now (clients read it from ONYSOFT_API_KEY).")

    return output(args, view, human)


def delete(args: argparse.Namespace) -> int:
    view = keys.delete_key(cli_operator(), args.key_id)
    return output(args, view, lambda: f"Deleted key {view['key_id']} ({view['display']}) at {view['deleted_at']}: "
                                      "it can no longer authenticate.")


def _changes(args: argparse.Namespace) -> dict:
    """The flags given to `keys update`, as update_key's keywords (None removes a setting)."""
    changes: dict = {}
    if args.rpm is not None:
        changes["rpm"] = args.rpm or None
    if args.tpm is not None:
        changes["tpm"] = args.tpm or None
    if args.max_parallel is not None:
        changes["max_parallel"] = args.max_parallel or None
    if args.models is not None:
        changes["models"] = None if args.models.strip().lower() == "all" else model_list(args.models)
    if args.expires_at is not None and args.expires_at.strip().lower() == "never":
        changes["expires_at"] = None
    elif args.expires_in is not None or args.expires_at is not None:
        changes["expires_at"] = expiry(args)
    if args.spend_limit is not None:
        if args.spend_limit.strip().lower() == "none":
            changes.update(spend_limit_micros=None, limit_reset=None)
        else:
            changes["spend_limit_micros"] = parse_amount(args.spend_limit, "--spend-limit")
    if args.limit_reset is not None:
        changes["limit_reset"] = None if args.limit_reset == "never" else args.limit_reset
    return changes


def update(args: argparse.Namespace) -> int:
    changes = _changes(args)
    if not changes:
        raise UsageError("nothing to change: give --rpm, --tpm, --max-parallel, --models, --expires-in/--expires-at, "
                         "--spend-limit or --limit-reset")
    view = keys.update_key(cli_operator(), args.key_id, **changes)
    return output(args, view, lambda: f"Updated key {view['key_id']} ({view['display']}).")


def _limit_options(parser: argparse.ArgumentParser, *, changing: bool) -> None:
    """The limits a key is created with, or (`changing`) changed to: a value of 0, 'all', 'never' or 'none'
    then takes a limit back to the default."""
    parser.add_argument("--rpm", type=int, metavar="N", help="requests per minute; 0 = back to the type's default"
                        if changing else "requests per minute (default: the key type's)")
    parser.add_argument("--tpm", type=int, metavar="N", help="tokens per minute; 0 = back to the type's default"
                        if changing else "tokens per minute (default: the key type's)")
    parser.add_argument("--max-parallel", type=int, metavar="N",
                        help="requests in flight at once; 0 = no limit" if changing
                        else "requests in flight at once (default: no limit)")
    parser.add_argument("--models", metavar="M,M", help="allow only these models; 'all' removes the allow-list"
                        if changing else "allow only these models (provider/model, comma-separated)")
    expiry_group = parser.add_mutually_exclusive_group()
    expiry_group.add_argument("--expires-in", metavar="DURATION", help="like 90s, 15m, 12h or 30d")
    expiry_group.add_argument("--expires-at", metavar="TIME", help="an ISO 8601 time; 'never' removes the expiry"
                              if changing else "an ISO 8601 time, e.g. 2026-12-31T23:59:59Z")
    parser.add_argument("--spend-limit", "--limit", dest="spend_limit", metavar="AMOUNT",
                        help="most the key may spend, in the account's currency" + ("; 'none' removes it"
                                                                                    if changing else ""))
    parser.add_argument("--limit-reset", choices=("daily", "weekly", "monthly", "never") if changing
                        else ("daily", "weekly", "monthly"),
                        help="reset the spend limit each period; 'never' makes it a lifetime limit" if changing
                        else "reset the spend limit each period (default: a lifetime limit)")


def register(commands, leaf) -> None:
    group = commands.add_parser("keys", help="create, list, rotate and delete API keys")
    sub = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(sub, "create", create, "create a key (its type follows the account's kind); the key is shown once")
    p.add_argument("--account", required=True, metavar="ACCOUNT_ID")
    p.add_argument("--name", default="")
    p.add_argument("--fallbacks", metavar="M,M", help="default fallback models, tried in order when the requested "
                                                      "model fails (chat completions, responses)")
    _limit_options(p, changing=False)
    p = leaf(sub, "update", update, "change an existing key's limits (applied within the authorizer's cache "
                                    "time, 60 s by default)")
    p.add_argument("key_id", metavar="KEY_ID")
    _limit_options(p, changing=True)
    p = leaf(sub, "list", list_, "list an account's keys (display form only)")
    p.add_argument("--account", required=True, metavar="ACCOUNT_ID")
    p.add_argument("--all", action="store_true", help="include deleted keys")
    p = leaf(sub, "rotate", rotate, "give a key a new secret (shown once), keeping its id, limits and history; the "
                                    "old secret works until the grace ends")
    p.add_argument("key_id", metavar="KEY_ID")
    p.add_argument("--grace", default=DEFAULT_GRACE, metavar="DURATION",
                   help=f"how long the old secret keeps working, like 90s, 15m, 12h or 30d (at most 30d), or 'now' "
                        f"(default {DEFAULT_GRACE})")
    p.add_argument("--idempotency-key", metavar="KEY", help="a retry with the same key makes no second secret")
    p = leaf(sub, "delete", delete, "delete a key: it stops working at once")
    p.add_argument("key_id", metavar="KEY_ID")
