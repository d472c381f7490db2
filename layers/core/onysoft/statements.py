"""Monthly statements: an account's opening balance, its top-ups, its charges by model and by key, its debts,
and its closing balance, for one calendar month (UTC).

    closing = opening + top-ups − charges, to the micro-unit (every statement, by construction and by test)

What counts where:
- charges are the settled charges of the requests *made* in the month (a request belongs to the UTC day of its
  hold, as in every usage total), read from the usage rollups (onysoft.usage_rollup: days x models items per
  account, and per key), never from the usage records. A hold is not a charge: money held by a request still
  open, and given back when it ends (a release, or the part of a hold above its charge), is not on a statement.
  So the balances here are the ledger's: top-ups minus charges (docs/BILLING.md's invariant), which the
  account's balance equals whenever no hold is open. An overrun is charged in full; its part beyond the hold is
  a debt, shown as such (`debts_micros`), and a closing balance below zero is one.
- top-ups are the month's ledger records (onysoft.topups), each with who made it and its idempotency key.
- opening = the previous month's closing: its issued statement's when it has one (so statements chain, and a
  closed month's never moves), else top-ups before the month minus charges of requests made before it.

A month is closed once it ended more than CLOSE_AFTER ago (longer than any request, the sweeper's closing of a
stale hold, and the 24 hours a stream record can wait for the rollup) and none of its requests is pending. The
first statement of a closed month is issued: saved (StatementRecord) and, from then on, returned as it was:
a closed month's statement never changes. An open month's says `"status": "open"`: its figures may still move.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pynamodb.exceptions import PutError

from onysoft import api_keys, clock, topups, usage_rollup
from onysoft.models import Account, StatementRecord, TopUpRecord

CLOSE_AFTER = timedelta(hours=48)
PREFIX = "stmt#"


class MonthError(ValueError):
    """A month that is not YYYY-MM, or outside the account's life."""


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """The first instant of the month and of the next (UTC)."""
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise MonthError(f"month must be YYYY-MM, like 2026-11; got {month!r}") from None
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def previous_month(month: str) -> str:
    start, _ = month_bounds(month)
    return (start - timedelta(days=1)).strftime("%Y-%m")


@dataclass
class ModelCharges:
    model: str
    requests: int = 0
    settled: int = 0
    failed: int = 0
    pending: int = 0
    charge_micros: int = 0
    overrun_micros: int = 0


@dataclass
class KeyCharges:
    key_id: str
    name: str
    display: str
    requests: int = 0
    charge_micros: int = 0


@dataclass
class Statement:
    account: Account
    month: str
    status: str  # open | closed
    opening_micros: int
    topups: list[TopUpRecord]
    by_model: list[ModelCharges]
    by_key: list[KeyCharges]
    opening_from: str  # "statement" (the previous month's, issued) | "ledger" (computed)
    pre_ledger_topups_micros: int = 0  # top-ups from before the ledger existed, counted in the opening
    extra: dict = field(default_factory=dict)

    @property
    def topups_micros(self) -> int:
        return sum(int(t.amount_micros) for t in self.topups)

    @property
    def charges_micros(self) -> int:
        return sum(m.charge_micros for m in self.by_model)

    @property
    def debts_micros(self) -> int:
        return sum(m.overrun_micros for m in self.by_model)

    @property
    def pending(self) -> int:
        return sum(m.pending for m in self.by_model)

    @property
    def closing_micros(self) -> int:
        return self.opening_micros + self.topups_micros - self.charges_micros


def _days(start: datetime, end: datetime) -> tuple[str, str]:
    return start.strftime("%Y-%m-%d"), (end - timedelta(days=1)).strftime("%Y-%m-%d")


def _charges_by_model(account: Account, start: datetime, end: datetime) -> list[ModelCharges]:
    first_day, last_day = _days(start, end)
    by_model: dict[str, ModelCharges] = {}
    for item in usage_rollup.read_days(f"acct#{account.account_id}", first_day, last_day):
        if not int(item.requests or 0):  # counts nothing now (a fallback's hold moved to the model that answered)
            continue
        charges = by_model.setdefault(item.model or "", ModelCharges(item.model or ""))
        charges.requests += int(item.requests or 0)
        charges.settled += int(item.settled or 0)
        charges.failed += int(item.failed or 0)
        charges.pending += int(item.pending or 0)
        charges.charge_micros += int(item.charge_micros or 0)
        charges.overrun_micros += int(item.overrun_micros or 0)
    return sorted(by_model.values(), key=lambda m: (-m.charge_micros, m.model))


def _charges_by_key(account: Account, start: datetime, end: datetime) -> list[KeyCharges]:
    """Per key, from the keys' own daily totals; only keys that were ever used are read (their all-time items,
    one BatchGetItem per 100 keys, say which)."""
    first_day, last_day = _days(start, end)
    keys = api_keys.list_keys(account.account_id, include_deleted=True)
    used = usage_rollup.key_totals(k.key_id for k in keys)
    found = []
    for key in keys:
        if not used.get(key.key_id, usage_rollup.KeyTotals()).requests:
            continue
        charges = KeyCharges(key.key_id, key.name or "", key.display)
        for item in usage_rollup.read_days(f"key#{key.key_id}", first_day, last_day):
            if item.account_id == account.account_id:
                charges.requests += int(item.requests or 0)
                charges.charge_micros += int(item.charge_micros or 0)
        if charges.requests:
            found.append(charges)
    return sorted(found, key=lambda k: (-k.charge_micros, k.key_id))


def _charged_before(account: Account, start: datetime) -> int:
    """Settled charges of every request made before `start`: the account's daily totals before that day."""
    from onysoft.models import UsageRollup

    items = UsageRollup.query(f"acct#{account.account_id}", UsageRollup.sk < start.strftime("%Y-%m-%d"))
    return sum(int(item.charge_micros or 0) for item in items)


def _issued(account_id: str, month: str) -> dict | None:
    try:
        return json.loads(StatementRecord.get(PREFIX + account_id, month, consistent_read=True).document)
    except StatementRecord.DoesNotExist:
        return None


def ledger_opening(account: Account, month: str) -> tuple[int, int]:
    """(the balance the month opens with by the ledger: top-ups before it minus charges of the requests made
    before it; the top-ups from before the ledger existed, counted in it). `account` as read now."""
    start, _ = month_bounds(month)
    every = topups.between(account.account_id)
    recorded_before = sum(int(t.amount_micros) for t in every if t.at < clock.to_iso(start))
    # Top-ups made before issue 26 have no record: their total is what the account's top-up total has beyond
    # its records (the two are written in one transaction). They are all older than the first record.
    pre_ledger = int(account.topped_up_micros or 0) - sum(int(t.amount_micros) for t in every)
    return recorded_before + pre_ledger - _charged_before(account, start), pre_ledger


def _opening(account: Account, month: str) -> tuple[int, str, int]:
    """(opening balance, where it came from, top-ups from before the ledger counted in it)."""
    previous = _issued(account.account_id, previous_month(month))
    if previous is not None:
        return int(previous["closing_balance_micros"]), "statement", 0
    opening, pre_ledger = ledger_opening(account, month)
    return opening, "ledger", pre_ledger


def is_closed(end: datetime, pending: int, now: datetime | None = None) -> bool:
    return (now or clock.utc_now()) >= end + CLOSE_AFTER and not pending


def compute(account: Account, month: str) -> Statement:
    """The month's statement from the ledger and the rollups, as of now (not issued)."""
    start, end = month_bounds(month)
    opening, source, pre_ledger = _opening(account, month)
    by_model = _charges_by_model(account, start, end)
    statement = Statement(
        account=account, month=month, status="open", opening_micros=opening,
        topups=topups.between(account.account_id, clock.to_iso(start), clock.to_iso(end)), by_model=by_model,
        by_key=_charges_by_key(account, start, end), opening_from=source, pre_ledger_topups_micros=pre_ledger)
    if is_closed(end, statement.pending):
        statement.status = "closed"
    return statement


def issue(account: Account, month: str, render) -> dict:
    """The month's statement as `render(Statement)` makes it: a closed month's as first issued (saved the first
    time: a conditional put, so two first readers agree), an open month's as of now."""
    issued = _issued(account.account_id, month)
    if issued is not None:
        return issued
    statement = compute(account, month)
    document = render(statement)
    if statement.status != "closed":
        return document
    try:
        StatementRecord(account_id=PREFIX + account.account_id, sk=month, document=json.dumps(document),
                        closed_at=clock.now_iso()).save(condition=StatementRecord.sk.does_not_exist())
    except PutError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise
        return _issued(account.account_id, month) or document  # another reader issued it first: theirs
    return document
