"""moto's stream, as onysoft dev serves it (onysoft_tools.local.moto_streams): GetRecords answers what stock moto
does, while the records its one reader consumed and the spent shard iterators are dropped, so a long session's
stream does not grow without end; sequence numbers and TRIM_HORIZON keep their meaning (moto in-process)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from moto.dynamodbstreams.models import dynamodbstreams_backends
from moto.dynamodbstreams.responses import DynamoDBStreamsHandler

from onysoft import config
from onysoft_tools.local import moto_streams, moto_transactions
from onysoft_tools.local.rollup_poller import RollupPoller, streams_client
from tests.unit.test_usage_rollup import _record, _settle, rollups, scanned_totals

USAGE = config.table_name("ONYSOFT_TABLE_USAGE")


@pytest.fixture
def stream(aws_tables, monkeypatch):
    """The patched GetRecords (the stock one restored afterwards), trimming after 5 records, 3 iterators kept."""
    monkeypatch.setattr(DynamoDBStreamsHandler, "get_records", DynamoDBStreamsHandler.get_records)
    moto_transactions.install()
    moto_streams.install()
    monkeypatch.setattr(moto_streams, "TRIM_AT", 5)
    monkeypatch.setattr(moto_streams, "MAX_ITERATORS", 3)
    client = streams_client()
    arn = client.list_streams(TableName=USAGE)["Streams"][-1]["StreamArn"]
    shard = client.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    backend = dynamodbstreams_backends["123456789012"]["us-east-1"]
    return client, arn, shard, backend


def _write(count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        _record("acct_s", "key_s", f"2026-11-01T10:00:{n:02d}.000000Z", "mock/echo")


def test_a_reader_gets_every_record_in_order_while_what_it_read_is_dropped(stream):
    client, arn, shard, backend = stream
    _write(12)
    table_shard = backend.dynamodb.get_table(USAGE).stream_shard
    iterator = client.get_shard_iterator(StreamArn=arn, ShardId=shard,
                                         ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    seen: list[int] = []
    for _ in range(6):
        page = client.get_records(ShardIterator=iterator, Limit=4)
        seen += [int(r["dynamodb"]["SequenceNumber"]) for r in page["Records"]]
        iterator = page["NextShardIterator"]
    first = seen[0]
    assert seen == list(range(first, first + 12))  # every record once, in order, numbers unchanged
    assert page["Records"] == []  # read to the end
    # What the reader has read is gone (in steps of at least TRIM_AT); the rest is kept.
    assert table_shard.starting_sequence_number > first
    assert len(table_shard.items) == first + 12 - table_shard.starting_sequence_number < 12
    assert len(backend.shard_iterators) <= 3
    # TRIM_HORIZON and DescribeStream now start at the oldest record kept.
    described = client.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]
    assert int(described["SequenceNumberRange"]["StartingSequenceNumber"]) == table_shard.starting_sequence_number
    horizon = client.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    kept = client.get_records(ShardIterator=horizon["ShardIterator"])["Records"]
    assert [int(r["dynamodb"]["SequenceNumber"]) for r in kept] == seen[-len(kept):]
    # New records after the trim: the same reader goes on, numbers go on.
    _write(3, start=20)
    page = client.get_records(ShardIterator=iterator)
    assert [int(r["dynamodb"]["SequenceNumber"]) for r in page["Records"]] == [first + 12, first + 13, first + 14]


def test_an_iterator_before_what_is_kept_is_refused_as_in_aws(stream, monkeypatch):
    client, arn, shard, _backend = stream
    monkeypatch.setattr(moto_streams, "MAX_ITERATORS", 10)
    _write(8)
    old = client.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    reader = client.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    page = client.get_records(ShardIterator=reader["ShardIterator"])
    client.get_records(ShardIterator=page["NextShardIterator"])  # starts after 8 read records: trims them
    with pytest.raises(ClientError) as refused:
        client.get_records(ShardIterator=old["ShardIterator"])
    assert refused.value.response["Error"]["Code"] == "TrimmedDataAccessException"


def test_only_the_newest_iterators_are_kept(stream):
    client, arn, shard, backend = stream
    iterators = [client.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"]
                 for _ in range(5)]
    client.get_records(ShardIterator=iterators[-1])
    assert len(backend.shard_iterators) == 3
    with pytest.raises(ClientError) as expired:
        client.get_records(ShardIterator=iterators[0])
    assert expired.value.response["Error"]["Code"] == "ExpiredIteratorException"


def test_the_rollup_poller_over_a_trimmed_stream_counts_every_record_once(stream):
    poller = RollupPoller(USAGE)
    for n in range(4):
        _write(3, start=10 * n)
        for record in _records_to_settle(n):
            _settle(record, 2, 3, 40)
        poller.drain()
    assert rollups("acct#acct_s") == scanned_totals("acct_s")
    assert rollups("key#key_s") == scanned_totals("acct_s", "key_s")


def _records_to_settle(n: int):
    from onysoft.models import UsageRecord

    return [r for r in UsageRecord.query("acct_s") if r.status == "pending"][: n + 1]


def test_a_cancelled_transaction_after_a_trim_leaves_the_stream_as_it_was(stream):
    client, arn, shard, backend = stream
    _write(8)
    reader = client.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    page = client.get_records(ShardIterator=reader["ShardIterator"])
    iterator = client.get_records(ShardIterator=page["NextShardIterator"])["NextShardIterator"]  # trimmed
    table_shard = backend.dynamodb.get_table(USAGE).stream_shard
    before = (table_shard.starting_sequence_number, len(table_shard.items))
    dynamodb = backend.dynamodb
    item = {"account_id": {"S": "acct_s"}, "sk": {"S": "2026-11-01T10:00:00.000000Z#new"},
            "key_id": {"S": "key_s"}}
    import boto3

    with pytest.raises(ClientError):
        boto3.client("dynamodb", region_name="us-east-1").transact_write_items(TransactItems=[
            {"Put": {"TableName": USAGE, "Item": item}},
            {"ConditionCheck": {"TableName": USAGE, "Key": {"account_id": {"S": "nobody"}, "sk": {"S": "x"}},
                                "ConditionExpression": "attribute_exists(account_id)"}}])
    assert (table_shard.starting_sequence_number, len(table_shard.items)) == before
    assert dynamodb.get_table(USAGE).stream_shard is table_shard
    assert client.get_records(ShardIterator=iterator)["Records"] == []
