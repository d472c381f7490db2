"""moto's per-request work done once (onysoft_tools.local.moto_hot_path) answers exactly as stock moto: the same
update expressions (the gateway's own among them), run twice each (the second from the parse cache), give the
same items and the same errors."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import backends, mock_aws
from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser
from moto.dynamodb.parsing.expressions import UpdateExpressionParser

from onysoft_tools.local import moto_hot_path

UPDATES = [  # (UpdateExpression, names, values, condition)
    ("SET #0 = if_not_exists (#0, :0) ADD #1 :1", {"#0": "expires_at", "#1": "tokens"},
     {":0": {"N": "1796083800"}, ":1": {"N": "19"}}, None),
    ("ADD #0 :0", {"#0": "balance_micros"}, {":0": {"N": "-2045286"}}, "attribute_not_exists(#0) OR #0 >= :0"),
    ("SET #0 = :1, #2 = :2, #3 = :3 REMOVE #1", {"#0": "status", "#1": "hold_state", "#2": "charge", "#3": "at"},
     {":1": {"S": "settled"}, ":2": {"N": "1868"}, ":3": {"S": "2026-12-01T00:07:00Z"}}, None),
    ("SET #0 = :0, #1 = :1 ADD #2 :2, #3 :3", {"#0": "day", "#1": "model", "#2": "requests", "#3": "settled"},
     {":0": {"S": "2026-12-01"}, ":1": {"S": "mock/echo"}, ":2": {"N": "1"}, ":3": {"N": "2"}}, None),
    ("SET #l = list_append(if_not_exists(#l, :e), :v), #m = :m", {"#l": "log", "#m": "meta"},
     {":e": {"L": []}, ":v": {"L": [{"S": "x"}]}, ":m": {"M": {"a": {"N": "1"}}}}, None),
    ("SET #m.#a = #m.#a + :one, #n = #n - :one", {"#m": "meta", "#a": "a", "#n": "tokens"}, {":one": {"N": "1"}},
     None),
    ("ADD #s :s DELETE #t :t", {"#s": "tags", "#t": "old"}, {":s": {"SS": ["a", "b"]}, ":t": {"SS": ["z"]}}, None),
    # Refused, each for its own reason:
    ("SET #0 = :0, #0 = :1", {"#0": "day"}, {":0": {"S": "a"}, ":1": {"S": "b"}}, None),  # overlapping paths
    ("SET #k = :0", {"#k": "pk"}, {":0": {"S": "other"}}, None),  # a key attribute
    ("SET #0 = :missing", {"#0": "day"}, {":0": {"S": "a"}}, None),  # an undefined value
    ("ADD #0 :0", {"#0": "day"}, {":0": {"N": "1"}}, None),  # ADD a number to a string
    ("SET #0 = #nothing + :0", {"#0": "x", "#nothing": "absent"}, {":0": {"N": "1"}}, None),  # no such path
    ("SET #0 = :0 SET #1 = :0", {"#0": "a", "#1": "b"}, {":0": {"N": "1"}}, None),  # two SET clauses
]


def _run() -> list:
    """Every update, twice, on one item; what each answered."""
    out = []
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
        client.put_item(TableName="t", Item={"pk": {"S": "p"}, "hold_state": {"S": "open"}, "tokens": {"N": "5"},
                                             "old": {"SS": ["y", "z"]}, "balance_micros": {"N": "9000000"}})
        for _ in range(2):
            for expression, names, values, condition in UPDATES:
                kwargs = {"ConditionExpression": condition} if condition else {}
                try:
                    answer = client.update_item(TableName="t", Key={"pk": {"S": "p"}}, UpdateExpression=expression,
                                                ExpressionAttributeNames=names, ExpressionAttributeValues=values,
                                                ReturnValues="ALL_NEW", **kwargs)
                    out.append(("ok", answer["Attributes"]))
                except ClientError as exc:
                    out.append((exc.response["Error"]["Code"], exc.response["Error"]["Message"]))
    return out


@pytest.fixture
def stock_then_patched(monkeypatch):
    for owner, name in ((backends, "list_of_moto_modules"), (DepthFirstTraverser, "nodes_to_be_processed"),
                        (DepthFirstTraverser, "process"), (UpdateExpressionParser, "make")):
        monkeypatch.setattr(owner, name, owner.__dict__[name])  # put back after the test
    monkeypatch.setattr(moto_hot_path, "_installed", False)
    stock = _run()
    moto_hot_path.install()
    return stock, _run()


def test_the_same_answers_as_stock_moto(stock_then_patched):
    stock, patched = stock_then_patched
    assert patched == stock
    assert sum(1 for kind, _ in stock if kind == "ok") == 2 * 7  # the refusals are refusals
    assert {kind for kind, _ in stock} == {"ok", "ValidationException"}


def _shape(node) -> object:
    """A parsed tree as nested tuples: node types, and the leaves' values."""
    children = getattr(node, "children", None)
    if children is None:
        return (type(node).__name__, repr(node) if not hasattr(node, "__dict__") else None)
    return (type(node).__name__, tuple(_shape(child) for child in children))


def test_the_parse_is_kept_and_never_changed(stock_then_patched):
    text = UPDATES[0][0]
    tree = UpdateExpressionParser.make(text)
    assert UpdateExpressionParser.make(text) is tree
    before = _shape(tree)
    assert "ExpressionAttributeValue" in repr(before) and "UpdateExpressionFunction" in repr(before)
    _run()  # validation and execution work on a copy
    assert UpdateExpressionParser.make(text) is tree and _shape(tree) == before
