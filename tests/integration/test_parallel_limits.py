"""max_parallel under real concurrency (issue 23; onysoft.parallel): `onysoft dev` over its moto server (which keeps
transactions atomic), a fake provider on loopback whose `fake-gated` model holds every request until the test opens
its gate and counts how many it holds at once.

- 50 concurrent requests on one key with max_parallel 5: exactly 5 reach the provider, 45 get 429
  `too_many_parallel_requests` (no hold, nothing charged), the ledger is exact, the key's counter is 0 after;
- the same on one account (several keys, 1 or 4 balance shards) with max_parallel 5;
- kill -9 of the gateway with requests in flight: the counters keep their slots until the sweeper closes the holds
  the crash left open, then they are 0 and the ledger exact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.integration.conftest import ROOT, child_pids, clean_env, process_gone
from tests.integration.ledger import (
    Tables,
    auth,
    check_envelope,
    check_ledger,
    new_account,
    new_key,
    start_gateway,
)

GATEWAY_OPTIONS = {"read_timeout": "150"}  # gated requests wait on the test, never on the gateway's read timeout
N = 5
REQUESTS = 50
SETTLE_WAIT = 120.0  # how long to wait for what must happen (a liveness bound, never a timing assertion)


@pytest.fixture(scope="module")
def tables(dev):
    return Tables(dev)


@pytest.fixture(autouse=True)
def closed_gate(upstream):
    upstream.gate.clear()
    upstream.gated_most = upstream.gated_arrived = 0
    yield
    upstream.gate.set()  # whatever happened, nothing stays held


def gated_body() -> dict:
    return {"model": "openai/fake-gated", "messages": [{"role": "user", "content": f"hi {uuid.uuid4().hex}"}],
            "max_tokens": 8}


def wait_until(condition, what: str, timeout: float = SETTLE_WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting for {what} after {timeout:g} s")
        time.sleep(0.02)


class Burst:
    """`len(keys)` requests at once, one per entry of `keys` (a key each), sent from threads; answers as they come."""

    def __init__(self, dev, keys: list[str]):
        self.answers: list[httpx.Response] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        barrier = threading.Barrier(len(keys))
        limits = httpx.Limits(max_connections=len(keys), max_keepalive_connections=0)
        self._client = httpx.Client(base_url=dev.base_url, timeout=SETTLE_WAIT + 60, limits=limits)

        def one(key: str) -> None:
            barrier.wait(timeout=30)
            try:
                response = self._client.post("/v1/chat/completions", json=gated_body(), headers=auth(key))
                response.read()
            except httpx.HTTPError as exc:
                with self._lock:
                    self.errors.append(repr(exc))
                return
            with self._lock:
                self.answers.append(response)

        self._pool = ThreadPoolExecutor(max_workers=len(keys))
        self._futures = [self._pool.submit(one, key) for key in keys]

    def refused(self) -> list[httpx.Response]:
        with self._lock:
            return [r for r in self.answers if r.status_code == 429]

    def finish(self) -> list[httpx.Response]:
        for future in self._futures:
            future.result(timeout=SETTLE_WAIT + 90)
        self._pool.shutdown()
        self._client.close()
        return self.answers


def parallel_counter(tables: Tables, key_id: str) -> int:
    return int(tables.counter(f"{key_id}#parallel").get("in_flight", 0))


def account_in_flight(tables: Tables, account_id: str) -> int:
    items = [tables.accounts.get_item(Key={"account_id": account_id if k == 0 else f"{account_id}#{k}"},
                                      ConsistentRead=True).get("Item") or {} for k in range(8)]
    return sum(int(item.get("in_flight", 0)) for item in items)


def run_burst(dev, upstream, keys: list[str], limit: int) -> tuple[list[httpx.Response], list[httpx.Response]]:
    """Every request is decided (held at the provider or refused) before any may end: exactly `limit` reach the
    provider at once; then the gate opens and they answer."""
    burst = Burst(dev, keys)
    wait_until(lambda: upstream.gated_arrived + len(burst.refused()) >= len(keys) or burst.errors,
               "every request to be held at the provider or refused")
    assert not burst.errors, burst.errors
    assert (upstream.gated_now, upstream.gated_arrived, len(burst.refused())) == (limit, limit, len(keys) - limit)
    held_at_once = upstream.gated_now
    upstream.gate.set()
    answers = burst.finish()
    assert not burst.errors, burst.errors
    assert upstream.gated_most == held_at_once == limit
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert (len(ok), len(refused)) == (limit, len(keys) - limit), sorted(r.status_code for r in answers)
    for response in refused:
        check_envelope(response, 429, "too_many_parallel_requests")
        assert response.headers["retry-after"] == "1"
        assert "max_parallel" in response.json()["error"]["message"]
    return ok, refused


def test_50_concurrent_requests_on_a_key_with_max_parallel_5_forward_exactly_5(dev, upstream, tables):
    account = new_account(dev, "user", "50")
    key = new_key(dev, account["account_id"], "--max-parallel", str(N), "--rpm", "1000")
    assert key["max_parallel"] == N
    run_burst(dev, upstream, [key["key"]] * REQUESTS, N)
    records = check_ledger(tables, account["account_id"])  # no hold open, charges exact to the micro-unit
    assert len(records) == N and {r["status"] for r in records} == {"settled"}
    assert all(r["parallel"] == "key" for r in records)
    assert parallel_counter(tables, key["key_id"]) == 0
    view = httpx.get(dev.base_url + "/v1/key", headers=auth(key["key"])).json()
    assert view["limits"]["max_parallel"] == N and view["usage"]["in_flight"] == 0


@pytest.mark.parametrize("shards", [1, 4])
def test_50_concurrent_requests_on_an_account_with_max_parallel_5_forward_exactly_5(dev, upstream, tables, shards):
    """Five keys, ten requests each, on one account whose max_parallel is 5: its in-flight count lives on its
    balance shards (4 shards: shares 2, 1, 1, 1, and a full shard moves the hold), so exactly 5 in all."""
    account = new_account(dev, "partner_project", None, shards=str(shards))
    view = dev.cli_json("accounts", "update", account["account_id"], "--max-parallel", str(N))
    assert view["max_parallel"] == N
    dev.cli_json("accounts", "topup", account["account_id"], "50")
    keys = [new_key(dev, account["account_id"]) for _ in range(5)]
    assert all(k["max_parallel"] is None for k in keys)
    run_burst(dev, upstream, [k["key"] for k in keys for _ in range(REQUESTS // len(keys))], N)
    records = check_ledger(tables, account["account_id"])
    assert len(records) == N and all(r["parallel"] == "account" for r in records)
    assert account_in_flight(tables, account["account_id"]) == 0
    assert dev.cli_json("accounts", "show", account["account_id"])["max_parallel"] == N


def _kill_everything(dev) -> None:
    """SIGKILL to moto's process group and the gateway's: no cleanup code runs anywhere."""
    moto = child_pids(dev.process.pid)
    assert moto, "onysoft dev should run moto server as its child"
    for pid in moto:
        os.killpg(pid, signal.SIGKILL)
    os.killpg(dev.process.pid, signal.SIGKILL)
    dev.process.wait()
    wait_until(lambda: all(process_gone(pid) for pid in moto), "moto to be gone", 10)
    dev.process = None


def _sweep(dev) -> dict:
    """What the scheduled sweeper does (onysoft.sweeper, as SweeperFunction runs it), against the restarted
    gateway's tables, as if 21 minutes had passed: the crash's holds are stale then."""
    later = (datetime.now(UTC) + timedelta(minutes=21)).isoformat().replace("+00:00", "Z")
    code = f"import json; from onysoft import sweeper; print(json.dumps(sweeper.close_stale_holds(now_iso={later!r})))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(**dev.env), capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_after_a_kill_9_with_requests_in_flight_the_sweeper_brings_the_counters_back_to_0(
        upstream, tmp_path):
    state = tmp_path / "state"
    dev = start_gateway(state, upstream, read_timeout="150", own_process_group=True)
    restarted = None
    try:
        account = new_account(dev, "user", "50")
        dev.cli_json("accounts", "update", account["account_id"], "--max-parallel", "10")
        key = new_key(dev, account["account_id"], "--max-parallel", "3")
        burst = Burst(dev, [key["key"]] * 3)
        wait_until(lambda: upstream.gated_now == 3, "three requests in flight at the provider")
        _kill_everything(dev)
        upstream.gate.set()
        burst.finish()  # every client saw its connection die
        assert len(burst.errors) == 3 and not burst.answers

        restarted = start_gateway(state, upstream)
        tables = Tables(restarted)
        # The crash left three holds open and their slots taken: the key is full until they are closed.
        assert parallel_counter(tables, key["key_id"]) == 3
        assert account_in_flight(tables, account["account_id"]) == 3
        refused = httpx.post(restarted.base_url + "/v1/chat/completions", json=gated_body(), headers=auth(key["key"]))
        check_envelope(refused, 429, "too_many_parallel_requests")
        assert _sweep(restarted)["settled"] == 3  # sent before the crash: charged their holds, marked estimated
        assert parallel_counter(tables, key["key_id"]) == 0
        assert account_in_flight(tables, account["account_id"]) == 0
        records = check_ledger(tables, account["account_id"])
        assert len(records) == 3 and {r.get("estimate_reason") for r in records} == {"stale_hold"}
        assert _sweep(restarted)["settled"] == 0  # nothing is given back twice
        assert parallel_counter(tables, key["key_id"]) == 0
        answered = httpx.post(restarted.base_url + "/v1/chat/completions", timeout=30,
                              json={**gated_body(), "model": "openai/fake-ok"}, headers=auth(key["key"]))
        assert answered.status_code == 200, answered.text
        assert parallel_counter(tables, key["key_id"]) == 0
    finally:
        if dev.process is not None:
            dev.stop(check=False)
        if restarted is not None:
            assert restarted.stop() == 0
