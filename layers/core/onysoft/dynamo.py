"""Low-level DynamoDB calls that PynamoDB has no cross-table form for (BatchGetItem over two tables).

Reuses PynamoDB's own botocore client, so a cold start builds one client, not two.
"""

from onysoft.models import Account, ApiKey, RateLimitCounter


def _client():
    return ApiKey._get_connection().connection.client


def get_key_and_account(key_hash: str, account_id: str, counter_ids: tuple[str, ...] = ()
                        ) -> tuple[ApiKey | None, Account | None, dict[str, dict]]:
    """One BatchGetItem, strongly consistent: the key record, the account it should belong to, and the
    key's limit counters (raw items by counter_id; absent counters are simply missing)."""
    request = {
        ApiKey.Meta.table_name: {"Keys": [{"key_hash": {"S": key_hash}}], "ConsistentRead": True},
        Account.Meta.table_name: {"Keys": [{"account_id": {"S": account_id}}], "ConsistentRead": True},
    }
    if counter_ids:
        request[RateLimitCounter.Meta.table_name] = {
            "Keys": [{"counter_id": {"S": c}} for c in counter_ids], "ConsistentRead": True}
    found: dict[str, list] = {}
    for _ in range(5):  # unprocessed keys are rare on two items; retry a few times, then fail
        response = _client().batch_get_item(RequestItems=request)
        for table, items in response.get("Responses", {}).items():
            found.setdefault(table, []).extend(items)
        request = response.get("UnprocessedKeys") or {}
        if not request:
            break
    else:
        raise RuntimeError("DynamoDB left keys unprocessed")
    key_items = found.get(ApiKey.Meta.table_name) or []
    account_items = found.get(Account.Meta.table_name) or []
    key = ApiKey.from_raw_data(key_items[0]) if key_items else None
    account = Account.from_raw_data(account_items[0]) if account_items else None
    counters = {item["counter_id"]["S"]: item for item in found.get(RateLimitCounter.Meta.table_name) or []}
    return key, account, counters
