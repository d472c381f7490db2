"""Sharded balances under concurrency, through `onysoft dev` over real HTTP (moto server in its own process,
serialized: onysoft_tools/serial_moto.py), with the fake provider counting what it is sent (issue 16).

- 8-shard accounts, 90+ requests at once mixing streams, upstream failures (fake-500), cut streams, embeddings,
  overruns (debts) and balance exhaustion (a poor account): the books balance to the micro-unit over the sum
  of the shards, no shard goes below what the rules allow (ledger.check_ledger), every request that passed
  the hold has exactly one record (in its shard's Usage partition; the CLI lists them all, newest first), the key
  counters agree, the holds used many shards.
- a hold bigger than every shard but smaller than the sum succeeds (the shards are consolidated first).
- rpm on a key of a sharded account stays exact under concurrency (its rate counters follow the balance shards,
  each with its share of the limit: docs/BILLING.md §1).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import httpx

from tests.integration.ledger import (
    Tables,
    auth,
    check_envelope,
    check_ledger,
    check_statements,
    new_account,
    new_key,
    settled_total,
    tag_of,
    wait_for_window_room,
    window_of,
)

SHARDS = "8"


def body(tag: str, model: str = "openai/fake-ok", *, stream: bool = False, max_tokens: int | None = 8,
         embeddings: bool = False) -> dict:
    if embeddings:
        return {"model": model, "input": tag}
    out: dict = {"model": model, "messages": [{"role": "user", "content": tag}]}
    if stream:
        out["stream"] = True
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    return out


async def send(client: httpx.AsyncClient, key: str, payload: dict) -> dict:
    path = "/v1/embeddings" if "input" in payload else "/v1/chat/completions"
    result = {"payload": payload, "tag": tag_of(payload), "status": 0, "headers": {}, "error": None}
    async with client.stream("POST", path, json=payload, headers=auth(key)) as response:
        result["status"], result["headers"] = response.status_code, dict(response.headers)
        try:
            raw = await response.aread()
        except httpx.HTTPError:
            raw = b""  # a cut stream may end as a broken body
        if response.status_code >= 400:
            result["error"] = check_envelope(httpx.Response(response.status_code, content=raw,
                                                            headers={"content-type": "application/json"}))
    return result


def rich_bodies() -> list[dict]:
    def tag() -> str:
        return f"shard-{uuid.uuid4().hex}"

    return ([body(tag()) for _ in range(24)] + [body(tag(), stream=True) for _ in range(12)]
            + [body(tag(), "openai/fake-500") for _ in range(8)]
            + [body(tag(), "openai/fake-cut", stream=True) for _ in range(8)]
            + [body(tag(), "openai/fake-embed", embeddings=True) for _ in range(4)]
            + [body(tag(), max_tokens=None) for _ in range(2)]
            + [body(tag(), "openai/fake-overrun"), body(tag(), "openai/fake-overrun", stream=True)])


def test_books_balance_on_8_shard_accounts_under_100_concurrent_requests(dev, upstream):
    tables = Tables(dev)
    rich = new_account(dev, "user", "1000", shards=SHARDS)
    poor = new_account(dev, "user", "0.4", shards=SHARDS)  # 0.05 a shard: about one hold each, then 402
    assert rich["shards"] == 8 and rich["balance_micros"] == 1_000_000_000
    assert tables.shard_balances(rich["account_id"]) == {k: 125_000_000 for k in range(8)}  # spread evenly
    rich_keys = [new_key(dev, rich["account_id"], "--rpm", "5000") for _ in range(2)]
    poor_key = new_key(dev, poor["account_id"], "--rpm", "5000")
    work = [(rich_keys[i % 2], b) for i, b in enumerate(rich_bodies())]
    poor_bodies = [body(f"shard-{uuid.uuid4().hex}") for _ in range(28)]
    poor_bodies += [body(f"shard-{uuid.uuid4().hex}", "openai/fake-overrun") for _ in range(2)]
    work += [(poor_key, b) for b in poor_bodies]
    assert len(work) >= 90
    seen_before = len(upstream.requests)

    async def run() -> list[dict]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=dev.base_url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(send(client, key["key"], payload) for key, payload in work))

    results = asyncio.run(asyncio.wait_for(run(), timeout=240))
    by_tag = {r["tag"]: r for r in results}
    key_of_tag = {tag_of(payload): key for key, payload in work}

    # Every answer, by kind.
    for result in results:
        model, key = result["payload"]["model"], key_of_tag[result["tag"]]
        if key is poor_key:
            assert result["status"] in (200, 402), (result["status"], result["error"])
            if result["status"] == 402:
                assert result["error"]["code"] == "insufficient_balance" and poor["account_id"] in \
                    result["error"]["message"]
        elif model == "openai/fake-500":
            assert result["status"] == 502 and result["error"]["code"] == "upstream_error", result
        else:
            assert result["status"] == 200, result
    poor_statuses = Counter(r["status"] for r in results if key_of_tag[r["tag"]] is poor_key)
    assert poor_statuses[200] >= 1 and poor_statuses[402] >= 1, poor_statuses  # served, then out of money

    # The books, over the sum of the shards; no shard below what the rules allow (check_ledger).
    passed = {r["headers"]["x-onysoft-request-id"]: r for r in results if r["status"] in (200, 502)}
    all_records = []
    for account in (rich, poor):
        records = check_ledger(tables, account["account_id"])
        ids = [r["request_id"] for r in records]
        assert len(ids) == len(set(ids)), "a usage record was doubled"
        mine = {rid for rid, r in passed.items() if key_of_tag[r["tag"]]["account_id"] == account["account_id"]}
        assert set(ids) == mine
        all_records += records
    for key in [*rich_keys, poor_key]:
        mine = [r for r in all_records if r["key_id"] == key["key_id"]]
        totals = tables.key_totals(key["key_id"], len(mine))  # the usage rollup's count of the key
        assert totals.get("requests", 0) == len(mine)
        assert totals.get("charge_micros", 0) == settled_total(mine)
    # Their statements: closing = opening + top-ups − charges with 8 shards, overruns into debt (netted over the
    # shards) and released holds; the last closing is the balance (issue 26).
    for account in (rich, poor):
        check_statements(dev, tables, account, [r for r in all_records if r["account_id"] == account["account_id"]])
    rich_records = [r for r in all_records if r["account_id"] == rich["account_id"]]
    assert len({int(r.get("balance_shard", 0)) for r in rich_records}) >= 6  # the holds used the shards
    # ... and each record sits in its shard's Usage partition, not all in one
    assert all(r["partition"] == (r["account_id"] if int(r.get("balance_shard", 0)) == 0
                                  else f"{r['account_id']}#{int(r['balance_shard'])}") for r in rich_records)
    listed = dev.cli_json("usage", "--account", rich["account_id"], "--limit", "1000")["records"]
    assert sorted(r["request_id"] for r in listed) == sorted(r["request_id"] for r in rich_records)
    assert [r["created_at"] for r in listed] == sorted((r["created_at"] for r in listed), reverse=True)
    assert sum(r.get("overrun") == "true" for r in rich_records) == 2

    # Every upstream call accounted for: the provider saw exactly the requests that have a record, once each.
    upstream_tags = Counter(tag_of(r["body"]) for r in upstream.requests[seen_before:])
    assert all(n == 1 for n in upstream_tags.values())
    assert set(upstream_tags) == {r["tag"] for r in passed.values()}
    assert sum(upstream_tags.values()) == len(all_records)
    assert set(by_tag) == {tag_of(p) for _, p in work}

    # The 402 rule over the sum (docs/BILLING.md section 5): a shard at 0 or below funds no hold, and after an
    # overrun the account is netted; money refunded to a shard after that netting (the unspent part of holds
    # then open) stays usable until spent. So: with every shard at 0 or below, the account is refused; with
    # money left on a shard, a request may be served, and the books and the debt bound still hold after it.
    shards = tables.shard_balances(poor["account_id"])
    late = httpx.post(f"{dev.base_url}/v1/chat/completions", headers=auth(poor_key["key"]),
                      json=body(f"shard-{uuid.uuid4().hex}", max_tokens=1), timeout=30)
    if max(shards.values()) <= 0:
        check_envelope(late, 402, "insufficient_balance")
    elif late.status_code != 200:
        check_envelope(late, 402, "insufficient_balance")
    check_ledger(tables, poor["account_id"])


def test_a_hold_bigger_than_every_shard_but_within_the_sum_succeeds(dev, upstream):
    tables = Tables(dev)
    account = new_account(dev, "user", "8", shards=SHARDS)  # 1 TRY a shard
    key = new_key(dev, account["account_id"], "--rpm", "5000")
    assert tables.shard_balances(account["account_id"]) == {k: 1_000_000 for k in range(8)}
    # About 3 TRY of output: more than any shard holds, less than the sum.
    per_token = 10 / 1_000_000 * (1 + account["markup_pct"] / 100) * 41.5
    max_tokens = int(3 / per_token)
    response = httpx.post(f"{dev.base_url}/v1/chat/completions", headers=auth(key["key"]),
                          json=body(f"shard-{uuid.uuid4().hex}", max_tokens=max_tokens), timeout=30)
    assert response.status_code == 200, response.text
    [record] = check_ledger(tables, account["account_id"])
    assert 1_000_000 < int(record["hold_micros"]) < 8_000_000
    assert tables.balance(account["account_id"]) == 8_000_000 - int(record["charge_micros"])
    assert min(tables.shard_balances(account["account_id"]).values()) >= 0


def test_rpm_on_a_key_of_a_sharded_account_is_exact_under_concurrency(dev, upstream):
    account = new_account(dev, "user", "100", shards=SHARDS)
    key = new_key(dev, account["account_id"], "--rpm", "10")
    wait_for_window_room(20)

    async def run() -> list[dict]:
        async with httpx.AsyncClient(base_url=dev.base_url, timeout=60) as client:
            return await asyncio.gather(*(send(client, key["key"], body(f"shard-{uuid.uuid4().hex}"))
                                          for _ in range(30)))

    started = window_of(time.time())
    results = asyncio.run(run())
    statuses = Counter(r["status"] for r in results)
    assert set(statuses) <= {200, 429}
    if window_of(time.time()) == started:  # one UTC minute: exactly rpm served
        assert statuses[200] == 10, statuses
    for result in results:
        if result["status"] == 429:
            assert result["error"]["code"] == "rate_limit_exceeded"
    check_ledger(Tables(dev), account["account_id"])
