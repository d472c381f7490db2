"""Upstream faults through `onysoft dev` and a fake provider on loopback, over real HTTP.

Each fault keeps its meaning for the client (500 → 502, 429 → 429 with Retry-After, timeout → 504, a reset
connection → 502, a malformed 200 → 502) in OpenAI's envelope. What it costs is the one rule of docs/BILLING.md
(issue 22): a provider that refused before doing any work (an error status) costs nothing, the balance back
where it was and the usage record `failed` with the reason; a request the provider got and whose usage cannot be
known (a timeout after the send, a connection reset after it, a 200 that is not JSON, a stream cut midway or past
the deadline) is charged its hold, marked estimated with the reason, and the client is told so. DynamoDB
throttling and transaction conflicts are covered in tests/unit/test_dynamodb_faults.py.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from onysoft_tools.fake_provider import REPLY, TIMEOUT_DELAY, FakeUpstream
from tests.integration.ledger import (
    Tables,
    auth,
    check_envelope,
    check_ledger,
    new_account,
    new_key,
)

READ_TIMEOUT = 1.5
DEADLINE = 2.0  # the proxy's deadline here: fake-endless-stream (two minutes) outlasts it
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


FREE_FAULTS = [
    # model, client status, usage error_code, upstream status recorded
    ("fake-500", 502, "upstream_error", 500),
    ("fake-429", 429, "upstream_rate_limited", 429),
]
CHARGED_FAULTS = [
    # model, client status, error code, the record's estimate_reason
    ("fake-timeout", 504, "upstream_timeout", "upstream_timeout"),
    ("fake-reset", 502, "upstream_unreachable", "upstream_unreachable"),
    ("fake-malformed-200", 502, "upstream_malformed_response", "not_json"),
]


def _common_checks(response, upstream, content, status, code) -> dict:
    error = check_envelope(response, status, code)
    assert error["type"] in ("upstream_error", "rate_limit_error")
    assert "Traceback" not in response.text and "upstream-provider-secret" not in response.text
    assert len(sent_upstream(upstream, content)) == 1  # the provider was called once: no hidden retry
    assert response.headers["x-ratelimit-limit-requests"]  # the limit headers on errors too
    return error


@pytest.mark.parametrize(("model", "status", "code", "upstream_status"), FREE_FAULTS, ids=[f[0] for f in FREE_FAULTS])
@pytest.mark.parametrize("kind", ["user", "partner_project"])
def test_a_provider_that_refused_keeps_its_meaning_and_costs_nothing(dev, upstream, tables, kind, model, status,
                                                                     code, upstream_status):
    account = new_account(dev, kind, "5")
    key = new_key(dev, account["account_id"])
    before = tables.balance(account["account_id"])
    content = f"fault {model} {kind} {time.time_ns()}"
    response = post_chat(dev, key["key"], model, content, max_tokens=50)
    error = _common_checks(response, upstream, content, status, code)
    assert "Nothing was charged" in error["message"] or model == "fake-429"
    if model == "fake-429":
        assert response.headers["retry-after"] == "7"  # the provider's Retry-After, passed through
    # Nothing charged: the balance is back, the one usage record is `failed` with the reason.
    assert tables.balance(account["account_id"]) == before
    [record] = check_ledger(tables, account["account_id"])
    assert record["request_id"] == response.headers["x-onysoft-request-id"]
    assert record["status"] == "failed" and int(record["charge_micros"]) == 0
    assert record["error_code"] == code and record.get("error_message")
    assert int(record["upstream_status"]) == upstream_status
    totals = tables.key_totals(key["key_id"], 1)  # the usage rollup's count of the key
    assert totals.get("charge_micros", 0) == 0 and totals["requests"] == totals["failed"] == 1


@pytest.mark.parametrize(("model", "status", "code", "reason"), CHARGED_FAULTS, ids=[f[0] for f in CHARGED_FAULTS])
@pytest.mark.parametrize("kind", ["user", "partner_project"])
def test_a_request_the_provider_got_whose_usage_is_unknown_is_charged_its_hold(dev, upstream, tables, kind, model,
                                                                              status, code, reason):
    """It was free before issue 22: the provider finished (or had done) the work and billed the platform."""
    account = new_account(dev, kind, "5")
    key = new_key(dev, account["account_id"])
    before = tables.balance(account["account_id"])
    content = f"charged {model} {kind} {time.time_ns()}"
    started = time.monotonic()
    response = post_chat(dev, key["key"], model, content, max_tokens=50)
    elapsed = time.monotonic() - started
    error = _common_checks(response, upstream, content, status, code)
    assert "charged its hold" in error["message"]
    if model == "fake-timeout":
        assert elapsed < TIMEOUT_DELAY  # the gateway's read timeout ended it, not the provider's answer
    [record] = check_ledger(tables, account["account_id"])
    assert record["request_id"] == response.headers["x-onysoft-request-id"]
    assert (record["status"], record["usage_estimated"], record["estimate_reason"]) == ("settled", "true", reason)
    assert int(record["completion_tokens"]) == 50 and int(record["prompt_tokens"]) == int(record["hold_prompt_tokens"])
    charge = int(record["charge_micros"])
    assert charge == int(record["hold_micros"]) > 0
    assert before - tables.balance(account["account_id"]) == charge
    assert tables.key_totals(key["key_id"], 1)["charge_micros"] == charge


def test_malformed_200_to_a_stream_request_is_a_502_charged_its_hold(dev, upstream, tables):
    account = new_account(dev, "user", "5")
    key = new_key(dev, account["account_id"])
    before = tables.balance(account["account_id"])
    content = f"malformed stream {time.time_ns()}"
    body = {"model": "openai/fake-malformed-200", "stream": True, "max_tokens": 50,
            "messages": [{"role": "user", "content": content}]}
    with httpx.stream("POST", dev.base_url + "/v1/chat/completions", json=body, headers=auth(key["key"]),
                      timeout=30) as response:
        response.read()
    [record] = check_ledger(tables, account["account_id"])  # whatever happens, the ledger is exact
    assert len(sent_upstream(upstream, content)) == 1
    assert record["status"] == "settled" and record["usage_estimated"] == "true"
    assert before - tables.balance(account["account_id"]) == int(record["charge_micros"]) == int(record["hold_micros"])
    check_envelope(response, 502, "upstream_malformed_response")


@pytest.mark.parametrize("kind", ["user", "partner_customer", "partner_project"])
def test_an_sse_stream_cut_midway_is_charged_its_hold_and_says_so(dev, upstream, tables, kind):
    account = new_account(dev, kind, "5")
    key = new_key(dev, account["account_id"])
    before = tables.balance(account["account_id"])
    content = f"cut {kind} {time.time_ns()}"
    body = {"model": "openai/fake-cut", "stream": True, "max_tokens": 50,
            "messages": [{"role": "user", "content": content}]}
    deltas, done, last = [], False, None
    with httpx.stream("POST", dev.base_url + "/v1/chat/completions", json=body, timeout=30,
                      headers=auth(key["key"])) as response:
        assert response.status_code == 200
        request_id = response.headers["x-onysoft-request-id"]
        for line in response.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                last = json.loads(line[6:])
                deltas += [c["delta"].get("content") or "" for c in last.get("choices", [])]
    assert not done  # the client can tell the stream did not finish
    assert last["error"]["code"] == "upstream_cut" and "charged its hold" in last["error"]["message"]
    assert "".join(deltas).split() == REPLY[:3]
    assert len(sent_upstream(upstream, content)) == 1
    [record] = check_ledger(tables, account["account_id"])
    assert record["request_id"] == request_id
    assert (record["status"], record["usage_estimated"], record["estimate_reason"]) == ("settled", "true", "cut")
    charge = int(record["charge_micros"])
    assert charge == int(record["hold_micros"]) and int(record["completion_tokens"]) == 50
    assert before - tables.balance(account["account_id"]) == charge
    assert tables.key_totals(key["key_id"], 1)["charge_micros"] == charge


def test_a_stream_that_outlasts_the_proxys_deadline_is_ended_and_charged_its_hold(dev, tables):
    """Before issue 10, Lambda killed such a stream at its timeout before it settled, and the sweeper refunded
    the whole hold; until issue 22 it was billed on a guess from what it delivered."""
    account = new_account(dev, "partner_project", "5")
    key = new_key(dev, account["account_id"])
    body = {"model": "openai/fake-endless-stream", "stream": True, "max_tokens": 50,
            "messages": [{"role": "user", "content": f"deadline {time.time_ns()}"}]}
    deltas, events, started = [], [], time.monotonic()
    with httpx.stream("POST", dev.base_url + "/v1/chat/completions", json=body, headers=auth(key["key"]),
                      timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    elapsed = time.monotonic() - started
    # Ended by the gateway's deadline (counted from its own start of the request, after ours), never before it,
    # and long before the provider would have ended the stream (two minutes).
    assert DEADLINE <= elapsed < 60, elapsed
    assert "[DONE]" not in events and json.loads(events[-1])["error"]["code"] == "gateway_deadline"
    for event in events[:-1]:
        deltas += [c["delta"].get("content") or "" for c in json.loads(event)["choices"]]
    assert deltas
    [record] = check_ledger(tables, account["account_id"])
    assert (record["status"], record["usage_estimated"], record["estimate_reason"]) == (
        "settled", "true", "deadline")
    assert 5_000_000 - tables.balance(account["account_id"]) == int(record["charge_micros"]) == int(
        record["hold_micros"])
