"""The dashboard's operations: what each principal may see and do with accounts, keys, usage and audit.

functions/dashboard/app.py is the HTTP surface (routes, request models, OpenAPI); every decision is here.
Each operation takes the acting principal and plain values, and returns JSON-ready dicts (names as in
DESIGN.md's CLI contract) or raises errors.GatewayError:

- 404 for an account or key the principal does not see, with the very answer an unknown id gets, so
  no tenant can tell another tenant's ids from ids that were never issued;
- 403 only for an action on something the principal does see but may not do (a top-up by anyone but the
  operator, a markup change on a project by its org, an account created by a user);
- 400 for bad input.
"""

import base64
import binascii
import json
import re
from datetime import timedelta

from pynamodb.exceptions import TransactWriteError

from onysoft import accounts, api_keys, audit, clock, idempotency, money, usage_rollup, writes
from onysoft.errors import GatewayError, bad_request, not_found
from onysoft.key_types import ACCOUNT_KINDS
from onysoft.models import Account, ApiKey, UsageRecord
from onysoft.principals import OPERATOR, ORG, OWNED_KINDS, PARTNER, USER, Principal, visible_account

DEFAULT_USAGE_DAYS = 30
MAX_USAGE_DAYS = 366
DEFAULT_PAGE = 100
MAX_PAGE = 1000
_KEY_ID = re.compile(r"key_[0-9a-f]{16}")
_ACCOUNT_ID = re.compile(r"acct_[0-9a-f]{16}")


def forbidden(message: str) -> GatewayError:
    return GatewayError(403, message, "invalid_request_error", "permission_denied")


def account_not_found(account_id: str) -> GatewayError:
    return not_found(f"No account {account_id!r}.", code="account_not_found", param="account_id")


def key_not_found(key_id: str) -> GatewayError:
    return not_found(f"No key {key_id!r}.", code="key_not_found", param="key_id")


# ---------------------------------------------------------------------------------------------- views


def account_view(account: Account) -> dict:
    return {
        "account_id": account.account_id, "kind": account.kind, "name": account.name or "",
        "owner": account.owner, "currency": account.currency,
        "balance": money.format_micros(int(account.balance_micros)), "balance_micros": int(account.balance_micros),
        "topped_up": money.format_micros(int(account.topped_up_micros or 0)),
        "topped_up_micros": int(account.topped_up_micros or 0),
        "markup_pct": money.markup_pct(int(account.markup_bp)), "created_at": account.created_at,
    }


def key_view(record: ApiKey) -> dict:
    """A key as lists show it: never the key itself nor its hash."""
    spend = int(record.spend_micros or 0)
    limit = record.spend_limit_micros
    return {
        "key_id": record.key_id, "display": record.display, "name": record.name or "", "type": record.key_type,
        "status": record.status, "account_id": record.account_id, "currency": record.currency,
        "created_at": record.created_at, "last_used_at": record.last_used_at, "deleted_at": record.deleted_at,
        "expires_at": record.expires_at, "request_count": int(record.request_count or 0),
        "spend": money.format_micros(spend), "spend_micros": spend,
        "rpm": int(record.rpm) if record.rpm is not None else None,
        "tpm": int(record.tpm) if record.tpm is not None else None,
        "models": list(record.models) if record.models else None,
        "spend_limit": money.format_micros(int(limit)) if limit is not None else None,
        "spend_limit_micros": int(limit) if limit is not None else None,
        "limit_reset": record.limit_reset,
    }


def usage_view(record: UsageRecord) -> dict:
    charge = int(record.charge_micros or 0)
    return {
        "request_id": record.request_id, "key_id": record.key_id, "created_at": record.created_at,
        "settled_at": record.settled_at, "status": record.status, "endpoint": record.endpoint,
        "stream": record.stream == "true", "model": record.model, "provider": record.provider,
        "upstream_model": record.upstream_model, "currency": record.currency,
        "prompt_tokens": int(record.prompt_tokens or 0), "completion_tokens": int(record.completion_tokens or 0),
        "charge": money.format_micros(charge), "charge_micros": charge,
        "hold_micros": int(record.hold_micros or 0),
        "uncharged_micros": int(record.uncharged_micros) if record.uncharged_micros is not None else None,
        "input_usd_per_mtok": record.input_usd_per_mtok, "output_usd_per_mtok": record.output_usd_per_mtok,
        "markup_pct": money.markup_pct(int(record.markup_bp)) if record.markup_bp is not None else None,
        "fx_rate": record.fx_rate, "fx_rate_at": record.fx_rate_at, "provider_cost_usd": record.provider_cost_usd,
        "usage_estimated": record.usage_estimated == "true",
        "upstream_status": int(record.upstream_status) if record.upstream_status is not None else None,
        "error_code": record.error_code, "error_message": record.error_message,
    }


# ---------------------------------------------------------------------------------------------- cursors


def encode_cursor(last_evaluated_key: dict | None) -> str | None:
    if not last_evaluated_key:
        return None
    raw = json.dumps(last_evaluated_key, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, *, fixed: dict[str, str], keys: set[str]) -> dict | None:
    """A cursor back into DynamoDB's ExclusiveStartKey, checked: exactly `keys`, string values only, and
    the partition values of `fixed` unchanged, so a cursor can only continue the caller's own query."""
    if not cursor:
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise bad_request("Invalid cursor: pass the `next` value of the previous page.", "cursor") from None
    valid = (
        isinstance(decoded, dict) and set(decoded) == keys
        and all(isinstance(v, dict) and set(v) == {"S"} and isinstance(v["S"], str) for v in decoded.values())
        and all(decoded[name]["S"] == value for name, value in fixed.items())
    )
    if not valid:
        raise bad_request("Invalid cursor: pass the `next` value of the previous page.", "cursor")
    return decoded


def _page_size(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise bad_request(f"limit must be between 1 and {MAX_PAGE}", "limit")
    return limit


# ---------------------------------------------------------------------------------------------- accounts


def _visible(actor: audit.Actor, account_id: str) -> Account:
    account = visible_account(actor.principal, account_id) if _ACCOUNT_ID.fullmatch(account_id) else None
    if account is None:
        raise account_not_found(account_id)
    return account


def list_accounts(actor: audit.Actor) -> dict:
    found = sorted(actor.principal.accounts(), key=lambda a: (a.created_at, a.account_id))
    return {"accounts": [account_view(a) for a in found]}


def get_account(actor: audit.Actor, account_id: str) -> dict:
    return account_view(_visible(actor, account_id))


def create_account(actor: audit.Actor, *, kind: str, name: str = "", markup_bp: int | None = None,
                   owner: str | None = None) -> dict:
    principal = actor.principal
    if kind not in ACCOUNT_KINDS:
        raise bad_request(f"kind must be one of: {', '.join(ACCOUNT_KINDS)}", "kind")
    if principal.kind == USER:
        raise forbidden("A user account cannot create accounts.")
    if principal.kind in (ORG, PARTNER):
        allowed = OWNED_KINDS[principal.kind]
        if kind not in allowed:
            raise forbidden(f"A {principal.kind} may create {' or '.join(allowed)} accounts only.")
        if owner is not None and owner != principal.id:
            raise forbidden(f"Accounts you create are owned by {principal.kind} {principal.id!r}.")
        if principal.kind == ORG and markup_bp is not None:
            raise forbidden("A project's markup is set by the platform.")
        owner = principal.id
    elif kind == "user" and owner:
        raise bad_request("user accounts have no owner", "owner")
    elif kind != "user" and not owner:
        raise bad_request(f"{kind} accounts need an owner (the org or partner id)", "owner")
    try:
        account = accounts.create_account(kind, name=name, owner=owner, markup_bp=markup_bp,
                                          companions=audit.on_account_create(actor))
    except accounts.AccountError as exc:
        raise bad_request(str(exc), "markup_pct") from None
    return account_view(account)


def update_account(actor: audit.Actor, account_id: str, *, markup_bp: int | None = None,
                   name: str | None = None) -> dict:
    account = _visible(actor, account_id)
    principal = actor.principal
    if markup_bp is None and name is None:
        raise bad_request("nothing to change: give markup_pct and/or name")
    if markup_bp is not None and not (principal.kind == OPERATOR or principal.kind == PARTNER):
        raise forbidden("Only the platform sets this account's markup." if principal.kind == ORG
                        else "A user account's markup is the platform's standard markup.")
    audited = audit.on_account_update(actor, account, markup_bp=markup_bp, name=name)
    try:
        updated = accounts.update_account(account_id, markup_bp=markup_bp, name=name, companions=audited)
    except accounts.AccountError as exc:
        raise bad_request(str(exc), "markup_pct") from None
    return account_view(updated)


def top_up(actor: audit.Actor, account_id: str, amount_micros: int,
           idempotency_key: str | None = None) -> tuple[dict, bool]:
    """(the account, whether this was a replay of an earlier top-up with the same idempotency key)."""
    account = _visible(actor, account_id)
    if not actor.principal.is_operator:
        raise forbidden("Only the platform tops up balances.")
    request = {"amount_micros": amount_micros}
    companions = audit.on_topup(actor, amount_micros)
    if idempotency_key is not None:
        try:
            idempotency.check_key(idempotency_key)
        except ValueError as exc:
            raise bad_request(str(exc), "Idempotency-Key") from None
        companions = writes.together(
            companions, idempotency.marker(account.account_id, "topup", idempotency_key, request))
    try:
        updated = accounts.top_up(account.account_id, amount_micros, companions=companions)
    except accounts.AccountError as exc:
        raise bad_request(str(exc), "amount") from None
    except TransactWriteError:
        try:
            replay = idempotency_key is not None and idempotency.is_replay(
                account.account_id, "topup", idempotency_key, request)
        except idempotency.KeyReused as exc:
            raise GatewayError(409, str(exc), "invalid_request_error", "idempotency_key_reused",
                               "Idempotency-Key") from None
        if not replay:
            raise
        return account_view(accounts.get_account(account.account_id)), True
    return account_view(updated), False


# ---------------------------------------------------------------------------------------------- keys


def list_keys(actor: audit.Actor, account_id: str, *, include_deleted: bool = False) -> dict:
    account = _visible(actor, account_id)
    records = sorted(api_keys.list_keys(account.account_id, include_deleted=include_deleted),
                     key=lambda r: (r.created_at, r.key_id))
    return {"keys": [key_view(r) for r in records]}


def create_key(actor: audit.Actor, account_id: str, *, name: str = "", rpm: int | None = None,
               tpm: int | None = None, models: list[str] | None = None, expires_at: str | None = None,
               spend_limit_micros: int | None = None) -> dict:
    account = _visible(actor, account_id)
    if expires_at is not None:
        try:
            moment = clock.parse_iso(expires_at)
        except ValueError:
            raise bad_request("expires_at must be an ISO 8601 time", "expires_at") from None
        if moment <= clock.utc_now():
            raise bad_request("expires_at must be in the future", "expires_at")
        expires_at = clock.to_iso(moment)
    try:
        created = api_keys.create_key(account.account_id, name=name, rpm=rpm, tpm=tpm, models=models,
                                      expires_at=expires_at, spend_limit_micros=spend_limit_micros,
                                      companions=audit.on_key_create(actor, account))
    except accounts.AccountError as exc:
        raise bad_request(str(exc)) from None
    record = created.record
    # The plaintext key is in this response and nowhere else, ever.
    return {"key": created.plaintext, **key_view(record)}


def delete_key(actor: audit.Actor, key_id: str) -> dict:
    if not _KEY_ID.fullmatch(key_id):
        raise key_not_found(key_id)
    try:
        record = api_keys.find_by_key_id(key_id)
    except api_keys.KeyNotFound:
        raise key_not_found(key_id) from None
    account = visible_account(actor.principal, record.account_id)
    if account is None or record.status != api_keys.ACTIVE:
        raise key_not_found(key_id)
    try:
        deleted = api_keys.delete_key(key_id, companions=audit.on_key_delete(actor, account))
    except api_keys.KeyNotFound:
        raise key_not_found(key_id) from None
    return key_view(deleted)


# ---------------------------------------------------------------------------------------------- usage


def _time_range(start: str | None, end: str | None) -> tuple[str, str]:
    try:
        end_at = clock.parse_iso(end) if end else clock.utc_now()
    except ValueError:
        raise bad_request("`to` must be an ISO 8601 time, like 2026-11-27T00:00:00Z", "to") from None
    try:
        start_at = clock.parse_iso(start) if start else end_at - timedelta(days=DEFAULT_USAGE_DAYS)
    except ValueError:
        raise bad_request("`from` must be an ISO 8601 time, like 2026-11-01T00:00:00Z", "from") from None
    if start_at >= end_at:
        raise bad_request("`from` must be before `to`", "from")
    if end_at - start_at > timedelta(days=MAX_USAGE_DAYS):
        raise bad_request(f"a usage query spans at most {MAX_USAGE_DAYS} days", "from")
    return clock.to_iso(start_at), clock.to_iso(end_at)


def _usage_query(account_id: str, key_id: str | None, start: str, end: str, **kwargs):
    # sk is "<created_at>#<request_id>": between start and end (exclusive: an sk at `end` sorts after it).
    condition = UsageRecord.sk.between(start, end)
    if key_id:
        return UsageRecord.by_key.query(key_id, condition, filter_condition=UsageRecord.account_id == account_id,
                                        **kwargs)
    return UsageRecord.query(account_id, condition, **kwargs)


def _totals(account: Account, key_id: str | None, start: str, end: str) -> dict:
    """Totals over the whole UTC days the range touches, from the daily rollups (onysoft.usage_rollup): days x
    models items, never the records. They follow the records by the stream's lag (about a second)."""
    first_day = start[:10]
    last = clock.parse_iso(end) - timedelta(microseconds=1)  # `to` is exclusive
    last_day = clock.to_iso(last)[:10]
    items, read = usage_rollup.read_totals(account.account_id, key_id, account.currency, first_day, last_day)
    by_day: dict[str, dict] = {}
    by_model: dict[str, dict] = {}
    overall = _empty_total()
    for item in items:
        amounts = {name: int(getattr(item, name) or 0) for name in usage_rollup.FIELDS}
        if not any(amounts.values()):
            continue
        for bucket in (by_day.setdefault(item.day or item.sk[:10], _empty_total()),
                       by_model.setdefault(item.model or "", _empty_total()), overall):
            for name, amount in amounts.items():
                bucket[name] += amount
    after_last = clock.parse_iso(last_day + "T00:00:00Z") + timedelta(days=1)
    return {
        "currency": account.currency,
        "total": _finish_total(overall),
        "by_day": [{"day": day, **_finish_total(t)} for day, t in sorted(by_day.items())],
        "by_model": [{"model": model, **_finish_total(t)} for model, t in sorted(by_model.items())],
        "from": clock.to_iso(clock.parse_iso(first_day + "T00:00:00Z")), "to": clock.to_iso(after_last),  # whole days
        "items_read": read,
    }


def _empty_total() -> dict:
    return {"requests": 0, "settled": 0, "failed": 0, "pending": 0, "prompt_tokens": 0, "completion_tokens": 0,
            "charge_micros": 0}


def _finish_total(total: dict) -> dict:
    return {**total, "charge": money.format_micros(total["charge_micros"])}


def usage(actor: audit.Actor, account_id: str, *, start: str | None = None, end: str | None = None,
          key_id: str | None = None, cursor: str | None = None, limit: int | None = None) -> dict:
    """One page of an account's (or one of its keys') usage records between two times, newest first.

    The first page (no cursor) also carries totals, by day (UTC) and by model, over the whole UTC days the
    range touches (`totals.from`, `totals.to`), read from the daily rollups; later pages carry
    `"totals": null`. `next` is the cursor of the following page, or null at the end.
    """
    account = _visible(actor, account_id)
    page = _page_size(limit)
    start_iso, end_iso = _time_range(start, end)
    if key_id is not None:
        try:
            key = api_keys.find_by_key_id(key_id) if _KEY_ID.fullmatch(key_id) else None
        except api_keys.KeyNotFound:
            key = None
        if key is None or key.account_id != account.account_id:
            raise key_not_found(key_id)
        start_key = decode_cursor(cursor, fixed={"key_id": key_id, "account_id": account.account_id},
                                  keys={"key_id", "account_id", "sk"})
    else:
        start_key = decode_cursor(cursor, fixed={"account_id": account.account_id}, keys={"account_id", "sk"})
    results = _usage_query(account.account_id, key_id, start_iso, end_iso, scan_index_forward=False,
                           limit=page, page_size=page, last_evaluated_key=start_key)
    records = [usage_view(r) for r in results]
    return {
        "account_id": account.account_id, "currency": account.currency, "key_id": key_id,
        "from": start_iso, "to": end_iso, "records": records,
        "next": encode_cursor(results.last_evaluated_key) if len(records) == page else None,
        "totals": _totals(account, key_id, start_iso, end_iso) if cursor is None else None,
    }


# ---------------------------------------------------------------------------------------------- audit


def audit_log(actor: audit.Actor, *, account_id: str | None = None, cursor: str | None = None,
              limit: int | None = None) -> dict:
    """The principal's audit log, newest first: what was done to its accounts and keys (the operator's:
    everything), optionally for one of its accounts."""
    page = _page_size(limit)
    if account_id is not None:
        _visible(actor, account_id)
    partition = audit.partition_of(actor.principal)
    start_key = decode_cursor(cursor, fixed={"account_id": partition}, keys={"account_id", "sk"})
    items, last_key = audit.query(actor.principal, limit=page, last_evaluated_key=start_key, account_id=account_id)
    return {
        "records": [audit.view(item) for item in items],
        "next": encode_cursor(last_key) if len(items) == page else None,
    }


def principal_view(principal: Principal) -> dict:
    return {"principal": str(principal), "kind": principal.kind, "id": principal.id or None}
