"""Table names and region from the environment (template.yaml sets them in Lambda; dev.env locally)."""

import os

TABLE_ENV_DEFAULTS = {
    "ONYSOFT_TABLE_API_KEYS": "onysoft-api-keys",
    "ONYSOFT_TABLE_ACCOUNTS": "onysoft-accounts",
    "ONYSOFT_TABLE_USAGE": "onysoft-usage",
    "ONYSOFT_TABLE_RATE_LIMITS": "onysoft-rate-limits",
    "ONYSOFT_TABLE_CATALOG": "onysoft-catalog",
    "ONYSOFT_TABLE_USAGE_ROLLUPS": "onysoft-usage-rollups",
}


def table_name(env_var: str) -> str:
    return os.environ.get(env_var) or TABLE_ENV_DEFAULTS[env_var]


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


# Blocking DynamoDB calls (botocore, PynamoDB) run on a thread pool, never on the event loop: one thread per call
# in flight. Lambda sends one request at a time per environment, but the proxy on managed instances serves many at
# once in one process, each with a call or two in flight; the pool and botocore's connection pool are sized
# alike, so no request waits for a thread or opens a connection botocore then throws away (its default pool: 10).
DYNAMODB_THREADS_DEFAULT = 64


def lean_dynamodb() -> bool:
    """Whether DynamoDB's data-plane calls skip botocore's per-call pipeline (onysoft.dynamo_transport; the
    default). ONYSOFT_DYNAMODB_TRANSPORT=botocore sends them through botocore's client as before."""
    return os.environ.get("ONYSOFT_DYNAMODB_TRANSPORT", "lean") != "botocore"


def dynamodb_threads() -> int:
    """ONYSOFT_DYNAMODB_THREADS (default 64, at least 1): the worker threads and DynamoDB connections per process."""
    try:
        return max(1, int(os.environ.get("ONYSOFT_DYNAMODB_THREADS") or DYNAMODB_THREADS_DEFAULT))
    except ValueError:
        return DYNAMODB_THREADS_DEFAULT


def blocking_calls_inline() -> bool:
    """ONYSOFT_BLOCKING_CALLS=inline: the request path's blocking calls run on the event loop's thread
    (onysoft.blocking). template.yaml sets it for on-demand Lambda, where an execution environment serves one request
    at a time, so the loop has no other request to serve while it waits. `pool` (the default, and managed instances',
    and `onysoft dev`'s): on the thread pool, never on the loop."""
    return os.environ.get("ONYSOFT_BLOCKING_CALLS", "pool") == "inline"
