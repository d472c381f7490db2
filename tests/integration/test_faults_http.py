"""Upstream faults through `onysoft dev` and a fake provider on loopback, over real HTTP.

Each fault keeps its meaning for the client (500 → 502, 429 → 429 with Retry-After, timeout → 504, a reset
connection → 502, a malformed 200 → 502) in OpenAI's envelope, costs nothing (the balance is back where it
was, the usage record is `failed` with the reason), and a stream cut midway is billed for what was delivered,
marked estimated. DynamoDB throttling and transaction conflicts are covered in tests/unit/test_dynamodb_faults.py.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from onysoft_tools.fake_provider import REPLY, FakeUpstream
from tests.integration.ledger import (
    Tables,
    auth,
    check_envelope,
    check_ledger,
    expected_charge,
    new_account,
    new_key,
)

READ_TIMEOUT = 1.5



DEADLINE = 2.0  # the proxy's deadline here: fake-slow-stream (8 chunks, 0.3 s apart) outlasts it
GATEWAY_OPTIONS = {"read_timeout": str(READ_TIMEOUT),  # for conftest's `dev` fixture
                   "ONYSOFT_PROXY_DEADLINE_SECONDS": str(DEADLINE)}


@pytest.fixture(scope="module")
def tables(dev):
    return Tables(dev)


def post_chat(dev, key: str, model: str, content: str, **extra) -> httpx.Response:
    body = {"model": f"openai/{model}", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(dev.base_url + "/v1/chat/completions", json=body, headers=auth(key), timeout=30)


def sent_upstream(upstream: FakeUpstream, content: str) -> list[dict]:
    return [r for r in upstream.requests if r["body"].get("messages", [{}])[-1].get("content") == content]


FAULTS = [
    # model, client status, usage error_code, upstream status recorded
    ("fake-500", 502, "upstream_error", 500),
    ("fake-429", 429, "upstream_rate_limited", 429),
    ("fake-timeout", 504, "upstream_timeout", None),
    ("fake-reset", 502, "upstream_unreachable", None),
    ("fake-malformed-200", 502, "upstream_malformed_response", 200),
]


@pytest.mark.parametrize(("model", "status", "code", "upstream_status"), FAULTS, ids=[f[0] for f in FAULTS])
@pytest.mark.parametrize("kind", ["user", "partner_project"])
def test_upstream_fault_keeps_its_meaning_and_costs_nothing(dev, upstream, tables, kind, model, status, code,
                                                            upstream_status):
    account = new_account(dev, kind, "5")
    key = new_key(dev, account["account_id"])
    before = tables.balance(account["account_id"])
    content = f"fault {model} {kind} {time.time_ns()}"
    started = time.monotonic()
    response = post_chat(dev, key["key"], model, content)
    elapsed = time.monotonic() - started
    error = check_envelope(response, status, code)
    assert error["type"] in ("upstream_error", "rate_limit_error")
    assert "Traceback" not in response.text and "upstream-provider-secret" not in response.text
    assert len(sent_upstream(upstream, content)) == 1  # the provider was called once: no hidden retry
    request_id = response.headers["x-onysoft-request-id"]
    assert response.headers["x-ratelimit-limit-requests"]  # the limit headers on errors too
    if model == "fake-429":
        assert response.headers["retry-after"] == "7"  # the provider's Retry-After, passed through
    if model == "fake-timeout":
        assert READ_TIMEOUT - 0.2 < elapsed < READ_TIMEOUT + 3  # the gateway's read timeout, not the 5 s
    # Nothing charged: the balance is back, the one usage record is `failed` with the reason.
    assert tables.balance(account["account_id"]) == before
    [record] = check_ledger(tables, account["account_id"])
    assert record["request_id"] == request_id
    assert record["status"] == "failed" and int(record["charge_micros"]) == 0
    assert record["error_code"] == code
    assert record.get("error_message")
    if upstream_status is not None:
        assert int(record["upstream_status"]) == upstream_status
    else:
        assert "upstream_status" not in record
    totals = tables.key_totals(key["key_id"], 1)  # the usage rollup's count of the key
    assert totals.get("charge_micros", 0) == 0 and totals["requests"] == totals["failed"] == 1


def test_malformed_200_to_a_stream_request_is_a_502_and_costs_nothing(dev, upstream, tables):
    account = new_account(dev, "user", "5")
    key = new_key(dev, account["account_id"])
    before = tables.balance(account["account_id"])
    content = f"malformed stream {time.time_ns()}"
    body = {"model": "openai/fake-malformed-200", "stream": True, "messages": [{"role": "user", "content": content}]}
    with httpx.stream("POST", dev.base_url + "/v1/chat/completions", json=body, headers=auth(key["key"]),
                      timeout=30) as response:
        response.read()
    [record] = check_ledger(tables, account["account_id"])  # whatever happens, the ledger is exact
    assert len(sent_upstream(upstream, content)) == 1
    assert tables.balance(account["account_id"]) == before
    assert record["status"] == "failed" and record["error_code"] == "upstream_malformed_response"
    check_envelope(response, 502, "upstream_malformed_response")


@pytest.mark.parametrize("kind", ["user", "partner_customer", "partner_project"])
def test_sse_stream_cut_midway_is_billed_for_what_was_delivered(dev, upstream, tables, kind):
    account = new_account(dev, kind, "5")
    key = new_key(dev, account["account_id"])
    before = tables.balance(account["account_id"])
    content = f"cut {kind} {time.time_ns()}"
    body = {"model": "openai/fake-cut", "stream": True, "messages": [{"role": "user", "content": content}]}
    raw = json.dumps(body).encode()
    deltas, done = [], False
    with httpx.stream("POST", dev.base_url + "/v1/chat/completions", content=raw, timeout=30,
                      headers={**auth(key["key"]), "content-type": "application/json"}) as response:
        assert response.status_code == 200
        request_id = response.headers["x-onysoft-request-id"]
        try:
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    deltas += [c["delta"].get("content") or "" for c in chunk["choices"]]
        except httpx.HTTPError:
            pass  # a cut may reach the client as a broken chunked body; what matters is what it got
    assert not done  # the client can tell the stream did not finish
    assert "".join(deltas).split() == REPLY[:3]
    assert len(sent_upstream(upstream, content)) == 1
    [record] = check_ledger(tables, account["account_id"])
    assert record["request_id"] == request_id
    assert record["status"] == "settled" and record["usage_estimated"] == "true"
    # Billed exactly as docs/BILLING.md says: the prompt (body bytes ÷ 4) and what was delivered
    # (characters ÷ 4, at least one token a chunk), at the key type's markup and fx.
    delivered = "".join(deltas)
    prompt, completion = (len(raw) + 3) // 4, max(3, (len(delivered) + 3) // 4)
    assert (int(record["prompt_tokens"]), int(record["completion_tokens"])) == (prompt, completion)
    charge = int(record["charge_micros"])
    assert charge == expected_charge(account["currency"], int(record["markup_bp"]), prompt, completion) > 0
    assert before - tables.balance(account["account_id"]) == charge
    assert tables.key_totals(key["key_id"], 1)["charge_micros"] == charge



def test_a_stream_that_outlasts_the_proxys_deadline_is_ended_and_billed_for_what_was_delivered(dev, tables):
    """Before issue 10, Lambda killed such a stream at its timeout before it settled, and the sweeper refunded
    the whole hold: the platform paid the provider for nothing."""
    account = new_account(dev, "partner_project", "5")
    key = new_key(dev, account["account_id"])
    body = {"model": "openai/fake-slow-stream", "stream": True,
            "messages": [{"role": "user", "content": f"deadline {time.time_ns()}"}]}
    deltas, events, started = [], [], time.monotonic()
    with httpx.stream("POST", dev.base_url + "/v1/chat/completions", json=body, headers=auth(key["key"]),
                      timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    elapsed = time.monotonic() - started
    assert DEADLINE - 0.2 < elapsed < DEADLINE + 1.5, elapsed
    assert "[DONE]" not in events and json.loads(events[-1])["error"]["code"] == "gateway_deadline"
    for event in events[:-1]:
        deltas += [c["delta"].get("content") or "" for c in json.loads(event)["choices"]]
    assert 0 < len("".join(deltas).split()) < len(REPLY)
    [record] = check_ledger(tables, account["account_id"])
    assert record["status"] == "settled" and record["usage_estimated"] == "true"
    assert int(record["completion_tokens"]) == max(len(deltas), (len("".join(deltas)) + 3) // 4)
    assert 5_000_000 - tables.balance(account["account_id"]) == int(record["charge_micros"]) > 0
