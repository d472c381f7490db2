"""Helpers for the evidence suites (concurrency, limits, faults, fuzz): a gateway whose `openai` provider is
the fake upstream, the tables read straight from the gateway's moto server (boto3, the endpoint in
dev.env), the ledger invariants, OpenAI's error envelope, and the UTC-minute window guard."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

import boto3
import httpx
from boto3.dynamodb.conditions import Key
from botocore.config import Config

from onysoft import money
from onysoft_tools.fake_provider import IMAGE_TOKENS, UPSTREAM_KEY, FakeUpstream
from tests.integration.conftest import DevGateway

INPUT, OUTPUT, FX = Decimal("2.5"), Decimal("10"), Decimal("41.5")
FAKE_MODELS = ("fake-ok", "fake-500", "fake-429", "fake-timeout", "fake-cut", "fake-slow-stream", "fake-bad-json",
               "fake-embed", "fake-reset", "fake-malformed-200", "fake-overrun", "fake-bill", "fake-embed-greedy",
               "fake-endless-stream", "fake-gated")
CACHED_INPUT = Decimal("0.25")  # fake-bill's cached input price; its tokens per image: IMAGE_TOKENS
ENVELOPE_FIELDS = {"message", "type", "code", "param"}
FULL_KEY = re.compile(r"sk-ony-[0-9a-f]{48}")


def start_gateway(state_dir: Path, upstream: FakeUpstream, *, read_timeout: str = "10",
                  own_process_group: bool = False, **extra_env: str) -> DevGateway:
    """`onysoft dev` with the fake upstream as the `openai` provider, its models priced, USD→TRY set. Its
    moto server is onysoft_tools.serial_moto, which keeps transactions atomic under concurrency."""
    dev = DevGateway(state_dir, extra_env={
        "ONYSOFT_PROVIDER_OPENAI_BASE_URL": upstream.base_url, "ONYSOFT_PROVIDER_OPENAI_API_KEY": UPSTREAM_KEY,
        "ONYSOFT_UPSTREAM_READ_TIMEOUT": read_timeout, **extra_env,
    }, own_process_group=own_process_group).start()
    prices = ["--input-usd-per-mtok", str(INPUT), "--output-usd-per-mtok", str(OUTPUT)]
    dev.cli_json("catalog", "set", *(f"openai/{m}" for m in FAKE_MODELS if m != "fake-bill"), *prices)
    dev.cli_json("catalog", "set", "openai/fake-bill", *prices, "--cached-input-usd-per-mtok", str(CACHED_INPUT),
                 "--tokens-per-image", str(IMAGE_TOKENS))
    dev.cli_json("fx", "set", "USDTRY", str(FX))
    return dev


def new_account(dev: DevGateway, kind: str, amount: str | None = "50", **account_options: str) -> dict:
    args = ["accounts", "create", "--kind", kind]
    for option, value in account_options.items():
        args += [f"--{option.replace('_', '-')}", value]
    if kind != "user" and "owner" not in account_options:
        args += ["--owner", "evidence-owner"]
    account = dev.cli_json(*args)
    if amount is not None:
        account = dev.cli_json("accounts", "topup", account["account_id"], amount)
    return account


def new_key(dev: DevGateway, account_id: str, *options: str) -> dict:
    key = dev.cli_json("keys", "create", "--account", account_id, *options)
    dev.known_keys.add(key["key"])
    return key


def expected_charge(currency: str, markup_bp: int, prompt: int, completion: int) -> int:
    cost = money.usd_cost(prompt, INPUT) + money.usd_cost(completion, OUTPUT)
    return money.charge_micros(cost, markup_bp, FX if currency == "TRY" else Decimal(1))


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ---------------------------------------------------------------------------------------------- envelope


def check_envelope(response: httpx.Response, status: int | None = None, code: str | None = None) -> dict:
    """The body is exactly OpenAI's error envelope; returns its `error` object."""
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    # API Gateway's own answers (gateway responses) also carry Anthropic's top-level "type": "error"
    assert isinstance(body, dict) and set(body) <= {"error", "type"} and body.get("type", "error") == "error", body
    error = body["error"]
    assert set(error) == ENVELOPE_FIELDS, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["code"] is None or isinstance(error["code"], str), error
    assert error["param"] is None or isinstance(error["param"], str), error
    if code is not None:
        assert error["code"] == code, error
    assert "Traceback" not in error["message"] and not FULL_KEY.search(response.text), error  # never a key
    return error


# ---------------------------------------------------------------------------------------------- tables


class Tables:
    """The gateway's tables, read directly (strongly consistent) from its moto server."""

    def __init__(self, dev: DevGateway):
        env = dev.env
        self.resource = boto3.resource(
            "dynamodb", endpoint_url=env["AWS_ENDPOINT_URL_DYNAMODB"], region_name=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            config=Config(retries={"max_attempts": 3, "mode": "standard"}))
        self.accounts = self.resource.Table(env["ONYSOFT_TABLE_ACCOUNTS"])
        self.usage_table = self.resource.Table(env["ONYSOFT_TABLE_USAGE"])
        self.keys = self.resource.Table(env["ONYSOFT_TABLE_API_KEYS"])
        self.rate_limits = self.resource.Table(env["ONYSOFT_TABLE_RATE_LIMITS"])
        self.rollups = self.resource.Table(env["ONYSOFT_TABLE_USAGE_ROLLUPS"])

    def account(self, account_id: str) -> dict:
        return self.accounts.get_item(Key={"account_id": account_id}, ConsistentRead=True)["Item"]

    def shard_balances(self, account_id: str) -> dict[int, int]:
        """Every balance shard (docs/BILLING.md): shard 0 is the account item, k ≥ 1 `<account_id>#<k>`."""
        account = self.account(account_id)
        count = max(int(account.get("shards_max", 1)), int(account.get("shards", 1)))
        shards = {0: int(account["balance_micros"])}
        for k in range(1, count):
            item = self.accounts.get_item(Key={"account_id": f"{account_id}#{k}"}, ConsistentRead=True).get("Item")
            shards[k] = int(item["balance_micros"]) if item else 0
        return shards

    def balance(self, account_id: str) -> int:
        return sum(self.shard_balances(account_id).values())

    def usage(self, account_id: str) -> list[dict]:
        """Every usage record of the account, over its shards' partitions (`<account_id>#<k>`), each with
        `partition` (where it is) and `account_id` (the account)."""
        items = []
        for shard in self.shard_balances(account_id):
            partition = account_id if shard == 0 else f"{account_id}#{shard}"
            start = None
            for _ in range(1000):  # bounded pagination
                extra = {"ExclusiveStartKey": start} if start else {}
                page = self.usage_table.query(KeyConditionExpression=Key("account_id").eq(partition),
                                              ConsistentRead=True, **extra)
                items += [{**item, "partition": item["account_id"], "account_id": account_id} for item in page["Items"]]
                start = page.get("LastEvaluatedKey")
                if not start:
                    break
        return items

    def key(self, key_id: str) -> dict:
        # The index projects keys only: find the key's hash there, then read the item itself.
        items = self.keys.query(IndexName="by_key_id", KeyConditionExpression=Key("key_id").eq(key_id))["Items"]
        assert len(items) == 1, items
        return self.keys.get_item(Key={"key_hash": items[0]["key_hash"]}, ConsistentRead=True)["Item"]

    def key_totals(self, key_id: str, requests: int, pending: int = 0, timeout: float = 20.0) -> dict:
        """The key's all-time totals (`requests`, `pending`, `charge_micros`…) as the usage rollup counted them,
        once it counted `requests` requests, `pending` of them pending: `onysoft dev` reads the stream as
        RollupFunction does in AWS (onysoft.usage_rollup). After `timeout`, what it has (the caller's
        assertion then says what is missing)."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.rollups.get_item(Key={"pk": f"key#{key_id}", "sk": "total"}, ConsistentRead=True).get("Item")
            totals = {name: int(value) for name, value in (item or {}).items() if isinstance(value, Decimal)}
            if (totals.get("requests", 0) == requests and totals.get("pending", 0) == pending) \
                    or time.monotonic() > deadline:
                return totals
            time.sleep(0.1)

    def settled_counter(self, counter_id: str, tokens: int, timeout: float = 20.0) -> dict:
        """A rate-limit counter once its tokens are `tokens` (what its requests used): the hold counts a request
        for all it may use, and its settle gives the window back the rest (issue 23; the usage rollup used to, a
        second later: onysoft.rate_limits). After `timeout`, what it has."""
        deadline = time.monotonic() + timeout
        while True:
            counter = self.counter(counter_id)
            if int(counter.get("tokens", 0)) == tokens or time.monotonic() > deadline:
                return counter
            time.sleep(0.1)

    def counter(self, counter_id: str) -> dict:
        return self.rate_limits.get_item(Key={"counter_id": counter_id}, ConsistentRead=True).get("Item") or {}

    def state(self, account_id: str) -> tuple[int, int]:
        """(balance, number of usage records): what a refused request must leave unchanged."""
        return self.balance(account_id), len(self.usage(account_id))


def settled_total(records: Iterable[dict]) -> int:
    return sum(int(r.get("charge_micros", 0)) for r in records if r["status"] == "settled")


def recomputed_charge(record: dict) -> int:
    """A settled record's charge from the factors it stores (docs/BILLING.md): uncached input, cached reads and
    cache writes at their prices, output (reasoning included) at the output price."""
    prompt, cached = int(record["prompt_tokens"]), int(record.get("cached_tokens", 0))
    writes = int(record.get("cache_write_tokens", 0))
    input_price = Decimal(record["input_usd_per_mtok"])
    cost = (money.usd_cost(prompt - cached - writes, input_price)
            + money.usd_cost(cached, Decimal(record.get("cached_input_usd_per_mtok") or input_price))
            + money.usd_cost(writes, Decimal(record.get("cache_write_usd_per_mtok") or input_price))
            + money.usd_cost(int(record["completion_tokens"]), Decimal(record["output_usd_per_mtok"])))
    return money.charge_micros(cost, int(record["markup_bp"]), Decimal(record["fx_rate"]))


def check_ledger(tables: Tables, account_id: str) -> list[dict]:
    """The invariants of docs/BILLING.md once every request has ended: no hold left open; sum of settled
    charges == top-ups − balance, to the micro-unit, a negative balance included; a balance below zero only
    by the debts that overruns made; every charge within its hold unless marked overrun (then by exactly the
    overrun), and recomputable from its record. Returns the account's usage records."""
    account = tables.account(account_id)
    records = tables.usage(account_id)
    shards = tables.shard_balances(account_id)
    balance, topped_up = sum(shards.values()), int(account.get("topped_up_micros", 0))
    open_holds = [r for r in records if r["status"] == "pending" or "hold_state" in r]
    assert not open_holds, f"holds left open on {account_id}: {open_holds}"
    assert {r["status"] for r in records} <= {"settled", "failed"}
    assert all(int(r.get("charge_micros", 0)) == 0 for r in records if r["status"] == "failed")
    assert settled_total(records) == topped_up - balance, (account_id, settled_total(records), topped_up, balance)
    debts = sum(int(r.get("overrun_micros", 0)) for r in records)
    assert balance >= -debts, (account_id, balance, debts)
    # No shard below what the rules allow: only debts (overruns) take a shard below zero, and netting moves a
    # debt between shards, so every shard stays above minus all the account's overruns.
    assert all(b >= -debts for b in shards.values()), (account_id, shards, debts)
    for record in records:
        charge, hold = int(record.get("charge_micros", 0)), int(record["hold_micros"])
        if record.get("overrun") == "true":
            assert record["status"] == "settled" and charge - hold == int(record["overrun_micros"]) > 0, record
        else:
            assert 0 <= charge <= hold and "overrun_micros" not in record, record
        if record["status"] == "settled":
            assert charge == recomputed_charge(record), record
    return records


def check_statements(dev: DevGateway, tables: Tables, account: dict, records: list[dict]) -> list[dict]:
    """The account's monthly statements (`onysoft statement`, from the ledger and the rollups, never the records)
    from its creation's month to now, once its requests are all closed and counted: each closing = opening +
    top-ups − charges, each month opens at the last one's closing, the charges and debts are the records', and
    the last closing is the balance itself (the sum of its shards). Returns the statements."""
    first = account["created_at"][:7]
    months, (year, month) = [], map(int, first.split("-"))
    while f"{year:04d}-{month:02d}" <= time.strftime("%Y-%m", time.gmtime()):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    statements, opening = [], 0
    for month in months:
        statement = dev.cli_json("statement", account["account_id"], "--month", month)
        made = [r for r in records if r["created_at"][:7] == month]
        assert statement["opening_balance_micros"] == opening, (month, statement)
        assert statement["closing_balance_micros"] == (statement["opening_balance_micros"]
                                                       + statement["topups_micros"] - statement["charges_micros"])
        assert statement["charges_micros"] == settled_total(made), month
        assert statement["debts_micros"] == sum(int(r.get("overrun_micros", 0)) for r in made), month
        opening = statement["closing_balance_micros"]
        statements.append(statement)
    assert sum(s["topups_micros"] for s in statements) == int(tables.account(account["account_id"])["topped_up_micros"])
    assert opening == tables.balance(account["account_id"])
    return statements


# ---------------------------------------------------------------------------------------------- time


def seconds_left_in_minute(now: float | None = None) -> float:
    now = time.time() if now is None else now
    return 60 - now % 60


def wait_for_window_room(seconds: float = 15.0) -> None:
    """Rate-limit windows are aligned to the UTC minute: start a window-sensitive burst only when at least
    `seconds` remain in the current minute (waits at most `seconds`)."""
    left = seconds_left_in_minute()
    if left < seconds:
        time.sleep(left + 0.2)


def window_of(at: float) -> int:
    return int(at // 60 * 60)


def tag_of(body: dict) -> str | None:
    """The per-request tag the suites put in the content, as the fake upstream saw it."""
    if "messages" in body:
        content = body["messages"][-1].get("content") if body["messages"] else None
        return content if isinstance(content, str) else None
    value = body.get("input")
    return value if isinstance(value, str) else json.dumps(value)
