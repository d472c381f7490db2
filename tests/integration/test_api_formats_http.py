"""Issue 15 over HTTP: the real `openai` and `anthropic` SDKs → `onysoft dev` → the built-in mock provider.

/v1/responses and /v1/messages, streamed and not, each billed to the micro-unit from the usage the client was
shown (cache writes and reads at the catalog's prices); Anthropic's SDK raises its own exceptions for the
gateway's errors (authorizer, hold, upstream); fallbacks (`models`, and a key's default fallbacks) answer from
the next model, charge that model and say so; the books of every account balance afterwards (ledger.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from decimal import Decimal

import anthropic
import openai
import pytest

from onysoft import money
from tests.integration.conftest import DevGateway, clean_env
from tests.integration.ledger import Tables, check_ledger, wait_for_window_room

PRICED = "mock/priced"  # the mock answers like mock/echo; priced like a large model, with cache prices
IN, OUT, CACHED, WRITE = Decimal("3"), Decimal("15"), Decimal("0.3"), Decimal("3.75")
ECHO = (Decimal("1.00"), Decimal("2.00"))  # the seeded mock/echo price
PRICEY_FAILURE = (Decimal("30"), Decimal("60"))  # mock/error-500, repriced here: the hold must cover it


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    dev = DevGateway(tmp_path_factory.mktemp("formats") / "state").start()
    # Prices set before any request: the proxy's catalog cache loads at its first request.
    dev.cli_json("catalog", "set", PRICED, "--input-usd-per-mtok", str(IN), "--output-usd-per-mtok", str(OUT),
                 "--cached-input-usd-per-mtok", str(CACHED), "--cache-write-usd-per-mtok", str(WRITE))
    dev.cli_json("catalog", "set", "mock/error-500", "--input-usd-per-mtok", str(PRICEY_FAILURE[0]),
                 "--output-usd-per-mtok", str(PRICEY_FAILURE[1]))
    try:
        yield dev
    finally:
        code = dev.stop()
        assert code == 0, dev.log()


def funded(gw: DevGateway, kind: str = "partner_project", amount: str = "20", *key_options: str):
    args = ["accounts", "create", "--kind", kind] + ([] if kind == "user" else ["--owner", "formats"])
    account = gw.cli_json(*args)
    account = gw.cli_json("accounts", "topup", account["account_id"], amount)
    key = gw.cli_json("keys", "create", "--account", account["account_id"], *key_options)
    gw.known_keys.add(key["key"])
    return account, key


def balance(gw: DevGateway, account_id: str) -> int:
    return gw.cli_json("accounts", "show", account_id)["balance_micros"]


def expected(account: dict, prices: tuple[Decimal, Decimal], prompt: int, completion: int, cached: int = 0,
             writes: int = 0) -> int:
    """A USD account's charge, computed here from the usage the client saw and the catalog's prices."""
    assert account["currency"] == "USD"
    cost = (money.usd_cost(prompt - cached - writes, prices[0]) + money.usd_cost(cached, CACHED)
            + money.usd_cost(writes, WRITE) + money.usd_cost(completion, prices[1]))
    return money.charge_micros(cost, money.parse_markup_pct(str(account["markup_pct"])), Decimal(1))


def oai(gw: DevGateway, key: dict) -> openai.OpenAI:
    return openai.OpenAI(api_key=key["key"], base_url=gw.base_url + "/v1", max_retries=0, timeout=30)


def claude(gw: DevGateway, key: dict | str) -> anthropic.Anthropic:
    token = key if isinstance(key, str) else key["key"]
    return anthropic.Anthropic(auth_token=token, base_url=gw.base_url, max_retries=0, timeout=30)


# ------------------------------------------------------------------------------------------- /v1/responses


@pytest.mark.parametrize("stream", [False, True])
def test_responses_with_the_openai_sdk_are_billed_to_the_micro_unit(gw, stream):
    account, key = funded(gw)
    before = balance(gw, account["account_id"])
    words = "tell me about the gateway please"
    if stream:
        deltas, final = [], None
        for event in oai(gw, key).responses.create(model=PRICED, input=words, max_output_tokens=64, stream=True):
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                final = event.response
        assert len(deltas) > 5 and final is not None  # arrived word by word, then the completed event
        assert "".join(deltas) == final.output_text
    else:
        final = oai(gw, key).responses.create(model=PRICED, input=words, max_output_tokens=64)
    assert final.output_text == f"Mock reply to: {words} — the end."
    charge = before - balance(gw, account["account_id"])
    assert charge == expected(account, (IN, OUT), final.usage.input_tokens, final.usage.output_tokens) > 0
    [record] = check_ledger(Tables(gw), account["account_id"])
    assert record["endpoint"] == "responses" and record["status"] == "settled" and "usage_estimated" not in record
    assert int(record["hold_output_tokens"]) == 64
    assert (int(record["prompt_tokens"]), int(record["completion_tokens"])) == (final.usage.input_tokens,
                                                                                final.usage.output_tokens)


def test_responses_that_would_store_state_at_the_provider_are_refused(gw):
    account, key = funded(gw)
    for extra in ({"store": True}, {"previous_response_id": "resp_abc"}, {"background": True}):
        with pytest.raises(openai.BadRequestError) as refused:
            oai(gw, key).responses.create(model=PRICED, input="hi", **extra)
        assert refused.value.code == "stateful_option"
    assert Tables(gw).usage(account["account_id"]) == []


# ------------------------------------------------------------------------------------------- /v1/messages


@pytest.mark.parametrize("stream", [False, True])
def test_messages_with_the_anthropic_sdk_price_cache_writes_then_reads(gw, stream):
    account, key = funded(gw)
    client = claude(gw, key)
    system = [{"type": "text", "text": f"context {uuid.uuid4().hex} " + "alpha " * 30,
               "cache_control": {"type": "ephemeral"}}]
    charges, usages = [], []
    for _ in range(2):  # the mock writes the marked block to its cache, then reads it
        before = balance(gw, account["account_id"])
        request = dict(model=PRICED, max_tokens=100, system=system,
                       messages=[{"role": "user", "content": "hello from claude"}])
        if stream:
            with client.messages.stream(**request) as events:
                text = "".join(events.text_stream)
                message = events.get_final_message()
            assert text == message.content[0].text
        else:
            message = client.messages.create(**request)
        assert message.content[0].text == "Mock reply to: hello from claude — the end."
        usage = message.usage
        usages.append(usage)
        charges.append(before - balance(gw, account["account_id"]))
        prompt = usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
        assert charges[-1] == expected(account, (IN, OUT), prompt, usage.output_tokens,
                                       cached=usage.cache_read_input_tokens,
                                       writes=usage.cache_creation_input_tokens) > 0
    assert (usages[0].cache_creation_input_tokens, usages[0].cache_read_input_tokens) == (32, 0)
    assert (usages[1].cache_creation_input_tokens, usages[1].cache_read_input_tokens) == (0, 32)
    assert charges[1] < charges[0]  # a cache read costs less than a cache write
    records = check_ledger(Tables(gw), account["account_id"])
    assert sorted(int(r.get("cache_write_tokens", 0)) for r in records) == [0, 32]
    assert sorted(int(r.get("cached_tokens", 0)) for r in records) == [0, 32]
    assert {r["endpoint"] for r in records} == {"messages"}


def test_the_anthropic_sdk_raises_its_own_exception_for_each_gateway_error(gw):
    account, key = funded(gw)
    message = [{"role": "user", "content": "x"}]
    cases = [  # (client, request, exception, status, Anthropic error type or None for API Gateway's own body)
        (claude(gw, "sk-ony-" + "0" * 48), {"model": PRICED}, anthropic.AuthenticationError, 401, None),
        (claude(gw, key), {"model": "mock/nope"}, anthropic.NotFoundError, 404, "not_found_error"),
        (claude(gw, key), {"model": PRICED, "max_tokens": 0}, anthropic.BadRequestError, 400,
         "invalid_request_error"),
        (claude(gw, key), {"model": "mock/rate-limited"}, anthropic.RateLimitError, 429, "rate_limit_error"),
        (claude(gw, key), {"model": "mock/error-500"}, anthropic.InternalServerError, 502, "api_error"),
        (claude(gw, key), {"model": "mock/timeout"}, anthropic.InternalServerError, 504, "timeout_error"),
    ]
    limited_account, limited = funded(gw, "partner_project", "20", "--models", "mock/echo")
    cases.append((claude(gw, limited), {"model": PRICED}, anthropic.PermissionDeniedError, 403, "permission_error"))
    poor_account, poor = funded(gw, "partner_project", "0.000001")
    cases.append((claude(gw, poor), {"model": PRICED}, anthropic.APIStatusError, 402, "billing_error"))
    for client, request, exception, status, kind in cases:
        with pytest.raises(exception) as raised:
            client.messages.create(**{"max_tokens": 10, "messages": message, **request})
        error = raised.value
        assert error.status_code == status, (request, error.body)
        assert error.body["type"] == "error" and error.body["error"]["message"], error.body
        if kind:  # the proxy's errors: exactly Anthropic's envelope
            assert error.body == {"type": "error", "error": {"type": kind, "message": error.body["error"]["message"]}}
    rpm_account, rpm_key = funded(gw, "partner_project", "20", "--rpm", "1")
    wait_for_window_room(10)  # both calls in one UTC-minute window
    claude(gw, rpm_key).messages.create(model=PRICED, max_tokens=10, messages=message)
    with pytest.raises(anthropic.RateLimitError) as limited_out:
        claude(gw, rpm_key).messages.create(model=PRICED, max_tokens=10, messages=message)
    assert int(limited_out.value.response.headers["retry-after"]) >= 1
    for each in (account, limited_account, poor_account, rpm_account):
        check_ledger(Tables(gw), each["account_id"])


def test_claude_codes_environment_reaches_the_gateway(gw):
    """ANTHROPIC_BASE_URL + ANTHROPIC_AUTH_TOKEN, as the README sets them for Claude Code: the SDK reads both."""
    account, key = funded(gw)
    script = ("import anthropic; m = anthropic.Anthropic(max_retries=0).messages.create(model='mock/echo', "
              "max_tokens=20, messages=[{'role': 'user', 'content': 'from the environment'}]); "
              "print(m.content[0].text)")
    env = clean_env(ANTHROPIC_BASE_URL=gw.base_url, ANTHROPIC_AUTH_TOKEN=key["key"])
    env.pop("ANTHROPIC_API_KEY", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60,
                            check=False, cwd=os.getcwd())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Mock reply to: from the environment — the end."
    [record] = check_ledger(Tables(gw), account["account_id"])
    assert record["status"] == "settled" and record["endpoint"] == "messages"


# ------------------------------------------------------------------------------------------- fallbacks


@pytest.mark.parametrize("route", ["chat", "responses"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_fallback_answers_from_the_next_model_and_charges_that_model(gw, route, stream):
    account, key = funded(gw)
    before = balance(gw, account["account_id"])
    client = oai(gw, key)
    fallbacks = {"models": ["mock/error-500", "mock/rate-limited", "mock/echo"]}
    if route == "chat":
        request = dict(model="mock/error-500", messages=[{"role": "user", "content": "fall back"}], max_tokens=30,
                       extra_body=fallbacks)
        if stream:
            chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                         **request))
            model, usage = chunks[0].model, chunks[-1].usage
            assert {c.model for c in chunks} == {"mock/echo"}
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
        else:
            answer = client.chat.completions.create(**request)
            model, prompt, completion = answer.model, answer.usage.prompt_tokens, answer.usage.completion_tokens
    else:
        request = dict(model="mock/error-500", input="fall back", max_output_tokens=30, extra_body=fallbacks)
        if stream:
            events = list(client.responses.create(stream=True, **request))
            final = events[-1].response
        else:
            final = client.responses.create(**request)
        model, prompt, completion = final.model, final.usage.input_tokens, final.usage.output_tokens
    assert model == "mock/echo"
    charge = before - balance(gw, account["account_id"])
    assert charge == expected(account, ECHO, prompt, completion) > 0
    [record] = check_ledger(Tables(gw), account["account_id"])
    assert record["model"] == "mock/echo" and record["requested_model"] == "mock/error-500"
    assert record["fallback_attempts"] == ["mock/error-500: 500", "mock/rate-limited: 429"]
    # One hold covered the most expensive candidate (mock/error-500 at 30/60 USD per Mtok).
    held_for_pricey = expected(account, PRICEY_FAILURE, int(record["hold_prompt_tokens"]), 30)
    assert int(record["hold_micros"]) == held_for_pricey > charge


def test_a_keys_default_fallbacks_are_stored_shown_and_used(gw):
    account, key = funded(gw, "partner_project", "20", "--fallbacks", "mock/rate-limited,mock/echo")
    assert key["fallbacks"] == ["mock/rate-limited", "mock/echo"]
    [listed] = gw.cli_json("keys", "list", "--account", account["account_id"])["keys"]
    assert listed["fallbacks"] == ["mock/rate-limited", "mock/echo"]
    answer = oai(gw, key).chat.completions.create(model="mock/error-500", messages=[{"role": "user", "content": "x"}])
    assert answer.model == "mock/echo"
    [record] = check_ledger(Tables(gw), account["account_id"])
    assert record["fallback_attempts"] == ["mock/error-500: 500", "mock/rate-limited: 429"]
    # A fallback the key may not use is refused before any hold, like its model.
    _, narrow = funded(gw, "partner_project", "20", "--models", "mock/error-500")
    with pytest.raises(openai.PermissionDeniedError):
        oai(gw, narrow).chat.completions.create(model="mock/error-500", messages=[{"role": "user", "content": "x"}],
                                                extra_body={"models": ["mock/echo"]})


def test_a_model_that_timed_out_after_the_send_is_charged_and_ends_the_request(gw):
    """A timeout is not a free failure: the provider got the request and may bill all the hold allowed. So the
    request is charged its hold and no other model is tried: one hold never pays for two models that may both
    have done the work (issue 22)."""
    account, key = funded(gw, "partner_project", "20")
    with pytest.raises(openai.InternalServerError) as raised:
        oai(gw, key).chat.completions.create(model="mock/timeout", messages=[{"role": "user", "content": "x"}],
                                             max_tokens=30, extra_body={"models": ["mock/echo"]})
    assert raised.value.status_code == 504 and "charged its hold" in raised.value.message
    [record] = check_ledger(Tables(gw), account["account_id"])
    assert (record["status"], record["model"], record["estimate_reason"]) == (
        "settled", "mock/timeout", "upstream_timeout")
    assert int(record["charge_micros"]) == int(record["hold_micros"]) and "fallback_attempts" not in record
