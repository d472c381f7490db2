"""The platform never pays a provider more than it charged (issue 22, docs/BILLING.md "The rule"), proven
against a provider that keeps its own bill (onysoft_tools.fake_billing), not one case at a time.

A hypothesis state machine drives random clients through the HTTP gateway (`onysoft dev`, its read timeout
1.5 s): streamed or not, any output limit, `n`, image parts, tools, fields the route does not price, a
hang-up at a random point (after K stream events, or while the provider works on a whole answer), fallback
models; and a provider that misbehaves at random: usage itemized, only in `total_tokens`, or never sent;
tool-call or reasoning output; a connection cut after K events; silence longer than the read timeout before
the first byte or after the first event; a 500 or 429 first, then the fallback.

After every request (one at a time, so each provider bill has one usage record):
- reached the provider: its record's cost before markup and FX is at least the provider's bill; exactly the
  bill when the provider's usage could be read, else the hold, marked estimated;
- never reached it (refused, or every attempt an error status): no charge;
and after every run, each account's ledger to the micro-unit (tests/integration/ledger.check_ledger).

`make test` runs it at INVARIANT_RUNS x INVARIANT_STEPS requests; `make bench-invariant` runs it long
(ONYSOFT_INVARIANT_RUNS / ONYSOFT_INVARIANT_STEPS) and prints how many requests it tried.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from decimal import Decimal

import httpx
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from onysoft import money
from onysoft_tools.fake_billing import IMAGE_TOKENS
from tests.integration.ledger import CACHED_INPUT, INPUT, OUTPUT, Tables, check_envelope, check_ledger, new_account

READ_TIMEOUT = 1.5
GATEWAY_OPTIONS = {"read_timeout": str(READ_TIMEOUT)}
SILENCE = 2.5  # a gap or a late answer longer than the read timeout: the gateway gives up on it
MODELS = ("openai/fake-ledger", "openai/fake-ledger-b")
RUNS = int(os.environ.get("ONYSOFT_INVARIANT_RUNS", "6"))
STEPS = int(os.environ.get("ONYSOFT_INVARIANT_STEPS", "12"))
SETTLE_TIMEOUT = 30.0  # a hang-up's drain ends by the read timeout; generous for a busy core
TRIED = {"requests": 0, "reached": 0, "estimated": 0}


@pytest.fixture(scope="module")
def accounts(dev):
    dev.cli_json("catalog", "set", *MODELS, "--input-usd-per-mtok", str(INPUT), "--output-usd-per-mtok", str(OUTPUT),
                 "--cached-input-usd-per-mtok", str(CACHED_INPUT), "--tokens-per-image", str(IMAGE_TOKENS))
    made = []
    for kind in ("user", "partner_project"):  # TRY at its markup, USD at the partner's
        account = new_account(dev, kind, amount="5000")
        key = dev.cli_json("keys", "create", "--account", account["account_id"], "--rpm", "1000000",
                           "--tpm", "1000000000")
        dev.known_keys.add(key["key"])
        made.append({"account_id": account["account_id"], "key": key["key"]})
    return made


# ---------------------------------------------------------------------------------------------- strategies

provider_plans = st.fixed_dictionaries({
    "usage": st.sampled_from(["full", "full", "total", "none"]),
    "kind": st.sampled_from(["content", "tool", "reasoning"]),
    "out": st.integers(1, 3_000),
    "events": st.integers(1, 6),
    "cut": st.one_of(st.just(-1), st.just(-1), st.integers(0, 6)),
    "gap": st.sampled_from([0.0] * 7 + [SILENCE]),
    "first": st.sampled_from([""] * 6 + ["500", "429", "late", "cut"]),
})

client_calls = st.fixed_dictionaries({
    "account": st.integers(0, 1),
    "stream": st.booleans(),
    "include_usage": st.booleans(),
    "n": st.sampled_from([None, 1, 2]),
    "limit": st.one_of(st.none(), st.tuples(st.sampled_from(["max_tokens", "max_completion_tokens"]),
                                            st.integers(1, 4_000))),
    "text": st.text(min_size=0, max_size=300),
    "images": st.integers(0, 2),
    "tools": st.booleans(),
    "fallback": st.booleans(),
    "extra": st.sampled_from([{}] * 6 + [{"temperature": 0.3}, {"store": True}, {"provider": {"order": ["x"]}},
                                         {"search_parameters": {"mode": "on"}}, {"web_search_options": {}}]),
    "hang_up": st.one_of(st.none(), st.none(), st.integers(0, 8)),  # after K events (0: once the provider has it)
})


def body_of(call: dict, plan: dict, request_id: str) -> dict:
    directive = " ".join(f"{name}={value}" for name, value in plan.items() if value not in ("", None))
    text = f"{call['text']} [[ledger id={request_id} late={SILENCE} {directive}]]"
    content = [{"type": "text", "text": text}] + [{"type": "image_url", "image_url": {"url": f"https://x/{i}.png"}}
                                                  for i in range(call["images"])]
    body = {"model": MODELS[0], "messages": [{"role": "user", "content": content}], **call["extra"]}
    if call["stream"]:
        body["stream"] = True
        if call["include_usage"]:
            body["stream_options"] = {"include_usage": True}
    if call["n"] is not None:
        body["n"] = call["n"]
    if call["limit"]:
        body[call["limit"][0]] = call["limit"][1]
    if call["tools"]:
        body["tools"] = [{"type": "function", "function": {"name": "lookup", "description": "finds things",
                                                            "parameters": {"type": "object", "properties": {}}}}]
    if call["fallback"]:
        body["models"] = [MODELS[1]]
    return body


def usage_known(plan: dict, bill) -> bool:
    """Whether the gateway could read the provider's usage of the attempt that answered: the provider sent it,
    the connection was not cut before it, and no silence outlasted the gateway's read timeout."""
    return plan["usage"] != "none" and not bill.cut and bill.silence < READ_TIMEOUT


def bill_usd(bill) -> Decimal:
    return (money.usd_cost(bill.prompt - bill.cached, INPUT) + money.usd_cost(bill.cached, CACHED_INPUT)
            + money.usd_cost(bill.completion, OUTPUT))


# ---------------------------------------------------------------------------------------------- the client

def send(base_url: str, key: str, body: dict, hang_up: int | None, reached) -> int | None:
    """The answer's status, or None when the client hung up first. A hang-up on a stream comes after `hang_up`
    events; on a whole answer, once the provider has the request (or the answer is there)."""
    raw = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if hang_up is not None and not body.get("stream"):
        return _hang_up_while_the_provider_works(base_url, headers, raw, reached)
    with httpx.stream("POST", base_url + "/v1/chat/completions", content=raw, headers=headers, timeout=60) as answer:
        if answer.status_code != 200 or hang_up is None:
            answer.read()
            if answer.status_code != 200:
                check_envelope(answer, answer.status_code)
            return answer.status_code
        events = 0
        for line in answer.iter_lines():
            events += line.startswith("data:")
            if events > hang_up:
                return None  # leaving the block closes the connection mid-stream
        return 200


def _hang_up_while_the_provider_works(base_url: str, headers: dict, raw: bytes, reached) -> int | None:
    host, port = httpx.URL(base_url).host, httpx.URL(base_url).port
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: {len(raw)}\r\n"
                     "Connection: close\r\n\r\n".encode() + raw)
        sock.settimeout(0.02)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not reached():
            try:
                first = sock.recv(64)
            except TimeoutError:
                continue
            return int(first.split()[1]) if first else None  # answered before the provider had it: a refusal
        return None


# ---------------------------------------------------------------------------------------------- the proof

def settled_records(tables: Tables, account_id: str, seen: set[str], expect_new: bool) -> list[dict]:
    """The account's records not in `seen`, once none is open (and, if `expect_new`, once there is one)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        records = [r for r in tables.usage(account_id) if r["sk"] not in seen]
        done = all(r["status"] != "pending" and "hold_state" not in r for r in records)
        if (done and (records or not expect_new)) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def test_the_platform_never_pays_a_provider_more_than_it_charged(dev, upstream, accounts):
    tables = Tables(dev)
    seen = {a["account_id"]: {r["sk"] for r in tables.usage(a["account_id"])} for a in accounts}

    class Clients(RuleBasedStateMachine):
        @rule(call=client_calls, plan=provider_plans)
        def a_request(self, call, plan):
            account = accounts[call["account"]]
            account_id = account["account_id"]
            request_id = secrets.token_hex(6)
            body = body_of(call, plan, request_id)
            before = tables.balance(account_id)
            status = send(dev.base_url, account["key"], body, call["hang_up"],
                          reached=lambda: request_id in upstream.biller.ids())
            TRIED["requests"] += 1
            records = settled_records(tables, account_id, seen[account_id],
                                      expect_new=bool(upstream.biller.of(request_id)))
            # Read once the record is closed: a hang-up ends the client's wait, not the gateway's fallbacks.
            bills = upstream.biller.of(request_id)
            seen[account_id].update(r["sk"] for r in records)
            owed = sum((bill_usd(b) for b in bills), Decimal(0))
            if not bills:  # never reached the provider: refused, or turned away before the call
                assert status is None or status >= 400, (status, body)
                assert all(int(r.get("charge_micros", 0)) == 0 for r in records), records
                assert tables.balance(account_id) == before
                return
            TRIED["reached"] += 1
            seen_by_provider = [(b.model, b.attempt, b.status, b.prompt, b.completion, b.cut, b.silence) for b in bills]
            what = json.dumps({"status": status, "call": call, "plan": plan, "provider": seen_by_provider,
                               "records": [{k: v for k, v in r.items() if "usd_per" not in k} for r in records]},
                              default=str, ensure_ascii=True)
            assert len(records) == 1, what
            [record] = records
            assert record["status"] in ("settled", "failed"), what
            cost = Decimal(record.get("provider_cost_usd", "0"))
            assert cost >= owed, f"the provider billed {owed} USD, the account was charged for {cost}: {what}"
            answered = bills[-1]
            if owed == 0:  # every attempt an error status: the provider did no work
                assert int(record.get("charge_micros", 0)) == 0 and all(b.status >= 400 for b in bills), what
            elif usage_known(plan, answered):
                assert "usage_estimated" not in record, what
                assert (int(record["prompt_tokens"]), int(record["completion_tokens"])) == \
                    (answered.prompt, answered.completion), what
                assert cost == owed, what
            else:
                TRIED["estimated"] += 1
                assert record.get("usage_estimated") == "true" and record.get("estimate_reason"), what
                assert int(record["charge_micros"]) == int(record["hold_micros"]), what
            assert before - tables.balance(account_id) == int(record.get("charge_micros", 0)), what

        def teardown(self):
            for account in accounts:
                check_ledger(tables, account["account_id"])

    run_state_machine_as_test(Clients, settings=settings(
        # No shrinking, no replay: the gateway's tables carry state from run to run, so a shrunk run is not the
        # run that failed; each step's assertion says what it sent and what the provider did instead.
        max_examples=RUNS, stateful_step_count=STEPS, deadline=None, database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    print(f"\nmoney invariant: {TRIED['requests']} requests tried, {TRIED['reached']} reached the provider, "
          f"{TRIED['estimated']} charged their hold (usage unknown)")
    assert TRIED["reached"] > 0
