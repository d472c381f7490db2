"""serial_moto's memory probe (onysoft_tools.local.memory_probe): off unless asked for; counts what the tables hold
(items, their size as DynamoDB JSON, the stream's records) and what moto keeps besides. moto in-process."""

from __future__ import annotations

import json

from onysoft import config
from onysoft_tools.local import memory_probe

ACCOUNTS = config.table_name("ONYSOFT_TABLE_ACCOUNTS")
USAGE = config.table_name("ONYSOFT_TABLE_USAGE")


def test_it_answers_only_when_enabled(monkeypatch):
    environ = {"PATH_INFO": memory_probe.PATH, "QUERY_STRING": ""}
    monkeypatch.delenv(memory_probe.ENV, raising=False)
    assert not memory_probe.wants(environ)
    monkeypatch.setenv(memory_probe.ENV, "1")
    assert memory_probe.wants(environ)
    assert not memory_probe.wants({"PATH_INFO": "/"})


def test_it_counts_the_items_and_their_bytes_per_table(aws_tables):
    item = {"account_id": {"S": "acct_p"}, "balance_micros": {"N": "12"}}
    aws_tables.put_item(TableName=ACCOUNTS, Item=item)
    aws_tables.put_item(TableName=USAGE, Item={"account_id": {"S": "acct_p"}, "sk": {"S": "a#1"}})
    aws_tables.put_item(TableName=USAGE, Item={"account_id": {"S": "acct_p"}, "sk": {"S": "a#2"}})
    status, _headers, body = memory_probe.answer({"PATH_INFO": memory_probe.PATH, "QUERY_STRING": ""})
    report = json.loads(body)
    assert status == "200 OK"
    accounts = report["tables"][ACCOUNTS]
    assert (accounts["items"], accounts["json_bytes"], accounts["stream_records"]) == (1, len(json.dumps(item)), None)
    # In moto's objects an item is several times its JSON: Item, its attrs dict, a DynamoType per attribute...
    assert accounts["per_item"]["bytes"] > 3 * len(json.dumps(item))
    assert accounts["per_item"]["objects"] >= 2 + 2 * len(item)
    assert report["tables"][USAGE]["items"] == 2
    assert report["tables"][USAGE]["stream_records"] == 2  # the Usage table has a stream (the rollup reads it)
    assert report["tables"][USAGE]["per_stream_record"]["bytes"] > 0
    assert report["rss_bytes"] > 0 and report["gc_objects"] > 0
