"""Usage operations: an account's (or one key's) usage records, and their totals by day and model."""

from datetime import timedelta

from onysoft import clock, money, usage_rollup, usage_shards
from onysoft.audit import Actor
from onysoft.errors import bad_request
from onysoft.models import Account
from onysoft.operations import access
from onysoft.operations.paging import decode_cursor, encode_cursor, page_size
from onysoft.operations.views import usage_view

DEFAULT_USAGE_DAYS = 30
MAX_USAGE_DAYS = 366


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


def usage(actor: Actor, account_id: str, *, start: str | None = None, end: str | None = None,
          key_id: str | None = None, cursor: str | None = None, limit: int | None = None) -> dict:
    """One page of an account's (or one of its keys') usage records between two times, newest first.

    The first page (no cursor) also carries totals, by day (UTC) and by model, over the whole UTC days the
    range touches (`totals.from`, `totals.to`), read from the daily rollups; later pages carry
    `"totals": null`. `next` is the cursor of the following page, or null at the end.
    """
    account = access.account(actor, account_id)
    page = page_size(limit)
    start_iso, end_iso = _time_range(start, end)
    if key_id is not None:
        access.key_of_account(key_id, account.account_id)
    start_key = decode_cursor(cursor, fixed={"account_id": account.account_id}, keys={"account_id", "sk"})
    # Newest first over the account's Usage partitions (one, or one per balance shard): the cursor is the last
    # record's sort key, the same in every partition's order.
    results = usage_shards.newest_first(account, start=start_iso, end=end_iso, key_id=key_id, limit=page,
                                        after_sk=start_key["sk"]["S"] if start_key else None)
    records = [usage_view(r) for r in results]
    return {
        "account_id": account.account_id, "currency": account.currency, "key_id": key_id,
        "from": start_iso, "to": end_iso, "records": records,
        "next": encode_cursor({"account_id": {"S": account.account_id}, "sk": {"S": results[-1].sk}})
        if len(records) == page else None,
        "totals": _totals(account, key_id, start_iso, end_iso) if cursor is None else None,
    }


def all_records(actor: Actor, account_id: str, *, limit: int | None = None) -> dict:
    """Every usage record of an account (or the newest `limit`), newest first, over all time."""
    account = access.account(actor, account_id)
    if limit is not None and limit < 1:
        raise bad_request("limit must be a positive number", "limit")
    return {"records": [usage_view(r) for r in usage_shards.newest_first(account, limit=limit)]}  # over its shards
