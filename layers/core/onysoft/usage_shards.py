"""A sharded account's usage records, spread over its shards' Usage partitions (issue 16).

DynamoDB gives one partition about 1,000 write units a second; every billed request writes its record twice
(hold, settle: 4 units), so one account in one partition tops out near 250 requests a second. A record goes to
the partition of the balance shard its hold took from: `<account_id>` for shard 0 (an account with one shard:
exactly today's layout), `<account_id>#<k>` for shard k (balances.shard_key). The record's `account_id`
attribute is that partition key; `account_of` gives the account back.

Readers go through here: `newest_first` merges the partitions' newest-first queries into one (sk is
`<created_at>#<request_id>`, unique, the same order in every partition), `records` chains them for totals.
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


def _query(partition: str, key_id: str | None, start: str | None, upper: str | None, page_size: int | None):
    kwargs = {"scan_index_forward": False}
    if page_size:
        kwargs["page_size"] = page_size
    if key_id:  # no index by key (issue 16): the account's records, filtered
        kwargs["filter_condition"] = UsageRecord.key_id == key_id
    if start is not None and upper is not None:
        return UsageRecord.query(partition, UsageRecord.sk.between(start, upper), **kwargs)
    if upper is not None:
        return UsageRecord.query(partition, UsageRecord.sk <= upper, **kwargs)
    return UsageRecord.query(partition, **kwargs)


def newest_first(account: Account, *, start: str | None = None, end: str | None = None, key_id: str | None = None,
                 limit: int | None = None, after_sk: str | None = None) -> list[UsageRecord]:
    """Up to `limit` records, newest first, over every partition; `after_sk`: continue after that record."""
    upper = after_sk if after_sk is not None else end
    streams = [_query(p, key_id, start, upper, limit + 1 if limit else None) for p in partitions(account)]
    merged = heapq.merge(*streams, key=lambda record: record.sk, reverse=True)
    if after_sk is not None:
        merged = (r for r in merged if r.sk != after_sk)  # the bound is inclusive; sk is unique
    return list(itertools.islice(merged, limit) if limit else merged)


def records(account: Account, *, start: str, end: str, key_id: str | None = None) -> Iterator[UsageRecord]:
    """Every record in the range, partition after partition (for totals: any order)."""
    for partition in partitions(account):
        yield from _query(partition, key_id, start, end, None)
