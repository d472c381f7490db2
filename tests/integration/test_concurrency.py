"""Concurrency: ≥ 200 requests at once through `onysoft dev`, then the books must balance (issue 6, part 1).

One run, over real HTTP (httpx, asyncio): keys of all four types, streaming and not, a share of upstream
failures (fake-500: free), cut streams (fake-cut) and reset connections (fake-reset), both charged their hold
(issue 22), embeddings, fallbacks (`models`: fake-500 or fake-429, then fake-ok; streamed too), a key with
rpm 5 that gets 429s, small accounts that run out of money midway (sequential clients alongside the burst),
and a key deleted midway through the CLI while two clients keep using it. Afterwards, read straight from the
tables (boto3 on the moto endpoint in dev.env), for every account:
- sum of settled charges == top-ups − balance to the micro-unit, with debts in it: some calls (fake-overrun)
  report far more than their hold and are charged in full, so the poor accounts go below zero and are then
  refused (402); a balance is below zero only by those overruns; no hold left open;
- exactly one usage record per request that passed the hold (matched on x-onysoft-request-id), none for the
  others, each with the right status; the key's request count and spend agree;
- every upstream call accounted for: each request carries a unique content tag, and the fake provider saw
  exactly the tags of the requests that have a usage record, once each (a fallback request once per model
  tried, its record naming the attempts that failed and the model that answered);
- every refused request got the right status and OpenAI's envelope (401, 402, 429).

DynamoDB is moto server in its own process, serialized (onysoft_tools/serial_moto.py: stock moto server
loses conditional updates under concurrent transactions).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import httpx

from onysoft import money
from onysoft_tools.fake_provider import OVERRUN_COMPLETION, PROMPT_TOKENS, REPLY
from tests.integration.conftest import ROOT, clean_env, onysoft_command
from tests.integration.ledger import (
    Tables,
    auth,
    check_envelope,
    check_ledger,
    settled_total,
    tag_of,
    wait_for_window_room,
    window_of,
)

KINDS = ("user", "project", "partner_project", "partner_customer")
POOR_TOPUP = {"TRY": "0.05", "USD": "0.0015"}  # a few answers' worth, then 402
HIGH_RPM = "5000"
LIMITED_RPM = 5
DOOMED_MAX_PER_CLIENT = 200  # bounded: each client of the deleted key stops after this many (paced)





@dataclass
class Call:
    """One request of the run and what came back."""

    role: str  # rich | limited | poor | doomed
    account_id: str
    key_id: str
    model: str
    endpoint: str = "chat"
    stream: bool = False
    max_tokens: int | None = 8
    fallbacks: tuple[str, ...] = ()  # the `models` array: tried in order after `model`
    tag: str = field(default_factory=lambda: f"conc-{uuid.uuid4().hex}")
    status: int = 0
    headers: dict = field(default_factory=dict)
    error: dict | None = None
    deltas: list[str] = field(default_factory=list)
    done: bool = False
    started: float = 0.0
    ended: float = 0.0

    @property
    def answered(self) -> str:
        """The model that answers: with fallbacks, the last one (the others fail)."""
        return self.fallbacks[-1] if self.fallbacks else self.model

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-onysoft-request-id")

    def body(self) -> dict:
        if self.endpoint == "embeddings":
            return {"model": self.model, "input": self.tag}
        body = {"model": self.model, "messages": [{"role": "user", "content": self.tag}]}
        if self.stream:
            body["stream"] = True
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.fallbacks:
            body["models"] = list(self.fallbacks)
        return body


async def send(client: httpx.AsyncClient, key: str, call: Call) -> Call:
    path = "/v1/embeddings" if call.endpoint == "embeddings" else "/v1/chat/completions"
    call.started = time.time()
    async with client.stream("POST", path, json=call.body(), headers=auth(key)) as response:
        call.status, call.headers = response.status_code, dict(response.headers)
        if response.status_code == 200 and call.stream:
            try:
                async for line in response.aiter_lines():
                    if line == "data: [DONE]":
                        call.done = True
                    elif line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        if "error" in chunk:  # the gateway ends a stream that broke with an error event
                            call.error = chunk
                        call.deltas += [c["delta"].get("content") or "" for c in chunk.get("choices", [])]
            except httpx.HTTPError:
                pass  # a cut stream may end as a broken body; the client has what it got
        else:
            raw = await response.aread()
            payload = json.loads(raw)
            if response.status_code >= 400:
                call.error = payload
            else:
                call.deltas = [json.dumps(payload)]
    call.ended = time.time()
    return call


def cli(dev, *args: str) -> dict:
    result = subprocess.run([*onysoft_command(), *args, "--state-dir", str(dev.state_dir), "--json"], cwd=ROOT,
                            env=clean_env(), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def make_account(dev, kind: str, amount: str, rpms: list[str]) -> tuple[dict, list[dict]]:
    account = cli(dev, "accounts", "create", "--kind", kind)
    account = cli(dev, "accounts", "topup", account["account_id"], amount)
    keys = [cli(dev, "keys", "create", "--account", account["account_id"], "--rpm", rpm) for rpm in rpms]
    dev.known_keys.update(k["key"] for k in keys)
    return account, keys


def rich_calls(account: dict, key: dict) -> list[Call]:
    def call(model: str, **options) -> Call:
        return Call("rich", account["account_id"], key["key_id"], f"openai/{model}", **options)

    return ([call("fake-ok") for _ in range(8)] + [call("fake-ok", stream=True) for _ in range(6)]
            + [call("fake-500") for _ in range(3)] + [call("fake-cut", stream=True) for _ in range(3)]
            + [call("fake-reset") for _ in range(2)]  # sent, then the connection broke: charged its hold
            + [call("fake-embed", endpoint="embeddings") for _ in range(2)]
            + [call("fake-ok", max_tokens=None) for _ in range(2)]  # full-size hold, no output limit
            + [call("fake-overrun"), call("fake-overrun", stream=True)]  # charged beyond the hold: a debt
            + [call("fake-500", fallbacks=("openai/fake-ok",)),  # fallbacks: answered by fake-ok, charged once
               call("fake-429", stream=True, fallbacks=("openai/fake-ok",)),
               call("fake-429", fallbacks=("openai/fake-500", "openai/fake-ok"))])


def test_200_concurrent_requests_leave_exact_books(dev, upstream):
    tables = Tables(dev)
    # ---------------------------------------------------------------- accounts and keys (CLI, in parallel)
    with ThreadPoolExecutor(max_workers=4) as pool:
        rich = list(pool.map(lambda kind: make_account(dev, kind, "1000", [HIGH_RPM, HIGH_RPM]), KINDS))
        poor = list(pool.map(
            lambda kind: make_account(dev, kind, POOR_TOPUP["USD" if kind == "partner_project" else "TRY"],
                                      [HIGH_RPM]), KINDS))
    by_kind = {account["kind"]: (account, keys) for account, keys in rich}
    user_account = by_kind["user"][0]
    limited = cli(dev, "keys", "create", "--account", user_account["account_id"], "--rpm", str(LIMITED_RPM))
    doomed_account = by_kind["partner_customer"][0]
    doomed = cli(dev, "keys", "create", "--account", doomed_account["account_id"], "--rpm", HIGH_RPM)
    plaintext = {k["key_id"]: k["key"] for _, keys in rich + poor for k in keys}
    plaintext.update({limited["key_id"]: limited["key"], doomed["key_id"]: doomed["key"]})
    accounts = {a["account_id"]: a for a, _ in rich + poor}

    burst = [c for account, keys in rich for key in keys for c in rich_calls(account, key)]
    burst += [Call("limited", user_account["account_id"], limited["key_id"], "openai/fake-ok") for _ in range(20)]
    assert len(burst) >= 200
    seen_before = len(upstream.requests)

    # ---------------------------------------------------------------- the run
    async def run() -> tuple[list[Call], list[Call], list[Call], float, float]:
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
        async with httpx.AsyncClient(base_url=dev.base_url, timeout=120, limits=limits) as client:
            deleted = asyncio.Event()
            moments: dict[str, float] = {}
            doomed_calls: list[Call] = []
            poor_calls: list[Call] = []

            async def poor_client(account: dict, key: dict, index: int) -> None:
                for i in range(10):  # sequential: the balance goes down answer by answer, then 402
                    options = {"stream": True} if i % 3 == 1 else {}
                    if index == 1 and i == 2:
                        options["max_tokens"] = None  # a hold that shrinks to the balance
                    # The fourth answer reports far more than its hold: charged in full, the balance goes below 0.
                    model = "openai/fake-overrun" if i == 3 else "openai/fake-ok"
                    call = Call("poor", account["account_id"], key["key_id"], model, **options)
                    poor_calls.append(await send(client, key["key"], call))

            async def doomed_client() -> None:
                after = 0
                for _ in range(DOOMED_MAX_PER_CLIENT):
                    call = Call("doomed", doomed_account["account_id"], doomed["key_id"], "openai/fake-ok")
                    doomed_calls.append(await send(client, doomed["key"], call))
                    await asyncio.sleep(0.05)  # keep using the key while the CLI deletes it
                    if deleted.is_set():
                        after += 1
                        if after >= 5:
                            return

            async def deleter() -> None:
                deadline = time.monotonic() + 60
                while sum(c.status == 200 for c in doomed_calls) < 6 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                moments["delete_started"] = time.time()
                await asyncio.to_thread(cli, dev, "keys", "delete", doomed["key_id"])
                moments["deleted"] = time.time()
                deleted.set()

            wait_for_window_room(20)  # the rpm-5 key's burst must fall in one UTC minute
            burst_tasks = [send(client, plaintext[c.key_id], c) for c in burst]
            side = [poor_client(a, keys[0], i) for i, (a, keys) in enumerate(poor)]
            side += [doomed_client(), doomed_client(), deleter()]
            results = await asyncio.gather(*burst_tasks, *side)
            return results[:len(burst_tasks)], poor_calls, doomed_calls, moments["delete_started"], moments["deleted"]

    started = time.monotonic()
    done_burst, poor_calls, doomed_calls, delete_started, deleted_at = asyncio.run(
        asyncio.wait_for(run(), timeout=240))
    elapsed = time.monotonic() - started
    calls = done_burst + poor_calls + doomed_calls
    assert len(calls) >= 250 and elapsed < 240

    # ---------------------------------------------------------------- every answer, by role
    for call in calls:
        assert call.status, call
        if call.status >= 400:
            assert call.headers["content-type"].startswith("application/json"), call
            error = check_envelope(httpx.Response(call.status, json=call.error,
                                                  headers={"content-type": "application/json"}))
            call.error = error
    for call in done_burst:
        if call.role != "rich":
            continue
        if call.fallbacks:
            assert call.status == 200 and call.headers["x-onysoft-model"] == "openai/fake-ok", call
            assert call.done if call.stream else json.loads(call.deltas[0])["model"] == "openai/fake-ok", call
        elif call.model == "openai/fake-500":
            assert call.status == 502 and call.error["code"] == "upstream_error", call
        elif call.model == "openai/fake-cut":
            assert call.status == 200 and not call.done and "".join(call.deltas).split() == REPLY[:3], call
            assert call.error["error"]["code"] == "upstream_cut", call
        elif call.model == "openai/fake-reset":
            assert call.status == 502 and "charged its hold" in call.error["message"], call
        elif call.stream:
            assert call.status == 200 and call.done and "".join(call.deltas).split() == REPLY, call
        else:
            assert call.status == 200, call
    limited_calls = [c for c in done_burst if c.role == "limited"]
    statuses = Counter(c.status for c in limited_calls)
    assert set(statuses) <= {200, 429}
    if len({window_of(t) for c in limited_calls for t in (c.started, c.ended)}) == 1:
        assert statuses[200] == LIMITED_RPM, statuses
    for call in limited_calls:
        if call.status == 429:
            assert call.error["code"] == "rate_limit_exceeded" and int(call.headers["retry-after"]) >= 1
            assert call.headers["x-ratelimit-remaining-requests"] == "0"
    for account, _ in poor:
        mine = [c for c in poor_calls if c.account_id == account["account_id"]]
        got = Counter(c.status for c in mine)
        assert set(got) == {200, 402}, (account["kind"], got)  # some answers, then out of money
        first_refusal = min(i for i, c in enumerate(mine) if c.status == 402)
        assert all(c.status == 200 for c in mine[:first_refusal])
        for call in mine:
            if call.status == 402:
                assert call.error["code"] == "insufficient_balance"
                assert account["account_id"] in call.error["message"] and account["currency"] in call.error["message"]
    assert any(c.status == 200 and c.ended < delete_started for c in doomed_calls)
    for call in doomed_calls:
        assert call.status in (200, 401), call
        if call.status == 401:
            assert call.error["code"] == "invalid_api_key"
        if call.started > deleted_at:
            assert call.status == 401, "a deleted key must stop working at once"
    assert sum(c.status == 401 for c in doomed_calls) >= 5

    # ---------------------------------------------------------------- the books, account by account
    passed = {c.request_id: c for c in calls if c.status in (200, 502)}
    assert len(passed) == sum(c.status in (200, 502) for c in calls)  # request ids are unique
    all_records = []
    for account_id in accounts:
        records = check_ledger(tables, account_id)
        all_records += records
        ids = [r["request_id"] for r in records]
        assert len(ids) == len(set(ids)), "a usage record was doubled"
        expected = {rid for rid, c in passed.items() if c.account_id == account_id}
        assert set(ids) == expected, (accounts[account_id]["kind"], len(ids), len(expected))
    for record in all_records:
        call = passed[record["request_id"]]
        assert (record["key_id"], record["model"]) == (call.key_id, call.answered)
        if call.fallbacks:
            failed = [call.model, *call.fallbacks[:-1]]
            assert record["status"] == "settled" and record["requested_model"] == call.model, record
            assert [a.split(": ")[0] for a in record["fallback_attempts"]] == failed, record
            assert (int(record["prompt_tokens"]), int(record["completion_tokens"])) == (PROMPT_TOKENS, len(REPLY))
        elif call.model == "openai/fake-500":
            assert record["status"] == "failed" and record["error_code"] == "upstream_error"
        elif call.model in ("openai/fake-cut", "openai/fake-reset"):
            assert record["status"] == "settled" and record.get("usage_estimated") == "true"
            assert int(record["charge_micros"]) == int(record["hold_micros"])
        elif call.model == "openai/fake-overrun":
            assert record["status"] == "settled" and record["overrun"] == "true"
            assert (int(record["prompt_tokens"]), int(record["completion_tokens"])) == (PROMPT_TOKENS,
                                                                                        OVERRUN_COMPLETION)
        else:
            assert record["status"] == "settled" and "usage_estimated" not in record
            tokens = (PROMPT_TOKENS, len(REPLY)) if call.endpoint == "chat" else (5, 0)
            assert (int(record["prompt_tokens"]), int(record["completion_tokens"])) == tokens
        if call.role == "doomed":  # no hold was placed for the deleted key once its deletion had returned
            assert datetime.fromisoformat(record["created_at"].replace("Z", "+00:00")).timestamp() <= deleted_at
    # Each key's counters agree with its records.
    for key_id in plaintext:
        mine = [r for r in all_records if r["key_id"] == key_id]
        totals = tables.key_totals(key_id, len(mine))  # the usage rollup's count of the key
        assert totals.get("requests", 0) == len(mine), key_id
        assert totals.get("charge_micros", 0) == settled_total(mine), key_id
    assert tables.key(doomed["key_id"])["status"] == "deleted"
    # The margin report (the rollups, never the records) reconciles with the records to the micro-unit: every
    # key type and currency, fallbacks (counted for the model that answered), overruns, failures (issue 26).
    days = sorted({r["created_at"][:10] for r in all_records})
    report = dev.cli_json("report", "margin", "--from", days[0], "--to", days[-1], "--by", "account")
    rows = {(r["account_id"], r["currency"]): r for r in report["rows"]}
    for account_id, account in accounts.items():
        mine = [r for r in all_records if r["account_id"] == account_id]
        settled = [r for r in mine if r["status"] == "settled"]
        row = rows[(account_id, account["currency"])]
        assert (row["requests"], row["settled"], row["charged_micros"]) == (len(mine), len(settled),
                                                                            settled_total(mine)), account_id
        assert row["charged_usd_micros"] == sum(
            money.usd_micros_of_charge(int(r["charge_micros"]), Decimal(r["fx_rate"])) for r in settled)
        assert row["provider_cost_usd_micros"] == sum(money.usd_micros_up(Decimal(r["provider_cost_usd"]))
                                                      for r in settled)
        assert row["margin_usd_micros"] == row["charged_usd_micros"] - row["provider_cost_usd_micros"]
    by_model = dev.cli_json("report", "margin", "--from", days[0], "--to", days[-1], "--by", "model")
    assert by_model["totals"] == report["totals"]
    assert {r["model"] for r in by_model["rows"]} == {r["model"] for r in all_records}
    # Poor accounts really ran out: each owes its overrun (a balance below zero) and was refused after it.
    for account, _ in poor:
        records = [r for r in all_records if r["account_id"] == account["account_id"]]
        assert tables.balance(account["account_id"]) < 0
        assert sum(r.get("overrun") == "true" for r in records) == 1
        mine = [c for c in poor_calls if c.account_id == account["account_id"]]
        assert [c.status for c in mine[:4]] == [200] * 4 and all(c.status == 402 for c in mine[4:]), mine
    assert sum(r.get("overrun") == "true" for r in all_records) == 2 * 8 + 4  # rich keys' two each, poor ones' one

    # ---------------------------------------------------------------- every upstream call accounted for
    tags = {c.tag: c for c in calls}
    upstream_tags = Counter(t for t in (tag_of(r["body"]) for r in upstream.requests[seen_before:]))
    assert set(upstream_tags) <= set(tags), "the provider got a request nobody sent"
    # once each; a fallback request once per model tried
    twice = "a request reached the provider twice"
    assert all(n == 1 + len(tags[t].fallbacks) for t, n in upstream_tags.items()), twice
    assert set(upstream_tags) == {c.tag for c in passed.values()}
    assert sum(upstream_tags.values()) == len(all_records) + sum(len(c.fallbacks) for c in passed.values())
    assert sum(bool(r.get("fallback_attempts")) for r in all_records) == 3 * 8  # three fallback requests per key
