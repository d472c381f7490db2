"""Each Lambda function's IAM permissions as SAM deploys them, and a check of recorded calls against them.

The roles come from the SAM transform itself (samtranslator, the library CloudFormation's transform runs):
inline statements and SAM policy templates (DynamoDBCrudPolicy…) are expanded exactly as deployed.
Intrinsics are resolved for a fake account and region: a table's ARN is
`arn:aws:dynamodb:us-east-1:123456789012:table/<LogicalId>`, which is also how onysoft_tools.iam_record
names the tables a call touched. Statements are evaluated like IAM for identity policies: an explicit Deny
wins, else an Allow whose Action and Resource patterns (`*`, `?`) match; NotAction, NotResource and
Condition are refused (the template has none; a check that ignored them could pass wrongly).

Two ways to fail (least privilege both ways):
- a recorded call no statement allows: AWS would answer AccessDenied;
- a granted (action, resource) no recorded call used: a permission the code does not need. A few are used
  only in AWS, where the suites cannot reach; they are listed in UNUSED_EXEMPT with the reason.

Tools only (needs aws-sam-translator, a test dependency).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REGION = "us-east-1"
ACCOUNT = "123456789012"
PARTITION = "aws"
SECRET_SUFFIX = "-AbCdEf"  # noqa: S105 - Secrets Manager appends 6 random characters to a secret's ARN

# (function, action, resource pattern as resolved) -> why no test can use it. Keep this short.
UNUSED_EXEMPT: dict[tuple[str, str, str], str] = {
    ("RollupFunction", "sqs:SendMessage", f"arn:{PARTITION}:sqs:{REGION}:{ACCOUNT}:RollupFailureQueue"):
        "Lambda's event source mapping sends a batch it gave up on to the on-failure queue with the function's "
        "role; no code of ours calls SQS, and locally the poller only retries",
    ("KeyMailFunction", "sqs:SendMessage", f"arn:{PARTITION}:sqs:{REGION}:{ACCOUNT}:KeyMailFailureQueue"):
        "Lambda's asynchronous invocation sends an event the function failed on to its on-failure destination with "
        "the function's role (issue 23); no code of ours calls SQS, and nothing is mailed locally",
}


@dataclass(frozen=True)
class Statement:
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    sid: str = ""


@dataclass(frozen=True)
class Call:
    function: str
    action: str
    resource: str  # an ARN, or "*"
    test: str = ""


# ---------------------------------------------------------------------------------------------- the roles


def sam_transform(template_path: str | Path | None = None, parameters: dict | None = None) -> dict:
    """template.yaml through the SAM transform, offline (what `sam deploy` would hand CloudFormation)."""
    import os

    from samtranslator.translator.transform import transform

    from onysoft_tools import template

    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)  # samtranslator's pseudo parameters need one
    tpl = template.load_template(template_path)
    for resource in tpl["Resources"].values():  # what `sam package` does: local code -> S3
        props = resource.get("Properties") or {}
        for uri in ("CodeUri", "ContentUri"):
            if isinstance(props.get(uri), str):
                props[uri] = f"s3://onysoft-iam-check/{props[uri]}"

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    return transform(tpl, dict(parameters or {}), NoManagedPolicies())


def resource_arn(cfn: dict, logical_id: str) -> str:
    """The fake ARN of a resource (GetAtt X.Arn)."""
    kind = (cfn["Resources"].get(logical_id) or {}).get("Type", "")
    if kind == "AWS::DynamoDB::Table":
        return f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/{logical_id}"
    if kind == "AWS::Events::EventBus":
        return f"arn:{PARTITION}:events:{REGION}:{ACCOUNT}:event-bus/{logical_id}"
    if kind == "AWS::Cognito::UserPool":
        return f"arn:{PARTITION}:cognito-idp:{REGION}:{ACCOUNT}:userpool/{logical_id}"
    service = kind.split("::")[1].lower() if kind.count("::") == 2 else "unknown"
    return f"arn:{PARTITION}:{service}:{REGION}:{ACCOUNT}:{logical_id}"


def _ref(cfn: dict, name: str) -> str:
    pseudo = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": PARTITION,
              "AWS::URLSuffix": "amazonaws.com", "AWS::StackName": "onysoft-test"}
    if name in pseudo:
        return pseudo[name]
    if name in (cfn.get("Parameters") or {}):
        return str(cfn["Parameters"][name].get("Default", name))
    return name  # a resource's Ref: a table's name is its logical id here


def resolve(value: Any, cfn: dict) -> Any:
    """Fn::Sub / Ref / GetAtt / Join resolved with the fake account; anything else must not occur."""
    if isinstance(value, list):
        return [resolve(v, cfn) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        return {k: resolve(v, cfn) for k, v in value.items()}
    (fn, arg), = value.items()
    if fn == "Ref":
        return _ref(cfn, arg)
    if fn == "Fn::GetAtt":
        logical_id, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
        if attribute != "Arn":
            raise ValueError(f"GetAtt {logical_id}.{attribute} in a policy: not modelled")
        return resource_arn(cfn, logical_id)
    if fn == "Fn::Join":
        separator, parts = arg
        return separator.join(str(resolve(p, cfn)) for p in parts)
    if fn == "Fn::Sub":
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        variables = {k: resolve(v, cfn) for k, v in variables.items()}

        def substitute(match: re.Match) -> str:
            name = match.group(1)
            if name in variables:
                return str(variables[name])
            if name.endswith(".Arn"):
                return resource_arn(cfn, name[:-4])
            return _ref(cfn, name)

        return re.sub(r"\$\{([^}!]+)\}", substitute, text)
    if fn.startswith("Fn::"):
        raise ValueError(f"{fn} in a policy: not modelled")
    return {k: resolve(v, cfn) for k, v in value.items()}


def _as_tuple(value: Any) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, list) else (value,)


def function_policies(cfn: dict) -> dict[str, list[Statement]]:
    """Every Lambda function's inline policy statements (resolved), by the function's logical id.
    The managed AWSLambdaBasicExecutionRole (CloudWatch Logs only) is not modelled: no code calls Logs."""
    policies: dict[str, list[Statement]] = {}
    for logical_id, resource in cfn["Resources"].items():
        if resource["Type"] != "AWS::Lambda::Function":
            continue
        role = resource["Properties"].get("Role")
        if not (isinstance(role, dict) and "Fn::GetAtt" in role):
            raise ValueError(f"{logical_id}: its role is not one of the template's")
        role_id = role["Fn::GetAtt"][0]
        statements: list[Statement] = []
        for policy in cfn["Resources"][role_id]["Properties"].get("Policies") or []:
            document_statements = policy["PolicyDocument"]["Statement"]
            for raw in document_statements if isinstance(document_statements, list) else [document_statements]:
                unsupported = {"NotAction", "NotResource", "Condition", "NotPrincipal"} & set(raw)
                if unsupported:
                    raise ValueError(f"{logical_id}: {sorted(unsupported)} in a statement is not modelled")
                statements.append(Statement(
                    effect=raw["Effect"], actions=_as_tuple(raw["Action"]),
                    resources=tuple(str(r) for r in _as_tuple(resolve(raw["Resource"], cfn))),
                    sid=raw.get("Sid", ""),
                ))
        policies[logical_id] = statements
    return policies


# ---------------------------------------------------------------------------------------------- evaluation


def _matches(pattern: str, value: str, *, case_sensitive: bool) -> bool:
    if not case_sensitive:
        pattern, value = pattern.lower(), value.lower()
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value) is not None


def allowed(statements: list[Statement], action: str, resource: str) -> bool:
    """IAM's identity-policy decision for one action on one resource: explicit Deny, else any Allow."""
    decision = False
    for st in statements:
        if not any(_matches(a, action, case_sensitive=False) for a in st.actions):
            continue
        if not any(_matches(r, resource, case_sensitive=True) for r in st.resources):
            continue
        if st.effect == "Deny":
            return False
        decision = decision or st.effect == "Allow"
    return decision


def call_from_record(record: dict) -> Call:
    """A recorded call (onysoft_tools.iam_record) with its resource as the fake ARN."""
    kind, name = record["kind"], record["resource"]
    if kind == "table":
        arn = f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/{name}"
    elif kind == "secret":
        arn = name if name.startswith("arn:") else \
            f"arn:{PARTITION}:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}{SECRET_SUFFIX}"
    elif kind == "event-bus":
        arn = f"arn:{PARTITION}:events:{REGION}:{ACCOUNT}:event-bus/{name}"
    elif kind == "userpool":
        arn = f"arn:{PARTITION}:cognito-idp:{REGION}:{ACCOUNT}:userpool/{name}"
    elif kind == "ses-identity":  # SES authorizes a send on the sender's address identity (or its domain's)
        arn = f"arn:{PARTITION}:ses:{REGION}:{ACCOUNT}:identity/{name}"
    else:
        arn = "*"
    return Call(record["function"], record["action"], arn, record.get("test", ""))


@dataclass
class Report:
    denied: list[Call]  # calls the function's role does not allow
    unused: list[tuple[str, str, str, str]]  # (function, sid, action, resource pattern) no call used
    unknown_functions: list[str]  # recorded under a name the template has no function for
    functions_without_calls: list[str]

    @property
    def ok(self) -> bool:
        return not (self.denied or self.unused or self.unknown_functions)

    def explain(self) -> str:
        lines = []
        for call in self.denied:
            lines.append(f"DENIED in AWS: {call.function} calls {call.action} on {call.resource}"
                         + (f" (first seen in {call.test})" if call.test else "")
                         + f" - its role has no statement allowing it; add it to {call.function}'s Policies")
        for function, sid, action, pattern in self.unused:
            lines.append(f"UNUSED: {function} is granted {action} on {pattern} (statement {sid or '-'}) but no "
                         f"test made that call - remove it, test the code path that needs it, or (only if "
                         f"it can run in AWS alone) exempt it in iam_policy.UNUSED_EXEMPT with the reason")
        for name in self.unknown_functions:
            lines.append(f"UNKNOWN FUNCTION: calls were recorded for {name}, which template.yaml does not define")
        return "\n".join(lines)


def check(cfn: dict, records: list[dict], *, check_unused: bool = True) -> Report:
    policies = function_policies(cfn)
    calls = {call_from_record(r) for r in records}
    by_key: dict[tuple[str, str, str], Call] = {}
    for call in sorted(calls, key=lambda c: (c.function, c.action, c.resource, c.test)):
        by_key.setdefault((call.function, call.action, call.resource), call)
    denied, unknown = [], set()
    for call in by_key.values():
        if call.function not in policies:
            unknown.add(call.function)
        elif not allowed(policies[call.function], call.action, call.resource):
            denied.append(call)
    unused = []
    if check_unused:
        for function, statements in sorted(policies.items()):
            used = [c for c in by_key.values() if c.function == function]
            for st in statements:
                if st.effect != "Allow":
                    continue
                for action in st.actions:
                    for pattern in st.resources:
                        if (function, action, pattern) in UNUSED_EXEMPT:
                            continue
                        if not any(_matches(action, c.action, case_sensitive=False)
                                   and _matches(pattern, c.resource, case_sensitive=True) for c in used):
                            unused.append((function, st.sid, action, pattern))
    called = {c.function for c in by_key.values()}
    return Report(denied=denied, unused=unused, unknown_functions=sorted(unknown),
                  functions_without_calls=sorted(set(policies) - called))


def main(argv: list[str] | None = None) -> int:
    """`python -m onysoft_tools.iam_policy <record dir>`: check records kept from an earlier test run."""
    import argparse

    from onysoft_tools import iam_record

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record_dir")
    parser.add_argument("--template", default=None)
    args = parser.parse_args(argv)
    records = iam_record.read_records(args.record_dir)
    if not records:
        print(f"no calls recorded in {args.record_dir}: run the suites with ONYSOFT_IAM_RECORD set to it")
        return 2
    report = check(sam_transform(args.template), records)
    print(report.explain() or "every recorded call is allowed and every permission was used")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
