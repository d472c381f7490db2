"""The per-provider circuit breaker (onysoft.circuit_breaker) through `onysoft dev`, over real HTTP with the OpenAI
SDK, against a fake provider that hangs: it takes every request and never answers (FakeUpstream.hanging).

Three requests meet the read timeout (504, each charged its hold: they were sent); the breaker opens; the next
requests to that provider get 503 `provider_circuit_open` at once, and the provider sees none of them; a request
with a fallback model on another provider (the built-in mock) is answered by it; what was fast-failed left no
record and moved no money. Once the cool-down the 503 named has passed, one trial request goes through, and its
answer closes the breaker.
"""

from __future__ import annotations

import time

import openai
import pytest

from tests.integration.ledger import (
    INPUT,
    OUTPUT,
    Tables,
    check_envelope,
    check_ledger,
    new_account,
    new_key,
)

READ_TIMEOUT = 1.0
COOLDOWN = 30  # the default: the fast-fail checks after the third timeout take a second or two of it
GATEWAY_OPTIONS = {"read_timeout": str(READ_TIMEOUT),  # for conftest's `dev` fixture
                   "ONYSOFT_CIRCUIT_FAILURES": "3"}  # the suites' gateways run without it (conftest.clean_env)
MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def tables(dev):
    return Tables(dev)


def refused(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as raised:
        call()
    return raised.value


def test_a_hanging_provider_is_cut_off_after_three_timeouts_and_tried_again_after_the_cooldown(dev, upstream, tables):
    dev.cli_json("catalog", "set", "mock/echo", "--input-usd-per-mtok", str(INPUT), "--output-usd-per-mtok",
                 str(OUTPUT))
    account = new_account(dev, "user", "5")
    account_id = account["account_id"]
    key = new_key(dev, account_id)
    client = openai.OpenAI(api_key=key["key"], base_url=dev.base_url + "/v1", max_retries=0, timeout=30)

    def chat(**extra):
        return client.chat.completions.with_raw_response.create(model="openai/fake-ok", messages=MESSAGES,
                                                                 max_tokens=20, **extra)

    upstream.hanging = True
    try:
        for _ in range(3):
            seen = len(upstream.first_bytes)
            error = refused(chat)
            check_envelope(error.response, 504, "upstream_timeout")  # sent: charged its hold, as ever
            assert len(upstream.first_bytes) == seen + 1
        assert "circuit opened" in dev.log()
        seen, before = len(upstream.first_bytes), tables.state(account_id)

        # Open: at once 503, streamed or not, whatever the model of that provider; the provider sees nothing.
        answers = [refused(chat), refused(lambda: chat(stream=True)),
                   refused(lambda: client.chat.completions.create(model="openai/fake-timeout", messages=MESSAGES))]
        for error in answers:
            body = check_envelope(error.response, 503, "provider_circuit_open")
            assert body["type"] == "upstream_error" and "Nothing was charged" in body["message"]
            assert 1 <= int(error.response.headers["retry-after"]) <= COOLDOWN
        assert len(upstream.first_bytes) == seen
        assert tables.state(account_id) == before  # no hold, no record, no money moved

        # A fallback on another provider is answered by it, without a try at the open one.
        served = chat(extra_body={"models": ["mock/echo"]})
        assert served.headers["x-onysoft-model"] == "mock/echo" and served.parse().model == "mock/echo"
        assert len(upstream.first_bytes) == seen
        retry_after = int(refused(chat).response.headers["retry-after"])
    finally:
        upstream.hanging = False

    # After the cool-down (Retry-After rounds up: the breaker is due by then), one trial; its answer closes it.
    time.sleep(retry_after)
    trial = chat()
    assert trial.parse().choices[0].message.content and len(upstream.first_bytes) == seen + 1
    closed = chat()
    assert closed.headers["x-onysoft-model"] == "openai/fake-ok" and len(upstream.first_bytes) == seen + 2
    assert "circuit closed" in dev.log()

    records = check_ledger(tables, account_id)
    assert sorted((r.get("estimate_reason", ""), r["model"]) for r in records) == [
        ("", "mock/echo"), ("", "openai/fake-ok"), ("", "openai/fake-ok"),
        *[("upstream_timeout", "openai/fake-ok")] * 3]
    [fallback] = [r for r in records if r["model"] == "mock/echo"]
    assert fallback["fallback_attempts"] == ["openai/fake-ok: provider_circuit_open"]
    assert fallback["requested_model"] == "openai/fake-ok" and fallback["status"] == "settled"
    assert all(r["status"] == "settled" for r in records)
