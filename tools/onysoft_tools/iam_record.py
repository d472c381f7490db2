"""Record every AWS call each Lambda function makes while the tests run, for the IAM conformance check.

moto does not enforce IAM, so a missing permission passes every local test and fails in AWS. This module
hooks botocore (every session, PynamoDB's thread-local ones included) and, while a function's handler is
running, appends what IAM would evaluate for each call: the function's logical id, the IAM action and the
resource (a table or index by its logical id, a secret by name). onysoft_tools.iam_policy checks those
records against the template's roles (tests/test_iam_conformance.py).

Who is running: `attributed(target, logical_id)` wraps a Lambda handler or an ASGI app so every call made
while it runs (threads started through anyio/starlette copy the context) is that function's. Calls made
outside any handler (test setup, the CLI, `onysoft dev`'s seed) are not a function's and are not recorded.

Recording is on when ONYSOFT_IAM_RECORD names a directory (tests set it; the local gateway inherits it);
each process writes `calls-<pid>.jsonl` there, one line per distinct (function, action, resource).
Never imported in Lambda: tools only.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ENV_VAR = "ONYSOFT_IAM_RECORD"

_function: contextvars.ContextVar[str | None] = contextvars.ContextVar("onysoft_iam_function", default=None)
_lock = threading.Lock()
_seen: set[tuple[str, str, str, str]] = set()
_directory: Path | None = None

# DynamoDB operations that IAM authorizes per item: the transaction's or batch's items name their tables.
_TRANSACT_ITEM_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                          "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}


def directory() -> Path | None:
    return _directory


def install(record_dir: str | os.PathLike[str] | None = None) -> bool:
    """Start recording into `record_dir` (default: $ONYSOFT_IAM_RECORD). False when neither is set.
    Idempotent. Call it before the first boto3/PynamoDB client is made (sessions made earlier are hooked
    too when they are boto3's default session)."""
    global _directory
    target = record_dir or os.environ.get(ENV_VAR)
    if not target:
        return False
    _directory = Path(target)
    _directory.mkdir(parents=True, exist_ok=True)
    from botocore import handlers

    entry = ("before-parameter-build", _on_call)
    if entry not in handlers.BUILTIN_HANDLERS:
        # Every botocore Session registers BUILTIN_HANDLERS when it is made: this reaches PynamoDB's
        # per-thread sessions and boto3's without touching their code.
        handlers.BUILTIN_HANDLERS.append(entry)
        try:
            import boto3

            if boto3.DEFAULT_SESSION is not None:
                boto3.DEFAULT_SESSION._session.register(*entry)
        except ImportError:  # pragma: no cover - boto3 is a dependency
            pass
    return True


def recording() -> bool:
    return _directory is not None


def current_function() -> str | None:
    return _function.get()


class function_scope:  # noqa: N801 - used as a context manager, reads like one
    """Calls made inside are `logical_id`'s (a handler's body)."""

    def __init__(self, logical_id: str):
        self.logical_id = logical_id
        self._token: contextvars.Token | None = None

    def __enter__(self) -> function_scope:
        self._token = _function.set(self.logical_id)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _function.reset(self._token)


def attributed(target: Callable, logical_id: str) -> Callable:
    """`target` (a Lambda handler or an ASGI app) wrapped so the AWS calls it makes are `logical_id`'s.
    Returned as is when nothing records (no cost outside the tests)."""
    if not recording():
        return target
    if inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(type(target).__call__):
        async def asgi(scope, receive, send):
            with function_scope(logical_id):
                return await target(scope, receive, send)

        return asgi

    @functools.wraps(target)
    def handler(*args, **kwargs):
        with function_scope(logical_id):
            return target(*args, **kwargs)

    return handler


def function_of_code(code_uri: str) -> str:
    """The logical id of the template's function whose CodeUri is `code_uri` (e.g. functions/sweeper)."""
    from onysoft_tools import template

    tpl = template.load_template()
    for logical_id, resource in (tpl.get("Resources") or {}).items():
        if resource.get("Type") == template.FUNCTION_TYPE and \
                str((resource.get("Properties") or {}).get("CodeUri", "")).rstrip("/") == code_uri.rstrip("/"):
            return logical_id
    raise KeyError(f"template.yaml has no function with CodeUri {code_uri}")


# ---------------------------------------------------------------------------------------------- the hook


def _table_logical_ids() -> dict[str, str]:
    """Table name in this process's environment -> the template's logical id."""
    from onysoft import config
    from onysoft_tools import template

    return {config.table_name(env_var): logical_id for logical_id, env_var in template.TABLE_ENV.items()}


def _bus_logical_ids() -> dict[str, str]:
    """Event bus name in this process's environment -> the template's logical id (Globals' `VAR: !Ref Bus`)."""
    from onysoft_tools import template

    return {os.environ[var]: logical_id for logical_id, var in template.event_bus_env().items() if os.environ.get(var)}


_STREAM_OPERATIONS = {"ListStreams", "DescribeStream", "GetShardIterator", "GetRecords"}
_STREAM_ARN = re.compile(r"arn:[^:]+:dynamodb:[^:]*:[^:]*:table/([^/]+)/stream/")


def _stream_table(params: dict[str, Any]) -> str | None:
    """The table whose stream a DynamoDB Streams call reads: by name, by stream ARN, or (moto's shard
    iterators start with the stream's ARN; AWS's are opaque) by shard iterator."""
    if params.get("TableName"):
        return str(params["TableName"])
    match = _STREAM_ARN.match(str(params.get("StreamArn") or params.get("ShardIterator") or ""))
    return match.group(1) if match else None


def needs(service: str, operation: str, params: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(IAM action, resource kind, resource name) IAM evaluates for one API call. Resource kinds: `table`
    (name or name/index/<index>), `secret` (name or ARN), `event-bus` (name or ARN), `*` (no resource-level
    check)."""
    if service == "dynamodb":
        if operation in _STREAM_OPERATIONS:  # DynamoDB Streams (signs as dynamodb): a table's stream
            table = _stream_table(params)
            kind, name = ("table", f"{table}/stream/*") if table else ("*", "*")
            yield f"dynamodb:{operation}", kind, name
            return
        if operation in ("BatchGetItem", "BatchWriteItem"):
            for table in (params.get("RequestItems") or {}):
                yield f"dynamodb:{operation}", "table", table
        elif operation in ("TransactWriteItems", "TransactGetItems"):
            for item in params.get("TransactItems") or []:
                for kind, body in item.items():
                    yield f"dynamodb:{_TRANSACT_ITEM_ACTIONS.get(kind, kind)}", "table", body.get("TableName", "?")
        elif params.get("TableName"):
            table = params["TableName"]
            if params.get("IndexName"):
                table = f"{table}/index/{params['IndexName']}"
            yield f"dynamodb:{operation}", "table", table
        else:
            yield f"dynamodb:{operation}", "*", "*"
    elif service == "secretsmanager" and params.get("SecretId"):
        yield f"secretsmanager:{operation}", "secret", str(params["SecretId"])
    elif service == "events" and operation == "PutEvents":  # IAM checks each entry's bus (default: "default")
        for entry in params.get("Entries") or []:
            yield "events:PutEvents", "event-bus", str(entry.get("EventBusName") or "default")
    else:
        yield f"{service}:{operation}", "*", "*"


def _on_call(params: dict, model: Any, **kwargs: Any) -> None:
    function = _function.get()
    if function is None or _directory is None:
        return
    service = model.service_model.signing_name or model.service_model.endpoint_prefix
    tables = _table_logical_ids() if service == "dynamodb" else {}
    buses = _bus_logical_ids() if service == "events" else {}
    lines = []
    for action, kind, name in needs(service, model.name, params):
        if kind == "table":
            table, slash, rest = name.partition("/")  # <table>, <table>/index/<index>, <table>/stream/*
            name = tables.get(table, f"?{table}") + slash + rest
        elif kind == "event-bus":
            name = buses.get(name.rsplit("/", 1)[-1], f"?{name}")
        key = (function, action, kind, name)
        with _lock:
            if key in _seen:
                continue
            _seen.add(key)
        lines.append(json.dumps({"function": function, "action": action, "kind": kind, "resource": name,
                                 "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]}))
    if lines:
        with _lock, open(_directory / f"calls-{os.getpid()}.jsonl", "a", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")


def forget(function: str) -> None:
    """Drop this process's records of `function` (a test's own stand-in function, not the template's)."""
    if _directory is None:
        return
    path = _directory / f"calls-{os.getpid()}.jsonl"
    with _lock:
        _seen.difference_update({key for key in _seen if key[0] == function})
        if path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["function"] != function]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def read_records(record_dir: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Every record of every process that wrote to `record_dir`."""
    records = []
    for path in sorted(Path(record_dir).glob("calls-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records
