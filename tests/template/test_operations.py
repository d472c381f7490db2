"""What the template compiles to (the SAM transform, offline) for running it in AWS: limits before the
authorizer, data retention, log groups with retention, JSON access logs, and alarms that read the metrics
the code really emits (onysoft.telemetry)."""

import json
import re

import pytest

from onysoft_tools import iam_policy

pytestmark = pytest.mark.timeout(60)

TABLES = ("ApiKeysTable", "AccountsTable", "UsageTable", "RateLimitsTable", "CatalogTable", "UsageRollupsTable")
FUNCTIONS = ("AuthorizerFunction", "ProxyFunction", "SweeperFunction", "DashboardFunction", "RollupFunction",
             "SecretScanningFunction", "KeyExpiryFunction", "KeyMailFunction")


@pytest.fixture(scope="module")
def cfn() -> dict:
    return iam_policy.sam_transform()


@pytest.fixture(scope="module")
def tpl() -> dict:
    from onysoft_tools import template

    return template.load_template()


def _of_type(cfn: dict, kind: str) -> dict:
    return {k: v for k, v in cfn["Resources"].items() if v["Type"] == kind}


def _stage(cfn: dict) -> dict:
    (stage,) = _of_type(cfn, "AWS::ApiGateway::Stage").values()
    return stage


def test_stage_throttling_comes_from_parameters_and_covers_every_method(cfn):
    settings, secret_scanning = _stage(cfn)["Properties"]["MethodSettings"]
    assert settings["ResourcePath"] == "/*" and settings["HttpMethod"] == "*"
    assert settings["ThrottlingRateLimit"] == {"Ref": "ThrottlingRateLimit"}
    assert settings["ThrottlingBurstLimit"] == {"Ref": "ThrottlingBurstLimit"}
    assert settings["LoggingLevel"] == "OFF" and settings["DataTraceEnabled"] is False  # no headers in logs
    for name in ("ThrottlingRateLimit", "ThrottlingBurstLimit"):
        assert cfn["Parameters"][name]["Type"] == "Number" and cfn["Parameters"][name]["Default"] > 0
    # GitHub's public leak-report route: throttled on its own, well below the stage ("/" is "~1" in the path).
    assert (secret_scanning["ResourcePath"], secret_scanning["HttpMethod"]) == ("/~1secret-scanning~1github", "POST")
    assert secret_scanning["ThrottlingRateLimit"] == {"Ref": "SecretScanningThrottlingRateLimit"}
    assert secret_scanning["ThrottlingBurstLimit"] == {"Ref": "SecretScanningThrottlingBurstLimit"}
    assert secret_scanning["LoggingLevel"] == "OFF" and secret_scanning["DataTraceEnabled"] is False
    own = {name: cfn["Parameters"][f"SecretScanningThrottling{name}"]["Default"]
           for name in ("RateLimit", "BurstLimit")}
    assert 0 < own["RateLimit"] < cfn["Parameters"]["ThrottlingRateLimit"]["Default"]
    assert 0 < own["BurstLimit"] < cfn["Parameters"]["ThrottlingBurstLimit"]["Default"]


def test_access_log_is_json_with_the_callers_ids_and_never_a_key(cfn):
    setting = _stage(cfn)["Properties"]["AccessLogSetting"]
    assert setting["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    line = json.loads(re.sub(r"\$context\.[\w.]+", "x", setting["Format"]))  # as API Gateway fills it in
    fields = dict(re.findall(r'"(\w+)":"(\$context\.[\w.]+)"', setting["Format"]))
    assert set(line) == set(fields)
    assert fields["requestId"] == "$context.requestId" and fields["status"] == "$context.status"
    assert fields["keyId"] == "$context.authorizer.key_id"
    assert fields["accountId"] == "$context.authorizer.account_id"
    assert fields["responseLatencyMs"] == "$context.responseLatency"
    assert not any(re.search(r"apiKey|header|authorization", v, re.I) for v in fields.values())
    # The stage waits for the account's CloudWatch role (access logs need it) when the stack sets it.
    role = cfn["Resources"]["ApiGatewayAccount"]
    assert role["Condition"] == "CreateApiGatewayLoggingRole"
    assert _stage(cfn)["Properties"]["Tags"][0]["Value"]["Fn::If"][1] == {"Ref": "ApiGatewayAccount"}


def test_the_authorizer_and_the_proxy_are_capped_so_the_other_functions_keep_room(cfn, tpl):
    """A key flood (random keys: authorizer misses) cannot take the proxy's concurrency, and a tenant's flood of
    requests cannot take the dashboard's, the rollup's or the sweeper's (issue 23): both caps are reservations
    sized from parameters, and what they leave of Lambda's default quota (1,000; AWS keeps 100 unreserved) is
    the other functions' room."""
    functions = cfn["Resources"]
    for name, condition, parameter in (("AuthorizerFunction", "CapAuthorizer", "AuthorizerReservedConcurrency"),
                                       ("ProxyFunction", "CapProxy", "ProxyReservedConcurrency")):
        assert functions[name]["Properties"]["ReservedConcurrentExecutions"] == {
            "Fn::If": [condition, {"Ref": parameter}, {"Ref": "AWS::NoValue"}]}, name
    for name in ("DashboardFunction", "SweeperFunction", "RollupFunction"):  # they share the unreserved rest
        assert "ReservedConcurrentExecutions" not in functions[name]["Properties"], name
    reserved = sum(int(tpl["Parameters"][name]["Default"])
                   for name in ("ProxyReservedConcurrency", "AuthorizerReservedConcurrency"))
    assert 1_000 - reserved >= 100 + 50


def test_every_table_and_the_user_pool_survive_a_mistaken_delete_and_tables_restore_to_a_point_in_time(cfn):
    assert len(_of_type(cfn, "AWS::DynamoDB::Table")) == len(TABLES)
    for name in TABLES:
        table = cfn["Resources"][name]
        assert table["DeletionPolicy"] == "Retain" and table["UpdateReplacePolicy"] == "Retain", name
        assert table["Properties"]["DeletionProtectionEnabled"] is True, name
        assert table["Properties"]["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}, name
    (pool,) = _of_type(cfn, "AWS::Cognito::UserPool").values()
    assert pool["DeletionPolicy"] == "Retain" and pool["Properties"]["DeletionProtection"] == "ACTIVE"


def test_every_function_logs_to_its_own_group_with_a_retention(cfn):
    groups = _of_type(cfn, "AWS::Logs::LogGroup")
    used = set()
    for name in FUNCTIONS:
        ref = cfn["Resources"][name]["Properties"]["LoggingConfig"]["LogGroup"]
        used.add(ref["Ref"])
        assert groups[ref["Ref"]]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert len(used) == len(FUNCTIONS)
    assert groups["ApiAccessLogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert set(_of_type(cfn, "AWS::Lambda::Function")) == set(FUNCTIONS)  # no function without a group


def test_alarms_go_to_the_topic_and_read_the_metrics_the_code_emits(cfn):
    from onysoft import telemetry

    alarms = _of_type(cfn, "AWS::CloudWatch::Alarm")
    assert set(alarms) == {"ServerErrorRateAlarm", "SettleFailuresAlarm", "StaleHoldsAlarm", "DynamoDbThrottlingAlarm",
                           "RollupLagAlarm", "FxRateStaleAlarm", "CircuitBreakerOpenAlarm", *POISON_ALARMS}
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    service = cfn["Resources"]["ProxyFunction"]["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    namespace = cfn["Resources"]["ProxyFunction"]["Properties"]["Environment"]["Variables"][
        "POWERTOOLS_METRICS_NAMESPACE"]
    assert namespace == telemetry.NAMESPACE
    source = open(telemetry.__file__).read()
    for name, metric in (("SettleFailuresAlarm", "SettleFailures"), ("StaleHoldsAlarm", "OpenHoldsOlderThan30Min")):
        props = alarms[name]["Properties"]
        assert props["Namespace"] == namespace and props["MetricName"] == metric
        assert props["Dimensions"] == [{"Name": "service", "Value": service}]
        assert f'"{metric}"' in source  # emitted by onysoft.telemetry under exactly this name
    stale_fx = alarms["FxRateStaleAlarm"]["Properties"]
    assert (stale_fx["Namespace"], stale_fx["MetricName"]) == (namespace, "FxRateStale") and '"FxRateStale"' in source
    assert stale_fx["Dimensions"] == [{"Name": "service", "Value": service}, {"Name": "pair", "Value": "USDTRY"}]
    proxy_env = cfn["Resources"]["ProxyFunction"]["Properties"]["Environment"]["Variables"]
    assert (proxy_env["ONYSOFT_FX_WARN_AGE_HOURS"], proxy_env["ONYSOFT_FX_MAX_AGE_HOURS"]) == (
        {"Ref": "FxWarnAgeHours"}, {"Ref": "FxMaxAgeHours"})
    errors = alarms["ServerErrorRateAlarm"]["Properties"]
    assert (errors["Namespace"], errors["MetricName"], errors["Statistic"]) == ("AWS/ApiGateway", "5XXError", "Average")
    throttled = alarms["DynamoDbThrottlingAlarm"]["Properties"]["Metrics"]
    tables = {m["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Ref"] for m in throttled if "MetricStat" in m}
    # An alarm holds at most 10 metrics: the rollups table's throttling shows as the rollup's lag instead.
    assert tables == set(TABLES) - {"UsageRollupsTable"}
    lag = {m["Id"]: m for m in alarms["RollupLagAlarm"]["Properties"]["Metrics"]}
    assert lag["lag"]["MetricStat"]["Metric"]["MetricName"] == "IteratorAge"
    assert lag["lag"]["MetricStat"]["Metric"]["Dimensions"] == [{"Name": "FunctionName",
                                                               "Value": {"Ref": "RollupFunction"}}]
    assert lag["failed"]["MetricStat"]["Metric"]["Dimensions"][0]["Value"] == {
        "Fn::GetAtt": ["RollupFailureQueue", "QueueName"]}
    subscription = cfn["Resources"]["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}


POISON_ALARMS = ("QuarantinedHoldsAlarm", "RollupQuarantineAlarm", "KeyExpiryFailuresAlarm", "KeyMailFailuresAlarm")


def test_what_each_consumer_sets_aside_is_alarmed_and_kept_whole(cfn):
    """Issue 23: a poison record is counted by a metric the code emits and alarmed (the sweeper's quarantined holds
    while any is left, a rollup record set aside, a key expiry notice that failed), and the mail subscriber's
    failures go whole to queues that keep them."""
    from onysoft import telemetry

    source = open(telemetry.__file__).read()
    resources = cfn["Resources"]
    service = resources["ProxyFunction"]["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    for name, metric, statistic in (("QuarantinedHoldsAlarm", "QuarantinedHolds", "Maximum"),
                                    ("RollupQuarantineAlarm", "RollupRecordsQuarantined", "Sum"),
                                    ("KeyExpiryFailuresAlarm", "ConsumerRecordFailures", "Sum")):
        props = resources[name]["Properties"]
        assert (props["Namespace"], props["MetricName"], props["Statistic"]) == ("Onysoft", metric, statistic)
        assert props["Dimensions"][0] == {"Name": "service", "Value": service}
        assert props["Threshold"] == 1 and props["AlarmActions"] == [{"Ref": "AlarmTopic"}]
        assert f'"{metric}"' in source
    assert resources["KeyExpiryFailuresAlarm"]["Properties"]["Dimensions"][1] == {"Name": "consumer",
                                                                                   "Value": "key_expiry"}
    # Key mail: Lambda's on-failure destination keeps the whole event (its invocation record), EventBridge's
    # dead-letter queue the events it could not deliver; both alarmed; nothing retried forever.
    invoke = resources["KeyMailFunctionEventInvokeConfig"]["Properties"]
    assert invoke["MaximumRetryAttempts"] == 2
    assert invoke["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["KeyMailFailureQueue", "Arn"]}
    assert resources["KeyMailFailureQueue"]["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600
    (target,) = resources["KeyMailFunctionKeyAndBalanceEvents"]["Properties"]["Targets"]
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["KeyMailFailureQueue", "Arn"]}}
    (statement,) = resources["KeyMailFailureQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"} and statement["Action"] == "sqs:SendMessage"
    assert "${EventBus}" in statement["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"]
    mail = resources["KeyMailFailuresAlarm"]["Properties"]
    assert (mail["MetricName"], mail["Dimensions"][0]["Value"]) == (
        "ApproximateNumberOfMessagesVisible", {"Fn::GetAtt": ["KeyMailFailureQueue", "QueueName"]})
    for name in ("KeyMailFailureQueue", "KeyMailFailureQueuePolicy", "KeyMailFailuresAlarm"):
        assert resources[name]["Condition"] == "SendKeyMail", name


# The adapter layer at a released version (issue 23: it was a release candidate). Layer versions of account
# 753240598075 and the adapter releases they carry, from the project's release notes and docs (aws-lambda-web-adapter
# PRs #746: 28 = v1.0.1; #871: 30 = v1.1.0, 29 skipped; 25 = v0.9.1). Moving it is a reviewed change: add the new
# version here with the release it is.
RELEASED_ADAPTER_LAYERS = {25: "v0.9.1", 27: "v1.0.0", 28: "v1.0.1", 30: "v1.1.0"}


def test_the_web_adapter_layer_is_a_released_version(cfn):
    (layer,) = [layer for layer in cfn["Resources"]["ProxyFunction"]["Properties"]["Layers"]
                if "LambdaAdapterLayer" in json.dumps(layer)]
    arn = layer["Fn::Sub"] if isinstance(layer, dict) else layer
    match = re.fullmatch(r"arn:\$\{AWS::Partition\}:lambda:\$\{AWS::Region\}:753240598075:layer:"
                         r"LambdaAdapterLayerArm64:(\d+)", arn)
    assert match, arn
    assert int(match.group(1)) in RELEASED_ADAPTER_LAYERS, f"layer version {match.group(1)} is not a known release"


def test_a_providers_circuit_breaker_is_alarmed_and_sized_from_parameters(cfn):
    """CircuitBreakerOpenAlarm reads the CircuitOpened metric onysoft.telemetry emits with `service` alone (the
    sum over providers), and the proxy's breaker settings come from the template's parameters."""
    from onysoft import circuit_breaker, telemetry

    alarm = _of_type(cfn, "AWS::CloudWatch::Alarm")["CircuitBreakerOpenAlarm"]["Properties"]
    proxy_env = cfn["Resources"]["ProxyFunction"]["Properties"]["Environment"]["Variables"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == (
        telemetry.NAMESPACE, "CircuitOpened", "Sum")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": proxy_env["POWERTOOLS_SERVICE_NAME"]}]
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    assert alarm["AlarmActions"] == alarm["OKActions"] == [{"Ref": "AlarmTopic"}]
    assert '"CircuitOpened"' in open(telemetry.__file__).read()
    defaults = circuit_breaker.Settings()
    for variable, parameter, default in (
            ("ONYSOFT_CIRCUIT_FAILURES", "CircuitBreakerFailures", defaults.failures),
            ("ONYSOFT_CIRCUIT_WINDOW_SECONDS", "CircuitBreakerWindowSeconds", defaults.window_seconds),
            ("ONYSOFT_CIRCUIT_COOLDOWN_SECONDS", "CircuitBreakerCooldownSeconds", defaults.cooldown_seconds),
            ("ONYSOFT_CIRCUIT_MAX_COOLDOWN_SECONDS", "CircuitBreakerMaxCooldownSeconds",
             defaults.max_cooldown_seconds)):
        assert proxy_env[variable] == {"Ref": parameter}
        assert cfn["Parameters"][parameter]["Default"] == default  # the code's default is the template's


def test_the_413_says_6_mb_and_both_gateways_enforce_it(cfn):
    from onysoft import forwarding
    from onysoft_tools.local import api_gateway

    assert forwarding.MAX_BODY_BYTES == api_gateway.MAX_BODY_BYTES == 6 * 1024 * 1024
    (api,) = _of_type(cfn, "AWS::ApiGateway::RestApi").values()
    responses = api["Properties"]["Body"]["x-amazon-apigateway-gateway-responses"]
    template = responses["REQUEST_TOO_LARGE"]["responseTemplates"]["application/json"]
    assert "the limit is 6 MB" in template and "10 MB" not in template
