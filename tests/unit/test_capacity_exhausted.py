"""DynamoDB's capacity and what a request spends of it: throttling past every retry (provisioned tables above
their capacity while auto scaling catches up) is a 503 with Retry-After and nothing charged, not a 500
(onysoft.dynamo_transport.throttled, errors.capacity_exhausted); the key's last use is written once a minute.
"""

from botocore.exceptions import ClientError
from pynamodb.exceptions import GetError, TransactWriteError

from onysoft import dynamo_transport, key_use
from onysoft.models import Account
from tests.unit.conftest import new_key


def _throttled(operation: str, **response) -> ClientError:
    return ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"},
                        **response}, operation)


def test_what_counts_as_throttled():
    assert dynamo_transport.throttled(GetError("Failed to get item", _throttled("GetItem")))
    cancelled = ClientError({"Error": {"Code": "TransactionCanceledException", "Message": "cancelled"},
                             "CancellationReasons": [{"Code": "None"}, {"Code": "ThrottlingError"}]},
                            "TransactWriteItems")
    assert dynamo_transport.throttled(TransactWriteError("Failed to write transaction items", cancelled))
    refused = ClientError({"Error": {"Code": "TransactionCanceledException", "Message": "cancelled"},
                           "CancellationReasons": [{"Code": "ConditionalCheckFailed"}]}, "TransactWriteItems")
    assert not dynamo_transport.throttled(TransactWriteError("Failed to write transaction items", refused))
    assert not dynamo_transport.throttled(RuntimeError("something else"))


def test_a_throttled_request_is_503_with_retry_after_and_nothing_charged(gateway, monkeypatch):
    account, _, headers = new_key("user")
    account_id = account.account_id
    before = Account.get(account_id, consistent_read=True).balance_micros

    def throttled_read(*args, **kwargs):  # the key's read (with the rate window's), throttled past its retries
        raise _throttled("BatchGetItem")

    monkeypatch.setattr(key_use, "batch_get", throttled_read)
    answer = gateway.post("/v1/chat/completions", headers=headers,
                          json={"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"
    assert answer.json()["error"]["code"] == "capacity_exhausted"
    assert "Traceback" not in answer.text
    monkeypatch.undo()
    assert Account.get(account_id, consistent_read=True).balance_micros == before


def test_last_used_at_is_written_at_most_once_a_minute_per_key():
    """A display field, written by a plain UpdateItem when the key's read finds it a minute old (1 write unit a
    request for a key used every second before; the authorizer's cache is a minute too)."""
    now = "2026-12-03T10:00:00.000000Z"
    assert key_use.due(None, now)
    assert not key_use.due("2026-12-03T09:59:01.000000Z", now)  # 59 s ago
    assert key_use.due("2026-12-03T09:59:00.000000Z", now)  # a minute ago
    assert key_use.due("not a time", now)
