"""A sharded account's usage records, spread over its shards' Usage partitions (issue 16).

DynamoDB gives one partition about 1,000 write units a second; every billed request writes its record twice
(hold, settle: 4 units), so one account in one partition tops out near 250 requests a second. A record goes to
the partition of the balance shard its hold took from: `<account_id>` for shard 0 (an account with one shard:
exactly today's layout), `<account_id>#<k>` for shard k (balances.shard_key). The record's `account_id`
attribute is that partition key; `account_of` gives the account back.

Readers go through here: `newest_first` merges the partitions' newest-first queries into one (sk is
`<created_at>#<request_id>`, unique, the same order in every partition), `records` chains them for totals.

One key's records (issue 23): the Usage table's `by_key_shard` index (KEYS_ONLY), partition key `key_shard`,
`<key_id>` for balance shard 0 and `<key_id>#<k>` for shard k, sort key `sk`. Set once, by the hold's Put: its
entry costs 1 write unit a billed request (the settle changes neither its keys nor, KEYS_ONLY, anything it
projects), and a hot key's entries spread over its account's shards as the records do. A page of a key's usage
reads at most (page + 1) entries per shard and the page's records, never the account's other keys' records.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from onysoft import balances
from onysoft.models import Account, UsageRecord


def account_of(partition: str) -> str:
    return partition.split("#", 1)[0]


def partitions(account: Account) -> list[str]:
    return [balances.shard_key(account.account_id, k) for k in range(balances.max_of(account))]


def key_partition(key_id: str, shard: int) -> str:
    """The `by_key_shard` partition of a key's records held from balance shard `shard`."""
    return balances.shard_key(key_id, shard)


def _query(partition: str, key_id: str | None, start: str | None, upper: str | None, page_size: int | None,
           shard: int = 0):
    kwargs = {"scan_index_forward": False}
    if page_size:
        kwargs["page_size"] = kwargs["limit"] = page_size
    # One key's: its entries in the by_key_shard index (keys only: the records are read after the merge).
    source, hash_value = (UsageRecord.by_key_shard, key_partition(key_id, shard)) if key_id else (UsageRecord,
                                                                                                    partition)
    if start is not None and upper is not None:
        return source.query(hash_value, UsageRecord.sk.between(start, upper), **kwargs)
    if upper is not None:
        return source.query(hash_value, UsageRecord.sk <= upper, **kwargs)
    return source.query(hash_value, **kwargs)


def newest_first(account: Account, *, start: str | None = None, end: str | None = None, key_id: str | None = None,
                 limit: int | None = None, after_sk: str | None = None) -> list[UsageRecord]:
    """Up to `limit` records, newest first, over every partition; `after_sk`: continue after that record."""
    upper = after_sk if after_sk is not None else end
    streams = [_query(p, key_id, start, upper, limit + 1 if limit else None, shard)
               for shard, p in enumerate(partitions(account))]
    merged = heapq.merge(*streams, key=lambda record: record.sk, reverse=True)
    if after_sk is not None:
        merged = (r for r in merged if r.sk != after_sk)  # the bound is inclusive; sk is unique
    found = list(itertools.islice(merged, limit) if limit else merged)
    if not key_id:
        return found
    by_key = {(r.account_id, r.sk): r for r in UsageRecord.batch_get([(e.account_id, e.sk) for e in found],
                                                                      consistent_read=True)}
    return [by_key[(e.account_id, e.sk)] for e in found if (e.account_id, e.sk) in by_key]


def records(account: Account, *, start: str, end: str, key_id: str | None = None) -> Iterator[UsageRecord]:
    """Every record in the range, partition after partition (for totals: any order)."""
    for shard, partition in enumerate(partitions(account)):
        entries = _query(partition, key_id, start, end, None, shard)
        yield from (UsageRecord.batch_get([(e.account_id, e.sk) for e in entries]) if key_id else entries)
