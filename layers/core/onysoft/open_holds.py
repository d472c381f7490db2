"""How many holds are still open past an age: the sweeper reports it after each run (the stale-holds alarm).

A hold older than the sweeper's threshold should be gone after its next run; one older than 30 minutes has
outlived two runs, so the sweeper is failing or falling behind. Counted on the sparse open_holds index,
capped: the alarm needs "any", not an exact census.
"""

from datetime import timedelta

from onysoft import billing, clock
from onysoft.models import UsageRecord

ALARM_AGE_SECONDS = 30 * 60


def count_older_than(seconds: int = ALARM_AGE_SECONDS, *, cap: int = 100) -> int:
    cutoff = clock.to_iso(clock.utc_now() - timedelta(seconds=seconds))
    found = 0
    for shard in billing.open_shards():
        for _ in UsageRecord.open_holds.query(shard, UsageRecord.created_at < cutoff, limit=cap - found):
            found += 1
        if found >= cap:
            break
    return found
