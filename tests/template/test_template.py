"""template.yaml checks: cfn-lint, the SAM transform (offline), and the local reader against both.

The reader (onysoft_tools.template) is what the local gateway builds its routes, authorizer settings,
gateway responses and tables from; these tests pin it to what SAM actually deploys.
"""

import copy
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from onysoft_tools import template as reader

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

TABLES = {
    "ApiKeysTable": "ONYSOFT_TABLE_API_KEYS",
    "AccountsTable": "ONYSOFT_TABLE_ACCOUNTS",
    "UsageTable": "ONYSOFT_TABLE_USAGE",
    "RateLimitsTable": "ONYSOFT_TABLE_RATE_LIMITS",
    "CatalogTable": "ONYSOFT_TABLE_CATALOG",
    "UsageRollupsTable": "ONYSOFT_TABLE_USAGE_ROLLUPS",
}
DYNAMODB_ALLOWED = {
    "dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:PutItem",
    "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem", "dynamodb:Scan",
    "dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams",
}
OTHER_ALLOWED = {"secretsmanager:GetSecretValue", "sqs:SendMessage", "events:PutEvents", "cognito-idp:ListUsers",
                 "ses:SendEmail", "cognito-idp:AdminGetUser"}
BUFFERED_URI = re.compile(r"^arn:aws:apigateway:\$\{AWS::Region\}:lambda:path/2015-03-31/functions/\$\{(\w+)\.Arn\}"
                          r"/invocations$")
STREAM_URI = re.compile(
    r"^arn:aws:apigateway:\$\{AWS::Region\}:lambda:path/2021-11-15/functions/\$\{(\w+)\.Arn\}"
    r"/response-streaming-invocations$"
)


class _NoManagedPolicies:
    """samtranslator's ManagedPolicyLoader without IAM: the template names no managed policy by name."""

    def load(self) -> dict[str, str]:
        return {}


def _sam_transform(parameters: dict | None = None) -> dict:
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    tpl = yaml_parse(TEMPLATE.read_text())
    for resource in tpl["Resources"].values():  # what `sam package` does: local code → S3
        props = resource.get("Properties") or {}
        for uri in ("CodeUri", "ContentUri"):
            if isinstance(props.get(uri), str):
                props[uri] = f"s3://onysoft-test-bucket/{props[uri]}"
    return transform(tpl, dict(parameters or {}), _NoManagedPolicies())


@pytest.fixture(scope="module")
def tpl() -> dict:
    return reader.load_template(TEMPLATE)


@pytest.fixture(scope="module")
def cfn() -> dict:
    return _sam_transform()


def _of_type(cfn: dict, resource_type: str) -> dict:
    return {k: v for k, v in cfn["Resources"].items() if v["Type"] == resource_type}


def _rest_api_body(cfn: dict) -> dict:
    (api,) = _of_type(cfn, "AWS::ApiGateway::RestApi").values()
    return api["Properties"]["Body"]


def _security_schemes(body: dict) -> dict:
    return body.get("components", {}).get("securitySchemes") or body.get("securityDefinitions") or {}


def _methods(body: dict):
    for path, item in body["paths"].items():
        for method, operation in item.items():
            yield path, method.upper(), operation


# ------------------------------------------------------------------------------------------- lint


def test_cfn_lint_has_no_errors():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    command = [str(cfn_lint)] if cfn_lint.exists() else [sys.executable, "-m", "cfnlint"]
    result = subprocess.run([*command, str(TEMPLATE)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    # cfn-lint's exit code is a bit field: 1 = it failed, 2 = errors (4 = warnings, 8 = informational).
    assert result.returncode & 3 == 0, result.stdout + result.stderr


def test_reader_reads_tags_as_sam_does(tpl):
    from samtranslator.yaml_helper import yaml_parse

    assert tpl == yaml_parse(TEMPLATE.read_text())
    variables = tpl["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["ONYSOFT_TABLE_USAGE"] == {"Ref": "UsageTable"}


def test_template_path_override(tmp_path, monkeypatch):
    other = tmp_path / "t.yaml"
    other.write_text("Resources:\n  X: {Type: T, Properties: {A: !GetAtt Y.Arn, B: !Sub 'x-${Y}',\n"
                     "                              C: !Ref Z}}\n")
    monkeypatch.setenv("ONYSOFT_TEMPLATE", str(other))
    assert reader.template_path() == other
    assert reader.load_template()["Resources"]["X"]["Properties"] == {
        "A": {"Fn::GetAtt": ["Y", "Arn"]}, "B": {"Fn::Sub": "x-${Y}"}, "C": {"Ref": "Z"},
    }
    monkeypatch.delenv("ONYSOFT_TEMPLATE")
    assert reader.template_path() == TEMPLATE


# ------------------------------------------------------------------------------------------- authorizer


def test_authorizer_is_request_type_on_authorization_header_with_ttl_parameter(cfn, tpl):
    settings = reader.authorizer_settings(tpl)
    assert settings == reader.AuthorizerSettings(
        name="KeyAuthorizer", function="AuthorizerFunction", identity_header="Authorization", ttl_seconds=60,
    )
    scheme = _security_schemes(_rest_api_body(cfn))[settings.name]["x-amazon-apigateway-authorizer"]
    assert scheme["type"] == "request"
    assert scheme["identitySource"] == "method.request.header.Authorization"
    assert reader.resolve(scheme["authorizerResultTtlInSeconds"], cfn) == settings.ttl_seconds == 60
    assert "${__FunctionArn__}" in scheme["authorizerUri"]["Fn::Sub"][0]
    function_arn = scheme["authorizerUri"]["Fn::Sub"][1]["__FunctionArn__"]
    assert function_arn == {"Fn::GetAtt": ["AuthorizerFunction", "Arn"]}


def test_authorizer_ttl_follows_the_parameter():
    cfn = _sam_transform({"AuthorizerTtlSeconds": 17})
    scheme = _security_schemes(_rest_api_body(cfn))["KeyAuthorizer"]["x-amazon-apigateway-authorizer"]
    ttl = reader.resolve(scheme["authorizerResultTtlInSeconds"], cfn, {"AuthorizerTtlSeconds": 17})
    assert int(ttl) == 17
    tpl = reader.load_template(TEMPLATE)
    assert reader.authorizer_settings(tpl, {"AuthorizerTtlSeconds": "17"}).ttl_seconds == 17


def test_api_gateway_may_invoke_the_authorizer(cfn):
    permissions = [
        p["Properties"] for p in _of_type(cfn, "AWS::Lambda::Permission").values()
        if json.dumps(p["Properties"]["FunctionName"]).count("AuthorizerFunction")
    ]
    assert len(permissions) == 2  # one per authorizer that runs it: KeyAuthorizer, AnthropicKeyAuthorizer
    for permission in permissions:
        assert permission["Action"] == "lambda:InvokeFunction"
        assert permission["Principal"] == "apigateway.amazonaws.com"
        assert "/authorizers/*" in json.dumps(permission["SourceArn"])


ANTHROPIC_ROUTES = {("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens")}


def test_anthropics_routes_take_the_key_from_either_header_through_an_uncached_authorizer(cfn, tpl):
    """x-api-key (Claude Code, the Vercel AI SDK) or Authorization: one authorizer with no identity source (a
    cached one would require its header and key its cache on it), never API Gateway's own API-key check."""
    schemes = _security_schemes(_rest_api_body(cfn))
    anthropic = schemes["AnthropicKeyAuthorizer"]["x-amazon-apigateway-authorizer"]
    assert anthropic["type"] == "request" and "identitySource" not in anthropic
    assert anthropic["authorizerResultTtlInSeconds"] == 0
    key = schemes["KeyAuthorizer"]["x-amazon-apigateway-authorizer"]
    assert anthropic["authorizerUri"] == key["authorizerUri"]  # the same function
    assert reader.authorizer_settings(tpl, name="AnthropicKeyAuthorizer") == reader.AuthorizerSettings(
        name="AnthropicKeyAuthorizer", function="AuthorizerFunction", identity_header=None, ttl_seconds=0)
    routes = {(m, p): op for p, m, op in _methods(_rest_api_body(cfn))}
    for route in ANTHROPIC_ROUTES:
        assert routes[route]["security"] == [{"AnthropicKeyAuthorizer": []}], route  # authorized, never open
    for (method, path), operation in routes.items():
        # No usage-plan API key anywhere: API Gateway would read x-api-key itself and refuse our sk-ony- keys.
        assert not any("api_key" in requirement for requirement in operation.get("security", [])), (method, path)
    (api,) = _of_type(cfn, "AWS::ApiGateway::RestApi").values()
    assert api["Properties"].get("ApiKeySourceType", "HEADER") == "HEADER"
    assert "x-amazon-apigateway-api-key-source" not in _rest_api_body(cfn)
    assert not _of_type(cfn, "AWS::ApiGateway::UsagePlan") and not _of_type(cfn, "AWS::ApiGateway::ApiKey")


# ------------------------------------------------------------------------------------------- routes


def test_every_method_streams_through_the_proxy_and_uses_the_authorizer(cfn):
    body = _rest_api_body(cfn)
    methods = [(path, method, operation) for path, method, operation in _methods(body) if path.startswith("/v1/")]
    assert methods
    for path, method, operation in methods:
        integration = operation["x-amazon-apigateway-integration"]
        assert integration["type"] == "aws_proxy" and integration["httpMethod"] == "POST"
        assert integration["responseTransferMode"] == "STREAM", (method, path)
        assert STREAM_URI.match(integration["uri"]["Fn::Sub"]).group(1) == "ProxyFunction", integration["uri"]
        expected = "AnthropicKeyAuthorizer" if (method, path) in ANTHROPIC_ROUTES else "KeyAuthorizer"
        assert operation["security"] == [{expected: []}], (method, path)
    assert "/healthz" not in body["paths"]
    assert {path.split("/")[1] for path, _, _ in _methods(body)} == {"v1", "dashboard", "secret-scanning"}


def test_the_secret_scanning_route_is_public_buffered_and_its_own_function(cfn):
    """GitHub signs its reports and sends no credential of ours: no authorizer (the function checks the
    signature before anything else); the stage throttles it apart (tests/template/test_operations.py)."""
    body = _rest_api_body(cfn)
    [(path, method, operation)] = [m for m in _methods(body) if m[0].startswith("/secret-scanning")]
    assert (method, path) == ("POST", "/secret-scanning/github")
    assert operation["security"] == [{"NONE": []}]
    integration = operation["x-amazon-apigateway-integration"]
    assert integration["type"] == "aws_proxy" and "responseTransferMode" not in integration
    assert BUFFERED_URI.match(integration["uri"]["Fn::Sub"]).group(1) == "SecretScanningFunction"
    function = cfn["Resources"]["SecretScanningFunction"]["Properties"]
    assert function["Timeout"] < 30  # GitHub waits 30 s
    assert "cryptography" in (ROOT / "functions" / "secret_scanning" / "requirements.txt").read_text()
    assert "cryptography" not in (ROOT / "layers" / "core" / "requirements.txt").read_text()  # its own cost


def test_dashboard_routes_use_cognito_and_do_not_stream(cfn):
    body = _rest_api_body(cfn)
    methods = [(path, method, operation) for path, method, operation in _methods(body)
               if path.startswith("/dashboard")]
    assert len(methods) == 17  # + PATCH /dashboard/keys/{key_id} (issue 23: a key's limits, within the ceilings)
    # Opened by a browser before anyone signs in, and holding no data: Swagger UI, the web app's files and the
    # public sign-in settings (the app client id). Everything else needs the user pool's ID token.
    public = {("GET", "/dashboard/docs"), ("GET", "/dashboard"), ("GET", "/dashboard/static/{file}"),
              ("GET", "/dashboard/config.json")}
    for path, method, operation in methods:
        integration = operation["x-amazon-apigateway-integration"]
        assert integration["type"] == "aws_proxy" and "responseTransferMode" not in integration, (method, path)
        assert BUFFERED_URI.match(integration["uri"]["Fn::Sub"]).group(1) == "DashboardFunction"
        if (method, path) in public:
            assert operation["security"] == [{"NONE": []}]
        else:
            assert operation["security"] == [{"DashboardCognito": []}], (method, path)


def test_dashboard_cognito_authorizer_user_pool_and_client(cfn, tpl):
    scheme = _security_schemes(_rest_api_body(cfn))["DashboardCognito"]
    assert scheme["x-amazon-apigateway-authtype"] == "cognito_user_pools" and scheme["name"] == "Authorization"
    assert scheme["x-amazon-apigateway-authorizer"]["providerARNs"] == [{"Fn::GetAtt": ["DashboardUserPool", "Arn"]}]
    assert reader.cognito_authorizer(tpl) == reader.CognitoAuthorizerSettings(
        name="DashboardCognito", user_pool="DashboardUserPool", identity_header="Authorization")
    assert reader.authorizer_type(tpl, "DashboardCognito") == "cognito"
    assert reader.authorizer_type(tpl, "KeyAuthorizer") == "lambda"
    with pytest.raises(ValueError):
        reader.authorizer_settings(tpl, name="DashboardCognito")
    pool = cfn["Resources"]["DashboardUserPool"]["Properties"]
    (principal,) = [a for a in pool["Schema"] if a["Name"] == "principal"]
    assert principal["AttributeDataType"] == "String" and principal["Mutable"] is False
    assert pool["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True  # nobody names their own principal
    client = cfn["Resources"]["DashboardUserPoolClient"]["Properties"]
    assert client["GenerateSecret"] is False
    assert {"ALLOW_USER_PASSWORD_AUTH", "ALLOW_USER_SRP_AUTH"} <= set(client["ExplicitAuthFlows"])
    assert "custom:principal" in client["ReadAttributes"] and "custom:principal" not in client["WriteAttributes"]
    outputs = cfn["Outputs"]
    assert outputs["UserPoolId"]["Value"] == {"Ref": "DashboardUserPool"}
    assert outputs["UserPoolClientId"]["Value"] == {"Ref": "DashboardUserPoolClient"}
    assert outputs["DashboardUrl"]["Value"]["Fn::Sub"].endswith("/${StageName}/dashboard/")  # the app's URL


def test_dashboard_function(cfn):
    function = cfn["Resources"]["DashboardFunction"]["Properties"]
    assert function["Handler"] == "app.handler" and function["Runtime"] == "python3.13"
    assert function["Architectures"] == ["arm64"]
    assert set(TABLES.values()) <= set(function["Environment"]["Variables"])
    assert function["Environment"]["Variables"]["ONYSOFT_USER_POOL_CLIENT_ID"] == {"Ref": "DashboardUserPoolClient"}
    assert "pydantic" in (ROOT / "functions" / "dashboard" / "requirements.txt").read_text()


def test_api_gateway_may_invoke_each_routes_function(cfn, tpl):
    for route in reader.routes(tpl):
        source_arns = [
            json.dumps(p["Properties"]["SourceArn"]) for p in _of_type(cfn, "AWS::Lambda::Permission").values()
            if p["Properties"]["FunctionName"] == {"Ref": route.function}
        ]
        path = re.sub(r"\{[^}]+\}", "*", route.path)  # a path parameter is a wildcard in the source ARN
        assert any(arn.endswith(f'/{route.method}{path}", {{"__ApiId__": {{"Ref": "GatewayApi"}}, '
                                f'"__Stage__": "*"}}]}}') for arn in source_arns), route


def test_reader_routes_equal_the_deployed_routes(cfn, tpl):
    deployed = set()
    for path, method, operation in _methods(_rest_api_body(cfn)):
        integration = operation["x-amazon-apigateway-integration"]
        uri = integration["uri"]["Fn::Sub"]
        function = re.search(r"\$\{(\w+)\.Arn\}", uri).group(1)
        (authorizer,) = operation.get("security", [{}])[0].keys() or [None]
        deployed.add(reader.Route(
            method=method, path=path, function=function, authorizer=None if authorizer == "NONE" else authorizer,
            streaming=integration.get("responseTransferMode") == "STREAM",
        ))
    local = reader.routes(tpl)
    assert len(local) == len(set(local))
    assert set(local) == deployed
    assert {(r.method, r.path) for r in local} >= {("GET", "/v1/key"), ("GET", "/v1/models")}
    assert reader.Route("GET", "/dashboard/docs", "DashboardFunction", None, False) in local
    assert reader.Route("DELETE", "/dashboard/keys/{key_id}", "DashboardFunction", "DashboardCognito", False) in local


def test_stage_name(tpl, cfn):
    assert reader.stage_name(tpl) == "prod"
    assert reader.stage_name(tpl, {"StageName": "dev"}) == "dev"
    (stage,) = _of_type(cfn, "AWS::ApiGateway::Stage").values()  # OpenAPI 3: no extra "Stage" stage
    assert stage["Properties"]["StageName"] == {"Ref": "StageName"}


# ------------------------------------------------------------------------------------------- events

# The functions that emit key and balance events (onysoft.events), and so may put events on the bus.
EVENT_EMITTERS = {"DashboardFunction", "SecretScanningFunction", "KeyExpiryFunction",  # key events (issue 24)
                  "ProxyFunction", "RollupFunction"}  # balance alerts (issue 26)


def test_the_optional_mail_subscriber_listens_to_the_bus_only_when_a_sender_is_given(cfn):
    function = cfn["Resources"]["KeyMailFunction"]
    assert function["Condition"] == "SendKeyMail"
    assert cfn["Conditions"]["SendKeyMail"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "NotificationSenderEmail"}, ""]}]}
    assert cfn["Parameters"]["NotificationSenderEmail"]["Default"] == ""  # no mail unless asked for
    variables = function["Properties"]["Environment"]["Variables"]
    assert variables["ONYSOFT_MAIL_FROM"] == {"Ref": "NotificationSenderEmail"}
    assert variables["ONYSOFT_USER_POOL_ID"] == {"Ref": "DashboardUserPool"}
    [rule] = [r for r in _of_type(cfn, "AWS::Events::Rule").values()
              if r["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": ["KeyMailFunction", "Arn"]}]
    assert rule["Condition"] == "SendKeyMail"
    assert rule["Properties"]["EventBusName"] == {"Ref": "EventBus"}
    assert rule["Properties"]["EventPattern"] == {"source": ["onysoft"]}
    assert cfn["Resources"]["KeyMailLogGroup"]["Condition"] == "SendKeyMail"


def test_the_event_bus_is_in_every_functions_environment_and_only_emitters_may_put_events(cfn):
    (bus_id,) = _of_type(cfn, "AWS::Events::EventBus")
    assert bus_id == "EventBus"
    assert cfn["Resources"][bus_id]["Properties"]["Name"] == {"Fn::Sub": "${AWS::StackName}-events"}
    for logical_id, function in _of_type(cfn, "AWS::Lambda::Function").items():
        assert function["Properties"]["Environment"]["Variables"]["ONYSOFT_EVENT_BUS"] == {"Ref": bus_id}, logical_id
    putters = {}
    for role_id, role in _of_type(cfn, "AWS::IAM::Role").items():
        for statement in _statements(role):
            if any(a.startswith("events:") for a in _as_list(statement["Action"])):
                assert _as_list(statement["Action"]) == ["events:PutEvents"], statement
                assert _as_list(statement["Resource"]) == [{"Fn::GetAtt": [bus_id, "Arn"]}], statement  # this bus only
                putters[role_id.removesuffix("Role")] = statement
    assert set(putters) == EVENT_EMITTERS
    outputs = cfn["Outputs"]
    assert outputs["EventBusName"]["Value"] == {"Ref": bus_id}
    assert outputs["EventBusArn"]["Value"] == {"Fn::GetAtt": [bus_id, "Arn"]}


# ------------------------------------------------------------------------------------------- IAM


def _statements(role: dict):
    for policy in role["Properties"].get("Policies", []):
        yield from policy["PolicyDocument"]["Statement"]


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _table_of(resource) -> str:
    """The table a policy resource names: `!GetAtt T.Arn` or `!Sub ${T.Arn}/index/*`."""
    if "Fn::GetAtt" in resource:
        logical, attribute = resource["Fn::GetAtt"]
        assert attribute == "Arn"
        return logical
    match = re.fullmatch(r"\$\{(\w+)\.Arn\}/(index/(\*|\w+)|stream/\*)", resource["Fn::Sub"])
    assert match, resource
    return match.group(1)


def test_function_policies_are_least_privilege(cfn):
    all_roles = _of_type(cfn, "AWS::IAM::Role")
    # The schedule's own role only lets EventBridge Scheduler invoke the sweeper.
    schedule_role = all_roles.pop("SweeperFunctionEveryFiveMinutesRole")
    assert {a for st in _statements(schedule_role) for a in _as_list(st["Action"])} == {"lambda:InvokeFunction"}
    # API Gateway's account-wide CloudWatch role (access logs): AWS's managed push-to-logs policy only.
    logging_role = all_roles.pop("ApiGatewayLoggingRole")
    assert "Policies" not in logging_role["Properties"]
    assert logging_role["Properties"]["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"}]
    # ProxyCompute=managed-instances only: the role Lambda manages the proxy's instances with (AWS's policy).
    operator_role = all_roles.pop("ProxyCapacityProviderOperatorRole")
    assert operator_role["Condition"] == "ManagedProxy"
    assert operator_role["Properties"]["ManagedPolicyArns"] == [
        "arn:aws:iam::aws:policy/AWSLambdaManagedEC2ResourceOperator"]
    roles = all_roles
    expiry_schedule_role = all_roles.pop("KeyExpiryFunctionEveryFifteenMinutesRole")
    assert {a for st in _statements(expiry_schedule_role) for a in _as_list(st["Action"])} == {"lambda:InvokeFunction"}
    assert set(roles) == {"AuthorizerFunctionRole", "ProxyFunctionRole", "SweeperFunctionRole", "DashboardFunctionRole",
                          "RollupFunctionRole", "SecretScanningFunctionRole", "KeyExpiryFunctionRole",
                          "KeyMailFunctionRole"}
    granted: dict[str, dict[str, set[str]]] = {}
    for role_id, role in roles.items():
        assert role["Properties"]["ManagedPolicyArns"] == [
            "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
        ]
        for statement in _statements(role):
            assert statement["Effect"] == "Allow"
            actions, resources = _as_list(statement["Action"]), _as_list(statement["Resource"])
            assert all("*" not in action for action in actions), actions
            for action in actions:
                assert action in DYNAMODB_ALLOWED | OTHER_ALLOWED, action
            if any(a.startswith("dynamodb:") for a in actions):
                assert all(a.startswith("dynamodb:") for a in actions)
                tables = {_table_of(r) for r in resources}
                assert tables <= set(TABLES), tables
                for action in actions:
                    granted.setdefault(role_id, {}).setdefault(action, set()).update(tables)
            elif actions == ["events:PutEvents"]:  # the stack's bus only (test_the_event_bus_…)
                assert resources == [{"Fn::GetAtt": ["EventBus", "Arn"]}]
            elif actions == ["cognito-idp:ListUsers"]:  # the mail subscriber: the dashboard's pool only
                assert role_id == "KeyMailFunctionRole"
                assert resources == [{"Fn::GetAtt": ["DashboardUserPool", "Arn"]}]
            elif actions == ["cognito-idp:AdminGetUser"]:  # the dashboard: has the operator TOTP (onysoft/mfa.py)
                assert role_id == "DashboardFunctionRole"
                assert resources == [{"Fn::GetAtt": ["DashboardUserPool", "Arn"]}]
            elif actions == ["ses:SendEmail"]:  # the mail subscriber: this account's SES identities
                assert role_id == "KeyMailFunctionRole"
                assert resources == [
                    {"Fn::Sub": "arn:${AWS::Partition}:ses:${AWS::Region}:${AWS::AccountId}:identity/*"}]
            elif actions == ["sqs:SendMessage"]:  # an on-failure destination, the function's own queue only
                assert resources == [{"Fn::GetAtt": [{"RollupFunctionRole": "RollupFailureQueue",
                                                      "KeyMailFunctionRole": "KeyMailFailureQueue"}[role_id], "Arn"]}]
            else:
                assert actions == ["secretsmanager:GetSecretValue"]
                (arn,) = resources
                assert arn["Fn::Sub"].endswith(":secret:onysoft/providers/*"), arn
    assert granted["AuthorizerFunctionRole"] == {"dynamodb:GetItem": {"ApiKeysTable", "AccountsTable"}}
    proxy = granted["ProxyFunctionRole"]
    assert proxy["dynamodb:UpdateItem"] == {"ApiKeysTable", "AccountsTable", "UsageTable", "RateLimitsTable"}
    assert proxy["dynamodb:Scan"] == {"CatalogTable"} and "CatalogTable" not in proxy["dynamodb:PutItem"]
    # the account, when a hold consolidates its shards (the key before each hold: BatchGetItem, with its counters)
    assert proxy["dynamodb:GetItem"] == {"AccountsTable"}
    # the key (before each hold, issue 16: not in the hold), account, rate counters (the x-ratelimit headers) and,
    # for GET /v1/key, the key's usage totals
    assert proxy["dynamodb:BatchGetItem"] == {"ApiKeysTable", "AccountsTable", "RateLimitsTable", "UsageRollupsTable"}
    # No key item in the hold (it is read before it), so no ConditionCheckItem either.
    assert proxy["dynamodb:PutItem"] == {"UsageTable"} and "dynamodb:ConditionCheckItem" not in proxy
    # The sweeper settles or releases in the same transaction as the proxy: the key's spend counter (RateLimits)
    # moves with the balance; the key item is not written by a close (its count and spend: the usage rollup).
    assert granted["SweeperFunctionRole"] == {
        "dynamodb:Query": {"UsageTable"},
        "dynamodb:UpdateItem": {"UsageTable", "AccountsTable", "RateLimitsTable"},
    }
    # The dashboard: keys and accounts by id, create / update; every account (operator); usage and audit
    # records. Nothing of the catalog or the rate-limit counters, no DeleteItem (a deleted key stays, marked).
    assert granted["DashboardFunctionRole"] == {
        "dynamodb:GetItem": {"ApiKeysTable", "AccountsTable", "UsageTable"},  # UsageTable: idempotency markers
        # the items behind a keys-only index (UsageTable: a key's records behind by_key_shard, issue 23); keys'
        # all-time usage totals (their request count and spend)
        "dynamodb:BatchGetItem": {"ApiKeysTable", "AccountsTable", "UsageTable", "UsageRollupsTable"},
        # UsageRollupsTable: a new account's all-time totals item, opened with it (its ledger: balance alerts)
        "dynamodb:PutItem": {"ApiKeysTable", "AccountsTable", "UsageTable", "UsageRollupsTable"},
        "dynamodb:UpdateItem": {"ApiKeysTable", "AccountsTable"},
        "dynamodb:Scan": {"AccountsTable"},  # the margin report's every account (lists are Queries: by_name)
        "dynamodb:Query": {"ApiKeysTable", "AccountsTable", "UsageTable", "UsageRollupsTable"},
    }
    # The rollup: the Usage table's stream only (through its event source mapping), its own table.
    stream = {"dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams"}
    assert granted["RollupFunctionRole"] == {
        **{action: {"UsageTable"} for action in stream},
        "dynamodb:BatchGetItem": {"UsageRollupsTable", "AccountsTable", "RateLimitsTable"},  # + balance alerts'
        "dynamodb:PutItem": {"UsageRollupsTable"},  # accounts and spend counters
        # + balance alerts' flags (accounts) and Spend Limit Reached's (counters)
        "dynamodb:UpdateItem": {"UsageRollupsTable", "RateLimitsTable", "AccountsTable"},
        "dynamodb:GetItem": {"ApiKeysTable"},  # the key a Spend Limit Reached names
    }
    assert {r["Fn::Sub"] for st in _statements(roles["RollupFunctionRole"]) for r in _as_list(st["Resource"])
            if "Fn::Sub" in r} == {"${UsageTable.Arn}/stream/*"}
    # Leak reports: the reported keys (by hash) and a key's other secrets; the revocation; the audit record in its
    # transaction; the owner's account for the audit's scope. Nothing of balances, usage records or the catalog.
    assert granted["SecretScanningFunctionRole"] == {
        "dynamodb:BatchGetItem": {"ApiKeysTable"}, "dynamodb:GetItem": {"ApiKeysTable", "AccountsTable"},
        "dynamodb:UpdateItem": {"ApiKeysTable"}, "dynamodb:Query": {"ApiKeysTable"},
        "dynamodb:PutItem": {"UsageTable"},
    }
    assert granted["KeyMailFunctionRole"] == {"dynamodb:GetItem": {"AccountsTable"}}  # + ListUsers, SendEmail
    # Expiry notices: the watched keys (a sparse index), their items, the notice each got.
    assert granted["KeyExpiryFunctionRole"] == {
        "dynamodb:Query": {"ApiKeysTable"}, "dynamodb:BatchGetItem": {"ApiKeysTable"},
        "dynamodb:GetItem": {"ApiKeysTable"},  # one at a time when an item cannot be read (issue 23)
        "dynamodb:UpdateItem": {"ApiKeysTable"},
    }
    mapping = cfn["Resources"]["RollupStreamMapping"]["Properties"]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["UsageTable", "StreamArn"]}
    assert mapping["BisectBatchOnFunctionError"] is True and mapping["MaximumRetryAttempts"] <= 10
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["RollupFailureQueue", "Arn"]}
    dashboard_indexes = {
        r["Fn::Sub"] for st in _statements(roles["DashboardFunctionRole"]) for r in _as_list(st["Resource"])
        if "Fn::Sub" in r
    }
    assert dashboard_indexes == {"${ApiKeysTable.Arn}/index/by_account", "${ApiKeysTable.Arn}/index/by_key_id",
                                 "${AccountsTable.Arn}/index/by_owner",
                                 # issue 23: pages of accounts by name, one key's usage
                                 "${AccountsTable.Arn}/index/by_name", "${AccountsTable.Arn}/index/by_owner_name",
                                 "${UsageTable.Arn}/index/by_key_shard"}
    for role, index in (("SecretScanningFunctionRole", "by_key_id"), ("KeyExpiryFunctionRole", "by_expiry")):
        assert {r["Fn::Sub"] for st in _statements(roles[role]) for r in _as_list(st["Resource"])
                if "Fn::Sub" in r} == {f"${{ApiKeysTable.Arn}}/index/{index}"}, role


def test_proxy_runs_under_the_lambda_web_adapter(cfn):
    proxy = cfn["Resources"]["ProxyFunction"]["Properties"]
    env = proxy["Environment"]["Variables"]
    assert env["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert env["AWS_LWA_INVOKE_MODE"] == "response_stream"
    assert env["AWS_LWA_READINESS_CHECK_PATH"] == "/healthz"
    assert set(TABLES.values()) <= set(env)  # Globals merged in
    assert proxy["Handler"] == "run.sh" and proxy["Timeout"] == 900
    assert any("LambdaAdapterLayerArm64" in json.dumps(layer) for layer in proxy["Layers"])
    assert proxy["Architectures"] == ["arm64"] and proxy["Runtime"] == "python3.13"
    run_sh = ROOT / "functions" / "proxy" / "run.sh"
    assert run_sh.stat().st_mode & stat.S_IXUSR
    assert "exec python -m uvicorn app:app" in run_sh.read_text()


# ----------------------------------------------------------------------------------- gateway responses


@pytest.mark.parametrize("response_type, status", [
    ("UNAUTHORIZED", 401), ("ACCESS_DENIED", 401), ("MISSING_AUTHENTICATION_TOKEN", 404),
    ("REQUEST_TOO_LARGE", 413), ("THROTTLED", 429), ("AUTHORIZER_FAILURE", 500),
    ("INTEGRATION_FAILURE", 502), ("INTEGRATION_TIMEOUT", 504), ("DEFAULT_4XX", None), ("DEFAULT_5XX", None),
])
def test_gateway_responses_answer_in_openai_envelope(cfn, tpl, response_type, status):
    deployed = _rest_api_body(cfn)["x-amazon-apigateway-gateway-responses"][response_type]
    local = reader.gateway_responses(tpl)[response_type]
    assert deployed.get("statusCode") == (str(status) if status else None)
    assert deployed["responseTemplates"]["application/json"] == local.template
    assert deployed["responseParameters"]["gatewayresponse.header.Content-Type"] == "'application/json'"
    assert local.headers["Content-Type"] == "application/json"

    message = 'Invalid request body: "model" is required \\ tab\t'
    revoked = {"error_code": "key_leaked", "error_message": "This API key was revoked: found at https://x/y?z=1"}
    got_status, headers, body = reader.render_gateway_response(
        local, message=message, http_method="POST", path="/prod/v1/nope", request_id="req-123", authorizer=revoked,
    )
    assert got_status == (status or {"DEFAULT_4XX": 400, "DEFAULT_5XX": 500}[response_type])
    assert headers["Content-Type"] == "application/json"
    envelope = json.loads(body)
    # OpenAI's envelope, with Anthropic's top-level "type": "error" beside it (both SDKs read this body)
    assert set(envelope) == {"type", "error"} and envelope["type"] == "error"
    error = envelope["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["param"] is None and isinstance(error["message"], str) and error["type"]
    assert "$context" not in error["message"]
    if response_type == "UNAUTHORIZED":
        assert error["code"] == "invalid_api_key" and "Bearer sk-ony-" in error["message"]
        assert "x-api-key: sk-ony-" in error["message"]
    if response_type == "ACCESS_DENIED":  # a leaked key: the authorizer's Deny says why, in its context
        assert (error["code"], error["message"]) == (revoked["error_code"], revoked["error_message"])
        assert headers["WWW-Authenticate"] == "Bearer"
    if response_type == "MISSING_AUTHENTICATION_TOKEN":
        assert error["code"] == "unknown_url" and "POST /prod/v1/nope" in error["message"]
    if response_type == "DEFAULT_4XX":
        assert error["message"] == message
    if response_type == "THROTTLED":
        assert error["code"] == "rate_limit_exceeded" and headers["Retry-After"] == "1"


def test_render_substitutes_like_api_gateway():
    resp = reader.GatewayResponse(status=418, headers={"Content-Type": "text/plain"},
                                  template="$context.error.messageString|$context.error.message|"
                                           "${context.httpMethod}|$context.path|$context.requestId|$context.other")
    status, headers, body = reader.render_gateway_response(
        resp, message='a "b"', http_method="GET", path="/p", request_id="r", status=415,
    )
    assert status == 415 and headers == {"Content-Type": "text/plain"}
    assert body.decode() == '"a \\"b\\""|a "b"|GET|/p|r|$context.other'
    resp = reader.GatewayResponse(status=401, template="$context.authorizer.error_code|$context.authorizer.missing|")
    _, _, body = reader.render_gateway_response(resp, message="m", http_method="GET", path="/p", request_id="r",
                                                authorizer={"error_code": "key_leaked"})
    assert body.decode() == "key_leaked||"


# ------------------------------------------------------------------------------------------- tables


def test_table_env_comes_from_the_globals(tpl):
    assert reader.table_env(tpl) == TABLES
    assert reader.TABLE_ENV == TABLES


def test_tables_round_trip_through_moto(tpl):
    import boto3
    from moto import mock_aws

    names = {logical: f"test-{logical}" for logical in TABLES}
    definitions = {d["TableName"]: d for d in reader.table_definitions(tpl, names)}
    assert set(definitions) == set(names.values())
    assert all(d["BillingMode"] == "PAY_PER_REQUEST" for d in definitions.values())
    with mock_aws():
        client = boto3.client("dynamodb", region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        assert sorted(reader.create_tables(client, tpl, names)) == sorted(names.values())
        assert reader.create_tables(client, tpl, names) == []  # idempotent
        described = {}
        for logical, name in names.items():
            table = client.describe_table(TableName=name)["Table"]
            described[logical] = table
            definition = definitions[name]
            assert table["KeySchema"] == definition["KeySchema"]
            assert {(a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]} == {
                (a["AttributeName"], a["AttributeType"]) for a in definition["AttributeDefinitions"]
            }
            gsis = {g["IndexName"]: g["KeySchema"] for g in table.get("GlobalSecondaryIndexes", [])}
            wanted = definition.get("GlobalSecondaryIndexes", [])
            assert gsis == {g["IndexName"]: g["KeySchema"] for g in wanted}
            ttl = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
            expected_ttl = reader.ttl_attribute(tpl, logical)
            enabled = ttl["TimeToLiveStatus"] == "ENABLED"
            assert (ttl.get("AttributeName") if enabled else None) == expected_ttl

    def key(logical, index=None):
        table = described[logical]
        schema = table["KeySchema"] if index is None else next(
            g["KeySchema"] for g in table["GlobalSecondaryIndexes"] if g["IndexName"] == index)
        return [(k["AttributeName"], k["KeyType"]) for k in schema]

    # docs/ARCHITECTURE.md
    assert key("ApiKeysTable") == [("key_hash", "HASH")]
    assert key("ApiKeysTable", "by_account") == [("account_id", "HASH"), ("created_at", "RANGE")]
    assert key("ApiKeysTable", "by_key_id") == [("key_id", "HASH")]
    assert key("ApiKeysTable", "by_expiry") == [("expiry_watch", "HASH"), ("expires_at", "RANGE")]
    assert reader.ttl_attribute(tpl, "ApiKeysTable") == "purge_at"  # a rotated key's old secret, after its grace
    assert key("AccountsTable") == [("account_id", "HASH")]
    assert key("AccountsTable", "by_owner") == [("owner", "HASH"), ("account_id", "RANGE")]
    assert key("AccountsTable", "by_name") == [("listed", "HASH"), ("name_key", "RANGE")]  # issue 23
    assert key("AccountsTable", "by_owner_name") == [("owner", "HASH"), ("name_key", "RANGE")]
    assert key("UsageTable") == [("account_id", "HASH"), ("sk", "RANGE")]
    assert "by_key" not in {g["IndexName"] for g in described["UsageTable"]["GlobalSecondaryIndexes"]}
    assert key("UsageTable", "by_key_shard") == [("key_shard", "HASH"), ("sk", "RANGE")]
    # Keys only: a billed request's balance and settle updates never rewrite these entries (1 WRU: the hold's put).
    for logical, index in (("AccountsTable", "by_name"), ("AccountsTable", "by_owner_name"),
                           ("UsageTable", "by_key_shard")):
        projection = next(g["Projection"] for g in described[logical]["GlobalSecondaryIndexes"]
                          if g["IndexName"] == index)
        assert projection == {"ProjectionType": "KEYS_ONLY"}
    assert key("UsageTable", "open_holds") == [("hold_state", "HASH"), ("created_at", "RANGE")]
    assert key("RateLimitsTable") == [("counter_id", "HASH")]
    assert reader.ttl_attribute(tpl, "RateLimitsTable") == "expires_at"
    assert key("CatalogTable") == [("kind", "HASH"), ("id", "RANGE")]


def test_table_definitions_need_every_name(tpl):
    names = {logical: logical.lower() for logical in TABLES}
    names.pop("CatalogTable")
    with pytest.raises(KeyError, match="CatalogTable"):
        reader.table_definitions(copy.deepcopy(tpl), names)


# ------------------------------------------------------------------------------------------- events


def _event(name: str) -> dict:
    return json.loads((ROOT / "events" / name).read_text())


@pytest.mark.parametrize("name", ["authorizer-valid-key.json", "authorizer-malformed-key.json",
                                  "authorizer-missing-key.json"])
def test_authorizer_events(name, tpl):
    event = _event(name)
    assert event["type"] == "REQUEST"
    assert event["methodArn"] == "arn:aws:execute-api:eu-central-1:123456789012:abcdef1234/prod/GET/v1/key"
    route = reader.Route("GET", event["resource"], "ProxyFunction", "KeyAuthorizer", True)
    assert route in reader.routes(tpl)
    auth = event["headers"].get("Authorization")
    if name == "authorizer-valid-key.json":
        assert auth == "Bearer sk-ony-" + "0123456789abcdef" * 3
    elif name == "authorizer-missing-key.json":
        assert auth is None
    else:
        assert auth and not re.fullmatch(r"Bearer sk-ony-[0-9a-f]{48}", auth)


@pytest.mark.parametrize("name, path", [
    ("proxy-get-key.json", "/v1/key"), ("proxy-get-models.json", "/v1/models"),
])
def test_proxy_events_carry_the_authorizer_context(name, path, tpl):
    from onysoft.caller import CallerContext

    event = _event(name)
    assert (event["httpMethod"], event["path"], event["resource"]) == ("GET", path, path)
    assert event["requestContext"]["path"] == f"/{reader.stage_name(tpl)}{path}"
    caller = CallerContext.from_authorizer_context(event["requestContext"]["authorizer"])
    assert caller == CallerContext(
        key_id="key_0123456789abcdef", key_type="user", account_id="acct_0123456789abcdef",
        currency="TRY", markup_bp=5000,
    )


def test_the_proxys_deadline_comes_before_its_function_timeout(cfn):
    """The proxy ends a long stream and settles it before Lambda would kill it (onysoft.deadline)."""
    from onysoft import deadline

    timeout = cfn["Resources"]["ProxyFunction"]["Properties"]["Timeout"]
    assert timeout == deadline.FUNCTION_TIMEOUT_SECONDS
    assert 0 < deadline.deadline_seconds() <= timeout - 10


# ------------------------------------------------------------------------------------- limits and abuse (issue 23)


def test_a_waf_rate_limits_each_source_ip_below_the_stages_bucket_and_drops_bad_reputations(cfn, tpl):
    """The stage's throttling is one bucket for everyone, spent before the authorizer: one source IP must hit
    its own limit (WAF, per IP) long before it can drain the stage's, and its refusal is OpenAI's envelope."""
    (acl_id, acl), = _of_type(cfn, "AWS::WAFv2::WebACL").items()
    props = acl["Properties"]
    assert props["Scope"] == "REGIONAL" and props["DefaultAction"] == {"Allow": {}}
    rules = {rule["Name"]: rule for rule in props["Rules"]}
    rate = rules["rate-per-source-ip"]["Statement"]["RateBasedStatement"]
    assert rate["AggregateKeyType"] == "IP" and rate["EvaluationWindowSec"] == 60
    assert rate["Limit"] == {"Ref": "WafRequestsPerIpPerMinute"}
    per_ip_per_second = int(tpl["Parameters"]["WafRequestsPerIpPerMinute"]["Default"]) / 60
    assert per_ip_per_second <= int(tpl["Parameters"]["ThrottlingRateLimit"]["Default"]) / 4
    block = rules["rate-per-source-ip"]["Action"]["Block"]["CustomResponse"]
    assert block["ResponseCode"] == 429
    body = json.loads(props["CustomResponseBodies"][block["CustomResponseBodyKey"]]["Content"])
    assert set(body["error"]) == {"message", "type", "code", "param"}
    managed = rules["aws-ip-reputation"]["Statement"]["ManagedRuleGroupStatement"]
    assert (managed["VendorName"], managed["Name"]) == ("AWS", "AWSManagedRulesAmazonIpReputationList")
    (association,) = _of_type(cfn, "AWS::WAFv2::WebACLAssociation").values()
    assert association["Properties"]["WebACLArn"] == {"Fn::GetAtt": [acl_id, "Arn"]}
    arn = json.dumps(association["Properties"]["ResourceArn"])
    (api_id,) = _of_type(cfn, "AWS::ApiGateway::RestApi")
    (stage_id,) = _of_type(cfn, "AWS::ApiGateway::Stage")
    assert api_id in arn and stage_id in arn and "/stages/" in arn  # the deployed stage, by reference
    assert acl["Condition"] == association["Condition"] == "UseWaf"
    assert cfn["Conditions"]["UseWaf"] == {"Fn::Equals": [{"Ref": "EnableWaf"}, "true"]}
