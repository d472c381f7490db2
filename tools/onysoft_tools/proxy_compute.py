"""template.managed.json: template.yaml with the proxy on Lambda Managed Instances (ProxyCompute=managed-instances).

Why a generated variant and not a condition in template.yaml: the SAM translator refuses an `!If` on a function's
CapacityProviderConfig (its validation wants `Arn` and rejects `Fn::If`), and a function's compute type is fixed
when it is created. So template.yaml deploys `lambda` only (its Rules say so) and holds everything else the
option needs (the parameters, the conditional ProxyCapacityProvider); this module adds the function's side.
`make build PROXY_COMPUTE=managed-instances` runs it, then builds the variant.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from onysoft_tools import template

LAMBDA, MANAGED = "lambda", "managed-instances"
OUTPUT = Path(__file__).resolve().parents[2] / "template.managed.json"
ALIAS = "live"  # managed instances run published versions only: API Gateway invokes this alias
MEMORY_MB = 2048  # one execution environment: 1 vCPU at 2 GB per vCPU (the smallest ratio, compute instances)
GIB_PER_VCPU = 2.0


def variant(tpl: dict[str, Any], compute: str) -> dict[str, Any]:
    """The template for one ProxyCompute value (template.yaml's own dict, long-form intrinsics)."""
    if compute == LAMBDA:
        return tpl
    if compute != MANAGED:
        raise ValueError(f"ProxyCompute is {LAMBDA} or {MANAGED}, not {compute!r}")
    out = copy.deepcopy(tpl)
    out["Parameters"]["ProxyCompute"].update(Default=MANAGED, AllowedValues=[MANAGED])
    rules = out.get("Rules") or {}
    rules.pop("ProxyComputeOfThisTemplate", None)
    if not rules:
        out.pop("Rules", None)
    out["Resources"]["ProxyCapacityProvider"].pop("Condition", None)  # always there in this variant
    output = out["Outputs"]["ProxyComputeMode"]
    output["Value"] = output["Value"]["Fn::If"][1]
    proxy = out["Resources"]["ProxyFunction"]
    props = proxy["Properties"]
    # Concurrency is bounded by environments × requests per environment, not by a reservation.
    props.pop("ReservedConcurrentExecutions", None)
    for condition in ("CapProxy", "ManagedProxy"):  # both always decided in this variant
        out["Conditions"].pop(condition)
    out["Parameters"].pop("ProxyReservedConcurrency", None)
    # The ARN from the provider's name, not !GetAtt: cfn-lint's schema has no attributes for
    # AWS::Lambda::CapacityProvider yet (E1010). Its format: the Lambda API's CapacityProviderArn pattern.
    proxy["DependsOn"] = sorted({*_as_list(proxy.get("DependsOn")), "ProxyCapacityProvider"})
    props["MemorySize"] = MEMORY_MB
    # Many requests in one process: the blocking calls on the thread pool, never on the event loop (onysoft.blocking).
    props["Environment"]["Variables"]["ONYSOFT_BLOCKING_CALLS"] = "pool"
    props["AutoPublishAlias"] = ALIAS
    props["CapacityProviderConfig"] = {
        "Arn": {"Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:capacity-provider:"
                           "${AWS::StackName}-proxy"},
        "ExecutionEnvironmentMemoryGiBPerVCpu": GIB_PER_VCPU,
        "PerExecutionEnvironmentMaxConcurrency": {"Ref": "ProxyConcurrencyPerEnvironment"},
    }
    props["FunctionScalingConfig"] = {
        "MinExecutionEnvironments": {"Ref": "ProxyMinExecutionEnvironments"},
        "MaxExecutionEnvironments": {"Ref": "ProxyMaxExecutionEnvironments"},
    }
    return out


def _as_list(value: Any) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def write(compute: str, path: Path = OUTPUT) -> Path:
    path.write_text(json.dumps(variant(template.load_template(), compute), indent=1) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compute", choices=[LAMBDA, MANAGED])
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    print(write(args.compute, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
