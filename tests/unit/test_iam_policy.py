"""The IAM conformance check itself (onysoft_tools.iam_policy / iam_record): what it reads from the SAM
transform and how it evaluates, so a green tests/test_iam_conformance.py means something."""

import textwrap

import pytest

from onysoft_tools import iam_policy, iam_record
from onysoft_tools.template import template_path

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/"


def _record(function, action, resource, kind="table"):
    return {"function": function, "action": action, "kind": kind, "resource": resource}


@pytest.fixture(scope="module")
def cfn():
    return iam_policy.sam_transform()


def test_the_template_before_the_fix_is_caught_naming_function_action_and_resource(tmp_path):
    # The rollup's role without its RateLimits statement: giving windows their tokens back would be AccessDenied.
    text = template_path().read_text()
    start = text.index("            - Sid: WindowTokens")
    end = text.index("            - Sid: OnFailure")
    old = tmp_path / "template.yaml"
    old.write_text(text[:start] + text[end:])
    report = iam_policy.check(iam_policy.sam_transform(old),
                              [_record("RollupFunction", "dynamodb:UpdateItem", "RateLimitsTable")], check_unused=False)
    assert not report.ok
    assert [(c.function, c.action, c.resource) for c in report.denied] == [
        ("RollupFunction", "dynamodb:UpdateItem", ARN + "RateLimitsTable")]
    assert "RollupFunction calls dynamodb:UpdateItem on " + ARN + "RateLimitsTable" in report.explain()


def test_calls_are_checked_per_function_and_per_resource(cfn):
    calls = [_record("ProxyFunction", "dynamodb:BatchGetItem", "RateLimitsTable"),
             _record("AuthorizerFunction", "dynamodb:GetItem", "ApiKeysTable")]
    assert iam_policy.check(cfn, calls, check_unused=False).ok
    # The same action on another table, or by another function, is not allowed.
    for bad in (_record("AuthorizerFunction", "dynamodb:GetItem", "UsageTable"),
                _record("AuthorizerFunction", "dynamodb:PutItem", "ApiKeysTable"),
                _record("SweeperFunction", "dynamodb:Query", "ApiKeysTable/index/by_account"),
                _record("DashboardFunction", "dynamodb:DeleteItem", "ApiKeysTable"),
                _record("ProxyFunction", "secretsmanager:GetSecretValue", "other/secret", kind="secret")):
        assert iam_policy.check(cfn, [bad], check_unused=False).denied, bad
    # A secret under the granted prefix matches the wildcard, whatever suffix AWS gave its ARN.
    assert iam_policy.check(cfn, [_record("ProxyFunction", "secretsmanager:GetSecretValue",
                                          "onysoft/providers/openai", kind="secret")], check_unused=False).ok


def test_a_permission_no_call_used_is_reported(cfn):
    report = iam_policy.check(cfn, [_record("AuthorizerFunction", "dynamodb:GetItem", "ApiKeysTable")])
    unused = {(f, a, r) for f, _, a, r in report.unused}
    assert ("AuthorizerFunction", "dynamodb:GetItem", ARN + "AccountsTable") in unused
    assert ("AuthorizerFunction", "dynamodb:GetItem", ARN + "ApiKeysTable") not in unused
    assert "UNUSED: AuthorizerFunction is granted dynamodb:GetItem on " + ARN + "AccountsTable" in report.explain()
    assert "UnknownFunction" in iam_policy.check(cfn, [_record("UnknownFunction", "dynamodb:GetItem", "X")]).explain()


def test_sam_policy_templates_are_expanded_as_sam_does(tmp_path):
    tpl = tmp_path / "template.yaml"
    tpl.write_text(textwrap.dedent("""\
        Transform: AWS::Serverless-2016-10-31
        Resources:
          Things:
            Type: AWS::DynamoDB::Table
            Properties:
              BillingMode: PAY_PER_REQUEST
              AttributeDefinitions: [{AttributeName: id, AttributeType: S}]
              KeySchema: [{AttributeName: id, KeyType: HASH}]
          Reader:
            Type: AWS::Serverless::Function
            Properties:
              Runtime: python3.13
              Handler: app.handler
              CodeUri: functions/reader
              Policies:
                - DynamoDBReadPolicy: {TableName: !Ref Things}
                - Statement:
                    - {Effect: Deny, Action: "dynamodb:Scan", Resource: !GetAtt Things.Arn}
        """))
    cfn = iam_policy.sam_transform(tpl)
    ok = [_record("Reader", "dynamodb:GetItem", "Things"), _record("Reader", "dynamodb:Query", "Things/index/by_x")]
    assert iam_policy.check(cfn, ok, check_unused=False).ok
    denied = iam_policy.check(cfn, [_record("Reader", "dynamodb:PutItem", "Things"),
                                    _record("Reader", "dynamodb:Scan", "Things")], check_unused=False).denied
    assert {c.action for c in denied} == {"dynamodb:PutItem", "dynamodb:Scan"}  # not granted; explicitly denied


def test_transactions_and_batches_are_checked_item_by_item():
    transact = {"TransactItems": [{"Update": {"TableName": "a"}}, {"Put": {"TableName": "b"}},
                                  {"ConditionCheck": {"TableName": "c"}}, {"Delete": {"TableName": "a"}}]}
    assert list(iam_record.needs("dynamodb", "TransactWriteItems", transact)) == [
        ("dynamodb:UpdateItem", "table", "a"), ("dynamodb:PutItem", "table", "b"),
        ("dynamodb:ConditionCheckItem", "table", "c"), ("dynamodb:DeleteItem", "table", "a")]
    assert list(iam_record.needs("dynamodb", "BatchGetItem", {"RequestItems": {"a": {}, "b": {}}})) == [
        ("dynamodb:BatchGetItem", "table", "a"), ("dynamodb:BatchGetItem", "table", "b")]
    assert list(iam_record.needs("dynamodb", "Query", {"TableName": "a", "IndexName": "i"})) == [
        ("dynamodb:Query", "table", "a/index/i")]
    assert list(iam_record.needs("secretsmanager", "GetSecretValue", {"SecretId": "s"})) == [
        ("secretsmanager:GetSecretValue", "secret", "s")]


def test_calls_inside_a_handler_are_recorded_as_its_function(aws_tables):
    from onysoft import accounts

    before = len(iam_record.read_records(iam_record.directory()))
    accounts.create_account("user", name="outside any handler")  # setup: no function's call
    assert len(iam_record.read_records(iam_record.directory())) == before

    def handler(event, context):
        return accounts.get_account(event["account_id"])

    account = accounts.create_account("user", name="x")
    iam_record.attributed(handler, "IamSelfTestFunction")({"account_id": account.account_id}, None)
    mine = [r for r in iam_record.read_records(iam_record.directory()) if r["function"] == "IamSelfTestFunction"]
    assert mine and mine[0]["action"] == "dynamodb:GetItem" and mine[0]["resource"] == "AccountsTable"
    # Not a template function: the conformance check must ignore this self-test, so remove it again.
    iam_record.forget("IamSelfTestFunction")
    assert not [r for r in iam_record.read_records(iam_record.directory()) if r["function"] == "IamSelfTestFunction"]


def test_put_events_is_checked_on_the_bus_each_entry_names(cfn, monkeypatch):
    entries = {"Entries": [{"EventBusName": "stack-events"}, {"EventBusName": "arn:aws:events:r:1:event-bus/x"},
                           {}]}
    assert list(iam_record.needs("events", "PutEvents", entries)) == [
        ("events:PutEvents", "event-bus", "stack-events"),
        ("events:PutEvents", "event-bus", "arn:aws:events:r:1:event-bus/x"),
        ("events:PutEvents", "event-bus", "default")]
    # A bus named in the environment is recorded by the template's logical id, as tables are.
    monkeypatch.setenv("ONYSOFT_EVENT_BUS", "stack-events")
    assert iam_record._bus_logical_ids() == {"stack-events": "EventBus"}
    call = iam_policy.call_from_record(_record("AnyFunction", "events:PutEvents", "EventBus", kind="event-bus"))
    assert call.resource == "arn:aws:events:us-east-1:123456789012:event-bus/EventBus"
    assert iam_policy.resource_arn(cfn, "EventBus") == call.resource
    # No function may put events on another bus.
    assert iam_policy.check(cfn, [_record("AuthorizerFunction", "events:PutEvents", "EventBus", kind="event-bus")],
                            check_unused=False).denied
