"""Balance alerts: `Balance Low` when an account's balance crosses below its threshold, `Balance Exhausted` when
it reaches zero or a debt, `Spend Limit Reached` when a key reaches its spend limit. One event per crossing,
never one per request; emitting never adds a DynamoDB write to a request that crosses nothing, and never fails
one (onysoft.events.emit never raises; every step here is guarded).

Which balance. The ledger's: top-ups minus settled charges (docs/BILLING.md's invariant: the balance plus the
holds still open). The balance an account item holds dips by every hold in flight, which a burst of requests
without `max_tokens` makes large (16,384 output tokens each) and gives back a moment later: an alert on it
would cry wolf. The ledger moves only by charges (down) and top-ups (up), so between two top-ups a threshold is
crossed at most once. It is read, not kept: the account's `topped_up_micros` and its all-time settled charges
(the usage rollup's `acct#<account_id>`/"total" item), one BatchGetItem for the accounts of a rollup batch.
An account older than that item (issue 26: its item misses its earlier requests, no `opened` on it) is
judged on its balance instead (the sum of its shards), holds and all.

Where. Nothing on the request path: a transaction returns no item values on success, so the hold and the
settle cannot tell a crossing without one more read each. The usage rollup already sees every change of every
usage record, off the request path, a batch at a time (functions/rollup): after counting a batch it checks the
accounts (and the spend-limited keys) the batch touched, so an alert follows its request by the rollup's lag
(about a second). The only request-path exception is the refusal of a hold by a key's spend limit: that
request is refused anyway, and the cancelled transaction returned the counter's old image with the failure.

Once. Each alert is a flag set with a conditional write (attribute_not_exists) only when a crossing is seen:
the writer that sets it emits; a second batch, a retried one, or a concurrent invocation finds it set and
emits nothing. A top-up re-arms: when it brings the ledger back to the threshold (above zero, for Exhausted),
its own write removes the flag (onysoft.accounts.top_up: no extra write).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from pynamodb.exceptions import UpdateError

from onysoft import clock, events, money
from onysoft.models import Account, ApiKey, RateLimitCounter, UsageRollup

logger = logging.getLogger("onysoft.balance_alerts")

TOTAL_SK = "total"  # an account's all-time usage totals (onysoft.usage_rollup)
LOW, EXHAUSTED = "low", "exhausted"


@dataclass(frozen=True)
class Standing:
    """An account's balance as alerts judge it, and whether that is its ledger (else: its balance, holds out)."""

    balance_micros: int
    ledger: bool


def standing(account: Account, total_item: dict | None) -> Standing:
    """`total_item`: the account's all-time totals item, raw (or None)."""
    if total_item and "opened" in total_item:
        charged = int((total_item.get("charge_micros") or {}).get("N", 0))
        return Standing(int(account.topped_up_micros or 0) - charged, True)
    from onysoft import balances

    return Standing(balances.total(account), False)


def crossed(account: Account, balance_micros: int) -> list[str]:
    """The alerts this balance calls for that have not fired yet: Low (below the threshold), Exhausted (≤ 0)."""
    due = []
    threshold = account.alert_below_micros
    if threshold is not None and balance_micros < int(threshold) and not account.alert_low_at:
        due.append(LOW)
    if balance_micros <= 0 and not account.alert_exhausted_at:
        due.append(EXHAUSTED)
    return due


def rearmed(account: Account, balance_after_micros: int) -> list:
    """Update actions that re-arm what a top-up bringing the balance to `balance_after_micros` re-arms: Low at
    or above the threshold, Exhausted above zero. For the top-up's own write (no write of their own)."""
    actions = []
    threshold = account.alert_below_micros
    if account.alert_low_at and threshold is not None and balance_after_micros >= int(threshold):
        actions.append(Account.alert_low_at.remove())
    if account.alert_exhausted_at and balance_after_micros > 0:
        actions.append(Account.alert_exhausted_at.remove())
    return actions


def read_totals(account_ids: Iterable[str]) -> dict[str, dict]:
    """The all-time totals items of these accounts, raw, by account id (one BatchGetItem per 100)."""
    from onysoft.dynamo import batch_get_raw

    ids = list(dict.fromkeys(account_ids))
    found: dict[str, dict] = {}
    for start in range(0, len(ids), 100):
        keys = [{"pk": {"S": f"acct#{a}"}, "sk": {"S": TOTAL_SK}} for a in ids[start:start + 100]]
        for item in batch_get_raw(UsageRollup.Meta.table_name, keys):
            found[item["pk"]["S"].removeprefix("acct#")] = item
    return found


def standing_of(account: Account) -> Standing:
    return standing(account, read_totals([account.account_id]).get(account.account_id))


def _detail(account: Account, balance_micros: int, ledger: bool, **extra) -> dict:
    threshold = account.alert_below_micros
    return {"account_id": account.account_id, "name": account.name or "", "kind": account.kind,
            "owner": account.owner, "currency": account.currency, "balance": money.format_micros(balance_micros),
            "balance_micros": balance_micros, "balance_basis": "ledger" if ledger else "balance",
            "alert_below": None if threshold is None else money.format_micros(int(threshold)),
            "alert_below_micros": None if threshold is None else int(threshold), **extra}


def _fire(account: Account, alert: str, now: str) -> bool:
    """Set the alert's flag if it is not set (and, for Low, the threshold is still the one judged): True when
    this call set it, so this caller emits."""
    if alert == LOW:
        action, condition = Account.alert_low_at.set(now), Account.alert_low_at.does_not_exist() & (
            Account.alert_below_micros == int(account.alert_below_micros))
    else:
        action, condition = Account.alert_exhausted_at.set(now), Account.alert_exhausted_at.does_not_exist()
    try:
        Account(account_id=account.account_id).update(actions=[action], condition=condition & Account.kind.exists())
    except UpdateError as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    return True


def check_accounts(account_ids: Iterable[str]) -> int:
    """Fire what the accounts' balances call for (after the rollup counted their requests). Returns how many
    events were emitted. Reads: one BatchGetItem over both tables per 50 accounts; writes only on a crossing."""
    from onysoft.dynamo import batch_get

    ids = list(dict.fromkeys(account_ids))
    emitted = 0
    for start in range(0, len(ids), 50):
        chunk = ids[start:start + 50]
        found = batch_get({
            Account.Meta.table_name: {"Keys": [{"account_id": {"S": a}} for a in chunk], "ConsistentRead": True},
            UsageRollup.Meta.table_name: {"Keys": [{"pk": {"S": f"acct#{a}"}, "sk": {"S": TOTAL_SK}} for a in chunk],
                                          "ConsistentRead": True},
        })
        totals = {item["pk"]["S"].removeprefix("acct#"): item for item in found.get(UsageRollup.Meta.table_name, [])}
        for raw in found.get(Account.Meta.table_name, []):
            account = Account.from_raw_data(raw)
            if not account.kind:
                continue
            now = standing(account, totals.get(account.account_id))
            for alert in crossed(account, now.balance_micros):
                if _fire(account, alert, clock.now_iso()):
                    events.emit(events.BALANCE_LOW if alert == LOW else events.BALANCE_EXHAUSTED,
                                _detail(account, now.balance_micros, now.ledger))
                    emitted += 1
    return emitted


# ---------------------------------------------------------------------------------------------- spend limits


def mark_limit_reached(key: ApiKey, period: str, spent_micros: int, limit_micros: int) -> bool:
    """Set the period's spend counter's flag if it is not set, and emit Spend Limit Reached if this call set it."""
    from onysoft import spend_limits

    try:
        RateLimitCounter(counter_id=spend_limits.counter_id(key.key_id, period)).update(
            actions=[RateLimitCounter.limit_reached_at.set(clock.now_iso())],
            condition=RateLimitCounter.limit_reached_at.does_not_exist())
    except UpdateError as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    events.emit(events.SPEND_LIMIT_REACHED, events.about_key(
        key, currency=key.currency, period=period, limit_reset=key.limit_reset or None,
        spend_limit=money.format_micros(limit_micros), spend_limit_micros=limit_micros,
        spent=money.format_micros(spent_micros), spent_micros=spent_micros))
    return True


@dataclass(frozen=True)
class LimitedSpend:
    """A settled record of a key with a spend limit: where its period's counter is, and the limit then."""

    key_hash: str
    key_id: str
    period: str
    limit_micros: int


def check_spend_limits(spends: Iterable[LimitedSpend]) -> int:
    """Fire Spend Limit Reached for each key whose period's spend reached its limit (an overrun can pass it)."""
    from onysoft import spend_limits
    from onysoft.dynamo import batch_get_raw

    wanted = {spend_limits.counter_id(s.key_id, s.period): s for s in spends}
    emitted = 0
    ids = list(wanted)
    for start in range(0, len(ids), 100):
        keys = [{"counter_id": {"S": c}} for c in ids[start:start + 100]]
        for item in batch_get_raw(RateLimitCounter.Meta.table_name, keys):
            spend = wanted[item["counter_id"]["S"]]
            spent = spend_limits.spent(item)
            if spent < spend.limit_micros or "limit_reached_at" in item:
                continue
            try:
                key = ApiKey.get(spend.key_hash, consistent_read=True)
            except ApiKey.DoesNotExist:
                continue
            emitted += mark_limit_reached(key, spend.period, spent, spend.limit_micros)
    return emitted


# ---------------------------------------------------------------------------------------------- after a batch


def _value(image: dict, name: str) -> str | None:
    attribute = image.get(name) or {}
    return next(iter(attribute.values()), None) if attribute else None


def after_rollup(records: list[dict]) -> int:
    """What a counted batch of usage stream records calls for (functions/rollup, after usage_rollup.apply).
    Never raises: an alert that could not be checked now is checked with the account's next batch."""
    try:
        accounts: list[str] = []
        spends: list[LimitedSpend] = []
        for record in records:
            image = (record.get("dynamodb") or {}).get("NewImage") or {}
            partition = _value(image, "account_id") or ""
            if not partition.startswith("acct_"):
                continue
            accounts.append(partition.partition("#")[0])
            try:
                if _value(image, "status") == "settled" and _value(image, "spend_period") and \
                        _value(image, "spend_limit_micros") and _value(image, "key_hash"):
                    spends.append(LimitedSpend(_value(image, "key_hash"), _value(image, "key_id") or "",
                                               _value(image, "spend_period"),
                                               int(_value(image, "spend_limit_micros"))))
            except ValueError:  # a record the rollup set aside (issue 23): the batch's other alerts still run
                continue
        return check_accounts(accounts) + check_spend_limits(dict.fromkeys(spends))
    except Exception:  # noqa: BLE001 - alerts never fail the rollup
        logger.exception("balance alerts not checked for this batch")
        return 0
