"""DynamoDB faults injected through botocore's event hooks: transaction conflicts and throttling are retried
with backoff; a settle retried after an unseen success never charges twice."""

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from onysoft import retries
from onysoft.accounts import get_account
from onysoft.models import Account, UsageRecord
from tests.unit.conftest import new_key

CHAT = {"model": "mock/echo", "messages": [{"role": "user", "content": "hello"}]}


def _client():
    return Account._get_connection().connection.client


def _cancelled(*reasons: str) -> dict:
    return {
        "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled (injected)"},
        "CancellationReasons": [{"Code": r} for r in reasons],
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }


class Injector:
    """Answers the first `times` TransactWriteItems calls with `parsed` instead of sending them."""

    def __init__(self, parsed: dict, times: int):
        self.parsed, self.left, self.calls = parsed, times, 0

    def __call__(self, model, params, **kwargs):
        if model.name != "TransactWriteItems":
            return None
        self.calls += 1
        if self.left > 0:
            self.left -= 1
            return (AWSResponse("https://dynamodb.invalid", 400, {}, None), self.parsed)
        return None


@pytest.fixture
def inject(gateway, monkeypatch):
    monkeypatch.setattr(retries.time, "sleep", lambda seconds: None)  # keep the backoff, skip the wait
    installed = []

    def install(parsed: dict, times: int) -> Injector:
        injector = Injector(parsed, times)
        _client().meta.events.register_first("before-call.dynamodb.TransactWriteItems", injector)
        installed.append(injector)
        return injector

    yield install
    for injector in installed:
        _client().meta.events.unregister("before-call.dynamodb.TransactWriteItems", injector)


@pytest.mark.parametrize("parsed", [
    _cancelled("None", "TransactionConflict", "None"),
    {"Error": {"Code": "ThrottlingException", "Message": "slow down"}, "ResponseMetadata": {"HTTPStatusCode": 400}},
    {"Error": {"Code": "TransactionInProgressException", "Message": "busy"},
     "ResponseMetadata": {"HTTPStatusCode": 400}},
])
def test_conflicts_and_throttling_are_retried_and_bill_once(gateway, inject, parsed):
    account, _, headers = new_key("user")
    injector = inject(parsed, times=3)
    response = gateway.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 200, response.text
    assert injector.calls >= 5  # 3 refused hold attempts, then the hold and the settle
    [record] = UsageRecord.query(account.account_id)
    assert record.status == "settled"
    assert get_account(account.account_id).balance_micros == 100_000_000 - record.charge_micros


def test_a_conditional_refusal_is_never_retried(gateway, inject):
    _, _, headers = new_key("user", amount="0.000001")
    injector = inject({}, times=0)
    response = gateway.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 402
    assert injector.calls == 1  # one hold, refused for the balance: no retry, no second try


def test_settle_retried_after_an_unseen_success_charges_once(gateway, monkeypatch):
    account, _, headers = new_key("partner_project")
    sent = {"settles": 0}

    def lose_first_settle_response(http_response, parsed, model, **kwargs):
        # After DynamoDB applied the settle, pretend the answer was lost: the caller sees an error and retries.
        items = kwargs.get("context", {})
        if model.name == "TransactWriteItems" and sent["settles"] == 0 and items.get("is_settle"):
            sent["settles"] += 1
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "lost"}}, "TransactWriteItems")

    def mark_settle(params, context, **kwargs):
        context["is_settle"] = params.get("ClientRequestToken", "").startswith("c")

    monkeypatch.setattr(retries.time, "sleep", lambda seconds: None)
    events = _client().meta.events
    events.register("before-parameter-build.dynamodb.TransactWriteItems", mark_settle)
    events.register("after-call.dynamodb.TransactWriteItems", lose_first_settle_response)
    try:
        response = gateway.post("/v1/chat/completions", json=CHAT, headers=headers)
    finally:
        events.unregister("before-parameter-build.dynamodb.TransactWriteItems", mark_settle)
        events.unregister("after-call.dynamodb.TransactWriteItems", lose_first_settle_response)
    assert sent["settles"] == 1
    assert response.status_code == 200
    [record] = UsageRecord.query(account.account_id)
    assert record.status == "settled" and record.charge_micros > 0
    assert get_account(account.account_id).balance_micros == 100_000_000 - record.charge_micros
