"""max_parallel, requests in flight at once, per key and per account (issue 23; onysoft.parallel), through the
proxy app and billing in-process (moto's mock_aws). The same under real concurrency: tests/integration/
test_parallel_limits.py."""

import json
from datetime import timedelta

import pytest

from onysoft import billing, catalog, clock, hold_sizing, money
from onysoft.accounts import get_account, update_account
from onysoft.api_keys import create_key, update_key_settings
from onysoft.authorization import authorize
from onysoft.caller import REQUEST_CONTEXT_HEADER
from onysoft.models import RateLimitCounter, UsageRecord
from onysoft.provider_usage import Usage
from onysoft.sweeper import close_stale_holds
from tests.unit.conftest import FX, new_key

CHAT = {"model": "mock/echo", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}


def in_flight(key_id: str) -> int:
    try:
        return int(RateLimitCounter.get(f"{key_id}#parallel", consistent_read=True).in_flight or 0)
    except RateLimitCounter.DoesNotExist:
        return 0


def account_in_flight(account_id: str) -> int:
    from onysoft import parallel

    return sum(parallel.account_in_flight(account_id, 8).values())


def hold(record, caller, request_id: str) -> billing.Hold:
    """A hold as the proxy places it, left open (the request is 'in flight')."""
    factors = hold_sizing.ChargeFactors(catalog.get_model("mock/echo"), caller.markup_bp, FX, "")
    plan = hold_sizing.plan_hold("chat.completions", {"max_tokens": 20}, 100, factors)
    return billing.place_hold(request_id=request_id, key_hash=record.key_hash, caller=caller, plan=plan,
                              factors=factors, endpoint="chat.completions", stream=False, model="mock/echo",
                              sending=True)


def caller_of(plaintext: str):
    return authorize(f"Bearer {plaintext}")


def headers_of(plaintext: str) -> dict:
    return {"authorization": f"Bearer {plaintext}",
            REQUEST_CONTEXT_HEADER: json.dumps({"authorizer": caller_of(plaintext).to_authorizer_context()})}


def test_a_key_at_its_max_parallel_gets_429_before_any_hold_and_its_slots_come_back(gateway, monkeypatch):
    account, record, headers = new_key("user", max_parallel=2)
    caller = caller_of(headers["authorization"][7:])
    first, second = hold(record, caller, "req_a"), hold(record, caller, "req_b")
    assert in_flight(record.key_id) == 2
    balance = get_account(account.account_id).balance_micros

    from onysoft import upstream

    real_client = upstream.client_for
    monkeypatch.setattr(upstream, "client_for", lambda provider: pytest.fail("no upstream call when refused"))
    refused = gateway.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == "too_many_parallel_requests" and "2 requests in flight" in error["message"]
    assert refused.headers["retry-after"] == "1"
    # Nothing was held, recorded or charged; the count is still the two in flight.
    assert get_account(account.account_id).balance_micros == balance
    assert len(list(UsageRecord.query(account.account_id))) == 2
    assert in_flight(record.key_id) == 2

    billing.settle(first, Usage(10, 5))  # one ends: its slot is back, in the settle's own transaction
    assert in_flight(record.key_id) == 1
    monkeypatch.setattr(upstream, "client_for", real_client)
    assert gateway.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    assert in_flight(record.key_id) == 1  # the request came and went
    billing.release(second, code="test", message="released")
    assert in_flight(record.key_id) == 0
    view = gateway.get("/v1/key", headers=headers).json()
    assert view["max_parallel"] == 2 and view["limits"]["max_parallel"] == 2 and view["usage"]["in_flight"] == 0


def test_a_key_without_max_parallel_writes_no_counter(gateway):
    _, record, headers = new_key("user")
    for _ in range(3):
        assert gateway.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    with pytest.raises(RateLimitCounter.DoesNotExist):
        RateLimitCounter.get(f"{record.key_id}#parallel")
    assert all(r.parallel is None for r in UsageRecord.scan())
    view = gateway.get("/v1/key", headers=headers).json()
    assert view["max_parallel"] is None and view["usage"]["in_flight"] is None


@pytest.mark.parametrize("shards", [1, 3])
def test_an_account_at_its_max_parallel_refuses_every_key_and_counts_on_its_balance_shards(gateway, shards):
    """The account's count lives on the balance shard items the hold already updates; with N shards each has its
    share (4 over 3 shards: 2, 1, 1), and a full shard moves the hold to one with room: exactly 4 in all."""
    from onysoft.accounts import create_account, top_up

    account = create_account("partner_project", name="busy")
    update_account(account.account_id, shards=shards, max_parallel=4)
    top_up(account.account_id, money.parse_amount("1000"))  # spread over the shards
    created = [create_key(account.account_id, name=f"k{i}") for i in range(3)]
    holds, refused = [], 0
    for n in range(9):
        key = created[n % 3]
        try:
            holds.append(hold(key.record, caller_of(key.plaintext), f"req_{shards}_{n}"))
        except Exception as exc:  # noqa: BLE001
            assert getattr(exc, "code", None) == "too_many_parallel_requests", exc
            assert exc.status == 429 and "Account " in exc.message
            refused += 1
    assert (len(holds), refused) == (4, 5)
    assert account_in_flight(account.account_id) == 4
    assert {r.parallel for r in UsageRecord.scan() if r.key_id in {k.record.key_id for k in created}} == {"account"}
    for h in holds:
        billing.settle(h, Usage(10, 5))
    assert account_in_flight(account.account_id) == 0
    view = gateway.get("/v1/key", headers=headers_of(created[0].plaintext)).json()
    assert view["max_parallel"] is None  # the key's own limit; the account's is on the account's view
    from onysoft.operations.views import account_view

    assert account_view(get_account(account.account_id))["max_parallel"] == 4


def test_the_sweeper_gives_back_the_slots_of_holds_a_crash_left_open(gateway):
    account, record, headers = new_key("user", max_parallel=3)
    update_account(account.account_id, max_parallel=5)
    caller = caller_of(headers["authorization"][7:])
    for n in range(3):
        hold(record, caller, f"req_crash_{n}")  # the invocation dies: nobody settles them
    assert in_flight(record.key_id) == 3 and account_in_flight(account.account_id) == 3
    assert gateway.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 429
    later = clock.to_iso(clock.utc_now() + timedelta(minutes=21))
    assert close_stale_holds(now_iso=later)["settled"] == 3
    assert in_flight(record.key_id) == 0 and account_in_flight(account.account_id) == 0
    assert gateway.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    assert close_stale_holds(now_iso=later)["settled"] == 0  # nothing given back twice
    assert in_flight(record.key_id) == 0


def test_max_parallel_is_validated_removed_with_0_and_carried_by_a_rotation(aws_tables):
    from onysoft.accounts import AccountError
    from onysoft.api_keys import rotate_key

    account, record, _ = new_key("user", max_parallel=4)
    with pytest.raises(AccountError):
        update_key_settings(record.key_id, max_parallel=-1)
    rotated = rotate_key(record.key_id, 60)
    assert rotated.record.max_parallel == 4
    assert update_key_settings(record.key_id, max_parallel=None).max_parallel is None
    with pytest.raises(AccountError):
        update_account(account.account_id, max_parallel=-2)
    assert update_account(account.account_id, max_parallel=0).max_parallel is None


def test_what_max_parallel_costs_in_write_units(gateway):
    """docs/ARCHITECTURE.md "Limits": a key's max_parallel adds one item to the hold's and the settle's transactions
    (its counter, far below 1 KB: 2 units each, +4 a request); the account's rides on the balance shard item both
    already update, which stays below 1 KB (+0), and the usage record's `parallel` keeps it below 1 KB (+0). Sizes
    by DynamoDB's rules (tools/bench/dynamo.item_size, the recorder of BENCHMARKS section 3)."""
    import boto3

    from onysoft import config
    from tools.bench.dynamo import item_size

    account, record, headers = new_key("partner_project", max_parallel=3)
    update_account(account.account_id, max_parallel=3, name="a" * 40)
    caller = caller_of(headers["authorization"][7:])
    held = hold(record, caller, "req_" + "f" * 24)
    client = boto3.client("dynamodb", region_name="us-east-1")

    def raw(table: str, key: dict) -> dict:
        return client.get_item(TableName=config.table_name(table), Key=key, ConsistentRead=True)["Item"]

    counter = raw("ONYSOFT_TABLE_RATE_LIMITS", {"counter_id": {"S": f"{record.key_id}#parallel"}})
    shard = raw("ONYSOFT_TABLE_ACCOUNTS", {"account_id": {"S": account.account_id}})
    usage = raw("ONYSOFT_TABLE_USAGE", {"account_id": {"S": held.record_pk}, "sk": {"S": held.sk}})
    assert counter["in_flight"] == {"N": "1"} and shard["in_flight"] == {"N": "1"} and usage["parallel"]["S"]
    assert item_size(counter) < 100 and item_size(shard) < 1024 and item_size(usage) < 1024
