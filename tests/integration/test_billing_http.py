"""Billing end to end: the real OpenAI SDK → `onysoft dev` → a fake provider on loopback.

Each key type's balance moves by exactly cost × (1 + markup) × fx in its own currency; the provider sees
its own key and model name, never the client's; failures cost nothing; a too-small balance gets 402 and
no upstream call; streams reach the client chunk by chunk and are always dev."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import openai
import pytest

from onysoft import money
from onysoft_tools.fake_provider import PROMPT_TOKENS, REPLY, UPSTREAM_KEY
from tests.integration.conftest import DevGateway
from tests.integration.ledger import FX, INPUT, OUTPUT  # the prices and rate `dev` is given

GATEWAY_OPTIONS = {"read_timeout": "1.5"}  # conftest's `dev`: the gateway whose `openai` is the fake provider


def account_with_key(dev: DevGateway, kind: str, amount: str = "50", markup: str | None = None):
    args = ["accounts", "create", "--kind", kind] + (["--markup", markup] if markup else [])
    account = dev.cli_json(*args)
    dev.cli_json("accounts", "topup", account["account_id"], amount)
    key = dev.cli_json("keys", "create", "--account", account["account_id"])
    dev.known_keys.add(key["key"])
    return account, key["key"]


def balance(dev: DevGateway, account_id: str) -> int:
    return dev.cli_json("accounts", "show", account_id)["balance_micros"]


def sdk(dev: DevGateway, key: str, **options) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=dev.base_url + "/v1", max_retries=0, timeout=20, **options)


def sent_stream(requests: list[dict]) -> bool:
    return all(r["body"]["stream"] is True and r["body"]["stream_options"]["include_usage"] is True for r in requests)


def expected(account: dict, prompt: int, completion: int) -> int:
    cost = money.usd_cost(prompt, INPUT) + money.usd_cost(completion, OUTPUT)
    fx = FX if account["currency"] == "TRY" else Decimal(1)
    return money.charge_micros(cost, money.parse_markup_pct(str(account["markup_pct"])), fx)


# fake-ok: 17 prompt tokens at 2.5 USD/M and 8 completion tokens at 10: 122.5 µUSD. Worked out by hand: user
# × 1.5 × 41.5 = 7,625.625 → 7,626 µ TRY (rounded up); project at 12.5%: × 1.125 × 41.5 = 5,719.21875 → 5,720;
# partner_project × 1.5 = 183.75 → 184 µUSD; partner_customer × 1.3 × 41.5 = 6,608.975 → 6,609.
CHARGE_BY_KIND = {"user": 7626, "project": 5720, "partner_project": 184, "partner_customer": 6609}


@pytest.mark.parametrize(("kind", "markup"), [("user", None), ("project", "12.5"), ("partner_project", None),
                                              ("partner_customer", None)])
def test_each_key_type_pays_exactly_cost_times_markup_times_fx(dev, upstream, kind, markup):
    account, key = account_with_key(dev, kind, markup=markup)
    before = balance(dev, account["account_id"])
    seen = len(upstream.requests)
    reply = sdk(dev, key).chat.completions.create(
        model="openai/fake-ok", messages=[{"role": "user", "content": "hi"}], temperature=0.2,
        response_format={"type": "text"}, tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert reply.choices[0].message.content == " ".join(REPLY)
    charge = before - balance(dev, account["account_id"])
    assert charge == CHARGE_BY_KIND[kind]
    assert sent_stream(upstream.requests[seen:])  # the gateway asked for a stream, with its usage
    # The provider saw its own key and model name, the client's other fields untouched, never the sk-ony key.
    [sent] = upstream.requests[seen:]
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert key not in str(sent)
    assert sent["body"]["model"] == "fake-ok"
    assert sent["body"]["temperature"] == 0.2 and sent["body"]["tools"][0]["function"]["name"] == "f"
    [record] = dev.cli_json("usage", "--account", account["account_id"])["records"]
    assert record["status"] == "settled" and record["charge_micros"] == charge
    assert (record["prompt_tokens"], record["completion_tokens"]) == (PROMPT_TOKENS, len(REPLY))


def test_stream_arrives_chunk_by_chunk_and_is_billed_without_the_usage_chunk(dev, upstream):
    account, key = account_with_key(dev, "user")
    before = balance(dev, account["account_id"])
    started = time.monotonic()
    stream = sdk(dev, key).chat.completions.create(
        model="openai/fake-slow-stream", messages=[{"role": "user", "content": "hi"}], stream=True)
    arrivals, chunks = [], []
    for chunk in stream:
        arrivals.append(time.monotonic() - started)
        chunks.append(chunk)
    # The first chunk came long before the provider finished (8 words × 0.3 s).
    assert arrivals[0] < arrivals[-1] - 1.0
    assert all(c.choices for c in chunks)  # the client did not ask for usage: no usage-only chunk
    assert "".join(c.choices[0].delta.content or "" for c in chunks).split() == REPLY
    assert upstream.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    charge = before - balance(dev, account["account_id"])
    assert charge == expected(account, PROMPT_TOKENS, len(REPLY))


def test_stream_with_include_usage_keeps_the_usage_chunk(dev):
    account, key = account_with_key(dev, "partner_project")
    chunks = list(sdk(dev, key).chat.completions.create(
        model="openai/fake-ok", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(REPLY)
    assert 50_000_000 - balance(dev, account["account_id"]) == expected(account, PROMPT_TOKENS, len(REPLY))


def test_embeddings_are_billed_on_their_input(dev, upstream):
    account, key = account_with_key(dev, "partner_customer")
    result = sdk(dev, key).embeddings.create(model="openai/fake-embed", input=["a", "b"])
    assert len(result.data) == 2 and upstream.requests[-1]["body"]["model"] == "fake-embed"
    assert 50_000_000 - balance(dev, account["account_id"]) == expected(account, 10, 0)


@pytest.mark.parametrize(("model", "status", "error"), [
    ("fake-500", 502, openai.InternalServerError), ("fake-429", 429, openai.RateLimitError),
    ("fake-bad-json", 400, openai.BadRequestError),
])
def test_calls_the_provider_refused_cost_nothing_and_keep_their_meaning(dev, model, status, error):
    """An error status: the provider refused before doing any work. (A timeout after the send is charged its hold:
    test_faults_http.py.)"""
    account, key = account_with_key(dev, "user")
    with pytest.raises(error) as raised:
        sdk(dev, key).chat.completions.create(model=f"openai/{model}", messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == status
    assert set(raised.value.body) == {"message", "type", "code", "param"}
    assert balance(dev, account["account_id"]) == 50_000_000
    [record] = dev.cli_json("usage", "--account", account["account_id"])["records"]
    assert record["status"] == "failed" and record["charge_micros"] == 0


def test_a_cut_stream_ends_in_an_error_the_sdk_raises_and_is_charged_its_hold(dev):
    account, key = account_with_key(dev, "user")
    received = []
    with pytest.raises(openai.APIError) as raised:  # the stream's last event is the gateway's error
        for chunk in sdk(dev, key).chat.completions.create(
                model="openai/fake-cut", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=40):
            received.append(chunk)
    assert "charged its hold" in str(raised.value)
    assert len(received) == 3
    [record] = dev.cli_json("usage", "--account", account["account_id"])["records"]
    assert record["status"] == "settled" and record["usage_estimated"] is True
    charged = 50_000_000 - balance(dev, account["account_id"])
    assert charged == record["charge_micros"] == record["hold_micros"] and record["completion_tokens"] == 40


def test_a_client_that_hangs_up_midway_is_charged_what_the_provider_reports(dev, upstream):
    """The gateway reads on after the hang-up, to the provider's usage (before issue 22: a guess from the chunks
    the client got, which missed whatever came after)."""
    account, key = account_with_key(dev, "partner_project")
    body = {"model": "openai/fake-slow-stream", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", dev.base_url + "/v1/chat/completions", json=body, timeout=20,
                      headers={"Authorization": f"Bearer {key}"}) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        [record] = dev.cli_json("usage", "--account", account["account_id"])["records"]
        if record["status"] != "pending":
            break
        time.sleep(0.3)
    assert record["status"] == "settled" and not record["usage_estimated"]
    assert (record["prompt_tokens"], record["completion_tokens"]) == (PROMPT_TOKENS, len(REPLY))
    assert 50_000_000 - balance(dev, account["account_id"]) == record["charge_micros"] == expected(
        account, PROMPT_TOKENS, len(REPLY))


def test_too_small_balance_gets_402_and_no_upstream_call(dev, upstream):
    account, key = account_with_key(dev, "user", amount="0.000001")
    seen = len(upstream.requests)
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(dev, key).chat.completions.create(model="openai/fake-ok", messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 402
    assert account["account_id"] in raised.value.message and "TRY" in raised.value.message
    assert len(upstream.requests) == seen
    assert balance(dev, account["account_id"]) == 1


def test_get_key_shows_spend_request_count_and_last_used(dev):
    account, key = account_with_key(dev, "user")
    sdk(dev, key).chat.completions.create(model="openai/fake-ok", messages=[{"role": "user", "content": "x"}])
    view = httpx.get(dev.base_url + "/v1/key", headers={"Authorization": f"Bearer {key}"}).json()
    assert view["last_used_at"]
    # The request count and spend are the usage rollup's (off the request path: current within its lag). It may
    # count the hold's pending record first (a request counted, no spend yet) and the settle a poll later.
    deadline = time.monotonic() + 20
    while (view["request_count"] == 0 or view["spend_micros"] == 0) and time.monotonic() < deadline:
        time.sleep(0.1)
        view = httpx.get(dev.base_url + "/v1/key", headers={"Authorization": f"Bearer {key}"}).json()
    assert view["request_count"] == 1
    assert view["spend_micros"] == 50_000_000 - view["balance_micros"] > 0


# ---------------------------------------------------------------------------- issue 10: money integrity


def test_two_different_output_limits_are_a_400_and_never_reach_the_provider(dev, upstream):
    account, key = account_with_key(dev, "user")
    seen = len(upstream.requests)
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(dev, key).chat.completions.create(model="openai/fake-bill", messages=[{"role": "user", "content": "x"}],
                                              max_completion_tokens=1, max_tokens=32000)
    assert raised.value.body["code"] == "conflicting_output_limits"
    assert len(upstream.requests) == seen and balance(dev, account["account_id"]) == 50_000_000


def test_without_a_client_limit_the_held_output_is_sent_and_bounds_the_bill(dev, upstream):
    """A reasoning model asked for no limit would write 40k tokens: the gateway sends the 16,384 it held."""
    account, key = account_with_key(dev, "partner_project")
    sdk(dev, key).chat.completions.create(model="openai/fake-bill", messages=[{"role": "user", "content": "think"}])
    sent = upstream.requests[-1]
    assert sent["body"]["max_completion_tokens"] == 16_384 and "max_tokens" not in sent["body"]
    [record] = dev.cli_json("usage", "--account", account["account_id"])["records"]
    assert record["completion_tokens"] == sent["usage"]["completion_tokens"] == 16_384
    assert record["reasoning_tokens"] == 8_192 and record["cached_tokens"] == sent["usage"]["prompt_tokens"] // 3
    assert not record["overrun"] and record["charge_micros"] <= record["hold_micros"]
    assert 50_000_000 - balance(dev, account["account_id"]) == record["charge_micros"]


def test_embeddings_are_charged_every_token_the_provider_reports(dev):
    account, key = account_with_key(dev, "partner_customer")
    sdk(dev, key).embeddings.create(model="openai/fake-embed-greedy", input="hello")
    [record] = dev.cli_json("usage", "--account", account["account_id"])["records"]
    assert record["prompt_tokens"] == 1_000 and record["overrun"]
    assert record["charge_micros"] == expected(account, 1_000, 0) > record["hold_micros"]
    assert 50_000_000 - balance(dev, account["account_id"]) == record["charge_micros"]


def test_an_overrun_is_a_debt_that_refuses_the_account_until_a_top_up(dev, upstream):
    from onysoft_tools.fake_provider import OVERRUN_COMPLETION
    from tests.integration.ledger import Tables, check_ledger

    account, key = account_with_key(dev, "user", amount="1")
    client = sdk(dev, key)
    client.chat.completions.create(model="openai/fake-overrun", messages=[{"role": "user", "content": "x"}],
                                   max_tokens=8)
    debt = balance(dev, account["account_id"])
    assert debt == 1_000_000 - expected(account, PROMPT_TOKENS, OVERRUN_COMPLETION) < 0
    seen = len(upstream.requests)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="openai/fake-ok", messages=[{"role": "user", "content": "x"}],
                                       max_tokens=8)
    assert raised.value.status_code == 402 and "debt" in raised.value.message
    assert len(upstream.requests) == seen
    dev.cli_json("accounts", "topup", account["account_id"], money.format_micros(-debt + 1_000_000))
    client.chat.completions.create(model="openai/fake-ok", messages=[{"role": "user", "content": "x"}], max_tokens=8)
    records = check_ledger(Tables(dev), account["account_id"])
    assert [r.get("overrun") for r in sorted(records, key=lambda r: r["created_at"])] == ["true", None]


def test_image_parts_the_balance_cannot_cover_get_402_and_never_reach_the_provider(dev, upstream):
    account, key = account_with_key(dev, "partner_project", amount="0.05")
    seen = len(upstream.requests)
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(dev, key).chat.completions.create(model="openai/fake-bill", max_tokens=16, messages=[
            {"role": "user", "content": [{"type": "text", "text": "what are these"}] + [image] * 20}])
    assert raised.value.status_code == 402 and len(upstream.requests) == seen
    assert balance(dev, account["account_id"]) == 50_000
