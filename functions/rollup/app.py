"""DynamoDB Stream (Usage table) -> usage totals by day and model in UsageRollups (onysoft.usage_rollup).
Idempotent; a chunk that keeps conflicting is reported back so Lambda retries from it, in order."""

from onysoft import usage_rollup


def handler(event: dict, context) -> dict:
    failed = usage_rollup.apply(event.get("Records") or [])
    return {"batchItemFailures": [{"itemIdentifier": sequence} for sequence in failed]}
