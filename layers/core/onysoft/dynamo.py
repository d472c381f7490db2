"""Low-level DynamoDB calls that PynamoDB has no cross-table form for (BatchGetItem over two tables).

Reuses PynamoDB's own botocore client, so a cold start builds one client, not two.
"""

from onysoft.models import Account, ApiKey, RateLimitCounter, UsageRollup


def _client():
    return ApiKey._get_connection().connection.client


def batch_get(request: dict[str, dict]) -> dict[str, list[dict]]:
    """One BatchGetItem (RequestItems as DynamoDB takes them): the raw items found, by table."""
    found: dict[str, list] = {}
    for _ in range(5):  # unprocessed keys are rare on a few items; retry a few times, then fail
        response = _client().batch_get_item(RequestItems=request)
        for table, items in response.get("Responses", {}).items():
            found.setdefault(table, []).extend(items)
        request = response.get("UnprocessedKeys") or {}
        if not request:
            return found
    raise RuntimeError("DynamoDB left keys unprocessed")


def batch_get_raw(table: str, keys: list[dict]) -> list[dict]:
    """Up to 100 items of one table, strongly consistent, raw."""
    return batch_get({table: {"Keys": keys, "ConsistentRead": True}}).get(table, [])


def get_key_and_account(key_hash: str, account_id: str, counter_ids: tuple[str, ...] = (),
                        totals_of: str | None = None
                        ) -> tuple[ApiKey | None, Account | None, dict[str, dict], dict | None]:
    """One BatchGetItem, strongly consistent: the key record, the account it should belong to, the key's
    limit counters (raw items by counter_id; absent counters are simply missing) and, for `totals_of` (a
    key id), the usage rollup's all-time totals item of that key (raw, or None)."""
    request = {
        ApiKey.Meta.table_name: {"Keys": [{"key_hash": {"S": key_hash}}], "ConsistentRead": True},
        Account.Meta.table_name: {"Keys": [{"account_id": {"S": account_id}}], "ConsistentRead": True},
    }
    if counter_ids:
        request[RateLimitCounter.Meta.table_name] = {
            "Keys": [{"counter_id": {"S": c}} for c in counter_ids], "ConsistentRead": True}
    if totals_of:
        request[UsageRollup.Meta.table_name] = {
            "Keys": [{"pk": {"S": f"key#{totals_of}"}, "sk": {"S": "total"}}], "ConsistentRead": True}
    found = batch_get(request)
    key_items = found.get(ApiKey.Meta.table_name) or []
    account_items = found.get(Account.Meta.table_name) or []
    key = ApiKey.from_raw_data(key_items[0]) if key_items else None
    account = Account.from_raw_data(account_items[0]) if account_items else None
    counters = {item["counter_id"]["S"]: item for item in found.get(RateLimitCounter.Meta.table_name) or []}
    totals = (found.get(UsageRollup.Meta.table_name) or [None])[0]
    return key, account, counters, totals
