"""A crash does not lose a count (issue 23): `kill -9` of `onysoft dev` right after 1,000 quick requests, and after
the restart the key's request count is exactly 1,000 (it was seen stuck at 990), as exact as its records and its
balance. The key's count is the usage rollup's (onysoft.usage_rollup): the restart puts the journal's Usage writes
back on the stream and the rollup counts, once each, what the crash kept it from reading. Real processes: `onysoft
dev`, its moto server, HTTP on loopback; the requests go 8 at a time so the test stays short."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.conftest import process_gone
from tests.integration.test_local_durability import CHAT, bench_key

REQUESTS = 1000
PARALLEL = 8
RESTART_WAIT = 150.0  # seconds the issue gave the rollup after the restart
# A watchdog for a hang, not a time limit: the 1,000 requests take about a minute on a quiet machine and took
# over 5 (pytest's default watchdog) on a 2-core machine shared by eight test runs.
pytestmark = pytest.mark.timeout(1200)


def _kill_gateway(dev) -> None:
    """SIGKILL to `onysoft dev` alone, as a user's `kill -9 <pid>`: its moto server gets the SIGTERM the dead
    parent leaves it (PR_SET_PDEATHSIG) and stops on its own."""
    os.kill(dev.process.pid, signal.SIGKILL)
    dev.process.wait()
    deadline = time.monotonic() + 30
    while not all(process_gone(pid) for pid in dev.children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(process_gone(pid) for pid in dev.children), "moto server outlived its gateway"
    dev.process = None


def test_kill_9_right_after_1000_requests_the_key_counts_all_1000(new_gateway, tmp_path):
    started = time.monotonic()
    state = tmp_path / "state"
    dev = new_gateway(state).start()
    key = bench_key(dev, "user")

    def chat(_: int) -> int:
        with httpx.Client(base_url=dev.base_url, timeout=30,
                          headers={"Authorization": f"Bearer {key['key']}"}) as client:
            return client.post("/v1/chat/completions", json=CHAT).status_code

    with ThreadPoolExecutor(PARALLEL) as pool:
        statuses = list(pool.map(chat, range(REQUESTS)))
    assert statuses.count(200) == REQUESTS, {s: statuses.count(s) for s in set(statuses)}
    answered = time.monotonic()
    counted_before = httpx.get(dev.base_url + "/v1/key", headers={"Authorization": f"Bearer {key['key']}"}).json()
    _kill_gateway(dev)  # right after the last answer: the rollup has not read the last batches

    restarted = new_gateway(state).start()
    from tests.integration.ledger import Tables

    tables = Tables(restarted)
    restarted_at = time.monotonic()
    totals = tables.key_totals(key["key_id"], REQUESTS, timeout=RESTART_WAIT)
    counted = time.monotonic()
    records = tables.usage(key["account_id"])
    settled = [r for r in records if r["status"] == "settled"]
    account = tables.account(key["account_id"])
    charged = sum(int(r["charge_micros"]) for r in settled)
    # The records and the balance are exact (nothing acknowledged was lost) …
    assert len(records) == len(settled) == REQUESTS
    assert int(account.get("topped_up_micros", 0)) - int(account["balance_micros"]) == charged
    # … and so is what the rollup counted from them: the key's request count and spend, and its view.
    assert (totals.get("requests"), totals.get("settled"), totals.get("pending", 0)) == (REQUESTS, REQUESTS, 0)
    assert totals.get("charge_micros") == charged
    view = httpx.get(restarted.base_url + "/v1/key", headers={"Authorization": f"Bearer {key['key']}"}).json()
    assert view["request_count"] == REQUESTS
    assert restarted.stop() == 0
    print(f"kill -9 after {REQUESTS} requests: {answered - started:.1f} s to answer them, "
          f"{restarted_at - answered:.1f} s to kill and restart, {counted - restarted_at:.1f} s until counted; "
          f"whole test {time.monotonic() - started:.1f} s; counted when killed: {counted_before['request_count']}")
