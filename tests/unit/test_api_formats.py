"""Issue 15 in-process: the Responses API and Anthropic's Messages API read usage as hostile input and go through
the one hold → forward → settle path; fallbacks hold for the most expensive candidate and charge the one that
answered. The provider is a recording httpx transport that answers in the route's own format with the usage it
is told to report (moto mock_aws, single-threaded)."""

import json
from decimal import Decimal

import httpx
import pytest

from onysoft import catalog, forwarding, money, sse, upstream
from onysoft.accounts import get_account
from onysoft.api_formats import get as api_format
from onysoft.api_formats.messages import MessagesTally
from onysoft.models import UsageRecord
from tests.unit.conftest import FX, new_key
from tests.unit.test_money_integrity import _Chunks

PRICE_IN, PRICE_OUT = Decimal("2"), Decimal("8")
CACHED_IN, CACHE_WRITE = Decimal("0.5"), Decimal("2.5")
RESPONSES_USAGE = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 7,
                   "output_tokens_details": {"reasoning_tokens": 5}, "total_tokens": 17}
MESSAGES_USAGE = {"input_tokens": 10, "cache_read_input_tokens": 6, "cache_creation_input_tokens": 2,
                  "output_tokens": 7}


# ------------------------------------------------------------------------------------------- usage parsing


def test_responses_usage_prices_cached_input_and_keeps_reasoning_inside_the_output():
    usage = api_format("responses").read_usage(RESPONSES_USAGE)
    assert (usage.prompt_tokens, usage.completion_tokens) == (10, 7)
    assert (usage.cached_tokens, usage.reasoning_tokens, usage.cache_write_tokens) == (4, 5, 0)
    assert not usage.estimated


def test_messages_usage_adds_cache_reads_and_writes_beside_the_input():
    usage = api_format("messages").read_usage(MESSAGES_USAGE)
    assert (usage.prompt_tokens, usage.completion_tokens) == (18, 7)
    assert (usage.cached_tokens, usage.cache_write_tokens) == (6, 2)


HOSTILE = [-1, 2.5, "10", 10 ** 30, True, None, [], {"n": 1}]


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
@pytest.mark.parametrize("name", ["input_tokens", "output_tokens"])
def test_responses_usage_with_a_count_that_is_not_a_count_is_not_trusted(name, value):
    assert api_format("responses").read_usage({**RESPONSES_USAGE, name: value}) is None


@pytest.mark.parametrize("details", [
    {"input_tokens_details": {"cached_tokens": 11}},  # cached above the input
    {"input_tokens_details": {"cached_tokens": -4}},
    {"input_tokens_details": {"cached_tokens": "4"}},
    {"output_tokens_details": {"reasoning_tokens": 8}},  # reasoning above the output
    {"output_tokens_details": {"reasoning_tokens": 1e9}},
], ids=["cached-above-input", "cached-negative", "cached-text", "reasoning-above-output", "reasoning-float"])
def test_responses_usage_with_nonsense_details_is_not_trusted(details):
    assert api_format("responses").read_usage({**RESPONSES_USAGE, **details}) is None


def test_responses_usage_with_details_of_the_wrong_shape_ignores_them():
    usage = api_format("responses").read_usage({**RESPONSES_USAGE, "input_tokens_details": "lots",
                                                "output_tokens_details": [1]})
    assert (usage.prompt_tokens, usage.cached_tokens, usage.reasoning_tokens) == (10, 0, 0)


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
@pytest.mark.parametrize("name", ["input_tokens", "output_tokens", "cache_read_input_tokens",
                                  "cache_creation_input_tokens"])
def test_messages_usage_with_a_count_that_is_not_a_count_is_not_trusted(name, value):
    if value is None and name.startswith("cache"):
        pytest.skip("an absent cache count is zero")
    assert api_format("messages").read_usage({**MESSAGES_USAGE, name: value}) is None


@pytest.mark.parametrize("raw", [None, "usage", 7, [MESSAGES_USAGE]])
def test_usage_that_is_not_an_object_is_not_trusted(raw):
    assert api_format("messages").read_usage(raw) is None
    assert api_format("responses").read_usage(raw) is None


def _events(*payloads: dict) -> list[bytes]:
    return [f"event: {p['type']}\ndata: {json.dumps(p)}\n\n".encode() for p in payloads]


def test_a_messages_stream_takes_input_from_message_start_and_output_from_the_last_message_delta():
    fmt, tally = api_format("messages"), MessagesTally()
    verdicts = [fmt.inspect(event, tally) for event in _events(
        {"type": "message_start", "message": {"usage": {"input_tokens": 10, "cache_read_input_tokens": 6,
                                                        "output_tokens": 1}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hello"}},
        {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 3}},
        {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 9}},
        {"type": "message_stop"})]
    assert verdicts[-1] == "final" and set(verdicts[:-1]) == {"pass"}
    assert fmt.stream_complete(tally) and tally.delivered_chars == 5
    usage = fmt.read_usage(tally.usage)
    assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) == (16, 6, 9)


def test_a_messages_stream_cut_before_message_stop_is_not_complete():
    fmt, tally = api_format("messages"), MessagesTally()
    for event in _events({"type": "message_start", "message": {"usage": {"input_tokens": 10, "output_tokens": 1}}},
                         {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}):
        fmt.inspect(event, tally)
    assert not fmt.stream_complete(tally)


def test_a_responses_stream_takes_usage_from_response_completed_only():
    fmt, tally = api_format("responses"), sse.StreamTally()
    verdicts = [fmt.inspect(event, tally) for event in _events(
        {"type": "response.created", "response": {"usage": {"input_tokens": 10 ** 9, "output_tokens": 0}}},
        {"type": "response.output_text.delta", "delta": "abc"},
        {"type": "response.completed", "response": {"usage": RESPONSES_USAGE}})]
    assert verdicts == ["pass", "pass", "final"]
    assert fmt.stream_complete(tally) and fmt.read_usage(tally.usage).prompt_tokens == 10


# ------------------------------------------------------------------------------------------- through the proxy


class Provider(httpx.AsyncBaseTransport):
    """Answers /responses and /messages in their own format (streamed or not) with the usage it is given; a model
    named `*-down` answers 503. Records every request (body and headers)."""

    def __init__(self):
        self.sent: list[dict] = []
        self.responses_usage, self.messages_usage = dict(RESPONSES_USAGE), dict(MESSAGES_USAGE)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread())
        self.sent.append({"body": body, "headers": dict(request.headers), "path": request.url.path})
        if body["model"].endswith("-down"):
            return httpx.Response(503, json={"error": {"message": "down"}})
        stream = body.get("stream")
        if request.url.path.endswith("/responses"):
            response = {"id": "resp_1", "object": "response", "model": body["model"], "status": "completed",
                        "output": [{"type": "message", "content": [{"type": "output_text", "text": "fine"}]}],
                        "usage": self.responses_usage}
            if not stream:
                return httpx.Response(200, json=response)
            events = _events({"type": "response.output_text.delta", "delta": "fine"},
                             {"type": "response.completed", "response": response})
        elif request.url.path.endswith("/messages"):
            message = {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                       "content": [{"type": "text", "text": "fine"}], "usage": self.messages_usage}
            if not stream:
                return httpx.Response(200, json=message)
            start = {k: v for k, v in self.messages_usage.items() if k != "output_tokens"}
            events = _events({"type": "message_start", "message": {**message, "usage": start}},
                             {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                                                   "text": "fine"}},
                             {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                              "usage": {"output_tokens": self.messages_usage.get("output_tokens")}},
                             {"type": "message_stop"})
        else:
            return httpx.Response(200, json={"id": "c", "object": "chat.completion", "model": body["model"],
                                             "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                  "content": "fine"}}],
                                             "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
        return httpx.Response(200, stream=_Chunks(events), headers={"content-type": "text/event-stream"})


@pytest.fixture
def provider(gateway, monkeypatch):
    recorder = Provider()
    monkeypatch.setenv("ONYSOFT_PROVIDER_OPENAI_API_KEY", "sk-upstream-openai")
    monkeypatch.setenv("ONYSOFT_PROVIDER_ANTHROPIC_API_KEY", "sk-upstream-anthropic")
    monkeypatch.setattr(upstream, "client_for", lambda p: httpx.AsyncClient(transport=recorder))
    prices = dict(input_usd_per_mtok=str(PRICE_IN), output_usd_per_mtok=str(PRICE_OUT), max_output_tokens=1000,
                  cached_input_usd_per_mtok=str(CACHED_IN), cache_write_usd_per_mtok=str(CACHE_WRITE))
    catalog.set_model("openai/gpt-r", **prices)
    catalog.set_model("openai/gpt-r-down", **{**prices, "input_usd_per_mtok": "30", "output_usd_per_mtok": "60"})
    catalog.set_model("openai/gpt-s-down", **prices)
    catalog.set_model("anthropic/claude-t", **prices)
    forwarding.catalog_cache.invalidate()
    return recorder


def records(account_id: str) -> list[UsageRecord]:
    return list(UsageRecord.query(account_id))


@pytest.mark.parametrize("stream", [False, True])
def test_responses_are_billed_from_their_usage_and_sent_with_store_false_and_the_held_limit(gateway, provider,
                                                                                          stream):
    account, _, headers = new_key("user")
    response = gateway.post("/v1/responses", headers=headers,
                            json={"model": "openai/gpt-r", "input": "hi", "max_output_tokens": 50, "stream": stream})
    assert response.status_code == 200, response.text
    [sent] = provider.sent
    assert sent["path"].endswith("/responses") and sent["body"]["store"] is False
    assert sent["body"]["max_output_tokens"] == 50 and sent["body"]["model"] == "gpt-r"
    assert sent["headers"]["authorization"] == "Bearer sk-upstream-openai"
    [record] = records(account.account_id)
    assert record.endpoint == "responses" and record.hold_output_tokens == 50 and record.usage_estimated is None
    assert (record.prompt_tokens, record.completion_tokens, record.cached_tokens) == (10, 7, 4)
    assert record.charge_micros == 4358  # (6 × 2 + 4 × 0.5 + 7 × 8) µUSD × 1.5 × 41.5 = 4,357.5, rounded up
    assert get_account(account.account_id).balance_micros == 100_000_000 - record.charge_micros


@pytest.mark.parametrize("stream", [False, True])
def test_messages_are_billed_with_cache_reads_and_writes_at_their_prices(gateway, provider, stream):
    account, _, headers = new_key("user")
    response = gateway.post("/v1/messages", headers={**headers, "anthropic-version": "2023-06-01",
                                                     "anthropic-beta": "web-search-2025-03-05,claude-code-20250219"},
                            json={"model": "anthropic/claude-t", "max_tokens": 5000, "stream": stream,
                                  "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    [sent] = provider.sent
    assert sent["path"].endswith("/messages") and sent["body"]["max_tokens"] == 1000  # the catalog's cap
    assert sent["headers"]["x-api-key"] == "sk-upstream-anthropic" and "authorization" not in sent["headers"]
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert sent["headers"]["anthropic-beta"] == "claude-code-20250219"  # betas that change no price only
    [record] = records(account.account_id)
    assert (record.prompt_tokens, record.cached_tokens, record.cache_write_tokens) == (18, 6, 2)
    assert record.charge_micros == 5229  # (10 × 2 + 6 × 0.5 + 2 × 2.5 + 7 × 8) µUSD × 1.5 × 41.5


def test_claude_codes_request_goes_through_with_its_context_edits_and_effort(gateway, provider):
    """What Claude Code sends with every request (captured from @anthropic-ai/claude-code, 2026-12): context editing
    that clears thinking and an effort level, with their betas. Both only lower what the provider bills (fewer
    input tokens; output capped by the held max_tokens), so they go upstream; the betas the gateway does not know
    are dropped."""
    account, _, headers = new_key("user")
    betas = ("claude-code-20250219,interleaved-thinking-2025-05-14,thinking-token-count-2026-05-13,"
             "context-management-2025-06-27,prompt-caching-scope-2026-01-05,effort-2025-11-24")
    body = {"model": "anthropic/claude-t", "max_tokens": 32000, "stream": True,
            "messages": [{"role": "user", "content": "hi"}], "system": [{"type": "text", "text": "You are Claude."}],
            "metadata": {"user_id": "u"}, "thinking": {"type": "enabled", "budget_tokens": 500},
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "output_config": {"effort": "high"}}
    response = gateway.post("/v1/messages", headers={**headers, "anthropic-beta": betas}, json=body)
    assert response.status_code == 200, response.text
    [sent] = provider.sent
    assert sent["body"]["context_management"] == body["context_management"]
    assert sent["body"]["output_config"] == {"effort": "high"} and sent["body"]["max_tokens"] == 1000  # as held
    assert sent["headers"]["anthropic-beta"] == ("claude-code-20250219,interleaved-thinking-2025-05-14,"
                                                 "context-management-2025-06-27,effort-2025-11-24")
    [record] = records(account.account_id)
    assert record.status == "settled"


@pytest.mark.parametrize("usage", [{"output_tokens": -7}, {"input_tokens": "10"}, {"cache_read_input_tokens": 10 ** 30},
                                   {"output_tokens": 7.5}], ids=["negative", "text", "huge", "float"])
@pytest.mark.parametrize("stream", [False, True])
def test_messages_with_nonsense_usage_are_billed_on_the_estimate_and_marked(gateway, provider, usage, stream):
    provider.messages_usage.update(usage)
    account, _, headers = new_key("user")
    response = gateway.post("/v1/messages", headers=headers, json={
        "model": "anthropic/claude-t", "max_tokens": 20, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    [record] = records(account.account_id)
    assert record.status == "settled" and record.usage_estimated == "true"
    assert 0 < record.charge_micros <= record.hold_micros


@pytest.mark.parametrize("usage", [{"output_tokens": -7}, {"input_tokens": "10"}, {"input_tokens": 10 ** 30},
                                   {"input_tokens_details": {"cached_tokens": 99}}],
                         ids=["negative", "text", "huge", "cached-above"])
@pytest.mark.parametrize("stream", [False, True])
def test_responses_with_nonsense_usage_are_billed_on_the_estimate_and_marked(gateway, provider, usage, stream):
    provider.responses_usage.update(usage)
    account, _, headers = new_key("user")
    response = gateway.post("/v1/responses", headers=headers, json={
        "model": "openai/gpt-r", "input": "hi", "max_output_tokens": 20, "stream": stream})
    assert response.status_code == 200, response.text
    [record] = records(account.account_id)
    assert record.status == "settled" and record.usage_estimated == "true"
    assert 0 < record.charge_micros <= record.hold_micros


@pytest.mark.parametrize(("extra", "code"), [
    ({"store": True}, "stateful_option"), ({"previous_response_id": "resp_1"}, "stateful_option"),
    ({"background": True}, "stateful_option"), ({"conversation": "conv_1"}, "stateful_option"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "stateful_option"),
    ({"tools": [{"type": "web_search"}]}, "unpriced_option"), ({"service_tier": "priority"}, "unpriced_option"),
    ({"max_output_tokens": 1.5}, "invalid_value"), ({"max_output_tokens": 0}, "invalid_value"),
    ({"max_output_tokens": True}, "invalid_value"), ({"input": []}, "invalid_input"),
])
def test_responses_refuse_stored_state_and_unpriced_options_before_any_hold(gateway, provider, extra, code):
    account, _, headers = new_key("user")
    response = gateway.post("/v1/responses", headers=headers, json={"model": "openai/gpt-r", "input": "hi", **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
    assert provider.sent == [] and records(account.account_id) == []


@pytest.mark.parametrize("extra", [
    {"max_tokens": None}, {"max_tokens": 2.5}, {"max_tokens": -1}, {"max_tokens": "10"},
    {"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, {"mcp_servers": [{"url": "x"}]},
    {"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
    {"service_tier": "priority"}, {"messages": []},
    {"context_management": {"edits": [{"type": "compact_20260101"}]}},
    {"context_management": {"edits": [{"type": "clear_thinking_20251015"}], "budget": 1}},
    {"context_management": "clear"}, {"output_config": {"effort": "max"}},
    {"output_config": {"effort": "low", "format": {"type": "json_schema"}}}, {"output_config": ["high"]},
])
def test_messages_refuse_bad_limits_and_unpriced_options_in_anthropics_envelope(gateway, provider, extra):
    account, _, headers = new_key("user")
    body = {"model": "anthropic/claude-t", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **extra}
    response = gateway.post("/v1/messages", headers=headers, json={k: v for k, v in body.items() if v is not None})
    assert response.status_code == 400, response.text
    assert response.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                          "message": response.json()["error"]["message"]}}
    assert provider.sent == [] and records(account.account_id) == []


def test_a_route_the_provider_does_not_serve_is_a_400(gateway, provider):
    _, _, headers = new_key("user")
    response = gateway.post("/v1/messages", headers=headers, json={
        "model": "openai/gpt-r", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    assert provider.sent == []


# ------------------------------------------------------------------------------------------- fallbacks


def test_a_fallback_holds_for_the_most_expensive_and_charges_the_model_that_answered(gateway, provider):
    account, _, headers = new_key("user")
    response = gateway.post("/v1/responses", headers=headers, json={
        "model": "openai/gpt-r-down", "models": ["openai/gpt-r"], "input": "hi", "max_output_tokens": 40})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "openai/gpt-r" and response.headers["x-onysoft-model"] == "openai/gpt-r"
    assert [s["body"]["model"] for s in provider.sent] == ["gpt-r-down", "gpt-r"]
    assert all("models" not in s["body"] for s in provider.sent)
    [record] = records(account.account_id)
    # the hold covered the expensive model's bound; the charge is the cheap one's, from the record's own prices
    expensive = money.charge_micros(money.usd_cost(record.hold_prompt_tokens, Decimal(30))
                                    + money.usd_cost(40, Decimal(60)), 5000, FX)
    assert record.hold_micros == expensive
    assert record.model == "openai/gpt-r" and record.requested_model == "openai/gpt-r-down"
    assert record.input_usd_per_mtok == str(PRICE_IN) and record.fallback_attempts == ["openai/gpt-r-down: 503"]
    assert record.charge_micros == 4358  # (6 × 2 + 4 × 0.5 + 7 × 8) µUSD × 1.5 × 41.5 = 4,357.5, rounded up
    assert get_account(account.account_id).balance_micros == 100_000_000 - record.charge_micros


def test_every_fallback_must_be_allowed_for_the_key(gateway, provider):
    account, _, headers = new_key("user", models=["openai/gpt-r-down"])
    response = gateway.post("/v1/chat/completions", headers=headers, json={
        "model": "openai/gpt-r-down", "models": ["openai/gpt-r"], "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 403 and response.json()["error"]["code"] == "model_not_allowed"
    assert provider.sent == [] and records(account.account_id) == []


def test_a_keys_default_fallbacks_are_tried_when_the_body_names_none(gateway, provider):
    account, _, headers = new_key("user", fallbacks=["openai/gpt-r"])
    response = gateway.post("/v1/chat/completions", headers=headers, json={
        "model": "openai/gpt-r-down", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "openai/gpt-r"
    [record] = records(account.account_id)
    assert record.model == "openai/gpt-r" and record.fallback_attempts == ["openai/gpt-r-down: 503"]


def test_a_keys_default_fallback_that_cannot_serve_the_route_is_skipped_not_fatal(gateway, provider):
    account, _, headers = new_key("user", fallbacks=["anthropic/claude-t", "mock/gone", "openai/gpt-r"])
    response = gateway.post("/v1/responses", headers=headers, json={"model": "openai/gpt-r-down", "input": "x"})
    assert response.status_code == 200, response.text  # anthropic serves no /responses; mock/gone is unknown
    assert [s["body"]["model"] for s in provider.sent] == ["gpt-r-down", "gpt-r"]
    [record] = records(account.account_id)
    assert record.model == "openai/gpt-r" and record.fallback_attempts == ["openai/gpt-r-down: 503"]


def test_when_every_candidate_fails_nothing_is_charged_and_the_attempts_are_recorded(gateway, provider):
    account, _, headers = new_key("user")
    response = gateway.post("/v1/chat/completions", headers=headers, json={
        "models": ["openai/gpt-r-down", "openai/gpt-s-down"], "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 502, response.text
    [record] = records(account.account_id)
    assert record.status == "failed" and record.charge_micros == 0
    assert record.fallback_attempts == ["openai/gpt-r-down: 503"]
    assert get_account(account.account_id).balance_micros == 100_000_000


@pytest.mark.parametrize("models", ["openai/gpt-r", [1], ["a/b", "c/d", "e/f", "g/h"]])
def test_a_models_array_that_is_not_one_is_a_400(gateway, provider, models):
    _, _, headers = new_key("user")
    response = gateway.post("/v1/chat/completions", headers=headers, json={
        "model": "openai/gpt-r", "models": models, "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "models"


def test_anthropics_client_tools_add_the_prompt_tokens_they_cost(gateway, provider):
    """Anthropic expands its bash, text editor and computer tools into prompt tokens the body does not show
    (~1.3k a probe saw unbilled); and any tool adds its tool-use system prompt: both are in the hold."""
    account, _, headers = new_key("user")
    body = {"model": "anthropic/claude-t", "max_tokens": 10, "messages": [{"role": "user", "content": "ls"}],
            "tools": [{"type": "bash_20250124", "name": "bash"},
                      {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
                      {"name": "mine", "input_schema": {"type": "object"}}]}  # a custom tool: no type
    raw = json.dumps(body).encode()
    response = gateway.post("/v1/messages", headers={**headers, "content-type": "application/json"}, content=raw)
    assert response.status_code == 200, response.text
    [record] = records(account.account_id)
    assert record.hold_prompt_tokens == len(raw) + 400 + 300 + 800  # tools present, bash, text editor


@pytest.mark.parametrize("block", [
    {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
    {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
    {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}},
    {"type": "container_upload", "file_id": "f"}])
def test_messages_refuse_content_the_catalog_cannot_bound(gateway, provider, block):
    account, _, headers = new_key("user")
    response = gateway.post("/v1/messages", headers=headers, json={
        "model": "anthropic/claude-t", "max_tokens": 10,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "read"}, block]}]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert provider.sent == [] and records(account.account_id) == []
