"""moto's per-request objects are freed once nothing refers to them (onysoft_tools.local.moto_untracked): an
item a write replaced, the copies an update or a transaction made, a stream record the reader consumed and moto
streams trimmed, a shard iterator past the newest kept. Stock moto keeps each in a class-wide list for life,
which grew the local moto server ~60 KB a chat request (tools/bench/moto_memory.py). moto in-process."""

from __future__ import annotations

import gc
import weakref

import boto3
import pytest
from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import StreamRecord
from moto.dynamodbstreams.models import ShardIterator

from onysoft import config
from onysoft_tools.local import moto_transactions, moto_untracked
from tests.unit.test_moto_streams import stream  # noqa: F401 - the patched stream, trimming after 5 records

USAGE = config.table_name("ONYSOFT_TABLE_USAGE")
ACCOUNTS = config.table_name("ONYSOFT_TABLE_ACCOUNTS")


@pytest.fixture
def untracked(aws_tables):
    moto_transactions.install()
    moto_untracked.install()
    yield aws_tables
    moto_untracked.uninstall()


def _stored(table_name: str, account_id: str) -> Item:
    table = dynamodb_backends["123456789012"]["us-east-1"].tables[table_name]
    return table.items[DynamoType({"S": account_id})]


def _churn(client, rounds: int) -> None:
    """What a chat request does to an account item, `rounds` times: a put, updates, a transaction."""
    for n in range(rounds):
        client.put_item(TableName=ACCOUNTS, Item={"account_id": {"S": "acct_u"}, "balance_micros": {"N": "100"},
                                                  "note": {"S": "x" * 200}})
        client.update_item(TableName=ACCOUNTS, Key={"account_id": {"S": "acct_u"}},
                           UpdateExpression="ADD #b :d", ExpressionAttributeNames={"#b": "balance_micros"},
                           ExpressionAttributeValues={":d": {"N": str(-n)}})
        client.transact_write_items(TransactItems=[{"Update": {
            "TableName": ACCOUNTS, "Key": {"account_id": {"S": "acct_u"}}, "UpdateExpression": "ADD #b :d",
            "ExpressionAttributeNames": {"#b": "balance_micros"}, "ExpressionAttributeValues": {":d": {"N": "1"}},
            "ConditionExpression": "#b >= :d"}}])


def test_an_item_a_write_replaced_is_freed_and_nothing_is_tracked(untracked):
    client = untracked
    _churn(client, 1)
    replaced = weakref.ref(_stored(ACCOUNTS, "acct_u"))
    _churn(client, 50)
    gc.collect()
    assert replaced() is None  # stock moto: alive in Item.instances_tracked
    assert Item.instances_tracked == []
    # What the table holds is the last write, as before.
    item = client.get_item(TableName=ACCOUNTS, Key={"account_id": {"S": "acct_u"}})["Item"]
    assert item["balance_micros"] == {"N": str(100 - 49 + 1)}
    assert item["note"] == {"S": "x" * 200}


def test_stock_moto_keeps_every_item_copy_the_reason_for_the_patch(untracked):
    moto_untracked.uninstall()
    Item.instances_tracked.clear()
    _churn(untracked, 1)
    replaced = weakref.ref(_stored(ACCOUNTS, "acct_u"))
    _churn(untracked, 20)
    gc.collect()
    assert replaced() is not None
    assert len(Item.instances_tracked) >= 20 * 4  # a put, copies for an update and for a transaction: per round


def test_item_copies_stop_growing_with_requests(untracked):
    client = untracked
    _churn(client, 5)
    gc.collect()
    before = sum(isinstance(obj, Item) for obj in gc.get_objects())
    _churn(client, 100)
    gc.collect()
    after = sum(isinstance(obj, Item) for obj in gc.get_objects())
    assert after <= before  # one account item, however many writes


def _usage(n: int) -> None:
    boto3.client("dynamodb", region_name="us-east-1").put_item(TableName=USAGE, Item={
        "account_id": {"S": "acct_s"}, "sk": {"S": f"2026-11-01T10:00:{n:02d}.000000Z#r{n}"},
        "key_id": {"S": "key_s"}, "status": {"S": "pending"}})


def test_stream_records_and_iterators_the_reader_is_done_with_are_freed(untracked, stream):  # noqa: F811
    client, arn, shard, stream_backend = stream  # trims after 5 records, keeps 3 iterators
    for n in range(12):
        _usage(n)
    table = dynamodb_backends["123456789012"]["us-east-1"].tables[USAGE]
    first_record = weakref.ref(table.stream_shard.items[0])
    iterator = client.get_shard_iterator(StreamArn=arn, ShardId=shard,
                                         ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    first_iterator = weakref.ref(stream_backend.shard_iterators[iterator])
    seen = 0
    for _ in range(8):
        page = client.get_records(ShardIterator=iterator, Limit=4)
        seen += len(page["Records"])
        iterator = page["NextShardIterator"]
    assert seen == 12
    gc.collect()
    assert first_record() is None  # trimmed from the stream: gone (stock moto: in StreamRecord.instances_tracked)
    assert first_iterator() is None  # evicted past MAX_ITERATORS: gone
    assert StreamRecord.instances_tracked == [] and ShardIterator.instances_tracked == []
