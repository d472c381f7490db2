"""A spend limit per key, in its account's currency, optionally reset daily, weekly or monthly.

The period's spend is a counter in the RateLimits table (`<key_id>#spend#<period start>`): a new period is
a new counter, so a reset needs no job. The hold adds the hold to it only if the limit stays unpassed;
the settle replaces the hold by the charge. Periods start at 00:00 UTC (weeks on Monday, months on the 1st).
"""

from datetime import datetime, timedelta

from onysoft import clock, transact_items
from onysoft.models import RateLimitCounter

RESETS = ("daily", "weekly", "monthly")
NEVER = "never"


def period_start(reset: str | None, now: datetime | None = None) -> str:
    now = now or clock.utc_now()
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if reset == "daily":
        return day.strftime("%Y-%m-%d")
    if reset == "weekly":
        return (day - timedelta(days=day.weekday())).strftime("%Y-%m-%d")
    if reset == "monthly":
        return day.strftime("%Y-%m")
    return NEVER


def _ttl(reset: str | None, now: datetime) -> int | None:
    days = {"daily": 2, "weekly": 8, "monthly": 32}.get(reset or "")
    return int((now + timedelta(days=days)).timestamp()) if days else None


def counter_id(key_id: str, period: str) -> str:
    return f"{key_id}#spend#{period}"


def hold(key_id: str, limit_micros: int, reset: str | None, period: str, amount: int) -> transact_items.Update:
    """Part of the hold transaction: count `amount` against the period, if the limit is not passed."""
    counter = transact_items.Update(RateLimitCounter, {"counter_id": counter_id(key_id, period)}) \
        .add("spend_micros", amount)
    ttl = _ttl(reset, clock.utc_now())
    if ttl:
        counter.set_if_absent("expires_at", ttl)
    room = limit_micros - amount
    if room >= 0:
        counter.where_absent_or_at_most("spend_micros", room)
    else:  # the hold alone passes the limit: a condition that cannot hold
        counter.where_never()
    return counter.old_item_on_failure()


def adjust(key_id: str, period: str, delta: int) -> transact_items.Update:
    """Part of settle/release: replace the hold by the charge (delta = charge − hold)."""
    return transact_items.Update(RateLimitCounter, {"counter_id": counter_id(key_id, period)}) \
        .add("spend_micros", delta)


def spent(raw: dict | None) -> int:
    return int(((raw or {}).get("spend_micros") or {}).get("N", 0))


def read_spent(key_id: str, period: str) -> int:
    try:
        return int(RateLimitCounter.get(counter_id(key_id, period), consistent_read=True).spend_micros or 0)
    except RateLimitCounter.DoesNotExist:
        return 0
