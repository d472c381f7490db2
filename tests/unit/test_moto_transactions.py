"""The O(items touched) TransactWriteItems patch (onysoft_tools.local.moto_transactions) against stock moto:
the same answers, the same cancellation reasons, the same state afterwards; no table copied; refusal on an
untested moto version."""

from __future__ import annotations

import copy

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.table import Table

from onysoft_tools.local import moto_transactions

moto_transactions.install()
PATCHED = moto_transactions.transact_write_items
STOCK = moto_transactions.STOCK["transact_write_items"]

ACCOUNTS, USAGE = "t-accounts", "t-usage"


def make_tables(client) -> None:
    client.create_table(
        TableName=ACCOUNTS, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "account_id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "account_id", "KeyType": "HASH"}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    client.create_table(
        TableName=USAGE, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "account_id", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"},
                              {"AttributeName": "key_id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "account_id", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[{"IndexName": "by_key", "KeySchema": [{"AttributeName": "key_id", "KeyType": "HASH"}],
                                 "Projection": {"ProjectionType": "ALL"}}],
    )
    for account, balance in (("a1", 100), ("a2", 50), ("a3", 7)):
        client.put_item(TableName=ACCOUNTS, Item={"account_id": {"S": account}, "balance": {"N": str(balance)},
                                                  "tags": {"SS": ["x"]}, "raw": {"B": b"\x00\x01"}})
    for account, sk, key in (("a1", "001", "k1"), ("a1", "002", "k1"), ("a2", "001", "k2")):
        client.put_item(TableName=USAGE, Item={"account_id": {"S": account}, "sk": {"S": sk},
                                               "key_id": {"S": key}, "charge": {"N": "3"}})


def state(client) -> dict:
    """Every item of both tables, the GSI's view, and the Accounts stream's length."""
    out: dict = {}
    for table in (ACCOUNTS, USAGE):
        items = client.scan(TableName=table, ConsistentRead=True)["Items"]
        out[table] = sorted(items, key=lambda i: (i["account_id"]["S"], i.get("sk", {}).get("S", "")))
        out[table + " count"] = client.describe_table(TableName=table)["Table"]["ItemCount"]
    for key in ("k1", "k2", "k9"):
        page = client.query(TableName=USAGE, IndexName="by_key", KeyConditionExpression="key_id = :k",
                            ExpressionAttributeValues={":k": {"S": key}})
        out["gsi " + key] = sorted((i["account_id"]["S"], i["sk"]["S"]) for i in page["Items"])
    for table in (ACCOUNTS, USAGE):
        out[table + " queried"] = [
            client.query(TableName=table, KeyConditionExpression="account_id = :a",
                         ExpressionAttributeValues={":a": {"S": a}})["Count"] for a in ("a1", "a2", "a3", "a9")]
    from moto.dynamodb.models import dynamodb_backends

    shard = dynamodb_backends["123456789012"]["us-east-1"].tables[ACCOUNTS].stream_shard
    out["stream"] = len(shard.items)
    return out


def outcome(client, items: list[dict]) -> tuple:
    try:
        client.transact_write_items(TransactItems=items)
        return ("ok",)
    except ClientError as error:
        response = error.response
        return (response["Error"]["Code"], response["Error"].get("Message"),
                repr(response.get("CancellationReasons")))


def acct(account: str) -> dict:
    return {"account_id": {"S": account}}


def usage_key(account: str, sk: str) -> dict:
    return {"account_id": {"S": account}, "sk": {"S": sk}}


def charge(account: str, amount: int, **extra) -> dict:
    return {"Update": {"TableName": ACCOUNTS, "Key": acct(account), "UpdateExpression": "ADD balance :d",
                       "ExpressionAttributeValues": {":d": {"N": str(-amount)}}, **extra}}


def new_usage(account: str, sk: str, key: str) -> dict:
    return {"Put": {"TableName": USAGE, "Item": {**usage_key(account, sk), "key_id": {"S": key}, "charge": {"N": "1"}},
                    "ConditionExpression": "attribute_not_exists(sk)"}}


COMMITS = "commits: put, update, delete, condition check"
CANCELLED_LAST = "cancelled last: created, deleted and updated items come back"
FAIL_IF_POOR = {"ConditionExpression": "balance >= :min", "ExpressionAttributeValues": {":min": {"N": "1000"}}}

SCENARIOS = {
    COMMITS: [
        new_usage("a1", "003", "k1"), charge("a1", 5),
        {"Delete": {"TableName": USAGE, "Key": usage_key("a2", "001")}},
        {"ConditionCheck": {"TableName": ACCOUNTS, "Key": acct("a3"),
                            "ConditionExpression": "attribute_exists(balance)"}},
    ],
    CANCELLED_LAST: [
        new_usage("a9", "001", "k9"),  # a new hash bucket in a table with a range key
        {"Delete": {"TableName": USAGE, "Key": usage_key("a2", "001")}},  # the only item of its bucket
        {"Put": {"TableName": ACCOUNTS, "Item": {**acct("a9"), "balance": {"N": "1"}}}},  # a new item
        {"Update": {"TableName": ACCOUNTS, "Key": acct("a2"), "UpdateExpression": "SET note = :n REMOVE tags",
                    "ExpressionAttributeValues": {":n": {"S": "changed"}}}},
        {"Delete": {"TableName": ACCOUNTS, "Key": acct("a3")}},
        {"Update": {"TableName": ACCOUNTS, "Key": acct("a1"), "UpdateExpression": "ADD balance :d",
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    "ExpressionAttributeValues": {":d": {"N": "-1"}, ":min": {"N": "1000"}},
                    "ConditionExpression": "balance >= :min"}},
    ],
    "cancelled first, later ops still evaluated": [
        {"ConditionCheck": {"TableName": ACCOUNTS, "Key": acct("a2"), "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                            "ConditionExpression": "balance >= :min",
                            "ExpressionAttributeValues": {":min": {"N": "1000"}}}},
        charge("a1", 5), new_usage("a1", "009", "k1"),
    ],
    "condition on a missing item with ALL_OLD: no item in the reason": [
        charge("a1", 5),
        {"Update": {"TableName": ACCOUNTS, "Key": acct("nobody"), "UpdateExpression": "SET x = :x",
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD", "ConditionExpression": "attribute_exists(x)",
                    "ExpressionAttributeValues": {":x": {"N": "1"}}}},
    ],
    "two conditions fail, with and without ALL_OLD": [
        charge("a1", 5, **FAIL_IF_POOR, ReturnValuesOnConditionCheckFailure="ALL_OLD"),
        new_usage("a1", "001", "k1"),  # exists already
    ],
    "a put of the wrong key type after writes": [
        charge("a1", 5), new_usage("a1", "004", "k1"),
        {"Put": {"TableName": USAGE, "Item": {"account_id": {"N": "1"}, "sk": {"S": "x"}}}},
    ],
    "the same item twice: ValidationException after a write": [
        charge("a2", 5), new_usage("a1", "005", "k1"), charge("a2", 1),
    ],
    "a bad update expression after writes": [
        new_usage("a1", "006", "k1"),
        {"Update": {"TableName": ACCOUNTS, "Key": acct("a1"), "UpdateExpression": "SET balance = balance + :missing"}},
    ],
    "an unknown table after writes": [
        charge("a1", 5), {"Put": {"TableName": "no-such-table", "Item": acct("x")}},
    ],
    "a missing range key after writes": [
        charge("a1", 5), {"Update": {"TableName": USAGE, "Key": acct("a1"), "UpdateExpression": "SET x = :x",
                                     "ExpressionAttributeValues": {":x": {"N": "1"}}}},
    ],
}


def run_with(method, monkeypatch, items: list[dict]) -> tuple[tuple, dict, dict]:
    monkeypatch.setattr(DynamoDBBackend, "transact_write_items", method)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        make_tables(client)
        before = state(client)
        result = outcome(client, copy.deepcopy(items))
        return result, before, state(client)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_patched_transactions_behave_like_stock_moto(name, monkeypatch):
    stock = run_with(STOCK, monkeypatch, SCENARIOS[name])
    patched = run_with(PATCHED, monkeypatch, SCENARIOS[name])
    assert patched[0] == stock[0]  # the answer: code, message, every cancellation reason and its Item
    assert patched[2] == stock[2]  # the state afterwards, GSI and stream included
    result, before, after = patched
    if result[0] == "ok":
        assert after != before
    else:
        assert after == before, "a cancelled transaction must leave every item as it was"


def test_all_old_reason_carries_the_item(monkeypatch):
    result, _, _ = run_with(PATCHED, monkeypatch, SCENARIOS[CANCELLED_LAST])
    assert result[0] == "TransactionCanceledException"
    assert "'balance': {'N': '100'}" in result[2] and result[2].count("ConditionalCheckFailed") == 1


def test_no_table_is_copied(monkeypatch):
    """The point of the patch: a transaction copies the items it touches, never a table (stock moto does)."""

    def refuse(self, memo):
        raise AssertionError("a whole table was deep-copied")

    monkeypatch.setattr(Table, "__deepcopy__", refuse, raising=False)
    for name in (COMMITS, CANCELLED_LAST):
        result, before, after = run_with(PATCHED, monkeypatch, SCENARIOS[name])
        assert result[0] in ("ok", "TransactionCanceledException")
    with pytest.raises(AssertionError, match="deep-copied"):
        run_with(STOCK, monkeypatch, SCENARIOS[COMMITS])


def test_rollback_after_many_transactions_keeps_other_items(monkeypatch):
    """Committed transactions between cancelled ones stay: only the cancelled one's items roll back."""
    monkeypatch.setattr(DynamoDBBackend, "transact_write_items", PATCHED)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        make_tables(client)
        for n in range(20):
            assert outcome(client, [new_usage("a1", f"1{n:02}", "k1"), charge("a1", 1)]) == ("ok",)
            cancelled = outcome(client, [new_usage("a1", f"2{n:02}", "k1"), charge("a2", 1, **FAIL_IF_POOR)])
            assert cancelled[0] == "TransactionCanceledException"
        after = state(client)
        assert int(next(i for i in after[ACCOUNTS] if i["account_id"]["S"] == "a1")["balance"]["N"]) == 80
        assert after["gsi k1"] == sorted([("a1", "001"), ("a1", "002")] + [("a1", f"1{n:02}") for n in range(20)])


@pytest.mark.parametrize("version", ["4.2.14", "5.1.9", "5.2.4", "5.3.0", "6.0.0", "garbage"])
def test_refuses_an_untested_moto_version(version):
    with pytest.raises(moto_transactions.UnsupportedMotoVersion) as raised:
        moto_transactions.check_version(version)
    message = str(raised.value)
    assert f"moto {version}" in message and ">=5.2.5,<5.3" in message


def test_accepts_the_installed_moto():
    import moto

    moto_transactions.check_version(moto.__version__)
    moto_transactions.check_version("5.2.9")
    moto_transactions.check_version("5.2.6.dev3")
