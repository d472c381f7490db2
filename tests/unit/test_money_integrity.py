"""Issue 10, money integrity: the hold bounds what the provider may produce, and every call is charged what it
cost. In-process (moto mock_aws, single-threaded), the proxy app driven by Starlette's TestClient; the provider
is a recording httpx transport (what the gateway sent; the usage it is told to report)."""

import json
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest

from onysoft import billing, catalog, clock, forwarding, hold_sizing, mock_provider, money, upstream
from onysoft.accounts import get_account, top_up
from onysoft.models import UsageRecord
from onysoft.provider_usage import Usage
from tests.unit.conftest import FX, new_key

PRICE_IN, PRICE_OUT = Decimal("2"), Decimal("8")
CACHED_IN, CACHE_WRITE = Decimal("0.5"), Decimal("2.5")
MESSAGES = [{"role": "user", "content": "hello"}]


class Recorder(httpx.AsyncBaseTransport):
    """An OpenAI-compatible provider that records each body it gets and reports the usage it is given
    (a dict, or a function of the body it received). It streams when asked (the gateway always asks), unless
    `stream` says otherwise (False: a provider that ignores the request and answers whole)."""

    def __init__(self, usage=None, stream: bool | None = None, content: str = "fine"):
        self.sent: list[dict] = []
        self.usage = usage if usage is not None else {"prompt_tokens": 5, "completion_tokens": 3,
                                                      "total_tokens": 8}
        self.stream, self.content = stream, content

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread())
        self.sent.append(body)
        usage = self.usage(body) if callable(self.usage) else self.usage
        if request.url.path.endswith("/embeddings"):
            return httpx.Response(200, json={"object": "list", "data": [{"object": "embedding", "index": 0,
                                                                          "embedding": [0.1]}], "usage": usage})
        stream = body.get("stream") if self.stream is None else self.stream  # as asked, unless told otherwise
        if not stream:
            return httpx.Response(200, json={"id": "x", "object": "chat.completion", "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": self.content}}],
                "usage": usage})
        chunks = [{"id": "x", "choices": [{"index": 0, "delta": {"content": self.content}}]},
                  {"id": "x", "choices": [], "usage": usage}]
        raw = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
        return httpx.Response(200, stream=_Chunks([raw]), headers={"content-type": "text/event-stream"})


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]):
        self.chunks = chunks

    async def __aiter__(self):
        for chunk in self.chunks:
            yield chunk


@pytest.fixture
def provider(gateway, monkeypatch):
    """`openai/gpt-test` (provider openai: output limit field max_completion_tokens) and `mock/test-max`
    (field max_tokens), both answered by one Recorder."""
    recorder = Recorder()
    monkeypatch.setenv("ONYSOFT_PROVIDER_OPENAI_API_KEY", "sk-upstream")
    monkeypatch.setattr(upstream, "client_for", lambda p: httpx.AsyncClient(transport=recorder))
    catalog.set_model("openai/gpt-test", input_usd_per_mtok=str(PRICE_IN), output_usd_per_mtok=str(PRICE_OUT),
                      max_output_tokens=1000, cached_input_usd_per_mtok=str(CACHED_IN),
                      cache_write_usd_per_mtok=str(CACHE_WRITE), tokens_per_image=700)
    catalog.set_model("mock/test-max", input_usd_per_mtok=str(PRICE_IN), output_usd_per_mtok=str(PRICE_OUT))
    catalog.set_model("openai/embed-test", input_usd_per_mtok="0.02", output_usd_per_mtok="0")
    catalog.catalog_cache.invalidate()
    return recorder


def records(account_id: str) -> list[UsageRecord]:
    return list(UsageRecord.query(account_id))


def chat(gateway, headers, **body):
    return gateway.post("/v1/chat/completions", headers=headers, json={"messages": MESSAGES, **body})


# ---------------------------------------------------------------------------------------------- 1. output limit


def test_both_limits_with_different_values_are_a_400_before_any_hold(gateway, provider):
    account, _, headers = new_key("user")
    response = chat(gateway, headers, model="openai/gpt-test", max_completion_tokens=1, max_tokens=32000)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "conflicting_output_limits"
    assert provider.sent == [] and records(account.account_id) == []


@pytest.mark.parametrize(("model", "field", "other"), [("openai/gpt-test", "max_completion_tokens", "max_tokens"),
                                                        ("mock/test-max", "max_tokens", "max_completion_tokens")])
@pytest.mark.parametrize("client_field", ["max_tokens", "max_completion_tokens"])
def test_exactly_one_output_limit_goes_upstream_in_the_providers_field(gateway, provider, model, field, other,
                                                                      client_field):
    account, _, headers = new_key("user")
    response = chat(gateway, headers, model=model, **{client_field: 40})
    assert response.status_code == 200, response.text
    [sent] = provider.sent
    assert sent[field] == 40 and other not in sent
    [record] = records(account.account_id)
    assert record.hold_output_tokens == 40


def test_same_value_in_both_fields_is_one_limit(gateway, provider):
    _, _, headers = new_key("user")
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=7, max_completion_tokens=7).status_code == 200
    assert provider.sent[0]["max_completion_tokens"] == 7 and "max_tokens" not in provider.sent[0]


def test_no_client_limit_holds_and_sends_the_models_cap(gateway, provider):
    account, _, headers = new_key("user")
    assert chat(gateway, headers, model="openai/gpt-test").status_code == 200
    assert provider.sent[0]["max_completion_tokens"] == 1000
    assert records(account.account_id)[0].hold_output_tokens == 1000


def test_no_client_limit_and_no_catalog_cap_sends_the_default(gateway, provider):
    account, _, headers = new_key("user")
    assert chat(gateway, headers, model="mock/test-max").status_code == 200
    assert provider.sent[0]["max_tokens"] == hold_sizing.DEFAULT_MAX_OUTPUT_TOKENS == 16_384
    assert records(account.account_id)[0].hold_output_tokens == 16_384


def test_a_client_limit_above_the_cap_is_lowered_to_the_cap(gateway, provider):
    account, _, headers = new_key("user")
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=50_000).status_code == 200
    assert provider.sent[0]["max_completion_tokens"] == 1000
    assert records(account.account_id)[0].hold_output_tokens == 1000


def test_n_answers_hold_n_times_the_limit_sent(gateway, provider):
    account, _, headers = new_key("user")
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=30, n=3).status_code == 200
    assert provider.sent[0]["max_completion_tokens"] == 30 and provider.sent[0]["n"] == 3
    assert records(account.account_id)[0].hold_output_tokens == 90


# ---------------------------------------------------------------------------------------------- 2. validation


@pytest.mark.parametrize(("field", "value"), [
    ("max_tokens", 1.5), ("max_tokens", "9"), ("max_tokens", -3), ("max_tokens", 0), ("max_tokens", True),
    ("max_tokens", 10 ** 40), ("max_completion_tokens", [5]), ("max_completion_tokens", 2.0),
    ("n", 0), ("n", 2.5), ("n", "2"), ("n", -1), ("n", 129), ("n", False), ("n", {"x": 1}),
])
def test_billing_numbers_that_are_not_whole_numbers_in_range_are_a_400_before_any_hold(gateway, provider, field,
                                                                                      value):
    account, _, headers = new_key("user")
    response = chat(gateway, headers, model="openai/gpt-test", **{field: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and error["code"] == "invalid_value"
    assert provider.sent == [] and records(account.account_id) == []


@pytest.mark.parametrize(("field", "value"), [
    ("service_tier", "priority"), ("service_tier", "flex"), ("service_tier", "scale"), ("service_tier", 3),
    ("web_search_options", {}), ("prediction", {"type": "content", "content": "x"}),
    ("audio", {"voice": "alloy", "format": "wav"}), ("modalities", ["text", "audio"]),
    ("plugins", [{"id": "web"}]),  # `models` is no longer here: fallbacks are a feature (issue 15)
    # what a probe got through to the upstream before the allow-list (issue 22, 4):
    ("provider", {"order": ["some-pricier-host"], "allow_fallbacks": True}),  # OpenRouter's routing
    ("search_parameters", {"mode": "on"}),  # xAI live search, billed per source
    ("transforms", ["middle-out"]), ("route", "fallback"), ("extra_body", {"x": 1}), ("anything_new", 1),
])
def test_fields_that_change_the_providers_price_are_refused(gateway, provider, field, value):
    account, _, headers = new_key("user")
    response = chat(gateway, headers, model="openai/gpt-test", **{field: value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field
    assert response.json()["error"]["code"] == "unpriced_option"
    assert provider.sent == [] and records(account.account_id) == []


@pytest.mark.parametrize("tool", [{"type": "browser_search"}, {"type": "code_interpreter"},
                                  {"type": "web_search_preview"}, {"type": "web_search"}, {"type": "mcp"}, "bash"])
def test_tools_billed_per_use_are_refused(gateway, provider, tool):
    account, _, headers = new_key("user")
    response = chat(gateway, headers, model="openai/gpt-test", tools=[
        {"type": "function", "function": {"name": "f", "parameters": {}}}, tool])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "tools[1]"
    assert response.json()["error"]["code"] == "unpriced_option"
    assert provider.sent == [] and records(account.account_id) == []


def test_store_true_is_refused_and_store_never_goes_upstream(gateway, provider):
    account, _, headers = new_key("user")
    refused = chat(gateway, headers, model="openai/gpt-test", store=True)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "stateful_option"
    assert chat(gateway, headers, model="openai/gpt-test", store=False, max_tokens=5).status_code == 200
    [sent] = provider.sent
    assert "store" not in sent  # absent is false at OpenAI: tenant prompts are never kept in the platform's account


@pytest.mark.parametrize("tier", ["auto", "default", None])
def test_standard_service_tiers_pass(gateway, provider, tier):
    _, _, headers = new_key("user")
    response = chat(gateway, headers, model="openai/gpt-test", service_tier=tier, modalities=["text"])
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------------------------------------- 3. parts


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
AUDIO_DATA = "UklGR" + "A" * 995  # 1,000 characters of base64: its bytes are the audio's, not text
AUDIO = {"type": "input_audio", "input_audio": {"data": AUDIO_DATA, "format": "wav"}}
PDF_DATA = "data:application/pdf;base64," + "J" * 1972  # 2,000 characters
DOCUMENT = {"type": "file", "file": {"file_data": PDF_DATA, "filename": "a.pdf"}}
STORED_FILE = {"type": "file", "file": {"file_id": "file-abc"}}


def _bounded_model() -> None:
    """gpt-test with a bound for every media kind: image 700, audio 300 (audio input at 40 USD/M), document 5,000."""
    catalog.set_model("openai/gpt-test", input_usd_per_mtok=str(PRICE_IN), output_usd_per_mtok=str(PRICE_OUT),
                      max_output_tokens=1000, tokens_per_image=700, tokens_per_audio=300,
                      audio_input_usd_per_mtok="40", tokens_per_document=5000)
    catalog.catalog_cache.invalidate()


def test_each_media_part_adds_its_kinds_catalog_bound_and_audio_is_held_at_its_price(gateway, provider):
    _bounded_model()
    account, _, headers = new_key("partner_project")  # USD, 50%: no FX in the arithmetic below
    body = {"model": "openai/gpt-test", "max_tokens": 10, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "what is this"}, IMAGE, AUDIO, DOCUMENT]}]}
    raw = json.dumps(body).encode()
    response = gateway.post("/v1/chat/completions", headers={**headers, "content-type": "application/json"},
                            content=raw)
    assert response.status_code == 200, response.text
    [record] = records(account.account_id)
    text = len(raw) - 1000 - 2000  # the base64 payloads are bounded by their parts, not counted as text
    assert record.hold_prompt_tokens == text + 700 + 300 + 5000
    assert (record.media_parts, record.hold_audio_tokens) == (3, 300)
    # text and the image and document bounds at 2 USD/M, audio at 40, 10 output at 8; +50%, rounded up:
    # ((text + 5700) × 2 + 300 × 40 + 10 × 8) × 1.5 micro-USD.
    assert record.hold_micros == ((text + 5700) * 2 + 300 * 40 + 80) * 3 // 2 + ((text + 5700) * 2 + 12080) % 2


@pytest.mark.parametrize(("part", "why"), [
    (IMAGE, "no bound for image"), (DOCUMENT, "no bound for document"), (AUDIO, "no price"),
    (STORED_FILE, "stored at the provider"),
    ({"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}}, "part type 'video_url'"),
    ({"type": "document_url", "document_url": "https://example.com/a.pdf"}, "part type 'document_url'")])
def test_a_part_the_model_cannot_bound_is_refused_before_any_hold(gateway, provider, part, why):
    """mock/test-max's catalog entry has no media bounds: whatever the form (inline, by URL), a part whose tokens
    cannot be bounded never reaches the provider (there was one flat 4,096-token bound for every part before)."""
    account, _, headers = new_key("user")
    response = chat(gateway, headers, model="mock/test-max", max_tokens=10,
                    messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("unpriced_option", "messages[0].content[1]") and why in error["message"]
    assert provider.sent == [] and records(account.account_id) == []


def test_parts_the_balance_cannot_cover_get_402_and_never_reach_the_upstream(gateway, provider):
    # Text alone: ~200 tokens + 10 output ≈ 0.04 TRY. Forty images at 700 tokens: ≈ 3.5 TRY. The balance: 1 TRY.
    account, _, headers = new_key("user", amount="1")
    response = chat(gateway, headers, model="openai/gpt-test", max_tokens=10,
                    messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}] + [IMAGE] * 40}])
    assert response.status_code == 402, response.text
    assert provider.sent == [] and records(account.account_id) == []
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=10).status_code == 200  # text alone fits


# ---------------------------------------------------------------------------------------------- 4. exact pricing


def test_cached_input_cache_writes_and_reasoning_are_priced_as_the_catalog_says(gateway, provider):
    provider.usage = {"prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300,
                      "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 100},
                      "completion_tokens_details": {"reasoning_tokens": 200}}
    account, _, headers = new_key("partner_project")  # USD, markup 50%
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=500).status_code == 200
    [record] = records(account.account_id)
    cost = (money.usd_cost(300, PRICE_IN) + money.usd_cost(600, CACHED_IN) + money.usd_cost(100, CACHE_WRITE)
            + money.usd_cost(300, PRICE_OUT))
    assert record.charge_micros == money.charge_micros(cost, 5000, Decimal(1))
    assert (record.cached_tokens, record.cache_write_tokens, record.reasoning_tokens) == (600, 100, 200)
    assert (record.cached_input_usd_per_mtok, record.cache_write_usd_per_mtok) == (str(CACHED_IN), str(CACHE_WRITE))
    assert record.provider_cost_usd == str(cost) and record.usage_estimated is None


def test_anthropic_cache_reads_and_writes_are_added_to_the_input(gateway, provider):
    # Anthropic's native usage: input_tokens excludes the cache reads and writes, reported beside it.
    provider.usage = {"prompt_tokens": 50, "completion_tokens": 10, "cache_read_input_tokens": 400,
                      "cache_creation_input_tokens": 80}
    account, _, headers = new_key("partner_project")
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=20).status_code == 200
    [record] = records(account.account_id)
    cost = (money.usd_cost(50, PRICE_IN) + money.usd_cost(400, CACHED_IN) + money.usd_cost(80, CACHE_WRITE)
            + money.usd_cost(10, PRICE_OUT))
    assert record.charge_micros == money.charge_micros(cost, 5000, Decimal(1))
    assert (record.prompt_tokens, record.cached_tokens, record.cache_write_tokens) == (530, 400, 80)


def test_reasoning_reported_beside_the_completion_is_billed_as_output(gateway, provider):
    # Some providers leave reasoning out of completion_tokens; total_tokens then counts it.
    provider.usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 415,
                      "completion_tokens_details": {"reasoning_tokens": 400}}
    account, _, headers = new_key("partner_project")
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=500).status_code == 200
    [record] = records(account.account_id)
    assert record.completion_tokens == 405
    assert record.charge_micros == 4890  # 10 × 2 + 405 × 8 = 3,260 µUSD, × 1.5


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": -1000, "completion_tokens": 3},
    {"prompt_tokens": 5, "completion_tokens": -3},
    {"prompt_tokens": 5.5, "completion_tokens": 3},
    {"prompt_tokens": "5", "completion_tokens": 3},
    {"prompt_tokens": 5, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 9}},
    {"prompt_tokens": 10 ** 30, "completion_tokens": 3},
], ids=["negative-prompt", "negative-completion", "float", "text", "cached-above-prompt", "absurd"])
@pytest.mark.parametrize("stream", [False, True])
def test_usage_that_makes_no_sense_is_billed_on_the_estimate_and_marked(gateway, provider, usage, stream):
    provider.usage, provider.stream = usage, stream
    account, _, headers = new_key("user")
    response = chat(gateway, headers, model="openai/gpt-test", max_tokens=20, stream=stream)
    assert response.status_code == 200, response.text
    [record] = records(account.account_id)
    assert record.status == "settled" and record.usage_estimated == "true"
    assert 0 < record.charge_micros <= record.hold_micros
    assert get_account(account.account_id).balance_micros == 100_000_000 - record.charge_micros


# ---------------------------------------------------------------------------------------------- 5. overrun = debt


def test_usage_above_the_hold_is_charged_in_full_as_a_debt_and_refuses_until_a_top_up(gateway, provider):
    provider.usage = {"prompt_tokens": 10, "completion_tokens": 4_000_000, "total_tokens": 4_000_010}
    account, key, headers = new_key("user", amount="10", tpm=10**9)  # 4M tokens: not a rate-limit test
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=10).status_code == 200
    [record] = records(account.account_id)
    charge = 1_992_001_245  # (10 × 2 + 4,000,000 × 8) µUSD × 1.5 × 41.5, exact
    assert record.charge_micros == charge > record.hold_micros
    assert record.overrun == "true" and record.overrun_micros == charge - record.hold_micros
    balance = get_account(account.account_id).balance_micros
    assert balance == 10_000_000 - charge < 0
    provider.usage = {"prompt_tokens": 5, "completion_tokens": 3}
    refused = chat(gateway, headers, model="openai/gpt-test", max_tokens=10)
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "insufficient_balance"
    assert money.format_micros(balance) in refused.json()["error"]["message"]
    top_up(account.account_id, -balance)  # back to exactly zero: still refused
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=10).status_code == 402
    top_up(account.account_id, 1_000_000)
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=10).status_code == 200
    from tests.helpers import key_totals

    assert key_totals(key.key_id).spend_micros == sum(r.charge_micros for r in records(account.account_id))


def test_embeddings_are_charged_what_the_provider_reports_even_above_the_hold(gateway, provider):
    provider.usage = {"prompt_tokens": 1000, "total_tokens": 1000}
    account, _, headers = new_key("partner_project")
    response = gateway.post("/v1/embeddings", headers=headers, json={"model": "openai/embed-test", "input": "hello"})
    assert response.status_code == 200, response.text
    [record] = records(account.account_id)
    expected = money.charge_micros(money.usd_cost(1000, Decimal("0.02")), 5000, Decimal(1))
    assert record.charge_micros == expected > record.hold_micros and record.overrun == "true"
    assert 100_000_000 - get_account(account.account_id).balance_micros == expected


# ---------------------------------------------------------------------------------------------- 6. never free


def test_a_stream_past_the_proxys_deadline_is_ended_and_charged_its_hold(gateway, monkeypatch):
    # The deadline counts from the request's start: it leaves the hold (slow on a loaded CI machine) time to finish,
    # and a few 0.4 s chunks arrive before it, of the reply's 16.
    monkeypatch.setenv("ONYSOFT_PROXY_DEADLINE_SECONDS", "2.0")
    monkeypatch.setitem(mock_provider.CHUNK_DELAY, "slow-stream", 0.4)
    account, _, headers = new_key("user")
    catalog.set_model("mock/slow-stream", input_usd_per_mtok="1", output_usd_per_mtok="2")
    catalog.catalog_cache.invalidate()
    response = chat(gateway, headers, model="mock/slow-stream", stream=True, max_tokens=20,
                    messages=[{"role": "user", "content": "one two three four five six seven eight nine ten"}])
    assert response.status_code == 200
    assert "[DONE]" not in response.text and "gateway_deadline" in response.text
    [record] = records(account.account_id)
    assert (record.status, record.usage_estimated, record.estimate_reason) == ("settled", "true", "deadline")
    # Its usage never came: the provider may bill all it was allowed, so the call is charged the hold.
    assert record.completion_tokens == 20 and record.charge_micros == record.hold_micros
    assert get_account(account.account_id).balance_micros == 100_000_000 - record.charge_micros


def test_the_default_deadline_is_the_function_timeout_minus_a_margin(monkeypatch):
    monkeypatch.delenv("ONYSOFT_PROXY_DEADLINE_SECONDS", raising=False)
    assert forwarding.deadline_seconds() == 870  # the function's 900 s timeout minus a 30 s margin
    monkeypatch.setenv("ONYSOFT_PROXY_DEADLINE_SECONDS", "12.5")
    assert forwarding.deadline_seconds() == 12.5


@pytest.mark.parametrize("stream", [False, True])
def test_a_settle_that_fails_is_retried_and_never_released(gateway, provider, monkeypatch, stream):
    provider.stream = stream
    real = billing._transact
    failures = {"left": 2}

    def flaky(token, **items):
        if token.startswith("c") and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("DynamoDB had a bad moment")
        return real(token, **items)

    monkeypatch.setattr(billing, "_transact", flaky)
    account, _, headers = new_key("user")
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=10, stream=stream).status_code == 200
    [record] = records(account.account_id)
    assert failures["left"] == 0
    assert record.status == "settled" and record.charge_micros == 2117  # (5 × 2 + 3 × 8) × 1.5 × 41.5 = 2,116.5 ↑


def test_a_settle_that_keeps_failing_leaves_the_hold_for_the_sweeper_to_settle(gateway, provider, monkeypatch):
    real = billing._transact

    def broken(token, **items):
        if token.startswith("c"):
            raise RuntimeError("DynamoDB is down")
        return real(token, **items)

    monkeypatch.setattr(billing, "_transact", broken)
    monkeypatch.setattr(forwarding, "SETTLE_ATTEMPTS", 2)
    account, _, headers = new_key("user")
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=10).status_code == 200
    [record] = records(account.account_id)
    assert record.status == "pending" and record.sent_at
    monkeypatch.setattr(billing, "_transact", real)
    from onysoft.sweeper import close_stale_holds

    later = clock.to_iso(clock.utc_now() + timedelta(minutes=21))
    assert close_stale_holds(now_iso=later)["settled"] == 1
    [record] = records(account.account_id)
    assert record.status == "settled" and record.usage_estimated == "true"
    assert (record.completion_tokens, record.estimate_reason) == (10, "stale_hold")  # the whole hold
    assert record.charge_micros == record.hold_micros > 0


def _stale_hold(account, key, request_id: str, sent: bool) -> billing.Hold:
    from onysoft.caller import CallerContext

    factors = hold_sizing.ChargeFactors(catalog.get_model("mock/echo"), 5000, FX, "")
    caller = CallerContext(key_id=key.key_id, key_type="user", account_id=account.account_id, currency="TRY",
                           markup_bp=5000)
    plan = hold_sizing.HoldPlan(prompt_tokens=300, output_tokens=100, client_set_output_limit=True,
                                micros=factors.charge_micros(Usage(300, 100)))
    hold = billing.place_hold(request_id=request_id, key_hash=key.key_hash, caller=caller, plan=plan,
                              factors=factors, endpoint="chat.completions", stream=True, model="mock/echo")
    if sent:
        billing.mark_sent(hold)
    return hold


def test_the_sweeper_charges_a_sent_hold_in_full_and_releases_only_an_unsent_one(gateway):
    from onysoft.sweeper import close_stale_holds

    account, key, _ = new_key("user")
    _stale_hold(account, key, "req_sent", sent=True)
    _stale_hold(account, key, "req_never_sent", sent=False)
    later = clock.to_iso(clock.utc_now() + timedelta(minutes=21))
    result = close_stale_holds(now_iso=later)
    assert (result["settled"], result["released"], result["close_failures"]) == (1, 1, 0)
    by_id = {r.request_id: r for r in records(account.account_id)}
    sent, unsent = by_id["req_sent"], by_id["req_never_sent"]
    assert sent.status == "settled" and sent.usage_estimated == "true" and sent.error_code is None
    assert (sent.prompt_tokens, sent.completion_tokens) == (300, 100)
    # 300 × 1.25 + 100 × 2.5 = 625 USD per million: 0.000625 × 1.5 × 41.5 = 0.03890625 TRY → 38,907 µ (rounded up).
    expected = 38907
    assert sent.charge_micros == expected == sent.hold_micros
    assert unsent.status == "failed" and unsent.error_code == "stale_hold" and unsent.charge_micros == 0
    assert get_account(account.account_id).balance_micros == 100_000_000 - expected


def test_the_sweeper_goes_on_past_a_record_it_cannot_close_and_counts_it(gateway, monkeypatch, caplog):
    from onysoft import sweeper

    account, key, _ = new_key("user")
    for n in range(3):
        _stale_hold(account, key, f"req_stuck_{n}", sent=True)
    real = billing.settle

    def settle(hold, *args, **kwargs):
        if hold.request_id == "req_stuck_1":
            raise RuntimeError("cannot write this one")
        return real(hold, *args, **kwargs)

    monkeypatch.setattr(billing, "settle", settle)
    later = clock.to_iso(clock.utc_now() + timedelta(minutes=21))
    result = sweeper.close_stale_holds(now_iso=later)
    assert (result["settled"], result["close_failures"]) == (2, 1)
    assert "req_stuck_1" in caplog.text
    assert {r.request_id: r.status for r in records(account.account_id)}["req_stuck_1"] == "pending"


def test_the_sweeper_handler_counts_close_failures_in_a_metric(gateway, monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    from onysoft import sweeper

    monkeypatch.setattr(sweeper, "close_stale_holds", lambda **kw: {
        "settled": 1, "released": 0, "already_closed": 0, "close_failures": 2})
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "sweeper")  # metrics are written in Lambda only
    path = Path(__file__).resolve().parents[2] / "functions" / "sweeper" / "app.py"
    spec = importlib.util.spec_from_file_location("sweeper_app", path)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)

    class Context:
        function_name, memory_limit_in_mb, aws_request_id = "sweeper", 128, "r-1"
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:sweeper"

    capsys.readouterr()
    assert app.handler({}, Context())["close_failures"] == 2
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    [metrics] = [e for e in emitted if "SweeperCloseFailures" in e]
    assert metrics["SweeperCloseFailures"] in (2, 2.0, [2.0])  # EMF: a value or a list of values
    assert metrics["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Onysoft"


def test_the_sweepers_role_may_write_every_table_its_closes_write(gateway):
    """Conformance: the tables a sweeper run's transactions touch (a key with a spend limit: its counter in
    RateLimits moves too) are all in the SweeperFunction's UpdateItem statement in template.yaml."""
    from onysoft import config
    from onysoft.models import Account
    from onysoft.sweeper import close_stale_holds
    from onysoft_tools import template

    account, key, _ = new_key("user", spend_limit_micros=50_000_000, limit_reset="daily")
    key_hash = key.key_hash
    from onysoft.caller import CallerContext

    factors = hold_sizing.ChargeFactors(catalog.get_model("mock/echo"), 5000, FX, "")
    caller = CallerContext(key_id=key.key_id, key_type="user", account_id=account.account_id, currency="TRY",
                           markup_bp=5000, spend_limit_micros=50_000_000, limit_reset="daily")
    plan = hold_sizing.HoldPlan(100, 10, True, factors.charge_micros(Usage(100, 10)))
    for request_id, sent in (("req_a", True), ("req_b", False)):
        hold = billing.place_hold(request_id=request_id, key_hash=key_hash, caller=caller, plan=plan,
                                  factors=factors, endpoint="chat.completions", stream=False, model="mock/echo")
        if sent:
            billing.mark_sent(hold)
    written: set[str] = set()

    def record_tables(params, **kwargs):
        for item in params.get("TransactItems", [params]):  # the settle's transaction
            for operation in item.values() if "TransactItems" in params else [item]:
                written.add(operation["TableName"])

    client = Account._get_connection().connection.client
    events = ("before-parameter-build.dynamodb.TransactWriteItems", "before-parameter-build.dynamodb.UpdateItem")
    for event in events:
        client.meta.events.register(event, record_tables)
    try:
        later = clock.to_iso(clock.utc_now() + timedelta(minutes=21))
        assert close_stale_holds(now_iso=later)["close_failures"] == 0
    finally:
        for event in events:
            client.meta.events.unregister(event, record_tables)
    tpl = template.load_template()
    table_of = {config.table_name(env): logical for logical, env in template.table_env(tpl).items()}
    allowed = {resource["Fn::GetAtt"][0]
               for statement in tpl["Resources"]["SweeperFunction"]["Properties"]["Policies"][0]["Statement"]
               if "dynamodb:UpdateItem" in statement["Action"] for resource in statement["Resource"]}
    # The key item is not written by a close since issue 16 (its count and spend are the usage rollup's).
    assert {table_of[name] for name in written} == {"UsageTable", "AccountsTable", "RateLimitsTable"}
    assert {table_of[name] for name in written} <= allowed


def test_a_client_that_hangs_up_mid_stream_is_settled_before_its_request_ends(gateway):
    """The race behind holds left open at a stop (issue 21: test_dev_stop saw two): when the client goes away while
    the relay is waiting to hand it the next chunk, Starlette leaves the relay generator suspended, and its
    `finally` (the settle) ran only when the generator was finalized — at a garbage collection, or at the event
    loop's shutdown, or never if the process was killed first. Here the exception that ended the request is kept,
    so nothing collects the generator before the loop shuts down (seen before the fix: settled then, too late to
    read the provider's usage, so charged the whole hold). The settle must run inside the request, and since the
    client hung up before the provider's usage, the gateway reads on to it: the call costs exactly that usage."""
    import asyncio

    from onysoft import proxy_app

    account, _, headers = new_key("user")
    body = json.dumps({"model": "mock/echo", "stream": True, "max_tokens": 50,
                       "messages": [{"role": "user", "content": "one two three four five"}]}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
             + [(b"content-type", b"application/json")]}
    sent: list[dict] = []
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # the client never says it left: its next write just fails
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and any(m["type"] == "http.response.body" for m in sent):
            raise OSError("the client is gone")
        sent.append(message)

    kept: list[BaseException] = []

    async def run() -> None:
        try:
            await proxy_app.app(scope, receive, send)
        except BaseException as exc:  # noqa: BLE001 - kept, frames and all
            kept.append(exc)

    asyncio.run(run())
    assert kept, "the request should have ended with the client's disconnect"
    [record] = records(account.account_id)
    assert record.status == "settled", "the hang-up left the hold open until the generator is collected"
    assert record.usage_estimated is None  # read on after the hang-up, to the provider's own usage
    assert (record.prompt_tokens, record.completion_tokens) == (8, 11)


# ---------------------------------------------------------------------------------------------- 7. FX has an age


def _rate_set(hours_ago: float) -> None:
    from onysoft.models import CatalogEntry

    at = clock.to_iso(clock.utc_now() - timedelta(hours=hours_ago))
    CatalogEntry(kind="fx", id="USDTRY", rate="41.5", updated_at=at).save()
    catalog.catalog_cache.invalidate()


def test_a_usd_try_rate_past_its_hard_age_refuses_try_holds_with_503(gateway, provider):
    _rate_set(hours_ago=7 * 24 + 1)  # the default hard age is 7 days
    account, _, headers = new_key("user")  # TRY
    response = chat(gateway, headers, model="openai/gpt-test", max_tokens=10)
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "fx_rate_stale" and "169 hours" in error["message"]
    assert provider.sent == [] and records(account.account_id) == []
    assert get_account(account.account_id).balance_micros == 100_000_000
    _, _, usd = new_key("partner_project")  # a USD account converts nothing: it goes on
    assert chat(gateway, usd, model="openai/gpt-test", max_tokens=10).status_code == 200


def test_a_rate_past_its_warning_age_still_serves_and_is_reported(gateway, provider, monkeypatch, caplog):
    monkeypatch.setenv("ONYSOFT_FX_WARN_AGE_HOURS", "2")
    monkeypatch.setenv("ONYSOFT_FX_MAX_AGE_HOURS", "10")
    _rate_set(hours_ago=3)
    _, _, headers = new_key("user")
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=10).status_code == 200
    assert "fx rate past its warning age" in caplog.text
    _rate_set(hours_ago=11)
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=10).status_code == 503


# ---------------------------------------------------------------------------------------------- 8. usage the catalog
# prices apart: audio input, long-context tiers, output seen only in the total (issue 22, 5). Literal amounts.


def test_audio_input_tokens_are_priced_at_the_audio_price(gateway, provider):
    _bounded_model()  # audio input at 40 USD/M, text at 2, output at 8
    provider.usage = {"prompt_tokens": 1000, "completion_tokens": 10, "total_tokens": 1010,
                      "prompt_tokens_details": {"audio_tokens": 600}}
    account, _, headers = new_key("user")  # TRY, 50%
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=10).status_code == 200
    [record] = records(account.account_id)
    # 400 text × 2 + 600 audio × 40 + 10 × 8 = 24,880 µUSD; × 1.5 × 41.5 = 1,548,780 µ TRY (exact).
    assert (record.audio_tokens, record.charge_micros) == (600, 1_548_780)


def test_audio_reported_for_output_is_not_believed(gateway, provider):
    provider.usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                      "completion_tokens_details": {"audio_tokens": 3}}
    account, _, headers = new_key("user")
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=10).status_code == 200
    [record] = records(account.account_id)
    assert record.usage_estimated == "true" and record.charge_micros == record.hold_micros


def test_a_long_context_tier_holds_and_charges_at_the_tiers_prices(gateway, provider):
    catalog.set_model("openai/gpt-long", input_usd_per_mtok="2", output_usd_per_mtok="8", tier_above_tokens=1000,
                      tier_input_usd_per_mtok="4", tier_output_usd_per_mtok="16")
    catalog.catalog_cache.invalidate()
    account, _, headers = new_key("partner_project")  # USD, 50%
    long_text = "x" * 1200
    body = {"model": "openai/gpt-long", "max_tokens": 10, "messages": [{"role": "user", "content": long_text}]}
    raw = json.dumps(body).encode()
    provider.usage = {"prompt_tokens": 1100, "completion_tokens": 10, "total_tokens": 1110}
    response = gateway.post("/v1/chat/completions", headers={**headers, "content-type": "application/json"},
                            content=raw)
    assert response.status_code == 200, response.text
    provider.usage = {"prompt_tokens": 900, "completion_tokens": 10, "total_tokens": 910}
    assert chat(gateway, headers, model="openai/gpt-long", max_tokens=10).status_code == 200
    tiered, base = sorted(records(account.account_id), key=lambda r: -int(r.prompt_tokens))
    # The prompt bound (the body's bytes) is above 1,000: held at the tier, (bytes × 4 + 10 × 16) × 1.5.
    assert tiered.hold_prompt_tokens == len(raw) > 1000
    assert tiered.hold_micros == (len(raw) * 4 + 160) * 3 // 2
    # 1,100 prompt tokens are in the tier: 1,100 × 4 + 10 × 16 = 4,560 µUSD, × 1.5 = 6,840.
    assert tiered.charge_micros == 6840 and tiered.tier_above_tokens == 1000
    # 900 are not: 900 × 2 + 10 × 8 = 1,880, × 1.5 = 2,820.
    assert base.charge_micros == 2820


def test_output_counted_only_in_the_total_is_billed_as_output(gateway, provider):
    """405 thinking tokens a provider reports only in total_tokens (a probe got them unbilled before)."""
    provider.usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 525}
    account, _, headers = new_key("partner_project")
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=500).status_code == 200
    [record] = records(account.account_id)
    # completion 525 − 100 = 425: 100 × 2 + 425 × 8 = 3,600 µUSD, × 1.5 = 5,400.
    assert (record.completion_tokens, record.charge_micros) == (425, 5400)


def test_a_settle_retried_after_a_failure_sends_the_same_transaction(gateway, provider, monkeypatch):
    """A retry under the same client request token must carry the same parameters (else DynamoDB answers
    IdempotentParameterMismatch when the first attempt had in fact committed): one settled_at for every attempt."""
    calls = []
    real = billing.settle

    def flaky(hold, usage, **kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise RuntimeError("the answer to the first attempt was lost")
        return real(hold, usage, **kwargs)

    monkeypatch.setattr(billing, "settle", flaky)
    account, _, headers = new_key("user")
    assert chat(gateway, headers, model="openai/gpt-test", max_tokens=10).status_code == 200
    assert len(calls) == 2 and calls[0] == calls[1] and calls[0]["settled_at"]
    [record] = records(account.account_id)
    assert record.settled_at == calls[0]["settled_at"]


def test_logprobs_that_cannot_fit_an_assembled_answer_are_refused(gateway, provider):
    account, _, headers = new_key("user")
    response = chat(gateway, headers, model="mock/test-max", logprobs=True, top_logprobs=20, n=128)
    assert response.status_code == 400 and response.json()["error"]["code"] == "response_too_large"
    assert provider.sent == [] and records(account.account_id) == []
    streamed = chat(gateway, headers, model="openai/gpt-test", logprobs=True, top_logprobs=20, n=4, stream=True)
    assert streamed.status_code == 200  # a stream is never assembled: no limit


def test_an_answer_too_large_to_assemble_is_charged_and_the_client_told(gateway, provider, monkeypatch):
    monkeypatch.setattr(forwarding, "MAX_ANSWER_BYTES", 300)
    provider.content = "y" * 1000
    account, _, headers = new_key("partner_project")
    response = chat(gateway, headers, model="openai/gpt-test", max_tokens=10)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "response_too_large"
    [record] = records(account.account_id)
    # Read to its end for the usage all the same: charged exactly 5 × 2 + 3 × 8 = 34 µUSD, × 1.5 = 51.
    assert (record.usage_estimated, record.charge_micros) == (None, 51)


def test_idle_upstream_connections_are_dropped_before_a_servers_idle_timeout_can_close_them():
    """The gateway's half of a keep-alive race (seen in test_shards_concurrency: a request written into a pooled
    connection the provider was closing after its 5 s idle timeout; sent, so charged its hold, and a 502). An idle
    connection must be dropped before the shortest common server idle timeout, uvicorn's 5 s."""
    from onysoft.providers import get_provider

    client = upstream.client_for(get_provider("openai"))
    assert client._transport.keepalive_seconds < 5.0  # onysoft.upstream_transport (its use: its own tests)
