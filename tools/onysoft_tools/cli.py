"""`onysoft`: the operator's command line (DESIGN.md, "CLI contract": names, flags and JSON fields are a contract).

    onysoft dev ...                                   the local gateway (onysoft_tools.dev)
    onysoft accounts create|show|topup|update|list    balances
    onysoft keys create|list|delete                   API keys (the plaintext is shown once, at creation)
    onysoft usage --account ID                        usage records, newest first
    onysoft catalog set|list                          models and their USD prices per million tokens
    onysoft fx set|show                               the USD→TRY rate
    onysoft sweep [--older-than 15m]                  close stale holds now (what the scheduled sweeper does)
    onysoft users create | token                      dashboard sign-ins (the Cognito user pool)

Every command takes --state-dir (a local gateway's dev.env), or --endpoint-url/--region and the
ONYSOFT_TABLE_* variables for AWS. With --json a command prints exactly one JSON object on stdout.
Bad input: `onysoft: error: …` on stderr and exit code 2. DynamoDB unreachable or failing: exit code 1.

Imports of the `onysoft` package (PynamoDB, botocore) happen inside the commands: `onysoft --help`
and `onysoft dev` do not pay for what they do not use.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

PROG = "onysoft"
EXIT_OK = 0
EXIT_FAILURE = 1  # DynamoDB unreachable or failing
EXIT_USAGE = 2  # bad input (as argparse's own errors)

_EXPIRES_IN = re.compile(r"(\d{1,9})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EMPTY = "-"


class UsageError(Exception):
    """Bad input found by the CLI itself: exit code 2."""


# ---------------------------------------------------------------------------------------------- output


def _write(text: str) -> None:
    try:
        sys.stdout.write(text + "\n")
    except UnicodeEncodeError:  # a terminal that cannot show "…" (display forms)
        sys.stdout.write(text.replace("…", "...").encode("ascii", "replace").decode("ascii") + "\n")


def _emit_json(document: dict) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def _cell(value: Any) -> str:
    if value is None or value == "" or value == []:
        return _EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A plain-text table with aligned columns (columns in `right` are right-aligned: numbers)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(values)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in cells)])


def _fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """`label  value` lines, labels aligned."""
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label.ljust(width)}  {_cell(value)}" for label, value in pairs)


def _output(args: argparse.Namespace, document: dict, human: Callable[[], str]) -> int:
    if args.json:
        _emit_json(document)
    else:
        _write(human())
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- views


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def account_view(account) -> dict:
    from onysoft import balances, money
    from onysoft.key_types import key_type_for_account_kind

    balance = balances.total(account)  # the sum of its shards
    topped_up = int(account.topped_up_micros or 0)
    return {
        "account_id": account.account_id,
        "kind": account.kind,
        "key_type": key_type_for_account_kind(account.kind).name,
        "name": account.name or "",
        "owner": account.owner or None,
        "currency": account.currency,
        "balance": money.format_micros(balance),
        "balance_micros": balance,
        "topped_up": money.format_micros(topped_up),
        "topped_up_micros": topped_up,
        "markup_pct": money.markup_pct(int(account.markup_bp)),
        "markup_bp": int(account.markup_bp),
        "shards": balances.count_of(account),
        "created_at": account.created_at,
    }


def _account_human(view: dict, title: str | None = None) -> str:
    text = _fields([
        ("account_id", view["account_id"]),
        ("kind", view["kind"]),
        ("name", view["name"]),
        ("owner", view["owner"]),
        ("currency", view["currency"]),
        ("balance", f"{view['balance']} {view['currency']}"),
        ("topped up", f"{view['topped_up']} {view['currency']}"),
        ("markup", f"{view['markup_pct']}%"),
        ("shards", str(view["shards"])),
        ("created_at", view["created_at"]),
    ])
    return f"{title}\n{text}" if title else text


def key_view(record) -> dict:
    """A key record as lists show it: the display form, never the key (only its hash is stored anyway)."""
    from onysoft import money

    spend = int(record.spend_micros or 0)
    spend_limit = _int(record.spend_limit_micros)
    return {
        "key_id": record.key_id,
        "display": record.display,
        "name": record.name or "",
        "type": record.key_type,
        "account_id": record.account_id,
        "currency": record.currency,
        "status": record.status,
        "created_at": record.created_at,
        "last_used_at": record.last_used_at or None,
        "expires_at": record.expires_at or None,
        "deleted_at": record.deleted_at or None,
        "request_count": int(record.request_count or 0),
        "spend": money.format_micros(spend),
        "spend_micros": spend,
        "rpm": _int(record.rpm),
        "tpm": _int(record.tpm),
        "models": list(record.models) if record.models else None,
        "spend_limit": money.format_micros(spend_limit) if spend_limit is not None else None,
        "spend_limit_micros": spend_limit,
        "limit_reset": record.limit_reset or None,
    }


def usage_view(record) -> dict:
    from onysoft import money

    charge = int(record.charge_micros or 0)
    return {
        "request_id": record.request_id,
        "key_id": record.key_id,
        "model": record.model,
        "endpoint": record.endpoint,
        "status": record.status,
        "stream": record.stream == "true" if record.stream is not None else None,
        "prompt_tokens": int(record.prompt_tokens or 0),
        "completion_tokens": int(record.completion_tokens or 0),
        "currency": record.currency,
        "charge_micros": charge,
        "charge": money.format_micros(charge),
        "hold_micros": int(record.hold_micros or 0),
        "provider_cost_usd": record.provider_cost_usd,
        "input_usd_per_mtok": record.input_usd_per_mtok,
        "output_usd_per_mtok": record.output_usd_per_mtok,
        "markup_pct": money.markup_pct(int(record.markup_bp)) if record.markup_bp is not None else None,
        "fx_rate": record.fx_rate,
        "fx_rate_at": record.fx_rate_at,
        "usage_estimated": record.usage_estimated == "true",  # tokens estimated (cut stream, nonsense usage…)
        "cached_tokens": int(record.cached_tokens or 0),
        "cache_write_tokens": int(record.cache_write_tokens or 0),
        "reasoning_tokens": int(record.reasoning_tokens or 0),
        "cached_input_usd_per_mtok": record.cached_input_usd_per_mtok,
        "cache_write_usd_per_mtok": record.cache_write_usd_per_mtok,
        "overrun": record.overrun == "true",  # the provider reported more than the hold: charged in full
        "overrun_micros": int(record.overrun_micros or 0),
        "uncharged_micros": int(record.uncharged_micros or 0),  # records from before overruns were charged
        "sent_at": record.sent_at,
        "error_code": record.error_code,
        "error_message": record.error_message,
        "created_at": record.created_at,
        "settled_at": record.settled_at,
    }


def model_view(price) -> dict:
    return {
        "model": price.model,
        "provider": price.provider,
        "upstream_model": price.upstream_model,
        "input_usd_per_mtok": str(price.input_usd_per_mtok),
        "output_usd_per_mtok": str(price.output_usd_per_mtok),
        "enabled": price.enabled,
        "max_output_tokens": price.max_output_tokens,
        "cached_input_usd_per_mtok": _optional_str(price.cached_input_usd_per_mtok),
        "cache_write_usd_per_mtok": _optional_str(price.cache_write_usd_per_mtok),
        "tokens_per_image": price.tokens_per_image,
        "updated_at": price.created_at or None,
    }


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


# ---------------------------------------------------------------------------------------------- parsing values


def parse_markup(text: str) -> int:
    """--markup PCT → basis points (bad input → UsageError)."""
    from onysoft import money

    try:
        return money.parse_markup_pct(text)
    except money.MoneyError as exc:
        raise UsageError(str(exc)) from None


def parse_expires_in(text: str, now=None):
    """'90s', '15m', '12h', '30d' → the UTC datetime that far from now."""
    from datetime import timedelta

    from onysoft import clock

    match = _EXPIRES_IN.fullmatch(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"--expires-in must be a positive whole number with a unit s, m, h or d "
                         f"(like 90s, 15m, 12h, 30d); got {text!r}")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        return (now or clock.utc_now()) + timedelta(seconds=seconds)
    except OverflowError:
        raise UsageError(f"--expires-in {text!r} is too far in the future") from None


def parse_expires_at(text: str):
    from onysoft import clock

    try:
        return clock.parse_iso(text.strip())
    except ValueError:
        raise UsageError(f"--expires-at must be an ISO 8601 time like 2026-12-31T23:59:59Z; got {text!r}") from None


def _expiry(args: argparse.Namespace) -> str | None:
    from onysoft import clock

    if args.expires_in is not None:
        moment = parse_expires_in(args.expires_in)
    elif args.expires_at is not None:
        moment = parse_expires_at(args.expires_at)
    else:
        return None
    expires_at = clock.to_iso(moment)
    if expires_at <= clock.now_iso():
        raise UsageError(f"the expiry time {expires_at} is in the past")
    return expires_at


def _model_list(text: str | None) -> list[str] | None:
    from onysoft import catalog

    if text is None:
        return None
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise UsageError("--models needs at least one model name (provider/model, comma-separated)")
    for model in models:
        try:
            catalog.split_model_name(model)
        except catalog.CatalogError as exc:
            raise UsageError(str(exc)) from None
    return list(dict.fromkeys(models))


# ---------------------------------------------------------------------------------------------- accounts


SHARDS_HELP = "balance shards, 1-64: one busy account's holds spread over N items (docs/BILLING.md)"


def cmd_accounts_create(args: argparse.Namespace) -> int:
    from onysoft import audit
    from onysoft.accounts import create_account

    markup_bp = parse_markup(args.markup) if args.markup is not None else None
    account = create_account(args.kind, name=args.name or "", owner=args.owner, markup_bp=markup_bp,
                             companions=audit.on_account_create(audit.cli_actor()), shards=args.shards)
    view = account_view(account)
    return _output(args, view, lambda: _account_human(view, "Created account:"))


def cmd_accounts_show(args: argparse.Namespace) -> int:
    from onysoft.accounts import get_account

    view = account_view(get_account(args.account_id))
    return _output(args, view, lambda: _account_human(view))


def cmd_accounts_topup(args: argparse.Namespace) -> int:
    from onysoft import audit, money
    from onysoft.accounts import top_up

    try:
        micros = money.parse_amount(args.amount)
    except money.MoneyError as exc:
        raise UsageError(str(exc)) from None
    view = account_view(top_up(args.account_id, micros, companions=audit.on_topup(audit.cli_actor(), micros)))
    view["topup"] = money.format_micros(micros)
    view["topup_micros"] = micros
    return _output(args, view, lambda: _account_human(
        view, f"Added {view['topup']} {view['currency']} to {view['account_id']}:"))


def cmd_accounts_update(args: argparse.Namespace) -> int:
    from onysoft import audit
    from onysoft.accounts import get_account, update_account

    if args.markup is None and args.name is None and args.shards is None:
        raise UsageError("nothing to change: give --markup, --name and/or --shards")
    markup_bp = parse_markup(args.markup) if args.markup is not None else None
    audited = audit.on_account_update(audit.cli_actor(), get_account(args.account_id), markup_bp=markup_bp,
                                      name=args.name)
    update_account(args.account_id, markup_bp=markup_bp, name=args.name, companions=audited, shards=args.shards)
    view = account_view(get_account(args.account_id))
    return _output(args, view, lambda: _account_human(view, "Updated account:"))


def cmd_accounts_list(args: argparse.Namespace) -> int:
    from onysoft.models import Account
    from onysoft.principals import accounts_of_owner

    accounts = accounts_of_owner(args.owner) if args.owner else Account.scan(Account.kind.exists())  # no shards
    views = sorted((account_view(a) for a in accounts if not args.kind or a.kind == args.kind),
                   key=lambda v: (v["created_at"], v["account_id"]))
    return _output(args, {"accounts": views}, lambda: _table(
        ["ACCOUNT_ID", "KIND", "NAME", "OWNER", "CURRENCY", "BALANCE", "MARKUP", "CREATED_AT"],
        [[v["account_id"], v["kind"], v["name"], v["owner"], v["currency"], v["balance"], f"{v['markup_pct']}%",
          v["created_at"]] for v in views],
        right=(5, 6),
    ) if views else "No accounts.")


# ---------------------------------------------------------------------------------------------- keys


def cmd_keys_create(args: argparse.Namespace) -> int:
    from onysoft import audit, catalog, money
    from onysoft.accounts import get_account
    from onysoft.api_keys import create_key

    account = get_account(args.account)  # unknown account: exit 2 before anything else
    expires_at = _expiry(args)
    models = _model_list(args.models)
    spend_limit = None
    if args.spend_limit is not None:
        try:
            spend_limit = money.parse_amount(args.spend_limit)
        except money.MoneyError as exc:
            raise UsageError(f"--spend-limit: {exc}") from None
    for model in models or ():
        if catalog.get_model(model) is None:
            print(f"{PROG}: warning: {model} is not in the catalog (yet): requests for it fail until it is",
                  file=sys.stderr)
    created = create_key(account.account_id, name=args.name or "", rpm=args.rpm, tpm=args.tpm, models=models,
                         expires_at=expires_at, spend_limit_micros=spend_limit, limit_reset=args.limit_reset,
                         companions=audit.on_key_create(audit.cli_actor(), account))
    view = {"key": created.plaintext, **key_view(created.record)}

    def human() -> str:
        details = _fields([
            ("key_id", view["key_id"]), ("type", view["type"]), ("account_id", view["account_id"]),
            ("currency", view["currency"]), ("name", view["name"]), ("display", view["display"]),
            ("expires_at", view["expires_at"] or "never"), ("rpm", view["rpm"] or "type default"),
            ("tpm", view["tpm"] or "type default"), ("models", view["models"] or "all"),
            ("created_at", view["created_at"]),
        ])
        return (f"{details}\n\nKey:\n\n    {view['key']}\n\n"
                "This key will not be shown again: store it now (clients read it from ONYSOFT_API_KEY).")

    return _output(args, view, human)


def cmd_keys_list(args: argparse.Namespace) -> int:
    from onysoft.accounts import get_account
    from onysoft.api_keys import list_keys

    get_account(args.account)  # unknown account: exit 2, not an empty list
    views = [_with_usage(key_view(r), r) for r in list_keys(args.account, include_deleted=args.all)]
    views.sort(key=lambda v: (v["created_at"], v["key_id"]))
    return _output(args, {"keys": views}, lambda: _table(
        ["KEY_ID", "DISPLAY", "NAME", "TYPE", "STATUS", "CREATED_AT", "LAST_USED_AT", "EXPIRES_AT", "REQUESTS",
         "SPEND"],
        [[v["key_id"], v["display"], v["name"], v["type"], v["status"], v["created_at"], v["last_used_at"],
          v["expires_at"], v["request_count"], f"{v['spend']} {v['currency']}"] for v in views],
        right=(8, 9),
    ) if views else f"No {'' if args.all else 'active '}keys on {args.account}.")


def _with_usage(view: dict, record) -> dict:
    """The key's effective limits and its use of them now (this minute's window, this spend period)."""
    from onysoft import money, rate_limits, spend_limits

    rpm, tpm = rate_limits.effective_limits(record.key_type, record.rpm, record.tpm)
    window = rate_limits.current_window()
    used = rate_limits.read_usage(record.key_id, window)
    view["limits"] = {"rpm": rpm, "tpm": tpm}
    view["usage"] = {"requests_this_minute": used.requests, "tokens_this_minute": used.tokens}
    if record.spend_limit_micros:
        spent = spend_limits.read_spent(record.key_id, spend_limits.period_start(record.limit_reset))
        view["usage"].update(spend_this_period=money.format_micros(spent), spend_this_period_micros=spent)
    return view


def cmd_keys_delete(args: argparse.Namespace) -> int:
    from onysoft import audit
    from onysoft.accounts import get_account
    from onysoft.api_keys import delete_key, find_by_key_id

    account = get_account(find_by_key_id(args.key_id).account_id)
    record = delete_key(args.key_id, companions=audit.on_key_delete(audit.cli_actor(), account))
    view = {"key_id": record.key_id, "status": record.status, "deleted_at": record.deleted_at,
            "account_id": record.account_id, "display": record.display}
    return _output(args, view, lambda: f"Deleted key {view['key_id']} ({view['display']}) at {view['deleted_at']}: "
                                       "it can no longer authenticate.")


def cmd_keys_update(args: argparse.Namespace) -> int:
    from onysoft import money
    from onysoft.api_keys import UNSET, update_key_settings

    changes: dict = {}
    if args.rpm is not None:
        changes["rpm"] = args.rpm or None
    if args.tpm is not None:
        changes["tpm"] = args.tpm or None
    if args.models is not None:
        changes["models"] = None if args.models.strip().lower() == "all" else _model_list(args.models)
    if args.expires_at is not None and args.expires_at.strip().lower() == "never":
        changes["expires_at"] = None
    elif args.expires_in is not None or args.expires_at is not None:
        changes["expires_at"] = _expiry(args)
    if args.spend_limit is not None:
        if args.spend_limit.strip().lower() == "none":
            changes["spend_limit_micros"] = None
            changes["limit_reset"] = None
        else:
            try:
                changes["spend_limit_micros"] = money.parse_amount(args.spend_limit)
            except money.MoneyError as exc:
                raise UsageError(f"--spend-limit: {exc}") from None
    if args.limit_reset is not None:
        changes["limit_reset"] = None if args.limit_reset == "never" else args.limit_reset
    if not changes:
        raise UsageError("nothing to change: give --rpm, --tpm, --models, --expires-in/--expires-at, "
                         "--spend-limit or --limit-reset")
    record = update_key_settings(args.key_id, **{k: changes.get(k, UNSET) for k in changes})
    view = key_view(record)
    return _output(args, view, lambda: f"Updated key {view['key_id']} ({view['display']}).")


def _user_pool():
    from onysoft_tools.local import cognito

    try:
        return cognito.Pool.from_env()
    except LookupError as exc:
        raise UsageError(str(exc)) from None


def cmd_token(args: argparse.Namespace) -> int:
    """An ID token from the user pool's InitiateAuth, as the dashboard gets one. `--principal` (local pools
    only) first makes (or resets) a sign-in for that principal with a fresh random password."""
    import secrets
    from datetime import timedelta

    from onysoft import clock, principals
    from onysoft_tools.local import cognito

    pool = _user_pool()
    if args.principal:
        if not pool.endpoint:
            raise UsageError("--principal works with a local gateway's user pool only; in AWS give --email and "
                             "--password")
        try:
            principals.parse(args.principal)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        email = f"{args.principal.replace(':', '.')}@principals.onysoft.local"
        password = secrets.token_urlsafe(18) + "aA1"
        try:
            cognito.create_user(pool, principal=args.principal, email=email, password=password)
        except pool.client().exceptions.UsernameExistsException:
            pool.client().admin_set_user_password(UserPoolId=pool.pool_id, Username=email, Password=password,
                                                  Permanent=True)
    elif args.email and args.password:
        email, password = args.email, args.password
    else:
        raise UsageError("give --email and --password (or, with a local gateway, --principal)")
    try:
        result = cognito.initiate_auth(pool, email, password)
    except cognito.SignInError as exc:
        raise UsageError(str(exc)) from None
    claims = cognito.verify(pool, result["IdToken"]) if pool.endpoint else {}
    expires_at = clock.to_iso(clock.utc_now() + timedelta(seconds=int(result["ExpiresIn"])))
    view = {"token": result["IdToken"], "principal": claims.get(cognito.PRINCIPAL_CLAIM, args.principal),
            "email": email, "expires_at": expires_at}
    return _output(args, view, lambda: result["IdToken"])


def cmd_users_create(args: argparse.Namespace) -> int:
    """A dashboard sign-in: AdminCreateUser plus a permanent password, in the local pool or AWS's."""
    from botocore.exceptions import ClientError

    from onysoft import principals
    from onysoft_tools import settings
    from onysoft_tools.local import cognito

    pool = _user_pool()
    try:
        principals.parse(args.principal)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        view = cognito.create_user(pool, principal=args.principal, email=args.email, password=args.password)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "UsernameExistsException":
            raise UsageError(f"a sign-in with the email {args.email} already exists") from None
        if error.get("Code") in ("InvalidPasswordException", "InvalidParameterException"):
            raise UsageError(error.get("Message") or error.get("Code")) from None
        raise
    if pool.endpoint:  # the local pool lives in memory: kept for the next `onysoft dev`
        cognito.save_user(settings.state_dir(args.state_dir), principal=args.principal, email=args.email,
                          password=args.password)
    view["user_pool_id"] = pool.pool_id
    return _output(args, view, lambda: f"Created sign-in {args.email} acting as {args.principal}.")


# ---------------------------------------------------------------------------------------------- usage


def cmd_usage(args: argparse.Namespace) -> int:
    from onysoft import usage_shards
    from onysoft.accounts import get_account

    account = get_account(args.account)
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be a positive number")
    views = [usage_view(r) for r in usage_shards.newest_first(account, limit=args.limit)]  # over its shards
    return _output(args, {"records": views}, lambda: _table(
        ["CREATED_AT", "REQUEST_ID", "KEY_ID", "MODEL", "STATUS", "PROMPT", "COMPLETION", "CHARGE"],
        [[v["created_at"], v["request_id"], v["key_id"], v["model"], v["status"], v["prompt_tokens"],
          v["completion_tokens"], f"{v['charge']} {v['currency'] or ''}".rstrip()] for v in views],
        right=(5, 6, 7),
    ) if views else f"No usage on {args.account}.")


# ---------------------------------------------------------------------------------------------- catalog, fx


def cmd_catalog_set(args: argparse.Namespace) -> int:
    from onysoft import catalog

    for flag, value in (("--max-output-tokens", args.max_output_tokens), ("--tokens-per-image", args.tokens_per_image)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be a positive number")
    price = catalog.set_model(
        args.model, input_usd_per_mtok=args.input_usd_per_mtok, output_usd_per_mtok=args.output_usd_per_mtok,
        provider=args.provider, upstream_model=args.upstream_model, enabled=not args.disable,
        max_output_tokens=args.max_output_tokens, cached_input_usd_per_mtok=args.cached_input_usd_per_mtok,
        cache_write_usd_per_mtok=args.cache_write_usd_per_mtok, tokens_per_image=args.tokens_per_image,
    )
    view = model_view(price)
    return _output(args, view, lambda: _fields([
        ("model", view["model"]), ("provider", view["provider"]), ("upstream_model", view["upstream_model"]),
        ("input", f"{view['input_usd_per_mtok']} USD / 1M tokens"),
        ("output", f"{view['output_usd_per_mtok']} USD / 1M tokens"),
        ("cached input", f"{view['cached_input_usd_per_mtok'] or view['input_usd_per_mtok']} USD / 1M tokens"),
        ("cache write", f"{view['cache_write_usd_per_mtok'] or view['input_usd_per_mtok']} USD / 1M tokens"),
        ("enabled", view["enabled"]), ("max_output_tokens", view["max_output_tokens"] or "default"),
        ("tokens_per_image", view["tokens_per_image"] or "default"),
        ("updated_at", view["updated_at"]),
    ]))


def cmd_catalog_list(args: argparse.Namespace) -> int:
    from onysoft import catalog

    views = sorted((model_view(p) for p in catalog.list_models(enabled_only=False)), key=lambda v: v["model"])
    return _output(args, {"models": views}, lambda: _table(
        ["MODEL", "PROVIDER", "UPSTREAM_MODEL", "INPUT_USD/MTOK", "OUTPUT_USD/MTOK", "ENABLED", "UPDATED_AT"],
        [[v["model"], v["provider"], v["upstream_model"], v["input_usd_per_mtok"], v["output_usd_per_mtok"],
          v["enabled"], v["updated_at"]] for v in views],
        right=(3, 4),
    ) if views else "The catalog has no models.")


def _fx_human(view: dict) -> str:
    if view["rate"] is None:
        return f"No {view['pair']} rate is set."
    return f"{view['pair']} {view['rate']} (updated {view['updated_at']})"


def cmd_fx_set(args: argparse.Namespace) -> int:
    from onysoft import catalog

    rate, updated_at = catalog.set_fx(args.pair, args.rate)
    view = {"pair": args.pair.upper(), "rate": str(rate), "updated_at": updated_at}
    return _output(args, view, lambda: _fx_human(view))


def cmd_fx_show(args: argparse.Namespace) -> int:
    from onysoft import catalog

    pair = args.pair.upper()
    found = catalog.get_fx(pair)
    view = {"pair": pair, "rate": str(found[0]) if found else None, "updated_at": (found[1] or None) if found else None}
    return _output(args, view, lambda: _fx_human(view))


# ---------------------------------------------------------------------------------------------- sweep


def parse_duration(text: str, flag: str) -> int:
    """'90s', '15m', '2h', '1d' → seconds (bad input → UsageError)."""
    match = _EXPIRES_IN.fullmatch(text.strip())
    if not match:
        raise UsageError(f"{flag} must be a duration like 90s, 15m, 2h or 1d; got {text!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def cmd_sweep(args: argparse.Namespace) -> int:
    from onysoft import sweeper

    older_than = (sweeper.DEFAULT_OLDER_THAN_SECONDS if args.older_than is None
                  else parse_duration(args.older_than, "--older-than"))
    result = {**sweeper.close_stale_holds(older_than_seconds=older_than), "older_than_seconds": older_than}
    return _output(args, result, lambda: _fields([
        ("settled (sent upstream, billed on the prompt bound)", result["settled"]),
        ("released (never sent upstream)", result["released"]), ("already closed", result["already_closed"]),
        ("could not close (left for the next run)", result["close_failures"]),
        ("older than", f"{older_than} s"),
    ]))


# ---------------------------------------------------------------------------------------------- parser


def _connection_options(parser: argparse.ArgumentParser, *, defaults: bool, endpoint: bool = True) -> None:
    """--state-dir/--endpoint-url/--region (and --json). On the top-level parser they have real defaults;
    on each subcommand they are SUPPRESSed so a value given before the subcommand is not overwritten."""
    suppress = argparse.SUPPRESS
    group = parser.add_argument_group("connection")
    group.add_argument("--state-dir", metavar="DIR", default=None if defaults else suppress,
                       help="a local gateway's state dir, whose dev.env says where DynamoDB is "
                            "(env ONYSOFT_STATE_DIR, default .onysoft)")
    if endpoint:
        group.add_argument("--endpoint-url", metavar="URL", default=None if defaults else suppress,
                           help="DynamoDB endpoint (ignores dev.env); without it and without dev.env: AWS, "
                                "table names from ONYSOFT_TABLE_*")
        group.add_argument("--region", metavar="REGION", default=None if defaults else suppress,
                           help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION)")


def _common(defaults: bool) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", default=False if defaults else argparse.SUPPRESS,
                        help="print one JSON object on stdout (and nothing else)")
    _connection_options(parent, defaults=defaults)
    return parent


def build_parser() -> argparse.ArgumentParser:
    from onysoft.key_types import ACCOUNT_KINDS  # the registry (light: dataclasses only)

    common = _common(defaults=False)
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[_common(defaults=True)],
        description="Onysoft AI Gateway: accounts, keys, usage, catalog and the local gateway.",
        epilog="Run `onysoft COMMAND --help` for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def leaf(group, name: str, handler: Callable[[argparse.Namespace], int], help_text: str):
        sub = group.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    commands.add_parser(
        "dev", add_help=False, help="run the gateway locally (moto server, the template's API on :3000)",
        description="Run the gateway locally. `onysoft dev --help` lists its options.",
    )

    # accounts
    accounts = commands.add_parser("accounts", help="create, show, top up, update and list accounts (balances)")
    accounts_sub = accounts.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(accounts_sub, "create", cmd_accounts_create, "create an account (its kind sets currency and markup)")
    p.add_argument("--kind", required=True, choices=ACCOUNT_KINDS)
    p.add_argument("--name", default="", help="a name for people")
    p.add_argument("--owner", metavar="ORG_OR_PARTNER_ID", help="the org (project) or partner that owns it")
    p.add_argument("--markup", metavar="PCT", help="markup in percent (30 means 30%%); default: the kind's")
    p.add_argument("--shards", type=int, metavar="N", help=SHARDS_HELP + " (default 1)")
    p = leaf(accounts_sub, "show", cmd_accounts_show, "show an account's balance, currency and markup")
    p.add_argument("account_id", metavar="ACCOUNT_ID")
    p = leaf(accounts_sub, "topup", cmd_accounts_topup, "add to an account's balance")
    p.add_argument("account_id", metavar="ACCOUNT_ID")
    p.add_argument("amount", metavar="AMOUNT", help="in the account's currency units, e.g. 12.5 (at most 6 decimals)")
    p = leaf(accounts_sub, "update", cmd_accounts_update, "change an account's markup or name")
    p.add_argument("account_id", metavar="ACCOUNT_ID")
    p.add_argument("--markup", metavar="PCT", help="markup in percent (30 means 30%%)")
    p.add_argument("--name")
    p.add_argument("--shards", type=int, metavar="N", help=SHARDS_HELP)
    p = leaf(accounts_sub, "list", cmd_accounts_list, "list accounts (all, or one owner's)")
    p.add_argument("--owner", metavar="ORG_OR_PARTNER_ID")
    p.add_argument("--kind", choices=ACCOUNT_KINDS)

    # keys
    keys = commands.add_parser("keys", help="create, list and delete API keys")
    keys_sub = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(keys_sub, "create", cmd_keys_create, "create a key (its type follows the account's kind); "
                                                 "the key is shown once")
    p.add_argument("--account", required=True, metavar="ACCOUNT_ID")
    p.add_argument("--name", default="")
    p.add_argument("--rpm", type=int, metavar="N", help="requests per minute (default: the key type's)")
    p.add_argument("--tpm", type=int, metavar="N", help="tokens per minute (default: the key type's)")
    p.add_argument("--models", metavar="M,M", help="allow only these models (provider/model, comma-separated)")
    expiry = p.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", metavar="DURATION", help="like 90s, 15m, 12h or 30d")
    expiry.add_argument("--expires-at", metavar="TIME", help="an ISO 8601 time, e.g. 2026-12-31T23:59:59Z")
    p.add_argument("--spend-limit", "--limit", dest="spend_limit", metavar="AMOUNT",
                   help="most the key may spend, in the account's currency")
    p.add_argument("--limit-reset", choices=("daily", "weekly", "monthly"),
                   help="reset the spend limit each period (default: a lifetime limit)")
    p = leaf(keys_sub, "update", cmd_keys_update, "change an existing key's limits (applied within the "
                                                 "authorizer's cache time, 60 s by default)")
    p.add_argument("key_id", metavar="KEY_ID")
    p.add_argument("--rpm", type=int, metavar="N", help="requests per minute; 0 = back to the type's default")
    p.add_argument("--tpm", type=int, metavar="N", help="tokens per minute; 0 = back to the type's default")
    p.add_argument("--models", metavar="M,M", help="allow only these models; 'all' removes the allow-list")
    expiry = p.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", metavar="DURATION", help="like 90s, 15m, 12h or 30d")
    expiry.add_argument("--expires-at", metavar="TIME", help="an ISO 8601 time; 'never' removes the expiry")
    p.add_argument("--spend-limit", "--limit", dest="spend_limit", metavar="AMOUNT",
                   help="most the key may spend, in the account's currency; 'none' removes it")
    p.add_argument("--limit-reset", choices=("daily", "weekly", "monthly", "never"),
                   help="reset the spend limit each period; 'never' makes it a lifetime limit")
    p = leaf(keys_sub, "list", cmd_keys_list, "list an account's keys (display form only)")
    p.add_argument("--account", required=True, metavar="ACCOUNT_ID")
    p.add_argument("--all", action="store_true", help="include deleted keys")
    p = leaf(keys_sub, "delete", cmd_keys_delete, "delete a key: it stops working at once")
    p.add_argument("key_id", metavar="KEY_ID")

    # usage
    p = leaf(commands, "usage", cmd_usage, "list an account's usage records, newest first")
    p.add_argument("--account", required=True, metavar="ACCOUNT_ID")
    p.add_argument("--limit", type=int, metavar="N", help="at most N records (default: all)")

    # catalog
    cat = commands.add_parser("catalog", help="models and their prices")
    cat_sub = cat.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(cat_sub, "set", cmd_catalog_set, "add or change a model's USD prices per million tokens")
    p.add_argument("model", metavar="MODEL", help="provider/model, e.g. openai/gpt-4o-mini")
    p.add_argument("--input-usd-per-mtok", required=True, metavar="X")
    p.add_argument("--output-usd-per-mtok", required=True, metavar="Y")
    p.add_argument("--provider", metavar="P", help="default: MODEL's part before the /")
    p.add_argument("--upstream-model", metavar="M", help="default: MODEL's part after the /")
    p.add_argument("--max-output-tokens", type=int, metavar="N",
                   help="the most output a request holds and is sent upstream (default 16384)")
    p.add_argument("--cached-input-usd-per-mtok", metavar="X", help="price of cached input (default: input price)")
    p.add_argument("--cache-write-usd-per-mtok", metavar="X", help="price of cache writes (default: input price)")
    p.add_argument("--tokens-per-image", type=int, metavar="N",
                   help="prompt tokens one image, audio or file part may cost (default 4096)")
    p.add_argument("--disable", action="store_true", help="keep the entry but refuse requests for it")
    leaf(cat_sub, "list", cmd_catalog_list, "list the catalog's models (disabled ones too)")

    # sweep
    p = leaf(commands, "sweep", cmd_sweep, "close stale holds now, as the scheduled sweeper does: settle those "
                                           "whose request was sent upstream, release the others")
    p.add_argument("--older-than", metavar="DURATION", help="holds older than this, like 15m (default 20m)")

    # token, users (the dashboard's user pool: the local gateway's, or AWS's from the environment)
    p = leaf(commands, "token", cmd_token, "print a dashboard ID token from the user pool (InitiateAuth)")
    p.add_argument("--email", metavar="EMAIL")
    p.add_argument("--password", metavar="PASSWORD")
    p.add_argument("--principal", metavar="P", help="local gateway only: a sign-in acting as user:<account_id>, "
                   "org:<org_id>, partner:<partner_id> or operator, made for the occasion")
    users = commands.add_parser("users", help="dashboard sign-ins (the Cognito user pool)")
    users_sub = users.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(users_sub, "create", cmd_users_create, "create a dashboard sign-in acting as a principal")
    p.add_argument("--principal", required=True, metavar="PRINCIPAL",
                   help="user:<account_id>, org:<org_id>, partner:<partner_id> or operator")
    p.add_argument("--email", required=True, metavar="EMAIL")
    p.add_argument("--password", required=True, metavar="PASSWORD", help="permanent; the pool's password policy")

    # fx
    fx = commands.add_parser("fx", help="the USD→TRY rate")
    fx_sub = fx.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(fx_sub, "set", cmd_fx_set, "set an exchange rate (USDTRY)")
    p.add_argument("pair", metavar="USDTRY")
    p.add_argument("rate", metavar="RATE", help="TRY per USD, e.g. 41.5")
    p = leaf(fx_sub, "show", cmd_fx_show, "show an exchange rate")
    p.add_argument("pair", metavar="PAIR", nargs="?", default="USDTRY")
    return parser


# ---------------------------------------------------------------------------------------------- running


def _run_dev(args: argparse.Namespace, extra: list[str]) -> int:
    """`onysoft dev`: the local gateway's own options come from onysoft_tools.dev (imported only here)."""
    from onysoft_tools import dev

    parser = argparse.ArgumentParser(prog=f"{PROG} dev", conflict_handler="resolve",
                                     description="Run the gateway locally (see DESIGN.md, `onysoft dev`).")
    parser.add_argument("--state-dir", metavar="DIR", default=args.state_dir,
                        help="where dev.env and the local state live (env ONYSOFT_STATE_DIR, default .onysoft)")
    dev.add_arguments(parser)
    return dev.run(parser.parse_args(extra))


def _dynamodb_message(exc: BaseException) -> str:
    """One line that says what went wrong with DynamoDB and what to check; never a traceback."""
    from botocore import exceptions as bexc

    from onysoft import config

    cause = getattr(exc, "cause", None) or exc
    endpoint = os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") or os.environ.get("AWS_ENDPOINT_URL")
    where = f"DynamoDB at {endpoint}" if endpoint else f"DynamoDB in {config.region()}"
    code = getattr(exc, "cause_response_code", None)
    if not code and isinstance(cause, bexc.ClientError):
        code = cause.response.get("Error", {}).get("Code")
    if isinstance(cause, bexc.EndpointConnectionError | bexc.ConnectionClosedError | bexc.ConnectTimeoutError
                  | bexc.ReadTimeoutError):
        hint = " (is `onysoft dev` running?)" if endpoint else ""
        return f"cannot reach {where}{hint}: {cause}"
    if isinstance(cause, bexc.NoCredentialsError | bexc.PartialCredentialsError):
        return ("no AWS credentials: configure them for AWS, or start the local gateway (`onysoft dev`) "
                "and pass its --state-dir")
    if isinstance(cause, bexc.NoRegionError):
        return "no AWS region: pass --region or set AWS_REGION"
    if code == "ResourceNotFoundException":
        return (f"a table is missing in {where}: check ONYSOFT_TABLE_* (or start the local gateway, "
                f"`onysoft dev`): {cause}")
    if code in ("UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
                "AccessDeniedException"):
        return f"{where} refused the credentials: {cause}"
    return f"{where} failed: {cause}"


def _run_command(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError
    from pynamodb.exceptions import PynamoDBException

    from onysoft.accounts import AccountError
    from onysoft.api_keys import KeyNotFound
    from onysoft.catalog import CatalogError
    from onysoft.money import MoneyError
    from onysoft_tools import settings

    try:
        settings.apply(state_dir_arg=args.state_dir, endpoint_url=args.endpoint_url, region=args.region)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{PROG}: error: cannot read the state dir's dev.env: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        return args.handler(args)
    except (UsageError, AccountError, KeyNotFound, CatalogError, MoneyError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (PynamoDBException, BotoCoreError, ClientError) as exc:
        print(f"{PROG}: error: {_dynamodb_message(exc)}", file=sys.stderr)
        return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
        if args.command != "dev" and extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    try:
        if args.command == "dev":
            try:
                return _run_dev(args, extra)
            except SystemExit as exc:
                return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
        return _run_command(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `onysoft keys list … | head`
        try:
            sys.stdout = open(os.devnull, "w")  # keep the exit-time flush quiet
        except OSError:
            pass
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
