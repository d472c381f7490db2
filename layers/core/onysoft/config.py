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
