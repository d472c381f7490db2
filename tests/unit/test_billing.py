"""Hold, settle and release through the proxy app, in-process (moto mock_aws; single-threaded only)."""

import json
from decimal import Decimal

import pytest

from onysoft import catalog, money
from onysoft.accounts import get_account
from onysoft.api_keys import delete_key, find_by_key_id
from onysoft.caller import CallerContext
from onysoft.models import UsageRecord
from onysoft.usage_rollup import KeyTotals
from tests.helpers import key_totals
from tests.unit.conftest import FX, PRICES, new_key


def expected_charge(kind_markup_bp: int, currency: str, prompt: int, completion: int) -> int:
    cost = money.usd_cost(prompt, PRICES[0]) + money.usd_cost(completion, PRICES[1])
    return money.charge_micros(cost, kind_markup_bp, FX if currency == "TRY" else Decimal(1))


def swept(released: int) -> dict[str, int]:
    """What a sweeper run returns when it only released holds (none of these requests was sent upstream)."""
    return {"settled": 0, "released": released, "already_closed": 0, "close_failures": 0, "quarantined": 0}


def records(account_id: str) -> list[UsageRecord]:
    return list(UsageRecord.query(account_id))


# "hello there gateway" to mock/echo: 6 prompt tokens (3 words + 3 for the message), 9 completion tokens ("Mock
# reply to: hello there gateway — the end."): 6 × 1.25 + 9 × 2.5 = 30 USD per million = 0.00003 USD. Worked out by
# hand, never by the code under test: 0.00003 × 1.5 × 41.5 = 0.0018675 TRY → 1,868 µ (rounded up); × 1.5 = 45 µUSD;
# × 1.3 × 41.5 = 0.0016185 TRY → 1,619 µ.
EXPECTED_CHARGE = {"user": 1868, "project": 1868, "partner_project": 45, "partner_customer": 1619}


@pytest.mark.parametrize("kind", ["user", "project", "partner_project", "partner_customer"])
def test_each_key_type_pays_exact_cost_times_markup_times_fx(gateway, kind):
    account, record, headers = new_key(kind)
    before = get_account(account.account_id).balance_micros
    body = {"model": "mock/echo", "messages": [{"role": "user", "content": "hello there gateway"}]}
    response = gateway.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (6, 9)
    charge = EXPECTED_CHARGE[kind]
    after = get_account(account.account_id)
    assert before - after.balance_micros == charge
    [usage_record] = records(account.account_id)
    assert usage_record.status == "settled" and usage_record.hold_state is None
    assert usage_record.charge_micros == charge
    assert Decimal(usage_record.provider_cost_usd) == Decimal("0.00003")
    assert usage_record.fx_rate == (str(FX) if account.currency == "TRY" else "1")
    assert usage_record.request_id == response.headers["x-onysoft-request-id"]
    key = find_by_key_id(record.key_id)
    assert key.last_used_at
    assert key_totals(record.key_id) == KeyTotals(requests=1, spend_micros=charge)


def test_stream_is_billed_and_usage_chunk_removed_when_not_asked(gateway):
    account, _, headers = new_key("user")
    body = {"model": "mock/echo", "stream": True, "messages": [{"role": "user", "content": "stream me"}]}
    response = gateway.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"] for c in chunks)  # no usage-only chunk reached the client
    [usage_record] = records(account.account_id)
    assert usage_record.status == "settled" and usage_record.usage_estimated is None
    assert usage_record.charge_micros == expected_charge(5000, "TRY", usage_record.prompt_tokens,
                                                         usage_record.completion_tokens)


def test_stream_keeps_usage_chunk_when_client_asked(gateway):
    _, _, headers = new_key("user")
    body = {"model": "mock/echo", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "stream me"}]}
    response = gateway.post("/v1/chat/completions", json=body, headers=headers)
    chunks = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: {")]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_an_upstream_error_status_costs_nothing(gateway):
    """The provider refused before doing any work (an HTTP error status, no output): it bills nothing, nor do we."""
    account, record, headers = new_key("partner_project")
    before = get_account(account.account_id).balance_micros
    response = gateway.post("/v1/chat/completions", headers=headers,
                            json={"model": "mock/error-500", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 502
    assert set(response.json()["error"]) == {"message", "type", "code", "param"}
    assert "Nothing was charged" in response.json()["error"]["message"]
    assert get_account(account.account_id).balance_micros == before
    [usage_record] = records(account.account_id)
    assert usage_record.status == "failed" and usage_record.charge_micros == 0 and usage_record.error_code


def test_a_timeout_after_the_send_is_charged_the_hold(gateway):
    """The request left; the provider may finish it and bill the platform: its usage cannot be known, so the call
    is charged its hold, marked estimated (it was free before issue 22)."""
    account, record, headers = new_key("partner_project")
    before = get_account(account.account_id).balance_micros
    response = gateway.post("/v1/chat/completions", headers=headers, json={
        "model": "mock/timeout", "max_tokens": 100, "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "upstream_timeout" and "charged its hold" in error["message"]
    [usage_record] = records(account.account_id)
    assert (usage_record.status, usage_record.usage_estimated, usage_record.estimate_reason) == (
        "settled", "true", "upstream_timeout")
    assert usage_record.charge_micros == usage_record.hold_micros > 0
    assert (usage_record.prompt_tokens, usage_record.completion_tokens) == (
        usage_record.hold_prompt_tokens, usage_record.hold_output_tokens) == (usage_record.hold_prompt_tokens, 100)
    assert before - get_account(account.account_id).balance_micros == usage_record.charge_micros


def test_a_cut_stream_is_charged_its_hold_and_the_client_is_told(gateway):
    account, _, headers = new_key("user")
    before = get_account(account.account_id).balance_micros
    body = {"model": "mock/cut-stream", "stream": True, "max_tokens": 50,
            "messages": [{"role": "user", "content": "a b c d e f"}]}
    response = gateway.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200  # the stream had started
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]  # the stream's last event says why it ended
    assert error["code"] == "upstream_cut" and "charged its hold" in error["message"]
    [usage_record] = records(account.account_id)
    assert (usage_record.status, usage_record.usage_estimated, usage_record.estimate_reason) == (
        "settled", "true", "cut")
    assert usage_record.charge_micros == usage_record.hold_micros
    assert usage_record.completion_tokens == 50
    assert before - get_account(account.account_id).balance_micros == usage_record.charge_micros


def test_too_small_balance_gets_402_naming_account_and_currency_and_no_upstream_call(gateway, monkeypatch):
    account, _, headers = new_key("user", amount="0.000001")
    from onysoft import upstream

    monkeypatch.setattr(upstream, "client_for", lambda provider: pytest.fail("upstream must not be called"))
    response = gateway.post("/v1/chat/completions", headers=headers,
                            json={"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 402
    error = response.json()["error"]
    assert account.account_id in error["message"] and "TRY" in error["message"]
    assert error["code"] == "insufficient_balance"
    assert get_account(account.account_id).balance_micros == 1
    assert records(account.account_id) == []


def test_small_balance_that_covers_a_short_answer_is_served_with_an_output_cap(gateway):
    account, _, headers = new_key("partner_project", amount="0.01")  # 0.01 USD: far below a 16k-token hold
    response = gateway.post("/v1/chat/completions", headers=headers,
                            json={"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    [usage_record] = records(account.account_id)
    assert usage_record.hold_micros <= 10_000
    assert get_account(account.account_id).balance_micros == 10_000 - usage_record.charge_micros


def test_deleted_key_is_refused_by_the_hold_even_with_a_cached_context(gateway):
    account, record, headers = new_key("user")
    delete_key(record.key_id)
    response = gateway.post("/v1/chat/completions", headers=headers,
                            json={"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert get_account(account.account_id).balance_micros == 100_000_000


def test_unknown_model_is_404_and_bad_body_is_400(gateway):
    _, _, headers = new_key("user")
    response = gateway.post("/v1/chat/completions", headers=headers,
                            json={"model": "openai/nope", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    response = gateway.post("/v1/chat/completions", headers=headers, content=b"{not json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"model": "mock/echo", "n": 1e400, "messages": []}',
                                 b'{"model": "mock/echo", "temperature": NaN, "messages": []}'],
                         ids=["deep", "overflow", "nan"])
def test_json_python_can_not_send_on_is_a_400(gateway, raw):
    account, _, headers = new_key("user")
    response = gateway.post("/v1/chat/completions", headers={**headers, "content-type": "application/json"},
                            content=raw)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    assert records(account.account_id) == []


@pytest.mark.parametrize("n", ["x", [2], None, 0, -3])
def test_shrunk_hold_with_a_nonsense_n_is_refused_before_the_hold_and_never_left_open(gateway, n):
    account, _, headers = new_key("partner_project", amount="0.01")  # the hold shrinks to the balance
    response = gateway.post("/v1/chat/completions", headers=headers,
                            json={"model": "mock/echo", "n": n, "messages": [{"role": "user", "content": "hi"}]})
    if n is None:  # JSON null: as if absent
        assert response.status_code == 200, response.text
        [usage_record] = records(account.account_id)
        assert usage_record.status == "settled" and usage_record.hold_state is None
        assert get_account(account.account_id).balance_micros == 10_000 - usage_record.charge_micros
    else:
        assert response.status_code == 400 and response.json()["error"]["param"] == "n"
        assert records(account.account_id) == [] and get_account(account.account_id).balance_micros == 10_000


def test_embeddings_are_billed_on_input_tokens(gateway):
    account, _, headers = new_key("partner_project")
    response = gateway.post("/v1/embeddings", headers=headers, json={"model": "mock/embed", "input": ["a b", "c"]})
    assert response.status_code == 200, response.text
    tokens = response.json()["usage"]["prompt_tokens"]
    expected = money.charge_micros(money.usd_cost(tokens, Decimal("0.02")), 5000, Decimal(1))
    assert 100_000_000 - get_account(account.account_id).balance_micros == expected


def test_sweeper_releases_a_never_sent_stale_hold_exactly_once(gateway):
    from datetime import timedelta

    from onysoft import billing, clock, hold_sizing
    from onysoft.provider_usage import Usage
    from onysoft.sweeper import close_stale_holds

    account, record, headers = new_key("user")
    price = catalog.get_model("mock/echo")
    factors = hold_sizing.ChargeFactors(price, 5000, FX, "")
    caller = CallerContext(key_id=record.key_id, key_type="user", account_id=account.account_id, currency="TRY",
                           markup_bp=5000)
    plan = hold_sizing.plan_hold("chat.completions", {"max_tokens": 100}, 200, factors)
    hold = billing.place_hold(request_id="req_crashed", key_hash=record.key_hash, caller=caller, plan=plan,
                              factors=factors, endpoint="chat.completions", stream=False, model="mock/echo")
    assert get_account(account.account_id).balance_micros == 100_000_000 - plan.micros
    assert close_stale_holds() == swept(0)  # not stale yet
    later = clock.to_iso(clock.utc_now() + timedelta(minutes=21))
    assert close_stale_holds(now_iso=later) == swept(1)
    assert get_account(account.account_id).balance_micros == 100_000_000
    assert close_stale_holds(now_iso=later) == swept(0)
    with pytest.raises(billing.AlreadyClosed):  # a late settle cannot charge a released hold
        billing.settle(hold, Usage(10, 10))
    assert get_account(account.account_id).balance_micros == 100_000_000
    [usage_record] = records(account.account_id)
    assert usage_record.status == "failed" and usage_record.error_code == "stale_hold"


def test_open_holds_are_spread_over_shards_and_the_sweeper_finds_every_one(gateway):
    from datetime import timedelta

    from onysoft import billing, clock, hold_sizing
    from onysoft.sweeper import close_stale_holds

    account, record, _ = new_key("partner_project")
    factors = hold_sizing.ChargeFactors(catalog.get_model("mock/echo"), 3000, 1, "")
    caller = CallerContext(key_id=record.key_id, key_type="partner_project", account_id=account.account_id,
                           currency="USD", markup_bp=3000)
    plan = hold_sizing.plan_hold("chat.completions", {"max_tokens": 10}, 100, factors)
    for n in range(40):
        billing.place_hold(request_id=f"req_crashed_{n}", key_hash=record.key_hash, caller=caller, plan=plan,
                           factors=factors, endpoint="chat.completions", stream=False, model="mock/echo")
    shards = {r.hold_state for r in records(account.account_id)}
    assert shards <= set(billing.open_shards()) and len(shards) > 8  # one hot index partition no more
    assert get_account(account.account_id).balance_micros == 100_000_000 - 40 * plan.micros
    later = clock.to_iso(clock.utc_now() + timedelta(minutes=21))
    assert close_stale_holds(now_iso=later, limit=25) == swept(25)
    assert close_stale_holds(now_iso=later) == swept(15)  # the rest, next run
    assert get_account(account.account_id).balance_micros == 100_000_000
    assert {r.status for r in records(account.account_id)} == {"failed"}


def test_a_malformed_200_is_a_502_and_charged_the_hold(gateway, monkeypatch):
    """A 200 is the provider saying it did the work; one whose body says nothing usable still cost the platform."""
    import httpx

    from onysoft import upstream

    class Garbage(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request):
            return httpx.Response(200, content=b"<html>not json</html>")

    broken = httpx.AsyncClient(transport=Garbage())
    monkeypatch.setattr(upstream, "client_for", lambda provider: broken)
    account, _, headers = new_key("user")
    response = gateway.post("/v1/chat/completions", headers=headers,
                            json={"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_malformed_response"
    [usage_record] = records(account.account_id)
    assert (usage_record.status, usage_record.usage_estimated) == ("settled", "true")
    assert usage_record.charge_micros == usage_record.hold_micros
    assert get_account(account.account_id).balance_micros == 100_000_000 - usage_record.hold_micros


def test_a_json_200_to_a_stream_request_is_a_502_charged_what_it_reports(gateway, monkeypatch):
    import httpx

    from onysoft import upstream

    class NotAStream(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request):
            return httpx.Response(200, json={"id": "x", "choices": [], "usage": {
                "prompt_tokens": 40, "completion_tokens": 8, "total_tokens": 48}})

    monkeypatch.setattr(upstream, "client_for", lambda provider: httpx.AsyncClient(transport=NotAStream()))
    account, _, headers = new_key("partner_customer")
    response = gateway.post("/v1/chat/completions", headers=headers, json={
        "model": "mock/echo", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_malformed_response"
    [usage_record] = records(account.account_id)
    assert usage_record.status == "settled" and usage_record.usage_estimated is None
    # 40 × 1.25 + 8 × 2.5 = 70 USD per million: 0.00007 × 1.3 × 41.5 = 0.0037765 TRY → 3,777 µ.
    assert (usage_record.prompt_tokens, usage_record.completion_tokens, usage_record.charge_micros) == (40, 8, 3777)


def test_a_stream_without_usage_is_charged_the_hold(gateway, monkeypatch):
    import httpx

    from onysoft import upstream

    class NoUsage(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request):
            chunks = [{"id": "x", "choices": [{"index": 0, "delta": {"content": "a" * 40}}]},
                      {"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
            raw = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
            return httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    monkeypatch.setattr(upstream, "client_for", lambda provider: httpx.AsyncClient(transport=NoUsage()))
    account, _, headers = new_key("partner_project")
    response = gateway.post("/v1/chat/completions", headers=headers, json={
        "model": "mock/echo", "max_tokens": 30, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200  # the answer arrived whole: the client gets it
    assert response.json()["choices"][0]["message"]["content"] == "a" * 40
    [usage_record] = records(account.account_id)
    assert (usage_record.usage_estimated, usage_record.estimate_reason) == ("true", "no_usage")
    assert usage_record.completion_tokens == 30 and usage_record.charge_micros == usage_record.hold_micros


def test_models_list_comes_from_the_catalog_cache(gateway, monkeypatch):
    from onysoft.models import CatalogEntry

    _, _, headers = new_key("user")
    first = gateway.get("/v1/models", headers=headers).json()["data"]
    assert "mock/echo" in [m["id"] for m in first]

    def no_catalog_read(*args, **kwargs):
        raise AssertionError("the catalog was read again within the cache's TTL")

    monkeypatch.setattr(CatalogEntry, "scan", no_catalog_read)
    monkeypatch.setattr(CatalogEntry, "query", no_catalog_read)
    assert gateway.get("/v1/models", headers=headers).json()["data"] == first


def test_a_failure_between_hold_and_send_releases_the_hold(gateway, monkeypatch):
    from onysoft import forwarding

    def broken(*args, **kwargs):
        raise RuntimeError("a bug after the hold")

    from starlette.testclient import TestClient

    from onysoft import proxy_app

    monkeypatch.setattr(forwarding, "_upstream_body", broken)
    account, _, headers = new_key("user")
    with TestClient(proxy_app.app, raise_server_exceptions=False) as client:  # what a client sees: the 500
        response = client.post("/v1/chat/completions", headers=headers,
                               json={"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 500 and set(response.json()["error"]) == {"message", "type", "code", "param"}
    assert "Traceback" not in response.text
    assert get_account(account.account_id).balance_micros == 100_000_000
    [usage_record] = records(account.account_id)
    assert (usage_record.status, usage_record.error_code, usage_record.hold_state) == ("failed", "internal_error", None)


def test_an_unreadable_rate_counter_costs_the_headers_not_the_answer(gateway, monkeypatch):
    """The window's use comes with the key's read (one BatchGetItem); when the minute turned between that read
    and the hold, the hold's window is read after it, and if that read fails the answer still goes out."""
    from onysoft import forwarding, rate_limits

    def unreadable(*args, **kwargs):
        raise RuntimeError("DynamoDB had a bad moment")

    monkeypatch.setattr(rate_limits, "read_usage", unreadable)
    monkeypatch.setattr(forwarding, "_window_use_after", lambda held, window, before: None)  # the minute turned
    account, _, headers = new_key("partner_customer")
    response = gateway.post("/v1/chat/completions", headers=headers,
                            json={"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    assert "x-onysoft-request-id" in response.headers and "x-ratelimit-remaining-requests" not in response.headers
    [usage_record] = records(account.account_id)
    assert usage_record.status == "settled"


def test_the_window_read_with_the_key_gives_the_headers_after_the_hold(gateway):
    """The x-ratelimit headers of a billed answer come from the key's read (the window's use before the hold)
    plus what the hold counted: one request and its rate tokens, so the remaining count goes down by one a
    request, and the tokens by what each hold counted, as the counter items say."""
    from onysoft import rate_limits
    from onysoft.models import RateLimitCounter

    _, record, headers = new_key("partner_customer")
    key_id = record.key_id
    body = {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    first, second = (gateway.post("/v1/chat/completions", headers=headers, json=body) for _ in range(2))
    assert first.status_code == second.status_code == 200
    rpm = int(first.headers["x-ratelimit-limit-requests"])
    assert int(first.headers["x-ratelimit-remaining-requests"]) == rpm - 1
    assert int(second.headers["x-ratelimit-remaining-requests"]) == rpm - 2
    window = rate_limits.current_window()
    counter = RateLimitCounter.get(window.counter_id(key_id, 0), consistent_read=True)
    assert counter.requests == 2
    tpm = int(first.headers["x-ratelimit-limit-tokens"])
    held_each = tpm - int(first.headers["x-ratelimit-remaining-tokens"])  # what the first hold counted
    assert held_each > 0
    # the second answer saw the first one's settled count (the hold's tokens less what it gave back) plus its own
    assert int(second.headers["x-ratelimit-remaining-tokens"]) <= tpm - held_each
