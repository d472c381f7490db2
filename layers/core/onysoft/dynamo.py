"""Low-level DynamoDB calls that PynamoDB has no cross-table form for (BatchGetItem over two tables).

Reuses PynamoDB's own botocore client, so a cold start builds one client, not two.
"""

from onysoft.models import Account, ApiKey


def _client():
    return ApiKey._get_connection().connection.client


def get_key_and_account(key_hash: str, account_id: str) -> tuple[ApiKey | None, Account | None]:
    """One BatchGetItem, strongly consistent: the key record and the account it should belong to."""
    request = {
        ApiKey.Meta.table_name: {"Keys": [{"key_hash": {"S": key_hash}}], "ConsistentRead": True},
        Account.Meta.table_name: {"Keys": [{"account_id": {"S": account_id}}], "ConsistentRead": True},
    }
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
    return key, account
