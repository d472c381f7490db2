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
"""

import itertools
import logging
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


def close_stale_holds(now_iso: str | None = None, older_than_seconds: float = DEFAULT_OLDER_THAN_SECONDS,
                      limit: int = 1000) -> dict[str, int]:
    if older_than_seconds < min_older_than_seconds():
        raise TooYoung(f"holds younger than {min_older_than_seconds():g} s may belong to requests still running")
    now = clock.parse_iso(now_iso) if now_iso else clock.utc_now()
    cutoff = clock.to_iso(now - timedelta(seconds=older_than_seconds))
    counts = {"settled": 0, "released": 0, "already_closed": 0, "close_failures": 0}
    stale = (record for shard in billing.open_shards()
             for record in UsageRecord.open_holds.query(shard, UsageRecord.created_at < cutoff))
    for record in itertools.islice(stale, limit):  # the rest waits for the next run, 5 minutes later
        try:
            counts[_close(record)] += 1
        except billing.AlreadyClosed:
            counts["already_closed"] += 1
        except Exception:  # one record must not stop the run (nor every later run)
            counts["close_failures"] += 1
            logger.exception("could not close the stale hold %s of %s; left for the next run", record.request_id,
                             record.account_id, extra={"request_id": record.request_id,
                                                       "account_id": record.account_id, "sk": record.sk})
    return counts


def _close(record: UsageRecord) -> str:
    hold = billing.hold_from_record(record)
    if record.sent_at:
        # The provider was called and may bill the platform for all the hold allowed: the hold is charged.
        billing.settle(hold, hold.plan.as_usage(), reason="stale_hold")
        return "settled"
    billing.release(hold, code="stale_hold", message="the request never left the gateway; the hold was released")
    return "released"
