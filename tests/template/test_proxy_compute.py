"""ProxyCompute: template.yaml (lambda) and its generated managed-instances variant, each through the SAM
translator and cfn-lint (tools/onysoft_tools/proxy_compute.py says why the variant is generated)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from samtranslator.translator.transform import transform

from onysoft_tools import proxy_compute
from onysoft_tools import template as reader

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
MANAGED_PARAMETERS = {"ProxySubnetIds": "subnet-a,subnet-b,subnet-c", "ProxySecurityGroupIds": "sg-proxy"}


class _NoManagedPolicies:
    def load(self) -> dict[str, str]:
        return {}


def _packaged(tpl: dict) -> dict:
    """What `sam package` hands CloudFormation: local code → S3 (a deep copy: the translator edits its input)."""
    tpl = json.loads(json.dumps(tpl))
    for resource in tpl["Resources"].values():
        props = resource.get("Properties") or {}
        for uri in ("CodeUri", "ContentUri"):
            if isinstance(props.get(uri), str):
                props[uri] = f"s3://onysoft-test-bucket/{props[uri]}"
    return tpl


@pytest.fixture(scope="module")
def source() -> dict:
    return reader.load_template(ROOT / "template.yaml")


@pytest.fixture(scope="module")
def on_lambda(source) -> dict:
    return transform(_packaged(proxy_compute.variant(source, "lambda")), {}, _NoManagedPolicies())


@pytest.fixture(scope="module")
def on_managed(source) -> dict:
    return transform(_packaged(proxy_compute.variant(source, "managed-instances")), MANAGED_PARAMETERS,
                     _NoManagedPolicies())


def _stream_uris(cfn: dict) -> set[str]:
    body = cfn["Resources"]["GatewayApi"]["Properties"]["Body"]
    return {op["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"] for path, ops in body["paths"].items()
            if path.startswith("/v1/") for op in ops.values() if isinstance(op, dict)}


def test_the_default_is_lambda_scale_to_zero(source, on_lambda):
    assert source["Parameters"]["ProxyCompute"]["Default"] == "lambda"
    assert source["Parameters"]["ProxyCompute"]["AllowedValues"] == ["lambda", "managed-instances"]
    proxy = on_lambda["Resources"]["ProxyFunction"]["Properties"]
    assert "CapacityProviderConfig" not in proxy and "FunctionScalingConfig" not in proxy
    assert proxy["MemorySize"] == 512 and proxy["Architectures"] == ["arm64"]
    assert "ReservedConcurrentExecutions" in proxy
    # One request per environment at a time: the DynamoDB calls need no thread hop (onysoft.blocking).
    assert proxy["Environment"]["Variables"]["ONYSOFT_BLOCKING_CALLS"] == "inline"
    # No instance runs unless managed-instances is chosen: the capacity provider is conditional.
    assert on_lambda["Resources"]["ProxyCapacityProvider"]["Condition"] == "ManagedProxy"
    assert not any(v["Type"] == "AWS::Lambda::Alias" for v in on_lambda["Resources"].values())
    assert all("${ProxyFunction.Arn}" in uri for uri in _stream_uris(on_lambda))


def test_template_yaml_refuses_managed_instances_with_a_pointer_to_the_variant(source, on_lambda):
    rule = on_lambda["Rules"]["ProxyComputeOfThisTemplate"]["Assertions"][0]
    assert rule["Assert"] == {"Fn::Equals": [{"Ref": "ProxyCompute"}, "lambda"]}
    assert "PROXY_COMPUTE=managed-instances" in rule["AssertDescription"]


def test_managed_instances_puts_the_proxy_on_the_capacity_provider(on_managed):
    resources = on_managed["Resources"]
    proxy = resources["ProxyFunction"]
    config = proxy["Properties"]["CapacityProviderConfig"]["LambdaManagedInstancesCapacityProviderConfig"]
    provider = resources["ProxyCapacityProvider"]
    assert provider["Type"] == "AWS::Lambda::CapacityProvider" and "Condition" not in provider
    name = provider["Properties"]["CapacityProviderName"]["Fn::Sub"]
    assert config["CapacityProviderArn"]["Fn::Sub"].endswith(f":capacity-provider:{name}")
    assert "ProxyCapacityProvider" in proxy["DependsOn"]
    assert config["PerExecutionEnvironmentMaxConcurrency"] == {"Ref": "ProxyConcurrencyPerEnvironment"}
    assert config["ExecutionEnvironmentMemoryGiBPerVCpu"] == 2.0
    assert proxy["Properties"]["FunctionScalingConfig"] == {
        "MinExecutionEnvironments": {"Ref": "ProxyMinExecutionEnvironments"},
        "MaxExecutionEnvironments": {"Ref": "ProxyMaxExecutionEnvironments"}}
    assert proxy["Properties"]["MemorySize"] == 2048
    # Many requests in one process: the DynamoDB calls in the pool, never on the event loop.
    assert proxy["Properties"]["Environment"]["Variables"]["ONYSOFT_BLOCKING_CALLS"] == "pool"
    assert "ReservedConcurrentExecutions" not in proxy["Properties"]
    # Managed instances run published versions: every /v1 route streams to the alias, not to $LATEST.
    assert any(v["Type"] == "AWS::Lambda::Alias" for v in resources.values())
    uris = _stream_uris(on_managed)
    assert uris and all("${ProxyFunctionAliaslive}/response-streaming-invocations" in uri for uri in uris)
    assert "Rules" not in on_managed or "ProxyComputeOfThisTemplate" not in on_managed["Rules"]


def test_the_capacity_provider_is_graviton_in_the_given_vpc_with_parameter_bounds(on_managed):
    props = on_managed["Resources"]["ProxyCapacityProvider"]["Properties"]
    assert props["InstanceRequirements"]["Architectures"] == ["arm64"]
    assert props["VpcConfig"] == {"SubnetIds": {"Ref": "ProxySubnetIds"},
                                  "SecurityGroupIds": {"Ref": "ProxySecurityGroupIds"}}
    scaling = props["CapacityProviderScalingConfig"]
    assert scaling["MaxVCpuCount"] == {"Ref": "ProxyMaxVCpuCount"}
    assert scaling["ScalingPolicies"][0]["TargetValue"] == {"Ref": "ProxyTargetCpuUtilization"}
    # SAM made the role Lambda manages the instances with.
    assert on_managed["Resources"]["ProxyCapacityProviderOperatorRole"]["Type"] == "AWS::IAM::Role"


def test_every_other_function_is_the_same_in_both(on_lambda, on_managed):
    for name, resource in on_lambda["Resources"].items():
        if resource["Type"] == "AWS::Lambda::Function" and name != "ProxyFunction":
            assert on_managed["Resources"][name] == resource, name


def test_an_unknown_compute_is_refused(source):
    with pytest.raises(ValueError, match="managed-instances"):
        proxy_compute.variant(source, "fargate")


def test_the_variant_lints_cleanly(tmp_path):
    out = proxy_compute.write("managed-instances", tmp_path / "template.managed.json")
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    command = [str(cfn_lint)] if cfn_lint.exists() else [sys.executable, "-m", "cfnlint"]
    result = subprocess.run([*command, str(out)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr  # no errors, no warnings
