"""Time to live locally (onysoft_tools.local.moto_ttl): a compaction deletes the items DynamoDB would have deleted
(an enabled specification's Number attribute in the past, not more than five years back), keeps every other item,
and puts each deletion on the table's stream, as a TTL deletion is in AWS (moto in-process, through serial_moto)."""

from __future__ import annotations

import time

from tests.unit.test_local_journal import call, restart, started

TABLE = "ttl-markers"
NOW = int(time.time())


def create(app, *, ttl: bool = True, range_key: bool = True) -> None:
    keys = [{"AttributeName": "pk", "KeyType": "HASH"}] + ([{"AttributeName": "sk", "KeyType": "RANGE"}]
                                                         if range_key else [])
    status, _ = call(app, "CreateTable", {
        "TableName": TABLE, "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": k["AttributeName"], "AttributeType": "S"} for k in keys],
        "KeySchema": keys, "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}})
    assert status.startswith("200"), status
    if ttl:
        status, _ = call(app, "UpdateTimeToLive", {
            "TableName": TABLE, "TimeToLiveSpecification": {"Enabled": True, "AttributeName": "expires_at"}})
        assert status.startswith("200"), status


EXPIRES = {  # sort key: the expires_at attribute, and whether DynamoDB deletes the item
    "past": ({"N": str(NOW - 60)}, True),
    "long-past": ({"N": str(NOW - 4 * 365 * 24 * 3600)}, True),
    "over-five-years": ({"N": str(NOW - 6 * 365 * 24 * 3600)}, False),  # taken for a mistake: kept
    "future": ({"N": str(NOW + 3600)}, False),
    "a-string": ({"S": str(NOW - 60)}, False),  # only a Number expires
    "none": (None, False),
}


def put(app, pk: str, sk: str | None, expires: dict | None) -> None:
    item = {"pk": {"S": pk}, **({"sk": {"S": sk}} if sk is not None else {}),
            **({"expires_at": expires} if expires is not None else {})}
    status, out = call(app, "PutItem", {"TableName": TABLE, "Item": item})
    assert status.startswith("200"), out


def keys_left(app) -> set[tuple]:
    status, out = call(app, "Scan", {"TableName": TABLE, "ConsistentRead": True})
    assert status.startswith("200"), out
    return {(i["pk"]["S"], i.get("sk", {}).get("S")) for i in out["Items"]}


def stream_removes(app) -> list[tuple]:
    from moto.dynamodb.models import dynamodb_backends

    table = dynamodb_backends["123456789012"]["eu-west-1"].tables[TABLE]
    return [(r.record["dynamodb"]["Keys"]["pk"]["S"], r.record["dynamodb"]["Keys"].get("sk", {}).get("S"))
            for r in table.stream_shard.items if r.record["eventName"] == "REMOVE"]


def test_a_compaction_deletes_what_dynamodb_would_and_a_restart_does_not_bring_it_back(tmp_path, moto_app):
    state, app = started(tmp_path, moto_app)
    create(app)
    for pk in ("acct-a", "acct-b"):
        for sk, (expires, _) in EXPIRES.items():
            put(app, pk, sk, expires)
    put(app, "acct-c", "past", EXPIRES["past"][0])  # a partition whose every item expires
    kept = {(pk, sk) for pk in ("acct-a", "acct-b") for sk, (_, gone) in EXPIRES.items() if not gone}
    gone = {(pk, sk) for pk in ("acct-a", "acct-b") for sk, (_, gone) in EXPIRES.items() if gone} | {("acct-c", "past")}

    assert state.compact()["expired"] == len(gone) == 5
    assert keys_left(app) == kept
    assert sorted(stream_removes(app)) == sorted(gone)
    state.close()
    restart()
    state, app = started(tmp_path, moto_app)
    assert state.stats["snapshot_items"] == len(kept) and keys_left(app) == kept
    state.close()


def test_a_table_without_an_enabled_specification_keeps_everything(tmp_path, moto_app):
    state, app = started(tmp_path, moto_app)
    create(app, ttl=False, range_key=False)
    put(app, "old", None, EXPIRES["past"][0])
    put(app, "new", None, EXPIRES["future"][0])
    assert state.compact()["expired"] == 0
    assert keys_left(app) == {("old", None), ("new", None)}
    state.close()


def test_a_hash_only_table_expires_too(tmp_path, moto_app):
    state, app = started(tmp_path, moto_app)
    create(app, range_key=False)
    put(app, "old", None, EXPIRES["past"][0])
    put(app, "new", None, EXPIRES["future"][0])
    assert state.compact()["expired"] == 1
    assert keys_left(app) == {("new", None)} and stream_removes(app) == [("old", None)]
    state.close()
