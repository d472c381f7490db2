"""Requests in flight at once (`max_parallel`), per key and per account (issue 23): counted where the hold already
writes, given back where the settle already writes, so a crash's count is repaired by whatever closes its hold.

- The key's count is one RateLimits item, `<key_id>#parallel` (`in_flight`, no TTL), updated in the hold's
  transaction only for a key with a max_parallel (ADD 1 if `in_flight < max_parallel`) and given back (ADD -1) in
  the settle's or release's transaction. 2 write units at the hold and 2 at the settle for such keys; keys
  without a limit write nothing. One item per key: its ceiling is DynamoDB's 1,000 write units a second per
  item, 4 units a request: ~250 requests a second per limited key (a limit is what such a key has anyway).
- The account's count is an attribute (`in_flight`) of the balance shard item the hold already updates: a
  conditional ADD in the same Update, no extra item and no extra write unit. An account with N shards gives each
  shard its share of max_parallel (`rate_limits.share`: the shares add up to the limit exactly, like rpm's); a
  shard at its share moves the hold to a shard with room (read from all N, one BatchGetItem), and the request is
  refused only when every share is taken.
- Over either: 429 `too_many_parallel_requests`, Retry-After 1, before anything is held (the hold's transaction
  is cancelled whole: no record, no money, no upstream call).
- The usage record says where its hold counted (`parallel`: "key", "account"), so the settle, the release and
  the sweeper's close (onysoft.billing._close, conditioned on the record being pending: at most once) give back
  exactly what the hold took. A hold left open by a crash keeps its slots until the sweeper closes it; then the
  counts are back to what the open holds say (0 when none is open).
"""

from __future__ import annotations

from onysoft import balances, errors, transact_items
from onysoft.balances import IN_FLIGHT
from onysoft.caller import CallerContext
from onysoft.dynamo import batch_get_raw
from onysoft.models import Account, RateLimitCounter
from onysoft.rate_limits import share

KEY, ACCOUNT = "key", "account"
RETRY_AFTER_SECONDS = 1


def key_counter_id(key_id: str) -> str:
    return f"{key_id}#parallel"


def account_share(caller: CallerContext, shard: int) -> int:
    """The balance shard's part of the account's max_parallel (0 when the account has none: not counted)."""
    return share(caller.account_max_parallel, max(caller.shards, 1), shard) if caller.account_max_parallel else 0


def count_in_account(shard_update: transact_items.Update, caller: CallerContext, shard: int) -> None:
    """The hold's Update of its balance shard also takes one of the account's slots, if it has room (nothing
    when the account has no max_parallel). A limit smaller than the shard count: a shard with a share of 0
    funds no request in flight at all."""
    if caller.account_max_parallel:
        shard_update.add(IN_FLIGHT, 1).where_absent_or_below(IN_FLIGHT, account_share(caller, shard))


def count_key(caller: CallerContext) -> transact_items.Update:
    """The key's slot, in the hold's transaction (only for a key with a max_parallel)."""
    return transact_items.Update(RateLimitCounter, {"counter_id": key_counter_id(caller.key_id)}) \
        .add(IN_FLIGHT, 1).where_absent_or_below(IN_FLIGHT, caller.max_parallel).old_item_on_failure()


def counted_in(caller: CallerContext) -> str:
    """What the usage record says the hold counts in ("" for nothing)."""
    return ",".join(name for name, limit in ((KEY, caller.max_parallel), (ACCOUNT, caller.account_max_parallel))
                    if limit)


def give_back(shard_update: transact_items.Update, counted: str, key_id: str, shard: int
              ) -> transact_items.Update | None:
    """The slots a hold took, back, in the settle's or release's transaction: the account's on its balance shard's
    Update (the settle's own), the key's as an Update of its own (returned; None when it took none)."""
    parts = set(counted.split(",")) if counted else set()
    if ACCOUNT in parts:
        shard_update.add(IN_FLIGHT, -1)
    if KEY in parts:
        return transact_items.Update(RateLimitCounter, {"counter_id": key_counter_id(key_id)}).add(IN_FLIGHT, -1)
    return None


def _in_flight(raw: dict | None) -> int:
    return int(((raw or {}).get("in_flight") or {}).get("N", 0))


def account_full(caller: CallerContext, raw_shard: dict | None, shard: int) -> bool:
    """Whether the shard item, as a failed condition read it, had no room for one more request in flight."""
    return bool(caller.account_max_parallel) and _in_flight(raw_shard) >= account_share(caller, shard)


def key_in_flight(key_id: str) -> int:
    raw = batch_get_raw(RateLimitCounter.Meta.table_name, [{"counter_id": {"S": key_counter_id(key_id)}}])
    return _in_flight(raw[0] if raw else None)


def account_in_flight(account_id: str, shards: int) -> dict[int, int]:
    """Each balance shard's count of requests in flight (strongly consistent)."""
    keys = [{"account_id": {"S": balances.shard_key(account_id, k)}} for k in range(max(shards, 1))]
    found = {item["account_id"]["S"]: _in_flight(item) for item in batch_get_raw(Account.Meta.table_name, keys)}
    return {k: found.get(balances.shard_key(account_id, k), 0) for k in range(max(shards, 1))}


def shard_with_room(caller: CallerContext, counts: dict[int, int], avoid: set[int]) -> int | None:
    for k, n in counts.items():
        if k not in avoid and n < account_share(caller, k):
            return k
    return None


def refused(caller: CallerContext, scope: str) -> errors.GatewayError:
    if scope == KEY:
        what = f"This API key ({caller.key_id}) already has {caller.max_parallel} requests in flight, its limit"
    else:
        what = (f"Account {caller.account_id} already has {caller.account_max_parallel} requests in flight, its "
                "limit")
    return errors.GatewayError(
        429, f"{what} (max_parallel). Wait for one to finish and try again. Nothing was charged.", "requests",
        "too_many_parallel_requests", headers={"retry-after": str(RETRY_AFTER_SECONDS)})
