"""TableCapacity: the tables a billed request writes on on-demand (default) or provisioned capacity with auto
scaling. Checked on what the SAM translator compiles, with the template's conditions decided for each value."""

import copy
import json
import os

import pytest
from samtranslator.translator.transform import transform

from onysoft_tools import proxy_compute
from onysoft_tools import template as reader

pytestmark = pytest.mark.timeout(60)

TABLE = "AWS::DynamoDB::Table"
TARGET = "AWS::ApplicationAutoScaling::ScalableTarget"
POLICY = "AWS::ApplicationAutoScaling::ScalingPolicy"
PROVISIONED = {"TableCapacity": "provisioned"}
# The tables every billed request writes (docs/BENCHMARKS.md section 3): the hold and the settle (Usage,
# Accounts, RateLimits), the key's last_used_at (ApiKeys), the usage rollup (UsageRollups).
REQUEST_PATH_TABLES = {"ApiKeysTable", "AccountsTable", "UsageTable", "RateLimitsTable", "UsageRollupsTable"}
MANAGED_PARAMETERS = {"ProxySubnetIds": "subnet-a,subnet-b,subnet-c", "ProxySecurityGroupIds": "sg-proxy"}


class _NoManagedPolicies:
    def load(self) -> dict[str, str]:
        return {}


def _compiled(tpl: dict, parameters: dict) -> dict:
    """What CloudFormation would create: the SAM transform, then conditions decided on `parameters`."""
    tpl = json.loads(json.dumps(tpl))
    for resource in tpl["Resources"].values():  # what `sam package` does: local code → S3
        props = resource.get("Properties") or {}
        for uri in ("CodeUri", "ContentUri"):
            if isinstance(props.get(uri), str):
                props[uri] = f"s3://onysoft-test-bucket/{props[uri]}"
    cfn = transform(tpl, dict(parameters), _NoManagedPolicies())
    created = {name: resource for name, resource in cfn["Resources"].items()
               if "Condition" not in resource or reader.condition_holds(cfn, resource["Condition"], parameters)}
    return {name: reader.decide(resource, cfn, parameters) for name, resource in created.items()}


def _of_type(resources: dict, resource_type: str) -> dict:
    return {name: r for name, r in resources.items() if r["Type"] == resource_type}


def _scaled_things(resources: dict) -> set[tuple[str, str | None]]:
    """(table, index or None) for every provisioned table and each of its indexes."""
    things = set()
    for name, table in _of_type(resources, TABLE).items():
        if table["Properties"]["BillingMode"] == "PROVISIONED":
            things.add((name, None))
            things |= {(name, g["IndexName"]) for g in table["Properties"].get("GlobalSecondaryIndexes", [])}
    return things


def capacity_problems(resources: dict, parameters: dict) -> list[str]:
    """Everything wrong with the provisioned tables' capacity and its auto scaling (empty: all of it holds)."""
    problems = []
    tables = _of_type(resources, TABLE)
    throughput = {"ReadCapacityUnits": int(parameters.get("TableMinReadCapacity", 5)),
                  "WriteCapacityUnits": int(parameters.get("TableMinWriteCapacity", 5))}
    for name in REQUEST_PATH_TABLES:
        props = tables[name]["Properties"]
        if props["BillingMode"] != "PROVISIONED":
            problems.append(f"{name} is {props['BillingMode']}")
            continue
        if props.get("ProvisionedThroughput") != throughput:
            problems.append(f"{name}: throughput {props.get('ProvisionedThroughput')}")
        for index in props.get("GlobalSecondaryIndexes", []):
            if index.get("ProvisionedThroughput") != throughput:
                problems.append(f"{name}/{index['IndexName']}: throughput {index.get('ProvisionedThroughput')}")
    targets, policies = _of_type(resources, TARGET), _of_type(resources, POLICY)
    target_value = int(parameters.get("TableTargetUtilization", 70))
    for table, index in sorted(_scaled_things(resources), key=str):
        resource_id = f"table/${{{table}}}" + (f"/index/{index}" if index else "")
        for unit in ("Write", "Read"):
            dimension = f"dynamodb:{'index' if index else 'table'}:{unit}CapacityUnits"
            found = [t for t, r in targets.items() if r["Properties"]["ResourceId"] == {"Fn::Sub": resource_id}
                     and r["Properties"]["ScalableDimension"] == dimension]
            if len(found) != 1:
                problems.append(f"{resource_id} {unit}: {len(found)} scalable targets")
                continue
            (target,) = found
            props = targets[target]["Properties"]
            bounds = (props["ServiceNamespace"], props["MinCapacity"], props["MaxCapacity"])
            wanted = ("dynamodb", int(parameters.get(f"TableMin{unit}Capacity", 5)),
                      int(parameters.get(f"TableMax{unit}Capacity", 10000)))
            if bounds != wanted or "RoleARN" in props:  # the service-linked role, never one of ours
                problems.append(f"{resource_id} {unit}: {bounds}, {props.get('RoleARN')}")
            own = [p["Properties"] for p in policies.values() if p["Properties"]["ScalingTargetId"] == {"Ref": target}]
            if len(own) != 1:
                problems.append(f"{resource_id} {unit}: {len(own)} policies")
                continue
            config = own[0].get("TargetTrackingScalingPolicyConfiguration") or {}
            if (own[0]["PolicyType"], config.get("TargetValue"), config.get("PredefinedMetricSpecification")) != (
                    "TargetTrackingScaling", target_value,
                    {"PredefinedMetricType": f"DynamoDB{unit}CapacityUtilization"}):
                problems.append(f"{resource_id} {unit}: policy {own[0]}")
    return problems


@pytest.fixture(scope="module")
def source() -> dict:
    return reader.load_template()


@pytest.fixture(scope="module")
def on_demand(source) -> dict:
    return _compiled(source, {})


@pytest.fixture(scope="module")
def provisioned(source) -> dict:
    return _compiled(source, PROVISIONED)


def test_the_parameter_defaults_to_on_demand(source):
    parameter = source["Parameters"]["TableCapacity"]
    assert parameter["Default"] == "on-demand" and parameter["AllowedValues"] == ["on-demand", "provisioned"]
    assert source["Parameters"]["TableTargetUtilization"]["Default"] == 70


def test_on_demand_is_every_table_pay_per_request_and_nothing_scaled(on_demand):
    tables = _of_type(on_demand, TABLE)
    assert set(tables) >= REQUEST_PATH_TABLES | {"CatalogTable"}
    for name, table in tables.items():
        props = table["Properties"]
        assert props["BillingMode"] == "PAY_PER_REQUEST", name
        assert "ProvisionedThroughput" not in props, name
        assert all("ProvisionedThroughput" not in g for g in props.get("GlobalSecondaryIndexes", [])), name
    assert not _of_type(on_demand, TARGET) and not _of_type(on_demand, POLICY)


def test_provisioned_scales_reads_and_writes_of_every_request_path_table_and_index(provisioned):
    assert capacity_problems(provisioned, PROVISIONED) == []
    # 5 tables and their 8 indexes, reads and writes: a target and a policy each.
    assert len(_scaled_things(provisioned)) == 13
    assert len(_of_type(provisioned, TARGET)) == len(_of_type(provisioned, POLICY)) == 26
    # The catalog takes no write on a request (a Scan per proxy environment a minute): it stays on-demand.
    assert _of_type(provisioned, TABLE)["CatalogTable"]["Properties"]["BillingMode"] == "PAY_PER_REQUEST"


def test_the_tables_the_request_path_writes_are_the_ones_provisioned(provisioned):
    # From the roles: what the proxy and the rollup may write is what must not be left on-demand.
    written = set()
    for role in ("ProxyFunctionRole", "RollupFunctionRole"):
        for policy in provisioned[role]["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                if {"dynamodb:PutItem", "dynamodb:UpdateItem"} & set(actions):
                    resources = statement["Resource"] if isinstance(statement["Resource"], list) else [
                        statement["Resource"]]
                    written |= {r["Fn::GetAtt"][0] for r in resources if "Fn::GetAtt" in r}
    assert written == REQUEST_PATH_TABLES
    assert {table for table, _ in _scaled_things(provisioned)} == REQUEST_PATH_TABLES


def test_the_bounds_and_target_are_the_parameters(source):
    chosen = {**PROVISIONED, "TableMinWriteCapacity": 300, "TableMaxWriteCapacity": 4000,
              "TableMinReadCapacity": 20, "TableMaxReadCapacity": 900, "TableTargetUtilization": 55}
    resources = _compiled(source, chosen)
    assert capacity_problems(resources, chosen) == []
    assert capacity_problems(resources, PROVISIONED)  # the defaults' figures do not fit these resources


@pytest.mark.parametrize("break_it", ["gsi without throughput", "no read policy", "table left on-demand",
                                      "policy on the wrong metric"])
def test_the_check_finds_a_missing_piece(provisioned, break_it):
    broken = copy.deepcopy(provisioned)
    if break_it == "gsi without throughput":
        del broken["UsageTable"]["Properties"]["GlobalSecondaryIndexes"][1]["ProvisionedThroughput"]
    elif break_it == "no read policy":
        del broken["UsageOpenHoldsReadCapacityScaling"]
    elif break_it == "table left on-demand":
        broken["RateLimitsTable"]["Properties"]["BillingMode"] = "PAY_PER_REQUEST"
    else:
        spec = broken["AccountsByNameWriteCapacityScaling"]["Properties"]["TargetTrackingScalingPolicyConfiguration"]
        spec["PredefinedMetricSpecification"]["PredefinedMetricType"] = "DynamoDBReadCapacityUtilization"
    assert capacity_problems(broken, PROVISIONED)


def test_table_capacity_is_independent_of_the_proxys_compute(source):
    managed = proxy_compute.variant(source, "managed-instances")
    assert managed["Parameters"]["TableCapacity"] == source["Parameters"]["TableCapacity"]
    both = _compiled(managed, {**MANAGED_PARAMETERS, **PROVISIONED})
    assert capacity_problems(both, PROVISIONED) == []
    assert both["ProxyFunction"]["Properties"]["CapacityProviderConfig"]
    alone = _compiled(managed, MANAGED_PARAMETERS)
    assert all(t["Properties"]["BillingMode"] == "PAY_PER_REQUEST" for t in _of_type(alone, TABLE).values())


def test_the_local_reader_creates_what_either_value_deploys(source):
    import boto3
    from moto import mock_aws

    names = {logical: f"cap-{logical}" for logical in reader.table_env(source)}
    with mock_aws():
        client = boto3.client("dynamodb", region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        reader.create_tables(client, source, names)  # the default: what `onysoft dev` runs on
        assert {client.describe_table(TableName=n)["Table"]["BillingModeSummary"]["BillingMode"]
                for n in names.values()} == {"PAY_PER_REQUEST"}
        definitions = reader.table_definitions(source, {k: f"p-{v}" for k, v in names.items()},
                                               {**PROVISIONED, "TableMinWriteCapacity": "7"})
        for definition in definitions:
            client.create_table(**definition)
            table = client.describe_table(TableName=definition["TableName"])["Table"]
            logical = definition["TableName"].removeprefix("p-cap-")
            if logical in REQUEST_PATH_TABLES:
                assert table["ProvisionedThroughput"]["WriteCapacityUnits"] == 7, logical
                assert all(g["ProvisionedThroughput"]["WriteCapacityUnits"] == 7
                           for g in table.get("GlobalSecondaryIndexes", [])), logical
            else:
                assert definition["BillingMode"] == "PAY_PER_REQUEST", logical


def test_the_reader_decides_conditions_as_cloudformation_does():
    tpl = {"Parameters": {"A": {"Type": "String", "Default": "x"}, "N": {"Type": "Number", "Default": 0}},
           "Conditions": {"IsX": {"Fn::Equals": [{"Ref": "A"}, "x"]},
                          "NoN": {"Fn::Equals": [{"Ref": "N"}, "0"]},
                          "Both": {"Fn::And": [{"Condition": "IsX"}, {"Fn::Not": [{"Condition": "NoN"}]}]},
                          "Either": {"Fn::Or": [{"Condition": "IsX"}, {"Condition": "NoN"}]}}}
    assert reader.condition_holds(tpl, "IsX") and reader.condition_holds(tpl, "NoN")  # "0" == 0, as CFN compares
    assert not reader.condition_holds(tpl, "Both") and reader.condition_holds(tpl, "Both", {"N": 3})
    assert not reader.condition_holds(tpl, "Either", {"A": "y", "N": 1})
    value = {"P": {"Fn::If": ["IsX", {"U": {"Ref": "N"}}, {"Ref": "AWS::NoValue"}]}, "L": [{"Ref": "AWS::NoValue"}, 1]}
    assert reader.decide(value, tpl) == {"P": {"U": 0}, "L": [1]}
    assert reader.decide(value, tpl, {"A": "y"}) == {"L": [1]}
    with pytest.raises(ValueError, match="cannot evaluate"):
        reader.condition_holds({"Conditions": {"C": {"Fn::Contains": []}}}, "C")
