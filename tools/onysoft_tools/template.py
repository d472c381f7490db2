"""The one reader of template.yaml for local tools: tables, routes, authorizer settings, gateway responses.

The local gateway (`onysoft dev`) and the tests build everything from what this module reads, so the
deployment and the local run cannot drift: there is no second copy of the schema or the routes.
YAML is read by PyYAML with the SAM translator's intrinsic-tag constructor: tools only, never in Lambda
(cfn-lint's loader reads the same, but importing cfn-lint costs ~1 s of CPU per process: measured).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from samtranslator.yaml_helper import intrinsics_multi_constructor

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "template.yaml"
TEMPLATE_ENV_VAR = "ONYSOFT_TEMPLATE"

TABLE_TYPE = "AWS::DynamoDB::Table"
FUNCTION_TYPE = "AWS::Serverless::Function"
API_TYPE = "AWS::Serverless::Api"

# API Gateway's own answer when a REQUEST authorizer sets no ReauthorizeEvery.
DEFAULT_AUTHORIZER_TTL = 300
# Status used for DEFAULT_4XX/DEFAULT_5XX when the template leaves it to the specific error.
_FALLBACK_STATUS = {"DEFAULT_4XX": 400, "DEFAULT_5XX": 500}


# ---------------------------------------------------------------------------------------------- loading


class _CfnLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with the SAM translator's reading of CloudFormation's short tags (the one `sam`
    itself uses): `!Ref X` → `{"Ref": "X"}`, `!GetAtt A.B` → `{"Fn::GetAtt": ["A", "B"]}`, `!Sub …` →
    `{"Fn::Sub": …}`. A subclass, so yaml.SafeLoader itself is left as it is."""


_CfnLoader.add_multi_constructor("!", intrinsics_multi_constructor)
# CloudFormation has no YAML timestamps: `2012-10-17` stays a string (as cfn-lint and CloudFormation read it).
_CfnLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def template_path() -> Path:
    """template.yaml at the repository root, or the file named by $ONYSOFT_TEMPLATE."""
    override = os.environ.get(TEMPLATE_ENV_VAR)
    return Path(override) if override else TEMPLATE_PATH


def load_template(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The template as a dict, short tags in their long forms (`!Ref X` → `{"Ref": "X"}`)."""
    text = Path(path or template_path()).read_text(encoding="utf-8")
    return yaml.load(text, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass


@cache
def _default_template() -> dict[str, Any]:
    return load_template()


def _resources(tpl: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource
        for logical_id, resource in (tpl.get("Resources") or {}).items()
        if resource.get("Type") == resource_type
    }


def resolve(value: Any, tpl: dict[str, Any], parameters: dict[str, Any] | None = None) -> Any:
    """A value with `{"Ref": <parameter>}` resolved to the given override or the parameter's Default."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        name = value["Ref"]
        if parameters and name in parameters:
            return parameters[name]
        declared = (tpl.get("Parameters") or {}).get(name)
        if declared is None or "Default" not in declared:
            raise KeyError(f"template value {value!r} has no parameter default to resolve to")
        return declared["Default"]
    return value


_NO_VALUE = {"Ref": "AWS::NoValue"}


def condition_holds(tpl: dict[str, Any], name: str, parameters: dict[str, Any] | None = None) -> bool:
    """A condition of the template's Conditions, on the parameters' defaults (or the given overrides)."""
    def holds(expr: Any) -> bool:
        if isinstance(expr, dict) and len(expr) == 1:
            (fn, args), = expr.items()
            if fn == "Condition":
                return holds(tpl["Conditions"][args])
            if fn == "Fn::Not":
                return not holds(args[0])
            if fn == "Fn::And":
                return all(holds(a) for a in args)
            if fn == "Fn::Or":
                return any(holds(a) for a in args)
            if fn == "Fn::Equals":
                left, right = (resolve(a, tpl, parameters) for a in args)
                return str(left) == str(right)
        raise ValueError(f"condition {name!r}: cannot evaluate {expr!r} locally")

    return holds(tpl["Conditions"][name])


def decide(value: Any, tpl: dict[str, Any], parameters: dict[str, Any] | None = None) -> Any:
    """`value` with each `Fn::If` replaced by its chosen branch (conditions on the parameters' defaults or the
    overrides), `AWS::NoValue` dropped and parameter `Ref`s resolved: what CloudFormation would create."""
    if isinstance(value, list):
        return [decide(v, tpl, parameters) for v in value if v != _NO_VALUE]
    if not isinstance(value, dict):
        return value
    if set(value) == {"Fn::If"}:
        condition, yes, no = value["Fn::If"]
        return decide(yes if condition_holds(tpl, condition, parameters) else no, tpl, parameters)
    if set(value) == {"Ref"} and value["Ref"] in (tpl.get("Parameters") or {}):
        return resolve(value, tpl, parameters)
    decided = {k: decide(v, tpl, parameters) for k, v in value.items()}
    return {k: v for k, v in decided.items() if v != _NO_VALUE}


# ---------------------------------------------------------------------------------------------- tables


def table_env(tpl: dict[str, Any] | None = None) -> dict[str, str]:
    """{table logical id: environment variable} from the Globals' `NAME: !Ref SomeTable` entries."""
    tpl = tpl if tpl is not None else _default_template()
    tables = _resources(tpl, TABLE_TYPE)
    function_globals = (tpl.get("Globals") or {}).get("Function") or {}
    variables = (function_globals.get("Environment") or {}).get("Variables") or {}
    env = {}
    for name, value in variables.items():
        if isinstance(value, dict) and value.get("Ref") in tables:
            env[value["Ref"]] = name
    return env


def event_bus_env(tpl: dict[str, Any] | None = None) -> dict[str, str]:
    """{event bus logical id: environment variable} from the Globals' `NAME: !Ref SomeBus` entries."""
    tpl = tpl if tpl is not None else _default_template()
    buses = _resources(tpl, "AWS::Events::EventBus")
    variables = ((((tpl.get("Globals") or {}).get("Function") or {}).get("Environment") or {}).get("Variables")) or {}
    return {value["Ref"]: name for name, value in variables.items()
            if isinstance(value, dict) and value.get("Ref") in buses}


def __getattr__(name: str) -> Any:
    # TABLE_ENV is read from the template on first use (module import stays free of file I/O).
    if name == "TABLE_ENV":
        return table_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def table_definitions(tpl: dict[str, Any], names: dict[str, str],
                      parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """boto3 `create_table` keyword arguments for every table; `names` maps logical id → TableName. The tables
    as the parameters' defaults (or `parameters`) make them: TableCapacity's `!If`s decided."""
    definitions = []
    for logical_id, resource in _resources(tpl, TABLE_TYPE).items():
        if logical_id not in names:
            raise KeyError(f"no table name given for {logical_id}")
        props = decide(resource.get("Properties") or {}, tpl, parameters)
        definition: dict[str, Any] = {
            "TableName": names[logical_id],
            "AttributeDefinitions": [dict(a) for a in props["AttributeDefinitions"]],
            "KeySchema": [dict(k) for k in props["KeySchema"]],
            "BillingMode": props.get("BillingMode", "PROVISIONED"),
        }
        stream = props.get("StreamSpecification")
        if stream:
            definition["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
        if definition["BillingMode"] == "PROVISIONED":
            definition["ProvisionedThroughput"] = _units(props["ProvisionedThroughput"])
        for index_kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
            indexes = props.get(index_kind)
            if indexes:
                definition[index_kind] = [
                    {key: _units(value) if key == "ProvisionedThroughput" else value
                     for key, value in index.items() if key in _INDEX_KEYS} for index in indexes
                ]
        definitions.append(definition)
    return definitions


def _units(throughput: dict[str, Any]) -> dict[str, int]:
    return {name: int(units) for name, units in throughput.items()}  # a parameter override may be a string


_INDEX_KEYS = {"IndexName", "KeySchema", "Projection", "ProvisionedThroughput", "OnDemandThroughput"}


def ttl_attribute(tpl: dict[str, Any], logical_id: str) -> str | None:
    """The table's enabled TTL attribute, or None."""
    props = (tpl.get("Resources") or {}).get(logical_id, {}).get("Properties") or {}
    spec = props.get("TimeToLiveSpecification") or {}
    return spec.get("AttributeName") if spec.get("Enabled") else None


def _enable_stream(client: Any, definition: dict[str, Any]) -> None:
    wanted = definition.get("StreamSpecification")
    if not wanted:
        return
    current = client.describe_table(TableName=definition["TableName"])["Table"].get("StreamSpecification") or {}
    if not current.get("StreamEnabled"):
        client.update_table(TableName=definition["TableName"], StreamSpecification=wanted)


def create_tables(client: Any, tpl: dict[str, Any], names: dict[str, str]) -> list[str]:
    """Create every table (and its TTL) with a boto3 DynamoDB client; existing tables are kept.

    Returns the names of the tables created now.
    """
    created = []
    logical_by_name = {name: logical for logical, name in names.items()}
    for definition in table_definitions(tpl, names):
        try:
            client.create_table(**definition)
        except client.exceptions.ResourceInUseException:
            _enable_stream(client, definition)  # a table made before the template gave it a stream
            _enable_ttl(client, definition["TableName"], ttl_attribute(tpl, logical_by_name[definition["TableName"]]))
            continue
        table = definition["TableName"]
        client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        _enable_ttl(client, table, ttl_attribute(tpl, logical_by_name[table]))
        created.append(table)
    return created


def _enable_ttl(client: Any, table: str, attribute: str | None) -> None:
    """The table's TTL as the template says (also on a table made before the template gave it one)."""
    if not attribute:
        return
    current = client.describe_time_to_live(TableName=table).get("TimeToLiveDescription") or {}
    if current.get("TimeToLiveStatus") in ("ENABLED", "ENABLING") and current.get("AttributeName") == attribute:
        return
    client.update_time_to_live(TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute})


# ---------------------------------------------------------------------------------------------- API


@dataclass(frozen=True)
class Route:
    method: str  # upper case: GET, POST…
    path: str  # API Gateway form, without the stage: /v1/key
    function: str  # logical id of the Lambda function
    authorizer: str | None  # authorizer name, None = open
    streaming: bool  # integration responseTransferMode STREAM


@dataclass(frozen=True)
class AuthorizerSettings:
    name: str
    function: str
    identity_header: str | None = "Authorization"  # None: no identity source (then no cache: ttl_seconds 0)
    ttl_seconds: int = DEFAULT_AUTHORIZER_TTL


@dataclass(frozen=True)
class CognitoAuthorizerSettings:
    """A Cognito user pool authorizer: API Gateway checks the pool's ID token itself (no function)."""

    name: str
    user_pool: str  # logical id of the AWS::Cognito::UserPool
    identity_header: str = "Authorization"


@dataclass(frozen=True)
class GatewayResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    template: str = ""


def _api(tpl: dict[str, Any], api_id: str | None = None) -> tuple[str, dict[str, Any]]:
    apis = _resources(tpl, API_TYPE)
    if api_id is not None:
        return api_id, apis[api_id]
    if len(apis) != 1:
        raise ValueError(f"expected exactly one {API_TYPE}, found {sorted(apis)}")
    return next(iter(apis.items()))


def _ref_target(value: Any) -> str | None:
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            return value["Fn::GetAtt"][0]
    return None


def _authorizer_name(name: Any) -> str | None:
    return None if name in (None, "NONE") else str(name)


def routes(tpl: dict[str, Any]) -> list[Route]:
    """Every Api event of every function, sorted by path then method."""
    apis = _resources(tpl, API_TYPE)
    found = []
    for function_id, resource in _resources(tpl, FUNCTION_TYPE).items():
        for event in ((resource.get("Properties") or {}).get("Events") or {}).values():
            if event.get("Type") != "Api":
                continue
            props = event.get("Properties") or {}
            api = apis.get(_ref_target(props.get("RestApiId")) or "") or {}
            api_auth = (api.get("Properties") or {}).get("Auth") or {}
            event_auth = props.get("Auth") or {}
            authorizer = event_auth.get("Authorizer", api_auth.get("DefaultAuthorizer"))
            found.append(Route(
                method=str(props["Method"]).upper(), path=str(props["Path"]), function=function_id,
                authorizer=_authorizer_name(authorizer),
                streaming=props.get("ResponseTransferMode") == "RESPONSE_STREAM",
            ))
    return sorted(found, key=lambda route: (route.path, route.method))


def authorizer_settings(
    tpl: dict[str, Any], parameters: dict[str, Any] | None = None, *, name: str | None = None
) -> AuthorizerSettings:
    """The API's Lambda authorizer (its default one unless `name` is given), `!Ref`s resolved via `parameters`.
    A Cognito authorizer has no function: see cognito_authorizer."""
    _, api = _api(tpl)
    auth = (api.get("Properties") or {}).get("Auth") or {}
    authorizers = auth.get("Authorizers") or {}
    name = name or _authorizer_name(auth.get("DefaultAuthorizer"))
    if name is None:
        if len(authorizers) != 1:
            raise ValueError("the API has no default authorizer; pass `name`")
        name = next(iter(authorizers))
    config = authorizers[name]
    if "UserPoolArn" in config:
        raise ValueError(f"{name} is a Cognito authorizer: use cognito_authorizer()")
    identity = config.get("Identity") or {}
    headers = identity.get("Headers") or []
    ttl = resolve(identity.get("ReauthorizeEvery", DEFAULT_AUTHORIZER_TTL), tpl, parameters)
    if len(headers) > 1 or any(identity.get(k) for k in ("QueryStrings", "StageVariables", "Context")):
        raise ValueError(f"{name}: only one identity header, or none, is modelled locally")
    if not headers and int(ttl) != 0:
        raise ValueError(f"{name}: an authorizer without identity sources cannot cache (ReauthorizeEvery must be 0)")
    return AuthorizerSettings(
        name=name, function=_ref_target(config.get("FunctionArn")) or "",
        identity_header=str(headers[0]) if headers else None, ttl_seconds=int(ttl),
    )


def authorizer_type(tpl: dict[str, Any], name: str) -> str:
    """'cognito' for a user pool authorizer (UserPoolArn), 'lambda' for a function authorizer."""
    _, api = _api(tpl)
    config = (((api.get("Properties") or {}).get("Auth") or {}).get("Authorizers") or {})[name]
    return "cognito" if "UserPoolArn" in config else "lambda"


def cognito_authorizer(tpl: dict[str, Any], name: str | None = None) -> CognitoAuthorizerSettings:
    """The API's Cognito user pool authorizer (the only one, unless `name` says which)."""
    _, api = _api(tpl)
    authorizers = (((api.get("Properties") or {}).get("Auth") or {}).get("Authorizers") or {})
    cognito = {n: c for n, c in authorizers.items() if "UserPoolArn" in c}
    if name is None:
        if len(cognito) != 1:
            raise ValueError(f"expected one Cognito authorizer, found {sorted(cognito)}; pass `name`")
        name = next(iter(cognito))
    config = cognito[name]
    identity = config.get("Identity") or {}
    return CognitoAuthorizerSettings(
        name=name, user_pool=_ref_target(config["UserPoolArn"]) or "",
        identity_header=str(identity.get("Header") or "Authorization"),
    )


def stage_name(tpl: dict[str, Any], parameters: dict[str, Any] | None = None) -> str:
    _, api = _api(tpl)
    return str(resolve((api.get("Properties") or {}).get("StageName"), tpl, parameters))


def gateway_responses(tpl: dict[str, Any]) -> dict[str, GatewayResponse]:
    """{response type: GatewayResponse}; header values unquoted, the application/json template as is.

    DEFAULT_4XX/DEFAULT_5XX may leave the status to the specific error API Gateway hit; their `status`
    is then 400/500, and a caller that knows the specific status passes it to render_gateway_response.
    """
    _, api = _api(tpl)
    found = {}
    for response_type, config in ((api.get("Properties") or {}).get("GatewayResponses") or {}).items():
        headers = ((config.get("ResponseParameters") or {}).get("Headers")) or {}
        status = config.get("StatusCode", _FALLBACK_STATUS.get(response_type, 500))
        found[response_type] = GatewayResponse(
            status=int(status),
            headers={name: _unquote(str(value)) for name, value in headers.items()},
            template=str((config.get("ResponseTemplates") or {}).get("application/json", "")),
        )
    return found


def _unquote(value: str) -> str:
    # A static gateway-response header value is written as a quoted literal: "'application/json'".
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == "'" else value


_CONTEXT_VARIABLE = re.compile(
    r"\$(?:\{context\.(?P<braced>[A-Za-z_.]+)\}|context\.(?P<plain>error\.messageString|error\.message"
    r"|httpMethod|path|requestId|authorizer\.[A-Za-z_][A-Za-z0-9_]*))"
)


def render_gateway_response(
    resp: GatewayResponse, *, message: str, http_method: str, path: str, request_id: str,
    status: int | None = None, authorizer: dict[str, Any] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) as API Gateway would answer with this gateway response.

    `$context.error.messageString` becomes the message as a quoted JSON string, `$context.error.message`
    the raw message; `$context.httpMethod`, `$context.path` and `$context.requestId` their values;
    `$context.authorizer.<key>` the value of that key in the context a Lambda authorizer returned (as is, not
    escaped; empty when absent). Other variables stay as written (VTL renders unknown references literally).
    `status` overrides resp.status.
    """
    values = {
        "error.messageString": json.dumps(message, ensure_ascii=False),
        "error.message": message,
        "httpMethod": http_method,
        "path": path,
        "requestId": request_id,
    }

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        if name.startswith("authorizer."):
            return str((authorizer or {}).get(name.removeprefix("authorizer."), ""))
        return values.get(name, match.group(0))

    body = _CONTEXT_VARIABLE.sub(substitute, resp.template)
    return (status if status is not None else resp.status), dict(resp.headers), body.encode("utf-8")
