"""Balance alerts under concurrency, through `onysoft dev` over real HTTP (moto server in its own process, the
fake provider on loopback, the usage rollup reading the Usage table's stream as in AWS; issue 26).

- 50 requests at once take an account's balance across its `--alert-below` threshold: exactly one `Balance Low`
  lands in `<state dir>/events.jsonl`, though the holds in flight take the balance itself below the threshold
  long before the charges do (alerts judge the ledger: top-ups minus charges);
- an overrun takes it into debt: exactly one `Balance Exhausted`; a top-up above the threshold re-arms both;
- 30 requests at once on a key with a spend limit: the limit refuses many of them (their holds fill it), then
  more one by one until it refuses every one: exactly one `Spend Limit Reached`, at the first refusal.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from onysoft import events, money
from onysoft_tools.fake_provider import PROMPT_TOKENS, REPLY
from tests.integration.ledger import Tables, auth, check_ledger, expected_charge, new_account, new_key

HIGH_RPM = "5000"
CHARGE = expected_charge("TRY", 5000, PROMPT_TOKENS, len(REPLY))  # one fake-ok answer on a user key, µTRY


@pytest.fixture(scope="module")
def tables(dev):
    return Tables(dev)


def burst(dev, key: str, bodies: list[dict]) -> list[httpx.Response]:
    """Every body at once (threads released together), answers in body order."""
    barrier = threading.Barrier(len(bodies))
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    with httpx.Client(base_url=dev.base_url, headers=auth(key), timeout=60, limits=limits) as client:
        def one(body: dict) -> httpx.Response:
            barrier.wait(timeout=30)
            response = client.post("/v1/chat/completions", json=body)
            response.read()
            return response

        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            return list(pool.map(one, bodies))


def chat(tag: str, model: str = "openai/fake-ok") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": tag}], "max_tokens": 8}


def counted(tables: Tables, key_id: str, requests: int) -> None:
    """Until the rollup has counted `requests` of the key's requests (their alerts are checked right after)."""
    assert tables.key_totals(key_id, requests).get("requests") == requests


def alerts(dev, account_id: str | None = None, key_id: str | None = None) -> list[dict]:
    found = events.read_file(dev.state_dir / events.FILE_NAME)
    return [e for e in found if (account_id is None or e["detail"].get("account_id") == account_id)
            and (key_id is None or e["detail"].get("key_id") == key_id)]


def alerts_when(dev, account_id: str, count: int, timeout: float = 20.0) -> list[dict]:
    """The account's events once there are `count` of them (after `timeout`: what there is)."""
    deadline = time.monotonic() + timeout
    while len(found := alerts(dev, account_id)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def one_at_a_time(dev, tables: Tables, key: dict, counted_so_far: int, requests: int = 3) -> int:
    """More requests, one at a time, each counted by a batch of its own before the next: below the threshold,
    each such batch would fire again if alerts were per request or per batch. Once the first is counted, every
    batch before it has had its alerts checked (the poller hands batches over one at a time)."""
    total = counted_so_far
    for n in range(requests):
        response = httpx.post(dev.base_url + "/v1/chat/completions", headers=auth(key["key"]), timeout=30,
                              json=chat(f"one at a time {n}"))
        assert response.status_code == 200, response.text
        total += 1
        counted(tables, key["key_id"], total)
    return total


def test_fifty_concurrent_requests_across_the_threshold_fire_one_balance_low(dev, tables):
    start = 100 * CHARGE + 2 * money.MICROS_PER_UNIT  # holds in flight (~0.03 TRY each) need room too
    threshold = start - 25 * CHARGE - CHARGE // 2  # crossed by the 26th charge, whatever order they settle in
    account = new_account(dev, "user", money.format_micros(start))
    account_id = account["account_id"]
    view = dev.cli_json("accounts", "update", account_id, "--alert-below", money.format_micros(threshold))
    assert (view["alert_below_micros"], view["balance_alert"]) == (threshold, None)
    key = new_key(dev, account_id, "--rpm", HIGH_RPM)

    answers = burst(dev, key["key"], [chat(f"alert-{n}") for n in range(50)])
    assert [a.status_code for a in answers] == [200] * 50, [a.text for a in answers if a.status_code != 200][:3]
    counted(tables, key["key_id"], 50)
    sent = one_at_a_time(dev, tables, key, 50)
    [low] = alerts(dev, account_id)
    assert low["detail-type"] == "Balance Low"
    detail = low["detail"]
    assert detail["alert_below_micros"] == threshold and detail["balance_basis"] == "ledger"
    assert start - sent * CHARGE <= detail["balance_micros"] < threshold  # a ledger balance it really had
    assert (detail["balance_micros"] - start) % CHARGE == 0
    shown = dev.cli_json("accounts", "show", account_id)
    assert shown["balance_alert"] == "low" and shown["balance_micros"] == start - sent * CHARGE

    # Into debt: an answer that reports far more than its hold (charged in full). One Balance Exhausted.
    overrun = httpx.post(dev.base_url + "/v1/chat/completions", headers=auth(key["key"]), timeout=30,
                         json={**chat("overrun", "openai/fake-overrun"), "max_tokens": 8})
    assert overrun.status_code == 200, overrun.text
    refused = httpx.post(dev.base_url + "/v1/chat/completions", headers=auth(key["key"]), timeout=30,
                         json=chat("in debt"))
    assert refused.status_code == 402
    counted(tables, key["key_id"], sent + 1)
    # The rollup checks a batch's accounts right after counting it: the event follows the count.
    assert [e["detail-type"] for e in alerts_when(dev, account_id, 2)] == ["Balance Low", "Balance Exhausted"]
    assert alerts(dev, account_id)[-1]["detail"]["balance_micros"] < 0
    check_ledger(tables, account_id)

    # A top-up above the threshold re-arms both, in its own write.
    debt = -dev.cli_json("accounts", "show", account_id)["balance_micros"]
    rearmed = dev.cli_json("accounts", "topup", account_id, money.format_micros(debt + threshold + CHARGE))
    assert rearmed["balance_alert"] is None and rearmed["balance_micros"] == threshold + CHARGE
    listed = dev.cli_json("events")["events"]
    assert [e["detail-type"] for e in listed if e["detail"].get("account_id") == account_id] == [
        "Balance Low", "Balance Exhausted"]


def test_thirty_concurrent_requests_on_a_spend_limit_fire_one_spend_limit_reached(dev, tables):
    account = new_account(dev, "user", "10")
    limit = 12 * CHARGE  # the holds (~0.03 TRY) are larger than a charge: the limit refuses most of the burst
    key = new_key(dev, account["account_id"], "--rpm", HIGH_RPM, "--limit", money.format_micros(limit))
    answers = burst(dev, key["key"], [chat(f"limit-{n}") for n in range(30)])
    statuses = [a.status_code for a in answers]
    assert set(statuses) == {200, 402}, statuses
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 402} == {"key_spend_limit_reached"}
    # The holds in flight filled the limit; the settles give back what they did not charge. On until the limit
    # refuses three times in a row: the key has spent what it may (no hold of this size fits any more).
    refused_in_a_row, sent = 0, 0
    while refused_in_a_row < 3:
        sent += 1
        assert sent < 40
        status = httpx.post(dev.base_url + "/v1/chat/completions", headers=auth(key["key"]), timeout=30,
                            json=chat(f"again-{sent}")).status_code
        refused_in_a_row = refused_in_a_row + 1 if status == 402 else 0
    [reached] = alerts(dev, key_id=key["key_id"])
    assert reached["detail-type"] == "Spend Limit Reached"
    assert reached["detail"]["spend_limit_micros"] == limit and reached["detail"]["display"] == key["display"]
    assert reached["detail"]["spent_micros"] <= limit  # holds in flight count, as for the 402
    assert reached["detail"]["period"] == "never" and reached["time"][:10] <= time.strftime("%Y-%m-%d", time.gmtime())
