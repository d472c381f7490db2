"""Owners hear about their keys' expiry: `Key Expiring` 7 days and 1 day before, `Key Expired` once it has come.

Run on a schedule (KeyExpiryFunction, every 15 minutes; locally `onysoft dev` runs the same handler). The keys to
look at are in the sparse `by_expiry` index (ApiKeys: `expiry_watch` = "watch", sorted by `expires_at`), so a run
reads the keys that expire within 7 days or have expired without being told, never the whole table.

One event per crossing: each key's item says the last notice it got (`expiry_notified`: 7d, 1d, expired), and a
notice is sent only after a conditional update moved it forward (on the expiry it was computed for), so
overlapping or retried runs never send one twice. A key found past several thresholds at once (made 12 hours
before its expiry, or a run missed) gets only the latest: `1d`, not `7d` then `1d`. After `Key Expired` the key
leaves the index (`expiry_watch` removed). A deleted or leaked key leaves it silently.

Poison cannot stick (issue 23): a key the run cannot handle (an `expires_at` that is not a time, an item the model
cannot read) is logged and counted (`failures`: the ConsumerRecordFailures metric) and the run goes on with the
others; the key keeps its item as it is (the table is its failure store) and is tried again next run.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from pynamodb.exceptions import UpdateError

from onysoft import api_keys, clock, events, telemetry
from onysoft.models import ApiKey

logger = logging.getLogger("onysoft.key_expiry")

NOTICES = (("7d", timedelta(days=7)), ("1d", timedelta(days=1)), ("expired", timedelta(0)))
ORDER = {name: position for position, (name, _) in enumerate(NOTICES, start=1)}


def notice_due(expires_at: str, now: datetime) -> str | None:
    """The latest notice whose threshold the key has crossed at `now`, or None (more than 7 days left)."""
    left = clock.parse_iso(expires_at) - now
    due = None
    for name, before in NOTICES:
        if left <= before:
            due = name
    return due


def run(now: datetime | None = None) -> dict:
    """One pass over the watched keys: what was sent, and how many keys were looked at."""
    now = now or clock.utc_now()
    horizon = clock.to_iso(now + NOTICES[0][1])
    hashes = [entry.key_hash for entry in ApiKey.by_expiry.query(api_keys.WATCH, ApiKey.expires_at <= horizon)]
    sent = {"7d": 0, "1d": 0, "expired": 0, "looked_at": len(hashes), "unwatched": 0, "failures": 0}
    for start in range(0, len(hashes), 100):
        for key_hash, record in _records(hashes[start:start + 100]):
            try:
                if record is None:
                    raise ValueError("the key's item cannot be read")
                outcome = _notify(record, now)
            except Exception:  # noqa: BLE001 - one key must not stop the others' notices (nor every later run)
                sent["failures"] += 1
                logger.exception("key expiry notice failed; tried again next run", extra={"key_hash": key_hash})
                continue
            if outcome:
                sent[outcome] += 1
    if sent["failures"]:
        telemetry.consumer_failures("key_expiry", sent["failures"])
    return sent


def _records(hashes: list[str]):
    """(key_hash, ApiKey) for each watched key: one BatchGetItem; if an item cannot be read, one at a time, so
    only that one is None."""
    done = set()
    try:
        for record in ApiKey.batch_get(hashes, consistent_read=True):
            done.add(record.key_hash)
            yield record.key_hash, record
        return
    except Exception:  # noqa: BLE001 - some item is malformed: find which
        logger.warning("a watched key's item cannot be read; reading the rest one by one")
    for key_hash in hashes:
        if key_hash in done:
            continue
        try:
            yield key_hash, ApiKey.get(key_hash, consistent_read=True)
        except ApiKey.DoesNotExist:
            continue
        except Exception:  # noqa: BLE001
            yield key_hash, None


def _notify(record: ApiKey, now: datetime) -> str | None:
    if record.status != api_keys.ACTIVE or not record.expires_at:
        _unwatch(record)  # deleted, leaked or rotated-out meanwhile, or its expiry removed: no notices
        return "unwatched"
    due = notice_due(record.expires_at, now)
    if due is None or ORDER[due] <= ORDER.get(record.expiry_notified or "", 0):
        return None
    previous = record.expiry_notified
    condition = (ApiKey.status == api_keys.ACTIVE) & (ApiKey.expires_at == record.expires_at) & (
        ApiKey.expiry_notified.does_not_exist() if previous is None else ApiKey.expiry_notified == previous)
    actions = [ApiKey.expiry_notified.set(due)]
    if due == "expired":
        actions.append(ApiKey.expiry_watch.remove())
    try:
        record.update(actions=actions, condition=condition)
    except UpdateError as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            return None  # another run sent it, or the key changed: that run's (or the next run's) call
        raise
    if due == "expired":
        events.emit(events.KEY_EXPIRED, events.about_key(record, expires_at=record.expires_at))
    else:
        seconds_left = int((clock.parse_iso(record.expires_at) - now).total_seconds())
        events.emit(events.KEY_EXPIRING, events.about_key(record, expires_at=record.expires_at, notice=due,
                                                          seconds_left=seconds_left))
    return due


def _unwatch(record: ApiKey) -> None:
    try:
        record.update(actions=[ApiKey.expiry_watch.remove()], condition=ApiKey.expiry_watch.exists())
    except UpdateError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise
