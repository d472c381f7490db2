"""The local gateway's journal and snapshot (onysoft_tools.local.journal) with serial_moto's WSGI app, in-process:
what is journaled, replay, compaction, a torn tail, a crash inside a compaction, unreadable files, one moto per dir.
(The same against real processes and kill -9: tests/integration/test_local_durability.py.)"""

from __future__ import annotations

import json

import pytest

from onysoft_tools import serial_moto
from onysoft_tools.local import journal, moto_transactions
from onysoft_tools.local.journal import DurableState, Entry, StateError, call_app, replay_environ

TABLE = "j-counters"


def restart():
    from moto.core.base_backend import BackendDict

    BackendDict.reset()


def call(app, operation: str, body: dict, access_key: str = "AKIDEXAMPLE") -> tuple[str, dict]:
    entry = Entry(f"DynamoDB_20120810.{operation}", "eu-west-1", access_key, json.dumps(body).encode())
    status, _headers, out = call_app(app, replay_environ(entry))
    return status, json.loads(out or b"{}")


def create_table(app) -> None:
    status, _ = call(app, "CreateTable", {
        "TableName": TABLE, "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}]})
    assert status.startswith("200"), status


def add(app, item_id: str, amount: int = 1, limit: int | None = None) -> str:
    body = {"TableName": TABLE, "Key": {"id": {"S": item_id}}, "UpdateExpression": "ADD n :d",
            "ExpressionAttributeValues": {":d": {"N": str(amount)}}}
    if limit is not None:
        body["ConditionExpression"] = "attribute_not_exists(n) OR n < :limit"
        body["ExpressionAttributeValues"][":limit"] = {"N": str(limit)}
    return call(app, "UpdateItem", body)[0]


def counter(app, item_id: str) -> int | None:
    status, out = call(app, "GetItem", {"TableName": TABLE, "Key": {"id": {"S": item_id}}, "ConsistentRead": True})
    assert status.startswith("200"), (status, out)
    return int(out["Item"]["n"]["N"]) if "Item" in out else None


def started(state_dir, app, **options) -> tuple[DurableState, object]:
    state = DurableState(state_dir, app, **options)
    state.lock(wait_seconds=0.5)
    try:
        state.load()
    except BaseException:
        state.close()  # what the process's exit does in serial_moto
        raise
    return state, serial_moto.serialized_app(state, app)


def test_writes_survive_a_restart_and_reads_are_not_journaled(tmp_path, moto_app):
    state, app = started(tmp_path, moto_app)
    create_table(app)
    for _ in range(5):
        assert add(app, "a").startswith("200")
    entries_before_reads = journal.read_journal(tmp_path / journal.JOURNAL_FILE)[1]
    for _ in range(10):
        assert counter(app, "a") == 5
    call(app, "Scan", {"TableName": TABLE})
    _id, entries, _good, dropped = journal.read_journal(tmp_path / journal.JOURNAL_FILE)
    assert entries == entries_before_reads and dropped == 0
    assert [e.operation for e in entries] == ["CreateTable"] + ["items"] * 5  # item writes: their after-images
    assert entries[0].region == "eu-west-1" and entries[0].access_key == "AKIDEXAMPLE"
    assert json.loads(entries[-1].body) == {"w": [[TABLE, {"id": {"S": "a"}}, {"id": {"S": "a"}, "n": {"N": "5"}}]]}
    state.close()  # no compaction: as after kill -9

    restart()
    state, app = started(tmp_path, moto_app)
    assert state.stats["journal_entries"] == 6 and state.stats["replay_failures"] == 0
    assert counter(app, "a") == 5
    assert add(app, "a").startswith("200")
    state.close()


def test_refused_writes_are_not_journaled(tmp_path, moto_app):
    state, app = started(tmp_path, moto_app)
    create_table(app)
    assert add(app, "a", limit=2).startswith("200")
    assert add(app, "a", limit=2).startswith("200")
    assert add(app, "a", limit=2).startswith("400")  # ConditionalCheckFailed: nothing changed
    status, _ = call(app, "TransactWriteItems", {"TransactItems": [
        {"Update": {"TableName": TABLE, "Key": {"id": {"S": "b"}}, "UpdateExpression": "ADD n :d",
                    "ExpressionAttributeValues": {":d": {"N": "1"}}}},
        {"ConditionCheck": {"TableName": TABLE, "Key": {"id": {"S": "a"}}, "ConditionExpression": "n > :x",
                            "ExpressionAttributeValues": {":x": {"N": "100"}}}}]})
    assert status.startswith("400")
    entries = journal.read_journal(tmp_path / journal.JOURNAL_FILE)[1]
    assert [e.operation for e in entries] == ["CreateTable", "items", "items"]
    state.close()
    restart()
    state, app = started(tmp_path, moto_app)
    assert (counter(app, "a"), counter(app, "b")) == (2, None)
    state.close()


def test_compaction_at_size_then_restart(tmp_path, moto_app):
    state, app = started(tmp_path, moto_app, max_bytes=2000)
    create_table(app)
    for n in range(60):
        assert add(app, f"item-{n % 7}", n).startswith("200")
    assert (tmp_path / journal.SNAPSHOT_FILE).exists()  # the journal passed 2,000 bytes: compacted
    assert (tmp_path / journal.JOURNAL_FILE).stat().st_size < 2000 + 500
    expected = {f"item-{k}": sum(n for n in range(60) if n % 7 == k) for k in range(7)}
    state.close()
    restart()
    state, app = started(tmp_path, moto_app)
    assert state.stats["snapshot_items"] == 7
    assert {k: counter(app, k) for k in expected} == expected
    state.compact()  # what a clean stop does
    state.close()
    restart()
    state, app = started(tmp_path, moto_app)
    assert state.stats["journal_entries"] == 0 and state.stats["snapshot_items"] == 7
    assert {k: counter(app, k) for k in expected} == expected
    state.close()


def test_a_torn_last_entry_is_dropped(tmp_path, moto_app):
    state, app = started(tmp_path, moto_app)
    create_table(app)
    for _ in range(3):
        add(app, "a")
    state.close()
    path = tmp_path / journal.JOURNAL_FILE
    whole = path.stat().st_size
    torn = Entry("DynamoDB_20120810.UpdateItem", "eu-west-1", "AKIDEXAMPLE", b'{"TableName": "x"}').encode()
    with open(path, "ab") as handle:
        handle.write(torn[:-7])  # a kill in the middle of a write that was never answered
    restart()
    state, app = started(tmp_path, moto_app)
    assert state.stats["dropped_bytes"] == len(torn) - 7
    assert path.stat().st_size == whole
    assert counter(app, "a") == 3
    add(app, "a")  # appends after the good part
    state.close()
    restart()
    state, app = started(tmp_path, moto_app)
    assert counter(app, "a") == 4
    state.close()


def test_a_damaged_entry_ends_the_replay(tmp_path, moto_app):
    state, app = started(tmp_path, moto_app)
    create_table(app)
    add(app, "a")
    state.close()
    path = tmp_path / journal.JOURNAL_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit in the last entry's body: its checksum no longer matches
    path.write_bytes(bytes(data))
    restart()
    state, app = started(tmp_path, moto_app)
    assert state.stats["journal_entries"] == 1 and state.stats["dropped_bytes"] > 0
    assert counter(app, "a") is None
    state.close()


def test_a_crash_inside_a_compaction_does_not_apply_the_journal_twice(tmp_path, moto_app):
    state, app = started(tmp_path, moto_app)
    create_table(app)
    for _ in range(4):
        add(app, "a")
    old_journal = (tmp_path / journal.JOURNAL_FILE).read_bytes()
    state.compact()
    state.close()
    # As if the process died after the snapshot's rename, before the journal was started over:
    (tmp_path / journal.JOURNAL_FILE).write_bytes(old_journal)
    restart()
    state, app = started(tmp_path, moto_app)
    assert counter(app, "a") == 4
    add(app, "a")
    state.close()
    restart()
    state, app = started(tmp_path, moto_app)
    assert counter(app, "a") == 5
    state.close()


def test_binary_values_and_sets_round_trip_through_the_snapshot(tmp_path, moto_app):
    state, app = started(tmp_path, moto_app)
    create_table(app)
    item = {"id": {"S": "bin"}, "b": {"B": "AP8="}, "bs": {"BS": ["AQ==", "Ag=="]}, "ss": {"SS": ["x", "y"]},
            "m": {"M": {"inner": {"B": "AQI="}, "l": {"L": [{"N": "1"}, {"NULL": True}]}}}}
    assert call(app, "PutItem", {"TableName": TABLE, "Item": item})[0].startswith("200")
    state.compact()
    state.close()
    restart()
    state, app = started(tmp_path, moto_app)
    status, out = call(app, "GetItem", {"TableName": TABLE, "Key": {"id": {"S": "bin"}}})
    assert out["Item"] == item
    state.close()


def test_unreadable_files_give_a_message(tmp_path, moto_app):
    (tmp_path / journal.SNAPSHOT_FILE).write_text('{"tables": {}}\n')
    with pytest.raises(StateError, match="not a snapshot this version can read"):
        started(tmp_path, moto_app)
    (tmp_path / journal.SNAPSHOT_FILE).unlink()
    (tmp_path / journal.JOURNAL_FILE).write_text("something else\n")
    with pytest.raises(StateError, match="not a journal this version can read"):
        started(tmp_path, moto_app)


def test_one_moto_per_state_dir(tmp_path, moto_app):
    state, _app = started(tmp_path, moto_app)
    second = DurableState(tmp_path, moto_app)
    with pytest.raises(StateError, match="another onysoft dev"):
        second.lock(wait_seconds=0.2)
    state.close()
    second.lock(wait_seconds=0.2)  # free again once the first one is gone
    second.close()


def test_a_failed_journal_write_is_not_acknowledged(tmp_path, moto_app):
    state, app = started(tmp_path, moto_app)
    create_table(app)
    import os

    os.close(state._fd)  # the disk "fails": the next write cannot be journaled
    state._fd = os.open(os.devnull, os.O_RDONLY)
    assert add(app, "a").startswith("500")
    assert add(app, "a").startswith("500")  # and no write is taken after that
    assert counter(app, "a") == 1  # moto applied the first in memory; it was never acknowledged
    state.close()


def test_serial_moto_refuses_an_untested_moto(monkeypatch, capsys):
    import moto

    monkeypatch.setattr(moto_transactions, "_installed", False)
    monkeypatch.setattr(moto, "__version__", "5.1.4")
    assert serial_moto.main(["-p", "1"]) == 3
    err = capsys.readouterr().err
    assert "moto 5.1.4 is installed" in err and "Traceback" not in err


def test_every_kind_of_item_write_replays_to_the_same_state(tmp_path, moto_app):
    state, app = started(tmp_path, moto_app)
    create_table(app)
    assert call(app, "CreateTable", {
        "TableName": "j-usage", "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": "a", "AttributeType": "S"},
                                 {"AttributeName": "t", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "a", "KeyType": "HASH"}, {"AttributeName": "t", "KeyType": "RANGE"}],
    })[0].startswith("200")
    usage = [{"a": {"S": f"acct{n % 3}"}, "t": {"S": f"{n:04}"}, "charge": {"N": str(n)}} for n in range(30)]
    for start in range(0, 30, 10):
        assert call(app, "BatchWriteItem", {"RequestItems": {"j-usage": [
            {"PutRequest": {"Item": item}} for item in usage[start:start + 10]]}})[0].startswith("200")
    assert call(app, "BatchWriteItem", {"RequestItems": {"j-usage": [
        {"DeleteRequest": {"Key": {"a": {"S": "acct0"}, "t": {"S": "0000"}}}}]}})[0].startswith("200")
    assert call(app, "DeleteItem", {"TableName": "j-usage", "Key": {"a": {"S": "acct1"}, "t": {"S": "0001"}}})[0] \
        .startswith("200")
    assert call(app, "PutItem", {"TableName": TABLE, "Item": {"id": {"S": "p"}, "n": {"N": "9"}}})[0].startswith("200")
    assert call(app, "TransactWriteItems", {"TransactItems": [
        {"Put": {"TableName": "j-usage", "Item": {"a": {"S": "acct9"}, "t": {"S": "x"}}}},
        {"Update": {"TableName": TABLE, "Key": {"id": {"S": "p"}}, "UpdateExpression": "ADD n :d REMOVE gone",
                    "ExpressionAttributeValues": {":d": {"N": "-4"}}}},
        {"Delete": {"TableName": "j-usage", "Key": {"a": {"S": "acct2"}, "t": {"S": "0002"}}}},
        {"ConditionCheck": {"TableName": "j-usage", "Key": {"a": {"S": "acct1"}, "t": {"S": "0004"}},
                            "ConditionExpression": "charge > :z", "ExpressionAttributeValues": {":z": {"N": "0"}}}},
    ]})[0].startswith("200")

    def everything(app) -> dict:
        scans = {table: call(app, "Scan", {"TableName": table})[1]["Items"] for table in (TABLE, "j-usage")}
        return {table: sorted(json.dumps(i, sort_keys=True) for i in items) for table, items in scans.items()}

    before = everything(app)
    assert len(before["j-usage"]) == 28 and len(before[TABLE]) == 1
    state.close()  # as after kill -9: everything comes from the journal
    restart()
    state, app = started(tmp_path, moto_app)
    assert state.stats["replay_failures"] == 0
    assert everything(app) == before
    query = call(app, "Query", {"TableName": "j-usage", "KeyConditionExpression": "a = :a",
                                "ExpressionAttributeValues": {":a": {"S": "acct0"}}})[1]
    assert query["Count"] == 9
    state.compact()
    state.close()
    restart()
    state, app = started(tmp_path, moto_app)
    assert everything(app) == before
    state.close()


def test_a_compaction_past_its_deadline_is_abandoned_and_loses_nothing(tmp_path, moto_app):
    """A stop never waits on a large state (issue 21): past its deadline the compaction stops writing, the old
    snapshot and the whole journal stay, and the next start replays the journal to the same state."""
    import time

    state, app = started(tmp_path, moto_app)
    create_table(app)
    for n in range(1500):
        assert add(app, f"item-{n}", n).startswith("200")
    state.compact()  # a snapshot of the first 1,500
    for n in range(1500, 3000):
        assert add(app, f"item-{n}", n).startswith("200")
    snapshot_before = (tmp_path / journal.SNAPSHOT_FILE).read_bytes()
    journal_before = (tmp_path / journal.JOURNAL_FILE).read_bytes()
    done = state.compact(deadline=time.monotonic() - 1)  # already past: stops at its first check
    assert done["abandoned"] and 1024 <= done["items"] < 3000
    assert (tmp_path / journal.SNAPSHOT_FILE).read_bytes() == snapshot_before
    assert (tmp_path / journal.JOURNAL_FILE).read_bytes() == journal_before
    assert not (tmp_path / (journal.SNAPSHOT_FILE + ".tmp")).exists()
    state.close()
    restart()
    state, app = started(tmp_path, moto_app)
    assert state.stats["snapshot_items"] == 1500 and state.stats["journal_entries"] == 1500
    assert [counter(app, f"item-{n}") for n in (0, 1499, 1500, 2999)] == [0, 1499, 1500, 2999]
    assert state.compact(deadline=time.monotonic() + 60)["abandoned"] is False
    state.close()


def test_what_the_streams_reader_has_not_read_survives_a_compaction_and_a_restart(tmp_path, moto_app):
    """A clean stop no longer waits for the rollup poller to read the stream: the records from where its last
    read began go into the snapshot and back on the stream at the next start, images and order kept."""
    from onysoft_tools.local import moto_streams

    moto_streams.install()
    state, app = started(tmp_path, moto_app)
    status, _ = call(app, "CreateTable", {
        "TableName": "j-streamed", "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
        "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}})
    assert status.startswith("200"), status

    def put(n: int) -> None:
        assert call(app, "PutItem", {"TableName": "j-streamed",
                                     "Item": {"id": {"S": f"r{n % 4}"}, "n": {"N": str(n)}}})[0].startswith("200")

    def streams(operation: str, body: dict) -> dict:
        entry = Entry(f"DynamoDBStreams_20120810.{operation}", "eu-west-1", "AKIDEXAMPLE", json.dumps(body).encode())
        environ = replay_environ(entry)
        environ["HTTP_HOST"] = "streams.dynamodb.eu-west-1.amazonaws.com"
        status, _headers, out = call_app(app, environ)
        assert status.startswith("200"), (status, out)
        return json.loads(out)

    def read_all() -> list[tuple[str, str, str | None]]:
        arn = streams("ListStreams", {"TableName": "j-streamed"})["Streams"][-1]["StreamArn"]
        shard = streams("DescribeStream", {"StreamArn": arn})["StreamDescription"]["Shards"][0]["ShardId"]
        iterator = streams("GetShardIterator", {"StreamArn": arn, "ShardId": shard,
                                                "ShardIteratorType": "TRIM_HORIZON"})["ShardIterator"]
        page = streams("GetRecords", {"ShardIterator": iterator, "Limit": 1000})
        return [(r["eventName"], r["dynamodb"]["NewImage"]["n"]["N"],
                 r["dynamodb"].get("OldImage", {}).get("n", {}).get("N")) for r in page["Records"]]

    for n in range(6):
        put(n)
    assert len(read_all()) == 6  # the reader's read began at the first record: all six may still be unread
    arn = streams("ListStreams", {"TableName": "j-streamed"})["Streams"][-1]["StreamArn"]
    shard = streams("DescribeStream", {"StreamArn": arn})["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams("GetShardIterator", {"StreamArn": arn, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"})
    first = streams("GetRecords", {"ShardIterator": iterator["ShardIterator"], "Limit": 4})
    streams("GetRecords", {"ShardIterator": first["NextShardIterator"], "Limit": 1})  # the reader is at the 5th
    for n in range(6, 8):
        put(n)
    done = state.compact()
    assert done["stream_records"] == 4  # the 5th and 6th (its last read began there), the 7th and 8th
    state.close()

    restart()
    state, app = started(tmp_path, moto_app)
    assert state.stats["snapshot_stream_records"] == 4 and state.stats["journal_entries"] == 0
    assert read_all() == [("MODIFY", "4", "0"), ("MODIFY", "5", "1"), ("MODIFY", "6", "2"), ("MODIFY", "7", "3")]
    state.close()
