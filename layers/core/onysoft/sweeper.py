"""Close holds left open by invocations that died before settling (the scheduled sweeper, `onysoft sweep`).

A hold older than the longest possible request (the proxy's 15-minute timeout plus a margin) cannot be
settled any more by its own invocation. A request that left for the upstream (`sent_at` on its record) may have
been billed to the platform in full, and nobody knows its usage: it is charged its hold (prompt and all the output
it allowed), marked estimated — never released, never less (docs/BILLING.md). Only a hold whose request never
left the gateway is released. `older_than_seconds` is never below the proxy's deadline plus a margin: a younger
hold may belong to a request still running (MIN_OLDER_THAN_SECONDS). Each close is conditioned on the record still being
pending, so it happens at most once, and never after a late settle. Open holds are spread over the index's
`open#<n>` shards (billing.OPEN_SHARDS); each run reads them all. A record that cannot be closed is logged,
counted (`close_failures`: the handler's SweeperCloseFailures metric) and left for the next run; the run goes on.

Poison cannot stick (issue 23): each failed close adds one to the record's `sweep_attempts` (and keeps the error,
`sweep_error`); the MAX_SWEEP_ATTEMPTS-th failure quarantines it: `hold_state` becomes "quarantined" (out of the
`open#<n>` shards, so later runs and the stale-holds alarm no longer see it), `quarantined_at` is set, and the
record stays pending with its money held, since closing it wrongly would be worse than holding it. Quarantined holds are
counted each run (the QuarantinedHolds metric and its alarm), listed by `onysoft sweep quarantined` and closed,
once fixed, by `onysoft sweep quarantined --retry` (the same close, still at most once). A record the model
cannot even read (a number stored as text…) is handled the same way, by its keys.
"""

import itertools
import logging
from collections.abc import Iterator
from datetime import timedelta

from onysoft import billing, clock
from onysoft.deadline import deadline_seconds
from onysoft.models import UsageRecord

logger = logging.getLogger("onysoft.sweeper")
MAX_REQUEST_SECONDS = 15 * 60
MARGIN_SECONDS = 5 * 60
DEFAULT_OLDER_THAN_SECONDS = MAX_REQUEST_SECONDS + MARGIN_SECONDS
SETTLE_MARGIN_SECONDS = 60  # a request past its deadline still settles: time for that


def min_older_than_seconds() -> float:
    """The youngest hold the sweeper may close: older than any request that may still be running (the proxy's
    deadline) and its settle."""
    return deadline_seconds() + SETTLE_MARGIN_SECONDS


class TooYoung(ValueError):
    """An `older_than` below min_older_than_seconds(): it would close holds of requests still running."""


MAX_SWEEP_ATTEMPTS = 5  # runs 5 minutes apart: 25 minutes of failures, then quarantine
QUARANTINED = "quarantined"  # hold_state of a quarantined hold: one partition of the open_holds index


def close_stale_holds(now_iso: str | None = None, older_than_seconds: float = DEFAULT_OLDER_THAN_SECONDS,
                      limit: int = 1000) -> dict[str, int]:
    if older_than_seconds < min_older_than_seconds():
        raise TooYoung(f"holds younger than {min_older_than_seconds():g} s may belong to requests still running")
    now = clock.parse_iso(now_iso) if now_iso else clock.utc_now()
    cutoff = clock.to_iso(now - timedelta(seconds=older_than_seconds))
    counts = {"settled": 0, "released": 0, "already_closed": 0, "close_failures": 0, "quarantined": 0}
    stale = (item for shard in billing.open_shards() for item in _raw_index_items(shard, cutoff))
    for item in itertools.islice(stale, limit):  # the rest waits for the next run, 5 minutes later
        counts[_close_or_count(item)] += 1
    return counts


def _raw_index_items(hold_state: str, cutoff: str | None = None) -> Iterator[dict]:
    """The open_holds index's items under `hold_state` (older than `cutoff`), raw: one the model cannot read
    must not end the iteration over the others."""
    connection = UsageRecord._get_connection()
    start = None
    while True:
        page = connection.query(hold_state, UsageRecord.created_at < cutoff if cutoff else None,
                                index_name="open_holds", exclusive_start_key=start)
        yield from page.get("Items") or []
        start = page.get("LastEvaluatedKey")
        if not start:
            return


def _keys(item: dict) -> tuple[str, str]:
    return item["account_id"]["S"], item["sk"]["S"]


def _close_or_count(item: dict) -> str:
    try:
        return _close(UsageRecord.from_raw_data(item))
    except billing.AlreadyClosed:
        return "already_closed"
    except Exception as exc:  # one record must not stop the run (nor every later run)
        account_id, sk = _keys(item)
        logger.exception("could not close the stale hold %s of %s", sk, account_id,
                         extra={"account_id": account_id, "sk": sk})
        return _count_failure(item, exc)


def _count_failure(item: dict, exc: Exception) -> str:
    """One more failed try on the record; the MAX_SWEEP_ATTEMPTS-th quarantines it. Conditioned on the record
    being where this run found it, so overlapping runs count a failure once each and never revive a close."""
    account_id, sk = _keys(item)
    tried = int((item.get("sweep_attempts") or {}).get("N", "0") or 0) + 1
    actions = [UsageRecord.sweep_attempts.add(1), UsageRecord.sweep_error.set(f"{type(exc).__name__}: {exc}"[:300])]
    state = (item.get("hold_state") or {}).get("S", "")
    quarantine = tried >= MAX_SWEEP_ATTEMPTS and state != QUARANTINED  # a retry that failed again stays as it was
    if quarantine:
        actions += [UsageRecord.hold_state.set(QUARANTINED), UsageRecord.quarantined_at.set(clock.now_iso())]
    try:
        # The table's connection, not the model's update: that would read the item back into the model.
        UsageRecord._get_connection().update_item(
            account_id, sk, actions=actions,
            condition=(UsageRecord.status == billing.PENDING) & (UsageRecord.hold_state == state))
    except Exception:  # noqa: BLE001 - counted as a failure of this run; the next run tries again
        logger.warning("could not count a failed close", exc_info=True, extra={"account_id": account_id, "sk": sk})
        return "close_failures"
    if quarantine:
        logger.error("stale hold quarantined after %d failed closes; its money stays held until "
                     "`onysoft sweep quarantined --retry`", tried, extra={"account_id": account_id, "sk": sk})
        return "quarantined"
    return "close_failures"


def quarantined_holds(limit: int | None = None) -> list[dict]:
    """The quarantined holds, oldest first (raw items: one may be unreadable by the model): what the operator
    sees with `onysoft sweep quarantined`."""
    items = _raw_index_items(QUARANTINED)
    return list(itertools.islice(items, limit) if limit else items)


def count_quarantined(cap: int = 100) -> int:
    """How many holds are quarantined (capped: the alarm needs "any")."""
    return sum(1 for _ in itertools.islice(_raw_index_items(QUARANTINED), cap))


def retry_quarantined() -> dict[str, int]:
    """Close every quarantined hold now (once its cause is fixed): the same close as a run's, at most once; one
    that still fails stays quarantined, its attempts and error updated."""
    counts = {"settled": 0, "released": 0, "already_closed": 0, "still_quarantined": 0}
    for item in quarantined_holds():
        outcome = _close_or_count(item)
        counts[outcome if outcome in counts else "still_quarantined"] += 1
    return counts


def _close(record: UsageRecord) -> str:
    hold = billing.hold_from_record(record)
    if record.sent_at:
        # The provider was called and may bill the platform for all the hold allowed: the hold is charged.
        billing.settle(hold, hold.plan.as_usage(), reason="stale_hold")
        return "settled"
    billing.release(hold, code="stale_hold", message="the request never left the gateway; the hold was released")
    return "released"
