"""The key at request time: read again before every hold, and when it was last used.

The authorizer's answer is cached by API Gateway (ReauthorizeEvery), so the proxy re-reads the key item,
strongly consistent, before it holds any money: a key deleted or expired a moment ago gets 401 at once.

The hold transaction itself does not touch the key item (issue 16, docs/SCALE.md): a write per request on one
item stops a key near 500 requests a second, and costs 2 write units. So:
- the check is this read (1 read unit; an item takes 3,000 a second), which brings the key's rate-limit counters
  for the current window in the same BatchGetItem (`usable_key_and_window`: the x-ratelimit headers);
- `last_used_at` is written at most about once a minute per key (`note_use`): the read says when it was
  last written, and only a request that finds it older writes it again (a minute, as the authorizer's cache:
  a write a second was 1 write unit a request for a key used every second, ~$0.25 per million on provisioned
  tables, for a display field; docs/BENCHMARKS.md section 4);
- the key's request count and spend are counted by the usage rollup from the Usage table's stream
  (onysoft.usage_rollup, `key_totals`), off the request path.
What it costs: a key deleted between this read and the hold (milliseconds) still serves that one request,
as a request already under way when the key is deleted does; every request that starts after is refused.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from pynamodb.exceptions import UpdateError

from onysoft import clock, errors, leaks, rate_limits
from onysoft.api_keys import LEAKED, refusal
from onysoft.caller import CallerContext
from onysoft.dynamo import batch_get
from onysoft.models import ApiKey, RateLimitCounter

LAST_USED_EVERY = timedelta(seconds=60)

logger = logging.getLogger("onysoft.key_use")


def check(record: ApiKey | None, caller: CallerContext) -> ApiKey:
    """The key item, if it may authenticate now (api_keys.refusal: active and unexpired, or an old secret
    within its grace, exactly to the microsecond) and is the one the authorizer saw; otherwise 401 (a leaked key:
    `key_leaked`, saying where it was found). The one rule for every /v1 route (the billed ones here,
    GET /v1/key, /v1/models and count_tokens in proxy_app)."""
    if record is None or record.key_id != caller.key_id or record.account_id != caller.account_id:
        raise errors.invalid_api_key()
    why = refusal(record)
    if why == LEAKED:
        raise errors.key_leaked(leaks.revoked_message(record))
    if why is not None:
        raise errors.invalid_api_key()
    return record


def usable_key_and_window(key_hash: str, caller: CallerContext, window: rate_limits.Window
                          ) -> tuple[ApiKey, rate_limits.Usage]:
    """The key item through `check`, and the key's use of the rate-limit window so far (the x-ratelimit headers
    of a billed answer), in one strongly consistent BatchGetItem: the same read units as the key's GetItem and
    the window's read after the hold, one round trip and one call fewer (docs/BENCHMARKS.md section 6)."""
    table = RateLimitCounter.Meta.table_name
    counter_ids = window.counter_ids(caller.key_id, caller.shards)
    found = batch_get({
        ApiKey.Meta.table_name: {"Keys": [{"key_hash": {"S": key_hash}}], "ConsistentRead": True},
        table: {"Keys": [{"counter_id": {"S": c}} for c in counter_ids], "ConsistentRead": True},
    })
    items = found.get(ApiKey.Meta.table_name) or []
    record = check(ApiKey.from_raw_data(items[0]) if items else None, caller)
    counters = {item["counter_id"]["S"]: item for item in found.get(table) or []}
    return record, rate_limits.summed(counters, caller.key_id, window, caller.shards)


def due(last_used_at: str | None, now: str) -> bool:
    """Whether a request at `now` should write last_used_at (never written, or written LAST_USED_EVERY ago or more)."""
    if not last_used_at:
        return True
    try:
        return clock.parse_iso(now) - clock.parse_iso(last_used_at) >= LAST_USED_EVERY
    except ValueError:
        return True


def note_use(record: ApiKey, now: str | None = None) -> None:
    """Write the key's last_used_at when it is due. A plain write (1 unit), never one that fails the request."""
    now = now or clock.now_iso()
    if not due(record.last_used_at, now):
        return
    try:
        # Only an existing key: a key deleted meanwhile must not come back as a stub item.
        ApiKey(key_hash=record.key_hash).update(actions=[ApiKey.last_used_at.set(now)],
                                                condition=ApiKey.key_hash.exists())
    except UpdateError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            logger.warning("could not write the key's last use", extra={"key_id": record.key_id})
    except Exception:  # noqa: BLE001 - a display field: the request goes on
        logger.warning("could not write the key's last use", extra={"key_id": record.key_id})
