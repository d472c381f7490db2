"""Time to live for the local moto server: expired items are deleted, as DynamoDB deletes them.

moto keeps a table's TimeToLiveSpecification but never deletes an expired item, so locally every item meant
to expire (the usage rollup's per-record markers after 7 days, the rate-limit windows) stays forever, and the
state, its snapshot and every start grow with them. The journal calls `expire` when it compacts (at a clean
stop, and when the journal passes its size), which is as often as a development gateway needs it: DynamoDB
itself only promises to delete an expired item within a few days.

DynamoDB's rules, kept: only a Number attribute named by an enabled specification counts; an item whose
expiry is more than five years in the past is not deleted (DynamoDB takes such a value for a mistake); a
deletion goes on the table's stream, as a TTL deletion does in AWS.
"""

from __future__ import annotations

import time
from typing import Any

FIVE_YEARS_SECONDS = 5 * 365 * 24 * 3600


def expired(item: Any, attribute: str, now: float) -> bool:
    value = item.attrs.get(attribute)
    if value is None or value.type != "N":
        return False
    try:
        expires_at = float(value.value)
    except (TypeError, ValueError):
        return False
    return now - FIVE_YEARS_SECONDS <= expires_at < now


def expire(table: Any, now: float | None = None) -> int:
    """Delete the table's expired items; how many. A table without an enabled specification is left alone."""
    if table.ttl.get("TimeToLiveStatus") != "ENABLED" or not table.ttl.get("AttributeName"):
        return 0
    attribute, now = table.ttl["AttributeName"], time.time() if now is None else now
    # Table.items: {hash: Item} or {hash: {range: Item}} (moto 5.2, pinned in moto_transactions).
    if table.range_key_attr:
        doomed = [(item.hash_key, item.range_key) for bucket in table.items.values() for item in bucket.values()
                  if expired(item, attribute, now)]
    else:
        doomed = [(item.hash_key, None) for item in table.items.values() if expired(item, attribute, now)]
    for hash_key, range_key in doomed:
        table.delete_item(hash_key, range_key)
    for hash_key in {hash_key for hash_key, _ in doomed}:
        if table.range_key_attr and not table.items.get(hash_key):
            table.items.pop(hash_key, None)  # no empty partition left behind
    return len(doomed)
