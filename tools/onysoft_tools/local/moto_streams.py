"""GetRecords for the local gateway's usage-rollup poller: without moto's model-driven response serializer, and
with the stream kept bounded by what its reader has consumed.

Measured: moto serialized a GetRecords page at ~5 ms a stream record (each carries a usage record's old and
new images), and the server runs one request at a time (serial_moto), so the poller held every gateway request
up: p50 of a chat went from ~44 ms to ~85 ms. Here the same JSON is written with json.dumps (timestamps as
epoch seconds, as DynamoDB Streams' JSON protocol has them).

Bounded: stock moto keeps every stream record (three a chat request, each with a usage record's images) and
every shard iterator (one more per GetRecords) for the life of the server, which grew moto's memory without
end over a long `onysoft dev` session. The local stream has one reader, the rollup poller, which only moves
forward; so when a GetRecords starts at sequence number S, the records before S have been read, and once there
are TRIM_AT of them they are dropped (the shard's starting sequence number moves up with them, so sequence
numbers and TRIM_HORIZON keep their meaning: like a stream's 24-hour trim in AWS, by count). An iterator that
points before what is kept gets TrimmedDataAccessException, as in AWS. Only the newest MAX_ITERATORS shard
iterators are kept (AWS expires them after 15 minutes; the poller uses each once).

It relies on moto's internals (StreamShard.items and starting_sequence_number, the backend's shard_iterators),
so it installs only on the moto range moto_transactions checks. Installed by onysoft_tools.serial_moto.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

TRIM_AT = 1_000  # consumed stream records dropped at once (a slice delete: O(records kept))
MAX_ITERATORS = 1_000  # shard iterators kept (the newest)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    raise TypeError(f"not JSON: {type(value).__name__}")


def trim(backend: Any, iterator: Any) -> None:
    """After a read with `iterator`: drop the records before where it started, once there are TRIM_AT of them,
    and the oldest shard iterators past MAX_ITERATORS."""
    shard = iterator.stream_shard
    consumed = int(iterator.sequence_number) - shard.starting_sequence_number
    if consumed >= TRIM_AT:
        del shard.items[:consumed]
        shard.starting_sequence_number += consumed
    iterators = backend.shard_iterators
    while len(iterators) > MAX_ITERATORS:
        del iterators[next(iter(iterators))]


def install() -> None:
    from moto.core.exceptions import JsonRESTError
    from moto.dynamodbstreams.responses import DynamoDBStreamsHandler

    from onysoft_tools.local import moto_transactions

    if getattr(DynamoDBStreamsHandler.get_records, "onysoft_direct", False):
        return
    import moto

    moto_transactions.check_version(moto.__version__)

    def get_records(self: Any) -> str:
        arn = self._get_param("ShardIterator")
        limit = self._get_param("Limit") or 1000
        iterator = self.backend.shard_iterators.get(arn)
        if iterator is None:
            raise JsonRESTError("ExpiredIteratorException", "Iterator expired or unknown (onysoft dev keeps "
                                                            f"the newest {MAX_ITERATORS})")
        if int(iterator.sequence_number) < iterator.stream_shard.starting_sequence_number:
            raise JsonRESTError("TrimmedDataAccessException",
                                "the iterator points before the stream's oldest record (onysoft dev trims "
                                "records its reader has consumed)")
        page = self.backend.get_records(arn, limit)
        trim(self.backend, iterator)
        return json.dumps(page, default=_default)

    get_records.onysoft_direct = True  # type: ignore[attr-defined]
    DynamoDBStreamsHandler.get_records = get_records
