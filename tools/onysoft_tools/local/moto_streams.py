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

Kept across restarts: a stream lives in moto's memory, so what its reader has not read yet when the journal is
compacted (the records from where its last read started) goes into the snapshot with the table (`unread`) and
back on the stream at the next start (`restore`): a stop, clean or not, never has to wait for the reader to
catch up, and nothing the rollup has not counted is lost. The rollup counts a record once however often it
sees it (its markers), so handing a record over twice costs a little work, never a wrong total.

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


def unread(table: Any) -> list[dict]:
    """The table's stream records from where its reader's last read started (all of them if it never read),
    as JSON-ready dicts, oldest first."""
    shard = table.stream_shard
    if shard is None:
        return []
    read_from = max(getattr(shard, "onysoft_read_from", 0), shard.starting_sequence_number)
    records = []
    for record in shard.items[read_from - shard.starting_sequence_number:]:
        copied = {**record.record, "dynamodb": dict(record.record["dynamodb"])}
        copied["dynamodb"].pop("ApproximateCreationDateTime", None)  # set again when restored
        records.append(copied)
    return records


def restore(table: Any, records: list[dict]) -> None:
    """Put records `unread` saved back on the table's stream, with new sequence numbers after what it holds."""
    from moto.core.utils import utcnow
    from moto.dynamodb.models.table import StreamRecord

    shard = table.stream_shard
    if shard is None:
        return
    for saved in records:
        record = StreamRecord.__new__(StreamRecord)
        seq = len(shard.items) + shard.starting_sequence_number
        record.record = {**saved, "dynamodb": {**saved["dynamodb"], "SequenceNumber": str(seq),
                                               "ApproximateCreationDateTime": utcnow()}}
        shard.items.append(record)


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
        # Where the reader is: what comes before this read has been handed over (a snapshot keeps the rest).
        iterator.stream_shard.onysoft_read_from = int(iterator.sequence_number)
        page = self.backend.get_records(arn, limit)
        trim(self.backend, iterator)
        return json.dumps(page, default=_default)

    get_records.onysoft_direct = True  # type: ignore[attr-defined]
    DynamoDBStreamsHandler.get_records = get_records
