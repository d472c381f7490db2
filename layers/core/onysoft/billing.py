"""Hold and settle: the two DynamoDB transactions around every billed request.

hold    — one TransactWriteItems before any upstream byte: the account's balance goes down by the hold
          only if it covers it (and is above zero: an account in debt is refused); the key's rate-limit
          counter counts the request if it has room; a pending usage record is written (with an
          "open#<shard>" marker the stale-hold sweeper finds). The key item is not in it (issue 16: one
          item per key would cap a key near 500 requests a second): the proxy reads the key, strongly
          consistent, right before the hold (onysoft.key_use), and writes its last_used_at at most once a
          second; its request count and spend are the usage rollup's (onysoft.usage_rollup).
sent    — when the request leaves for the upstream, the record says so (`sent_at`): the sweeper releases
          only a hold whose request never left the gateway, and settles every other one.
settle  — one TransactWriteItems after the response: the balance gets back hold − charge (negative when the
          provider reported more than the hold: the overrun is a debt, charged in full); the usage record
          becomes settled with every factor. Nothing else is written on the request path.
release — the same shape for a call that cost nothing: the whole hold comes back, the record says why.

settle and release are conditioned on the record still being pending, so each happens at most once:
a retried settle, or a sweeper racing a late settle, can never charge or refund twice.
Invariant: sum of settled charges == top-ups − balance − open holds, to the micro-unit (balance may be < 0).
"""

import logging
import zlib
from dataclasses import dataclass
from decimal import Decimal

from pynamodb.connection import Connection
from pynamodb.exceptions import TransactWriteError, UpdateError

from onysoft import (
    balances,
    clock,
    errors,
    money,
    parallel,
    rate_limits,
    spend_limits,
    telemetry,
    transact_items,
    usage_shards,
)
from onysoft.caller import CallerContext
from onysoft.hold_sizing import ChargeFactors, HoldPlan
from onysoft.models import Account, UsageRecord
from onysoft.provider_usage import Usage
from onysoft.retries import Backoff, retry

PENDING, SETTLED, FAILED = "pending", "settled", "failed"
OPEN = "open"
# The sparse open_holds index is keyed by hold_state: with one value, every request in the region would write
# one index partition (~1000 writes/s before DynamoDB throttles the index, and with it the Usage table).
# Holds are spread over OPEN_SHARDS values, "open#0" … "open#15", chosen by request id; the sweeper reads each.
OPEN_SHARDS = 16


def open_shard(request_id: str) -> str:
    return f"{OPEN}#{zlib.crc32(request_id.encode()) % OPEN_SHARDS}"


def open_shards() -> list[str]:
    return [f"{OPEN}#{n}" for n in range(OPEN_SHARDS)]


@dataclass(frozen=True)
class Hold:
    request_id: str
    account_id: str
    sk: str
    key_hash: str
    key_id: str
    micros: int
    plan: HoldPlan
    factors: ChargeFactors
    window_start: int = 0  # the rate-limit window the request was counted in (0: not counted)
    spend_period: str = ""  # the key's spend-limit period the hold was counted in ("": no spend limit)
    shard: int = 0  # the balance shard the hold took from (onysoft.balances)
    shards: int = 1  # how many shards the account had then
    # Fallbacks (onysoft.fallbacks): the model that answered when it is not the one held for (plan and factors
    # are then its own), the body's `model`, and the attempts that failed before ("model: code").
    answered_model: str = ""
    requested_model: str = ""
    attempts: tuple[str, ...] = ()
    rate_tokens: int = 0  # the tokens the rate window counted it for (the settle gives back what it did not use)
    parallel: str = ""  # where it counts as a request in flight: "key", "account", "key,account" (onysoft.parallel)

    @property
    def record_pk(self) -> str:
        """The usage record's partition: the account's, or its shard's (onysoft.usage_shards)."""
        return balances.shard_key(self.account_id, self.shard)


class RateRefused(Exception):
    """The hold's rate-limit counter is at its share: `usage` is that counter's, as the condition read it."""

    def __init__(self, usage: rate_limits.Usage):
        super().__init__("rate limit")
        self.usage = usage


class ParallelRefused(Exception):
    """The key (`scope` "key") or the hold's balance shard ("account") has no room for one more request in flight."""

    def __init__(self, scope: str):
        super().__init__("max_parallel")
        self.scope = scope


class HoldRefused(Exception):
    """The hold does not fit: the balance (or the key's spend limit) does not cover it.

    `balance_micros` is what the account had, `limit_room_micros` what the key's limit had left, as read
    by the failed condition itself (no extra round trip); None when that part did not fail.
    """

    def __init__(self, balance_micros: int | None, limit_room_micros: int | None, *,
                 limit_spent_micros: int | None = None, limit_flagged: bool = False):
        super().__init__("hold refused")
        self.balance_micros = balance_micros
        self.limit_room_micros = limit_room_micros
        self.limit_spent_micros = limit_spent_micros  # the period's spend, as the failed condition read it
        self.limit_flagged = limit_flagged  # Spend Limit Reached already fired this period (onysoft.balance_alerts)

    @property
    def affordable_micros(self) -> int | None:
        known = [v for v in (self.balance_micros, self.limit_room_micros) if v is not None]
        return min(known) if known else None


def _connection() -> Connection:
    # PynamoDB's own connection (and botocore client) for the tables: no second client to build.
    return Account._get_connection().connection


def _reason_codes(exc: TransactWriteError) -> list:
    return list(exc.cancellation_reasons or [])


# Cancellation reasons and errors that say "try again", not "no": another transaction touched the same
# item, or DynamoDB throttled. botocore retries throttled calls itself, but not a cancelled transaction.
RETRYABLE_REASONS = {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
RETRYABLE_ERRORS = {"TransactionConflictException", "TransactionInProgressException", "ThrottlingException",
                    "ProvisionedThroughputExceededException", "RequestLimitExceeded", "InternalServerError"}
TRANSACT_ATTEMPTS = 8
TRANSACT_RETRY = Backoff(TRANSACT_ATTEMPTS, base_seconds=0.02, cap_seconds=1.0, jitter=True)


def _retryable(exc: TransactWriteError) -> bool:
    codes = {r.code for r in _reason_codes(exc) if r is not None}
    if "ConditionalCheckFailed" in codes:
        return False  # a real "no": never retried
    return bool(codes & RETRYABLE_REASONS) or exc.cause_response_code in RETRYABLE_ERRORS


def _transact(token: str, *, puts: list[dict] = (), updates: list[transact_items.Update] = ()) -> None:
    """Run one TransactWriteItems, retrying conflicts and throttling with capped, jittered backoff.

    The same client request token on every attempt makes a retry after an unseen success a no-op (and the same
    items on every attempt: they are built once, before the first).
    """
    def attempt() -> None:
        transact_items.transact(_connection(), puts=puts, updates=updates, token=token)

    retry(attempt, TRANSACT_RETRY, retry_if=lambda exc: isinstance(exc, TransactWriteError) and _retryable(exc))


def place_hold(*, request_id: str, key_hash: str, caller: CallerContext, plan: HoldPlan, factors: ChargeFactors,
               endpoint: str, stream: bool, model: str, attempt: int = 0, sending: bool = False) -> Hold:
    """`sending`: the request leaves for the upstream right after the hold (the proxy): the record says so
    from the start (`sent_at`), instead of one more write as it leaves (docs/ARCHITECTURE.md, write units)."""
    now = clock.now_iso()
    sk = f"{now}#{request_id}"
    window = rate_limits.current_window()
    period = spend_limits.period_start(caller.limit_reset) if caller.spend_limit_micros else ""
    # The usage record as the hold's Put writes it (its partition and key shard are the try's: below).
    record = dict(
        sk=sk, request_id=request_id, key_id=caller.key_id, key_hash=key_hash,
        created_at=now, status=PENDING, hold_state=open_shard(request_id), endpoint=endpoint,
        stream="true" if stream else "false",
        model=model, provider=factors.price.provider, upstream_model=factors.price.upstream_model,
        currency=caller.currency, hold_micros=plan.micros, hold_prompt_tokens=plan.prompt_tokens,
        hold_output_tokens=plan.output_tokens, markup_bp=factors.markup_bp,
        input_usd_per_mtok=str(factors.price.input_usd_per_mtok),
        output_usd_per_mtok=str(factors.price.output_usd_per_mtok),
        cached_input_usd_per_mtok=str(factors.price.cached_input_price),
        cache_write_usd_per_mtok=str(factors.price.cache_write_price),
        media_parts=plan.media_parts or None, hold_audio_tokens=plan.audio_tokens or None,
        **_price_extras(factors.price),
        fx_rate=str(factors.fx_rate), fx_rate_at=factors.fx_rate_at, rate_window=window.start,
        rate_tokens=plan.rate_tokens, spend_period=period or None, sent_at=now if sending else None,
        spend_limit_micros=caller.spend_limit_micros if period else None,
        parallel=parallel.counted_in(caller) or None,
    )

    def hold_on(shard: int) -> None:
        """One try of the hold on balance shard `shard`: the transaction, with its retries."""
        record.update(balance_shard=shard or None,
                      account_id=balances.shard_key(caller.account_id, shard),  # its shard's Usage partition
                      key_shard=usage_shards.key_partition(caller.key_id, shard))  # and its key's by_key_shard entry
        # ≥ 1 µ even for a free hold: a shard in debt (balance ≤ 0) never funds a hold.
        balance = balances.update(caller.account_id, shard).add(balances.BALANCE, -plan.micros) \
            .where_at_least(balances.BALANCE, max(plan.micros, 1))
        parallel.count_in_account(balance, caller, shard)  # the account's max_parallel: same item, same Update
        updates = [balance.old_item_on_failure(), rate_limits.count_request(caller, window, shard, plan.rate_tokens)]
        if period:
            updates.append(spend_limits.hold(caller.key_id, caller.spend_limit_micros, caller.limit_reset, period,
                                             plan.micros))
        if caller.max_parallel:
            updates.append(parallel.count_key(caller))
        # A token per try: a try with other parameters must never be taken for a retry of an earlier one.
        _transact(f"h{attempt}{n:x}{request_id}", puts=[transact_items.put_new(UsageRecord, record)],
                  updates=updates)

    # One shard per try: the request's own, then one other, then (the sum permitting) all gathered in one.
    # The rate-limit counter is the shard's too: a full one moves the hold to a shard whose counter has room.
    shards = max(caller.shards, 1)
    shard, tried, rate_full, consolidations, n = balances.first_shard(request_id, shards), set(), set(), 0, 0
    parallel_full: set[int] = set()  # shards at their share of the account's max_parallel
    while True:
        n += 1
        try:
            hold_on(shard)
            break
        except TransactWriteError as exc:
            try:
                _explain_refusal(exc, caller, spend_limited=bool(period), shard=shard, needed=max(plan.micros, 1))
            except ParallelRefused as busy:
                if busy.scope == parallel.KEY or shards == 1:
                    raise parallel.refused(caller, busy.scope) from None
                parallel_full.add(shard)
                counts = parallel.account_in_flight(caller.account_id, shards)
                other = parallel.shard_with_room(caller, counts, parallel_full | rate_full)
                if other is None or n > 3 * shards:
                    raise parallel.refused(caller, busy.scope) from None
                shard = other
                continue
            except RateRefused as full:
                if shards == 1:
                    raise rate_limits.exceeded(caller, full.usage, window) from None
                rate_full.add(shard)
                counters = rate_limits.read_counters(caller.key_id, window, shards)
                other = rate_limits.shard_with_room(caller, counters, window, rate_full | parallel_full)
                if other is None or n > 3 * shards:
                    raise rate_limits.exceeded(caller, rate_limits.summed(counters, caller.key_id, window, shards),
                                               window) from None
                shard = other
                continue
            except HoldRefused as refused:
                if shards == 1 or refused.limit_room_micros is not None or consolidations == 2:
                    raise
                tried.add(shard)
                # Never towards a shard whose rate counter is full: the key's requests may still have room
                # on the others, and money gathered there could not be held (a 402 with money, or a 429 with room).
                busy = rate_full | parallel_full
                other = balances.next_shard(request_id, shards, tried | busy) if len(tried) < 2 else None
                if other is None:  # gathered funds may be taken by a concurrent hold: gather at most twice
                    balance_sum, target = balances.consolidate(caller.account_id, max(plan.micros, 1),
                                                               avoid=busy)
                    consolidations += 1
                    if target is None:
                        raise HoldRefused(balance_sum, None) from None
                    other = target
                shard = other
                continue
            raise
    return Hold(request_id, caller.account_id, sk, key_hash, caller.key_id, plan.micros, plan, factors,
                window.start, period, shard, shards, rate_tokens=plan.rate_tokens,
                parallel=parallel.counted_in(caller))


def _explain_refusal(exc: TransactWriteError, caller: CallerContext, spend_limited: bool, shard: int = 0,
                     needed: int = 1) -> None:
    """Say why a hold was cancelled: a RateRefused (→ 429, or another shard), a ParallelRefused (→ 429, or another
    shard) or a HoldRefused (→ 402 or a smaller hold); anything else goes on as it was raised.

    The transaction's items are the puts, then the updates in the order given (onysoft.transact_items):
    [usage put, account update, rate counter update, (spend counter update), (key's in-flight counter update)].
    """
    reasons = list(exc.cancellation_reasons or []) + [None] * 5
    _, account, rate = reasons[:3]
    spend = reasons[3] if spend_limited else None
    key_slots = reasons[4 if spend_limited else 3] if caller.max_parallel else None

    def failed(reason) -> bool:
        return reason is not None and reason.code == "ConditionalCheckFailed"

    if failed(rate):
        raise RateRefused(rate_limits.usage_from_item(rate.raw_item)) from None
    if failed(key_slots):
        raise ParallelRefused(parallel.KEY) from None
    balance = limit_room = spent = None
    flagged = False
    if failed(account):
        raw = account.raw_item or {}
        balance = int(raw["balance_micros"]["N"]) if "balance_micros" in raw else 0
        if balance >= needed and parallel.account_full(caller, raw, shard):  # the money is there, the slots not
            raise ParallelRefused(parallel.ACCOUNT) from None
    if spend_limited and failed(spend):
        spent = spend_limits.spent(spend.raw_item)
        limit_room = max(caller.spend_limit_micros - spent, 0)
        flagged = "limit_reached_at" in (spend.raw_item or {})
    if balance is not None or limit_room is not None:
        raise HoldRefused(balance, limit_room, limit_spent_micros=spent, limit_flagged=flagged) from None


def refusal_error(caller: CallerContext, needed_micros: int, refused: HoldRefused) -> errors.GatewayError:
    """402: name the account and currency, or the key's spend limit, whichever is short."""
    cur = caller.currency
    need = f"this request needs a hold of {money.format_micros(needed_micros)} {cur}"
    if refused.limit_room_micros is not None and (refused.balance_micros is None
                                                  or refused.limit_room_micros <= refused.balance_micros):
        reset = f", reset {caller.limit_reset}" if caller.limit_reset else ""
        return errors.GatewayError(
            402,
            f"This API key ({caller.key_id}) has reached its spend limit of "
            f"{money.format_micros(caller.spend_limit_micros)} {cur}{reset}: "
            f"{money.format_micros(refused.limit_room_micros)} {cur} left, and {need}.",
            "insufficient_quota", "key_spend_limit_reached",
        )
    have = f" (balance {money.format_micros(refused.balance_micros or 0)} {cur})"
    if refused.balance_micros is not None and refused.balance_micros < 0:
        return errors.GatewayError(
            402,
            f"Account {caller.account_id} is in debt{have}: an earlier request cost more than its hold. "
            "Top up the account to above zero to continue.",
            "insufficient_quota", "insufficient_balance",
        )
    return errors.GatewayError(
        402,
        f"Insufficient balance on account {caller.account_id}{have}: {need}. "
        "Top up the account or lower max_tokens.",
        "insufficient_quota", "insufficient_balance",
    )


def _still_pending():
    return (UsageRecord.status == PENDING) & UsageRecord.hold_state.exists()


class AlreadyClosed(Exception):
    """The hold was settled or released already (a retry, or the sweeper got there first)."""


def mark_sent(hold: Hold) -> None:
    """Record that the request is leaving for the upstream: from now on the call is never free. Only while
    the hold is pending (a settle or release that got there first is not undone)."""
    record = UsageRecord(account_id=hold.record_pk, sk=hold.sk)
    try:
        record.update(actions=[UsageRecord.sent_at.set(clock.now_iso())], condition=_still_pending())
    except UpdateError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise


def _price_extras(price) -> dict:
    """The prices and tier a charge may use beyond input, output and cache: on the record only when the model has
    them, so every charge is recomputable from its record."""
    extras = {"audio_input_usd_per_mtok": price.audio_input_usd_per_mtok, "tier_above_tokens": price.tier_above_tokens,
              "tier_input_usd_per_mtok": price.tier_input_usd_per_mtok,
              "tier_output_usd_per_mtok": price.tier_output_usd_per_mtok}
    return {name: (value if isinstance(value, int) else str(value)) for name, value in extras.items()
            if value is not None}


def settle(hold: Hold, usage: Usage, *, upstream_status: int | None = None, settled_at: str | None = None,
           reason: str = "") -> int:
    """Charge exactly what the usage costs; give back the rest of the hold. Returns the charge in micro-units.

    A charge above the hold (the provider reported more than the gateway held for) is charged in full: the
    balance goes down by the overrun too, below zero if need be, and the record says `overrun`. `settled_at`:
    the same on every retry of one settle (the same transaction token must carry the same parameters);
    `reason`: why an estimated usage was estimated.
    """
    factors = hold.factors
    charge = factors.charge_micros(usage)
    cost = factors.provider_cost_usd(usage)
    now = settled_at or clock.now_iso()
    record = _pending_record(hold).set("status", SETTLED).remove("hold_state").set("charge_micros", charge) \
        .set("prompt_tokens", usage.prompt_tokens).set("completion_tokens", usage.completion_tokens) \
        .set("provider_cost_usd", str(cost)).set("settled_at", now)
    for name, count in (("cached_tokens", usage.cached_tokens), ("cache_write_tokens", usage.cache_write_tokens),
                        ("reasoning_tokens", usage.reasoning_tokens), ("audio_tokens", usage.audio_tokens)):
        if count:
            record.set(name, count)
    if usage.estimated:
        record.set("usage_estimated", "true")
        if reason:
            record.set("estimate_reason", reason[:100])
    if charge > hold.micros:
        record.set("overrun", "true").set("overrun_micros", charge - hold.micros)
    if upstream_status is not None:
        record.set("upstream_status", upstream_status)
    _record_fallbacks(record, hold)
    _close(hold, refund=hold.micros - charge, record=record, used_tokens=usage.prompt_tokens + usage.completion_tokens)
    if charge > hold.micros and hold.shards > 1:
        _net_debts(hold)
    telemetry.note(charge_micros=charge)
    return charge


def _net_debts(hold: Hold) -> None:
    """An overrun may have left the hold's shard in debt: net it against the other shards (best effort: the
    settle is done; a failure here leaves the debt on its shard, which refuses holds until netted)."""
    try:
        balances.net_debts(hold.account_id)
    except Exception:  # noqa: BLE001
        logging.getLogger("onysoft.billing").exception("could not net a shard's debt",
                                                       extra={"request_id": hold.request_id})


def release(hold: Hold, *, code: str, message: str, upstream_status: int | None = None) -> None:
    """A failed call costs nothing: the whole hold goes back; the record says why."""
    record = _pending_record(hold).set("status", FAILED).remove("hold_state").set("charge_micros", 0) \
        .set("error_code", code).set("error_message", message[:500]).set("settled_at", clock.now_iso())
    if upstream_status is not None:
        record.set("upstream_status", upstream_status)
    _record_fallbacks(record, hold)
    _close(hold, refund=hold.micros, record=record, used_tokens=0)


def _pending_record(hold: Hold) -> transact_items.Update:
    """The hold's usage record, to close: only while it is still pending (so at most once)."""
    return transact_items.Update(UsageRecord, {"account_id": hold.record_pk, "sk": hold.sk}) \
        .where_equals("status", PENDING).where_exists("hold_state")


def _record_fallbacks(record: transact_items.Update, hold: Hold) -> None:
    """The record names the attempts that failed and, when another model answered than the one held for, that
    model with its prices: the charge is recomputable from the record."""
    if hold.attempts:
        record.set("fallback_attempts", list(hold.attempts))
    if hold.answered_model:
        price = hold.factors.price
        record.set("model", hold.answered_model).set("provider", price.provider) \
            .set("upstream_model", price.upstream_model) \
            .set("input_usd_per_mtok", str(price.input_usd_per_mtok)) \
            .set("output_usd_per_mtok", str(price.output_usd_per_mtok)) \
            .set("cached_input_usd_per_mtok", str(price.cached_input_price)) \
            .set("cache_write_usd_per_mtok", str(price.cache_write_price))
        extras = _price_extras(price)
        for name in ("audio_input_usd_per_mtok", "tier_above_tokens", "tier_input_usd_per_mtok",
                     "tier_output_usd_per_mtok"):
            if name in extras:
                record.set(name, extras[name])
            else:
                record.remove(name)
        if hold.requested_model and hold.requested_model != hold.answered_model:
            record.set("requested_model", hold.requested_model)


def _close(hold: Hold, *, refund: int, record: transact_items.Update, used_tokens: int) -> None:
    # Decided once, before the first attempt: every retry of this transaction (one token) has the same items.
    give_back = rate_limits.give_back_now(hold.window_start, hold.rate_tokens, used_tokens)
    # The request is no longer in flight: its account's slot back with the money, its key's on the key's counter.
    balance = balances.update(hold.account_id, hold.shard)
    balances.add_to(balance, hold.account_id, hold.shard, refund)
    updates = [record, balance]
    key_slot = parallel.give_back(balance, hold.parallel, hold.key_id, hold.shard)
    if key_slot is not None:
        updates.insert(1, key_slot)
    if hold.spend_period:  # a spend limit stays exact: its counter moves with the money
        updates.append(spend_limits.adjust(hold.key_id, hold.spend_period, -refund))
    if give_back:  # the tpm window counts what the request used, not what it might have
        updates.append(rate_limits.give_back(hold.key_id, hold.window_start, hold.shard, give_back))

    try:
        _transact(f"c{hold.request_id}", updates=updates)
    except TransactWriteError as exc:
        reasons = _reason_codes(exc)  # updates in the order given: the usage record's comes first
        if reasons and reasons[0] is not None and reasons[0].code == "ConditionalCheckFailed":
            raise AlreadyClosed(hold.request_id) from None
        telemetry.settle_failed()
        raise
    except Exception:
        telemetry.settle_failed()
        raise


def hold_from_record(record: UsageRecord) -> Hold:
    """Rebuild a Hold from its pending record (the sweeper's view)."""
    from onysoft.catalog import ModelPrice

    def price_or_none(text: str | None) -> Decimal | None:
        return Decimal(text) if text else None

    price = ModelPrice(record.model or "", record.provider or "", record.upstream_model or "",
                       Decimal(record.input_usd_per_mtok or "0"), Decimal(record.output_usd_per_mtok or "0"),
                       True, "", cached_input_usd_per_mtok=price_or_none(record.cached_input_usd_per_mtok),
                       cache_write_usd_per_mtok=price_or_none(record.cache_write_usd_per_mtok),
                       audio_input_usd_per_mtok=price_or_none(record.audio_input_usd_per_mtok),
                       tier_above_tokens=int(record.tier_above_tokens) if record.tier_above_tokens else None,
                       tier_input_usd_per_mtok=price_or_none(record.tier_input_usd_per_mtok),
                       tier_output_usd_per_mtok=price_or_none(record.tier_output_usd_per_mtok))
    factors = ChargeFactors(price, int(record.markup_bp or 0), Decimal(record.fx_rate or "1"), record.fx_rate_at or "")
    plan = HoldPlan(int(record.hold_prompt_tokens or 0), int(record.hold_output_tokens or 0), True,
                    int(record.hold_micros or 0), audio_tokens=int(record.hold_audio_tokens or 0))
    account_id = record.account_id.split("#", 1)[0]  # the record may sit in a shard's partition
    return Hold(record.request_id, account_id, record.sk, record.key_hash or "", record.key_id,
                int(record.hold_micros or 0), plan, factors, int(record.rate_window or 0), record.spend_period or "",
                int(record.balance_shard or 0), 2 if record.balance_shard else 1,
                rate_tokens=int(record.rate_tokens or 0), parallel=record.parallel or "")
