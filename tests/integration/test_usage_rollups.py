"""Usage totals from daily rollups over `onysoft dev` (issue 16 part 3): the Usage table's stream, read by the
local poller (tools/onysoft_tools/local/rollup_poller.py) as Lambda's event source mapping would, feeds
functions/rollup; the dashboard's /usage totals then equal the sum of the records while reading days x models
rollup items; and a restart (clean, or kill -9 with the journal replayed) counts nothing twice.
Real processes: `onysoft dev`, its moto server, HTTP on loopback, the OpenAI SDK."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import boto3
import httpx
import openai

from tests.integration.conftest import DevGateway
from tests.integration.test_local_durability import _kill_everything  # SIGKILL to moto and the gateway

FIELDS = ("requests", "pending", "settled", "failed", "prompt_tokens", "completion_tokens", "charge_micros")
PAST_DAYS = ("2026-01-10", "2026-01-11")
PAST_MODELS = ("mock/echo", "openai/gpt-4o", "anthropic/claude-x")


def _account(dev: DevGateway) -> dict:
    account = dev.cli_json("accounts", "create", "--kind", "user", "--name", "rollups")
    dev.cli_json("accounts", "topup", account["account_id"], "1000")
    key = dev.cli_json("keys", "create", "--account", account["account_id"], "--rpm", "100000")
    dev.known_keys.add(key["key"])
    token = dev.cli_json("token", "--principal", f"user:{account['account_id']}")["token"]
    return {"account_id": account["account_id"], "key": key["key"], "key_id": key["key_id"], "token": token}


def _traffic(dev: DevGateway, key: str) -> None:
    client = openai.OpenAI(api_key=key, base_url=dev.base_url + "/v1", max_retries=0, timeout=15)
    for n in range(6):
        client.chat.completions.create(model="mock/echo", messages=[{"role": "user", "content": f"hello {n}"}])
    for chunk in client.chat.completions.create(model="mock/echo", stream=True,
                                                messages=[{"role": "user", "content": "a stream"}]):
        del chunk
    for _ in range(3):
        client.embeddings.create(model="mock/embed", input="some words to embed")
    for _ in range(2):
        try:
            client.chat.completions.create(model="mock/error-500", messages=[{"role": "user", "content": "x"}])
        except openai.APIStatusError as exc:
            assert exc.status_code == 502


def _usage_table(dev: DevGateway):
    env = dev.env
    resource = boto3.resource("dynamodb", endpoint_url=env["AWS_ENDPOINT_URL_DYNAMODB"], region_name=env["AWS_REGION"],
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    return resource.Table(env["ONYSOFT_TABLE_USAGE"])


def _past_records(dev: DevGateway, account: dict) -> None:
    """Records on two past days, three models, written as the gateway does: a pending hold, then its settle or
    release (so each record goes through the stream two or three times)."""
    table = _usage_table(dev)
    for n in range(30):
        day, model = PAST_DAYS[n % 2], PAST_MODELS[n % 3]
        at = f"{day}T{n % 24:02d}:00:00.000000Z"
        request_id = uuid.uuid4().hex
        key = {"account_id": account["account_id"], "sk": f"{at}#{request_id}"}
        table.put_item(Item={**key, "request_id": request_id, "key_id": account["key_id"], "created_at": at,
                             "status": "pending", "hold_state": "open#0", "model": model, "currency": "TRY",
                             "hold_micros": 5000, "prompt_tokens": 0, "completion_tokens": 0, "charge_micros": 0})
        table.update_item(Key=key, UpdateExpression="SET sent_at = :at", ExpressionAttributeValues={":at": at})
        if n % 5 == 4:
            continue  # left pending
        status = "failed" if n % 7 == 3 else "settled"
        table.update_item(
            Key=key, UpdateExpression="SET #s = :s, prompt_tokens = :p, completion_tokens = :c, charge_micros = :m "
                                      "REMOVE hold_state",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": status, ":p": 10 + n, ":c": 2 * n,
                                       ":m": 100 * n if status == "settled" else 0})


def _scanned(dev: DevGateway, account_id: str, key_id: str | None = None) -> dict:
    """What the dashboard used to compute by reading every record: overall, by day, by model."""
    table = _usage_table(dev)
    items, start = [], None
    while True:
        page = table.query(KeyConditionExpression="account_id = :a", ConsistentRead=True,
                           ExpressionAttributeValues={":a": account_id},
                           **({"ExclusiveStartKey": start} if start else {}))
        items += page["Items"]
        start = page.get("LastEvaluatedKey")
        if not start:
            break
    total, by_day, by_model, pairs = Counter(), {}, {}, set()
    for item in items:
        if key_id and item["key_id"] != key_id:
            continue
        pairs.add((item["created_at"][:10], item.get("model", "")))
        amounts = {"requests": 1, item["status"]: 1, "prompt_tokens": int(item.get("prompt_tokens", 0)),
                   "completion_tokens": int(item.get("completion_tokens", 0)),
                   "charge_micros": int(item.get("charge_micros", 0)) if item["status"] == "settled" else 0}
        for bucket in (total, by_day.setdefault(item["created_at"][:10], Counter()),
                       by_model.setdefault(item.get("model", ""), Counter())):
            bucket.update(amounts)
    return {"total": _plain(total), "by_day": {d: _plain(c) for d, c in by_day.items()},
            "by_model": {m: _plain(c) for m, c in by_model.items()}, "records": len(items), "pairs": pairs}


def _expected(scanned: dict) -> dict:
    return {k: v for k, v in scanned.items() if k in ("total", "by_day", "by_model")}


def _plain(counts: Counter) -> dict:
    return {name: int(counts.get(name, 0)) for name in FIELDS}


def _range() -> dict:
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
    return {"from": f"{PAST_DAYS[0]}T00:00:00Z", "to": tomorrow}


def _totals(dev: DevGateway, account: dict, **params) -> dict:
    response = httpx.get(f"{dev.base_url}/dashboard/accounts/{account['account_id']}/usage", timeout=15,
                         headers={"Authorization": f"Bearer {account['token']}"}, params={**_range(), **params})
    assert response.status_code == 200, response.text
    return response.json()["totals"]


def _as_scanned(totals: dict) -> dict:
    return {"total": {name: totals["total"][name] for name in FIELDS},
            "by_day": {d["day"]: {name: d[name] for name in FIELDS} for d in totals["by_day"]},
            "by_model": {m["model"]: {name: m[name] for name in FIELDS} for m in totals["by_model"]}}


def _caught_up(dev: DevGateway, account: dict, key_id: str | None = None, timeout: float = 60) -> tuple[dict, dict]:
    """(the totals, the scan) once the rollup has caught up with the records (the stream's lag; generous: the
    machine may be busy). Fails if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        scanned = _scanned(dev, account["account_id"], key_id)
        totals = _totals(dev, account, **({"key_id": key_id} if key_id else {}))
        if _as_scanned(totals) == _expected(scanned):
            return totals, scanned
        assert time.monotonic() < deadline, (
            f"the rollup did not catch up in {timeout} s:\n{_as_scanned(totals)}\n{_expected(scanned)}\n"
            f"{dev.log()[-3000:]}")
        time.sleep(0.2)


def test_totals_over_days_and_models_equal_the_records_and_read_only_days_x_models(new_gateway, tmp_path):
    dev = new_gateway(tmp_path / "state").start()
    account = _account(dev)
    _traffic(dev, account["key"])
    _past_records(dev, account)
    totals, scanned = _caught_up(dev, account)
    assert _as_scanned(totals) == _expected(scanned), dev.log()[-3000:]
    assert scanned["records"] == 12 + 30 and totals["total"]["requests"] == 42
    assert totals["total"]["pending"] == 6 and totals["total"]["failed"] >= 2 + 1
    # What the totals read: one rollup item per (day, model) that had usage, never a record.
    assert totals["items_read"] == len(scanned["pairs"]) == len(PAST_DAYS) * len(PAST_MODELS) + 3  # today: 3
    by_key, key_scan = _caught_up(dev, account, key_id=account["key_id"])
    assert _as_scanned(by_key) == _expected(key_scan)
    assert by_key["items_read"] == totals["items_read"]
    # A range inside one past day: that day's models only.
    one_day = httpx.get(f"{dev.base_url}/dashboard/accounts/{account['account_id']}/usage", timeout=15,
                        headers={"Authorization": f"Bearer {account['token']}"},
                        params={"from": f"{PAST_DAYS[1]}T05:00:00Z", "to": f"{PAST_DAYS[1]}T06:00:00Z"}).json()
    assert one_day["totals"]["items_read"] == len(PAST_MODELS)
    assert [d["day"] for d in one_day["totals"]["by_day"]] == [PAST_DAYS[1]]
    assert {"day": PAST_DAYS[1], **one_day["totals"]["total"]} == totals["by_day"][1]
    assert dev.stop() == 0


def test_a_restart_counts_nothing_twice(new_gateway, tmp_path):
    state = tmp_path / "state"
    dev = new_gateway(state)
    dev.own_process_group = True
    dev.start()
    account = _account(dev)
    _traffic(dev, account["key"])
    before, scanned = _caught_up(dev, account)
    assert before["total"]["requests"] == scanned["records"] == 12
    for stop in ("clean", "kill -9"):
        if stop == "clean":
            assert dev.stop() == 0  # SIGINT: moto compacts the journal into the snapshot
        else:
            _kill_everything(dev)  # nothing compacted: the journal is replayed
        dev = new_gateway(state)
        dev.own_process_group = True
        dev.start()
        account["token"] = dev.cli_json("token", "--principal", f"user:{account['account_id']}")["token"]
        time.sleep(2)  # the poller has run several times since the start
        after = _totals(dev, account)
        assert after["total"] == before["total"], (stop, after, before)
        # And it keeps counting: one more request, counted once.
        client = openai.OpenAI(api_key=account["key"], base_url=dev.base_url + "/v1", max_retries=0, timeout=15)
        client.chat.completions.create(model="mock/echo", messages=[{"role": "user", "content": "after"}])
        before, scanned = _caught_up(dev, account)
        assert before["total"]["requests"] == scanned["records"] == after["total"]["requests"] + 1, stop
        assert before["total"]["settled"] == after["total"]["settled"] + 1
    assert dev.stop() == 0
