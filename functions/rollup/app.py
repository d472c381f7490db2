"""DynamoDB Stream (Usage table) -> usage totals by day and model in UsageRollups (onysoft.usage_rollup).
Idempotent; a record it cannot count is set aside whole (onysoft.rollup_quarantine: `onysoft rollups replay`) and
the rest counted; a chunk that fails for a transient reason is reported back so Lambda retries from it, in order.
Then the balance alerts the counted records call for (onysoft.balance_alerts: never fails the batch)."""

from onysoft import balance_alerts, usage_rollup


def handler(event: dict, context) -> dict:
    records = event.get("Records") or []
    failed = usage_rollup.apply(records)
    balance_alerts.after_rollup(records)
    return {"batchItemFailures": [{"itemIdentifier": sequence} for sequence in failed]}
