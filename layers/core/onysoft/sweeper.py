"""Release holds left open by invocations that died before settling.

A hold older than the longest possible request (the proxy's 15-minute timeout plus a margin) cannot be
settled any more by its own invocation. Release is conditioned on the record still being pending, so a
hold is released at most once, and never after a late settle. Open holds are spread over the index's
`open#<n>` shards (billing.OPEN_SHARDS); each run reads them all.
"""

import itertools
from datetime import timedelta

from onysoft import billing, clock
from onysoft.models import UsageRecord

MAX_REQUEST_SECONDS = 15 * 60
MARGIN_SECONDS = 5 * 60


def release_stale_holds(now_iso: str | None = None, older_than_seconds: int = MAX_REQUEST_SECONDS + MARGIN_SECONDS,
                        limit: int = 1000) -> dict[str, int]:
    now = clock.parse_iso(now_iso) if now_iso else clock.utc_now()
    cutoff = clock.to_iso(now - timedelta(seconds=older_than_seconds))
    released = already_closed = 0
    stale = (record for shard in billing.open_shards()
             for record in UsageRecord.open_holds.query(shard, UsageRecord.created_at < cutoff))
    for record in itertools.islice(stale, limit):  # the rest waits for the next run, 5 minutes later
        try:
            billing.release(billing.hold_from_record(record), code="stale_hold",
                            message="the invocation ended without settling; the hold was released")
            released += 1
        except billing.AlreadyClosed:
            already_closed += 1
    return {"released": released, "already_closed": already_closed}
