"""DynamoDB work per request kind, counted in-process against moto server.

The proxy's ASGI app and the authorizer handler run in this process behind `onysoft dev`'s LocalApiGateway
(the template's routes and authorizer cache), driven by httpx's ASGITransport; DynamoDB is a moto server in
its own process; the fake upstream runs in a thread here, so its clock is ours. botocore event hooks on every
PynamoDB model's client record each call (operation, tables, start and end time, parameters). A call that
ended before the upstream saw the request's first byte was on the request's path before the upstream call.

Capacity units are computed from DynamoDB's published rules and the items' sizes (read back from moto after
the request), because moto's ConsumedCapacity (asked for with ReturnConsumedCapacity=TOTAL) is checked below
and is not DynamoDB's accounting for transactions and index writes.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from onysoft_tools.fake_provider import UPSTREAM_KEY, FakeUpstream

from .common import clean_env, free_port, median, stop_process, wait_for

REPEATS = 5
RECORD_IMAGES = False  # write_pattern.py sets it: Recorder.images
MODEL = "openai/bench-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello, how are you today?"}], "max_tokens": 16}


# ---------------------------------------------------------------------------------------------- item sizes


def _number_size(text: str) -> int:
    digits = text.lstrip("-").replace(".", "").lstrip("0") or "0"
    return (len(digits.rstrip("0") or "0") + 1) // 2 + 1


def value_size(value: dict) -> int:
    """DynamoDB's item-size rules for one attribute value."""
    (kind, raw), = value.items()
    if kind == "S":
        return len(raw.encode())
    if kind == "N":
        return _number_size(raw)
    if kind == "B":
        return len(raw) if isinstance(raw, bytes | bytearray) else len(raw) * 3 // 4
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + value_size(v) for v in raw)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(v) for k, v in raw.items())
    if kind == "SS":
        return sum(len(s.encode()) for s in raw)
    if kind == "NS":
        return sum(_number_size(s) for s in raw)
    return sum(len(b) for b in raw)


def _scalar(value: dict) -> str:
    (_, raw), = value.items()
    return str(raw)


def item_size(item: dict | None) -> int:
    return sum(len(name.encode()) + value_size(value) for name, value in (item or {}).items())


# ---------------------------------------------------------------------------------------------- recorder


def written_keys(call: dict, shapes: dict) -> list[tuple[str, dict]]:
    """(table, key) of every item a write call names, in order."""
    op, params = call["op"], call["params"]
    if op == "TransactWriteItems":
        bodies = [body for entry in params["TransactItems"] for body in entry.values()]
    elif op in ("PutItem", "UpdateItem", "DeleteItem"):
        bodies = [params]
    else:
        return []
    keys = []
    for body in bodies:
        table = body["TableName"]
        key = body.get("Key") or {name: body["Item"][name] for name in shapes[table]["keys"]}
        keys.append((table, key))
    return keys


class Recorder:
    """Every DynamoDB call made through the hooked clients, in order."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls: list[dict] = []
        self.enabled = True
        self.installed: set[int] = set()
        # When set (write_pattern.py): the items a write names, read just before and after it, so the pattern
        # knows each index entry's partition at that moment. Off for BENCHMARKS: the reads would add time.
        self.images = None  # (raw client, table shapes)

    def install(self, client) -> None:
        if id(client) in self.installed:  # the models share one client: hook it once
            return
        self.installed.add(id(client))
        client.meta.events.register("before-parameter-build.dynamodb", self._params)
        client.meta.events.register("before-call.dynamodb", self._before)
        client.meta.events.register("after-call.dynamodb", self._after)

    def _params(self, params, model, context, **_):
        if not self.enabled:
            return
        params.setdefault("ReturnConsumedCapacity", "TOTAL")  # to check what moto returns
        context["bench_call"] = {"op": model.name, "params": json.loads(json.dumps(params, default=str)),
                                 "thread": threading.get_ident()}

    def _before(self, context, **_):
        call = context.get("bench_call")
        if call is not None:
            if self.images is not None:
                call["before"] = self._read_images(call)
            call["start"] = time.monotonic()

    def _after(self, context, parsed, **_):
        call = context.get("bench_call")
        if call is None:
            return
        call["end"] = time.monotonic()
        if self.images is not None:
            call["after"] = self._read_images(call)
        call["consumed"] = parsed.get("ConsumedCapacity")
        call["error"] = (parsed.get("Error") or {}).get("Code") or None
        with self.lock:
            self.calls.append(call)

    def _read_images(self, call: dict) -> list:
        raw, shapes = self.images
        images = []
        for table, key in written_keys(call, shapes):
            images.append(raw.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item"))
        return images

    def take(self) -> list[dict]:
        with self.lock:
            calls, self.calls = sorted(self.calls, key=lambda c: c["start"]), []
        return calls


# ---------------------------------------------------------------------------------------------- capacity


class Capacity:
    """Read/write request units of recorded calls, by DynamoDB's rules (see RULES), from item sizes."""

    RULES = [
        "Strongly consistent read: 1 RRU per 4 KB of item (rounded up per item; a missing item still costs 1); "
        "eventually consistent: half that. BatchGetItem: each item on its own.",
        "Standard write: 1 WRU per 1 KB of item (the larger of before and after for an update).",
        "TransactWriteItems: 2 WRU per 1 KB per item (DynamoDB prepares and commits every item).",
        "ConditionCheck inside TransactWriteItems: counted as a transactional write of the checked item's size "
        "(2 WRU per KB) — the docs corpus did not state it in words; if it is billed as a transactional read "
        "instead it is 2 RRU per 4 KB (same count, cheaper unit).",
        "A cancelled transaction (402/429 here) is counted at the full transactional price: an upper bound.",
        "Global secondary indexes: each write that adds, changes or removes an item's index entry costs 1 WRU "
        "per KB of the entry on that index (standard, not doubled). An ALL index's entry is the whole item and "
        "changes with any attribute; a KEYS_ONLY index's entry (keys only, < 1 KB) changes only when the write "
        "sets or removes one of that index's key attributes (or puts the item).",
    ]

    def __init__(self, raw_client, tables: dict[str, dict]):
        self.raw = raw_client  # an unhooked boto3 client: reading items back costs the benchmark nothing
        self.tables = tables  # table name -> {"keys": [...], "gsis": [{"keys": [...], "projection": ...}]}

    def _get(self, table: str, key: dict) -> dict | None:
        return self.raw.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")

    def _gsi_writes(self, table: str, before: dict | None, after: dict | None, size: int,
                    touched: set[str] | None = None) -> int:
        """Index-entry units of one write. `touched`: the attributes an update names (None for a Put)."""
        return sum(entry["units"] for entry in self._gsi_entries(table, before, after, size, touched))

    def _gsi_entries(self, table: str, before: dict | None, after: dict | None, size: int,
                     touched: set[str] | None = None) -> list[dict]:
        """Each index entry one write changes: the index, the entry's partition key value, its units."""
        entries = []
        for gsi in self.tables.get(table, {}).get("gsis", []):
            keys = gsi["keys"]
            was = before is not None and all(k in before for k in keys)
            now = after is not None and all(k in after for k in keys)
            if not (was or now):
                continue
            if gsi["projection"] == "ALL":
                units = math.ceil(max(size, 1) / 1024)
            elif touched is None or set(keys) & touched:
                units = 1  # a keys-only entry (well under 1 KB), written only when its keys come or go
            else:
                continue
            image = after if now else before
            entries.append({"index": gsi.get("name", ""), "partition": _scalar(image[keys[0]]), "units": units})
        return entries

    def write_parts(self, call: dict) -> list[dict]:
        """The items (and index entries) one write call touches, with their partition key values and units:
        the per-request write pattern tools/bench/scale_sim.py replays against DynamoDB's partition limits."""
        op, params = call["op"], call["params"]
        if op == "TransactWriteItems":
            bodies = [(kind, body, True) for entry in params["TransactItems"] for kind, body in entry.items()]
        elif op in ("PutItem", "UpdateItem", "DeleteItem"):
            bodies = [({"PutItem": "Put", "UpdateItem": "Update", "DeleteItem": "Delete"}[op], params, False)]
        else:
            return []
        parts = []
        for number, (kind, body, transactional) in enumerate(bodies):
            table = body["TableName"]
            hash_key = self.tables.get(table, {}).get("keys", [""])[0]
            if "after" in call:  # images read around the call (Recorder.images): exact at that moment
                before, after = call["before"][number], call["after"][number]
                if call.get("error"):
                    after = before
                size = max(item_size(before), item_size(after))
                partition = _scalar((after or before or body.get("Item") or body["Key"])[hash_key])
            elif kind == "Put":
                before, after = None, body["Item"]
                size = item_size(after)
                partition = _scalar(after[hash_key])
            else:
                after = self._get(table, body["Key"])
                before, size = after, item_size(after)
                if kind == "Update":
                    removed = self._removed(body)
                    if removed and after is not None:
                        before = {**after, **{name: {"S": "x"} for name in removed}}
                        size = max(size, item_size(before))
                partition = _scalar(body["Key"][hash_key])
            units = (2 if transactional else 1) * max(1, math.ceil(size / 1024))
            touched = self._touched(body) | self._removed(body) if kind == "Update" else None
            gsis = [] if kind == "ConditionCheck" or call.get("error") else self._gsi_entries(
                table, before, after, size, touched)
            parts.append({"kind": kind, "table": table, "partition": partition, "units": units,
                          "transactional": transactional, "size": size})
            parts += [{"kind": "IndexEntry", "table": table, "index": g["index"], "partition": g["partition"],
                       "units": g["units"], "transactional": False} for g in gsis]
        return parts

    def read_parts(self, call: dict) -> list[dict]:
        """The items one read call reads, with their partition key values and read units."""
        op, params = call["op"], call["params"]
        if op == "GetItem":
            requests = [(params["TableName"], [params["Key"]], params.get("ConsistentRead"))]
        elif op == "BatchGetItem":  # each item on its own: its own partition, its own units
            requests = [(table, r["Keys"], r.get("ConsistentRead")) for table, r in params["RequestItems"].items()]
        else:
            return []
        parts = []
        for table, keys, consistent in requests:
            hash_key = self.tables.get(table, {}).get("keys", [""])[0]
            for key in keys:
                size = item_size(self._get(table, key))
                units = max(1, math.ceil(size / 4096)) * (1 if consistent else 0.5)
                parts.append({"kind": op, "table": table, "partition": _scalar(key[hash_key]), "units": units})
        return parts

    @staticmethod
    def _touched(update: dict) -> set[str]:
        names = update.get("ExpressionAttributeNames", {})
        expression = update.get("UpdateExpression", "")
        return {names.get(token, token) for token in re.findall(r"#?[A-Za-z_][\w]*", expression)}

    @staticmethod
    def _removed(update: dict) -> set[str]:
        expression = update.get("UpdateExpression", "")
        names = update.get("ExpressionAttributeNames", {})
        removed = set()
        if "REMOVE" in expression:
            part = expression.split("REMOVE", 1)[1]
            for clause in ("SET", "ADD", "DELETE"):
                part = part.split(clause, 1)[0]
            for token in part.replace(",", " ").split():
                removed.add(names.get(token, token))
        return removed

    def of(self, call: dict) -> tuple[float, float, str]:
        """(RRU, WRU, how) for one call."""
        op, params = call["op"], call["params"]
        if op == "GetItem":
            size = item_size(self._get(params["TableName"], params["Key"]))
            units = max(1, math.ceil(size / 4096)) * (1 if params.get("ConsistentRead") else 0.5)
            return units, 0.0, f"GetItem {size} B"
        if op == "BatchGetItem":
            rru, sizes = 0.0, []
            for table, request in params["RequestItems"].items():
                for key in request["Keys"]:
                    size = item_size(self._get(table, key))
                    sizes.append(size)
                    rru += max(1, math.ceil(size / 4096)) * (1 if request.get("ConsistentRead") else 0.5)
            return rru, 0.0, "BatchGetItem " + "+".join(f"{s} B" for s in sizes)
        if op in ("Scan", "Query"):
            # Whole table or partition read; size of what is there now, rounded up to 4 KB once.
            items = self.raw.scan(TableName=params["TableName"]).get("Items", [])
            size = sum(item_size(i) for i in items)
            return max(1, math.ceil(size / 4096)) * (1 if params.get("ConsistentRead") else 0.5), 0.0, \
                f"{op} {len(items)} items {size} B"
        if op == "TransactWriteItems":
            wru, parts = 0.0, []
            for entry in params["TransactItems"]:
                (kind, body), = entry.items()
                table = body["TableName"]
                if kind == "Put":
                    after, before = body["Item"], None
                    size = item_size(after)
                else:
                    after = self._get(table, body["Key"])
                    size = item_size(after)
                    before = after
                    if kind == "Update":
                        removed = self._removed(body)
                        if removed and after is not None:
                            before = {**after, **{name: {"S": "x"} for name in removed}}
                            size = max(size, item_size(before))
                units = 2 * max(1, math.ceil(size / 1024))
                cancelled = call.get("error") is not None  # nothing was written, so no index entry moved
                touched = self._touched(body) if kind == "Update" else None
                gsi = 0 if kind == "ConditionCheck" or cancelled else self._gsi_writes(table, before, after, size,
                                                                                       touched)
                wru += units + gsi
                parts.append(f"{kind} {table.split('-')[-1]} {size} B ({units}+{gsi} idx)")
            return 0.0, wru, "; ".join(parts)
        if op in ("PutItem", "UpdateItem", "DeleteItem"):
            table = params["TableName"]
            if op == "UpdateItem":  # the item as written (read back), and the index entries the update moves
                after = self._get(table, params["Key"])
                size = item_size(after)
                gsi = 0 if call.get("error") else self._gsi_writes(table, after, after, size, self._touched(params))
            else:
                size = item_size(params.get("Item") or self._get(table, params["Key"]))
                gsi = self._gsi_writes(table, None, params.get("Item"), size)
            units = max(1, math.ceil(size / 1024))
            return 0.0, units + gsi, f"{op} {table.split('-')[-1]} {size} B ({units}+{gsi} idx)"
        return 0.0, 0.0, op


# ---------------------------------------------------------------------------------------------- setup


def _start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "onysoft_tools.serial_moto", "-H", "127.0.0.1", "-p", str(port)],
                               env=clean_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            httpx.get(endpoint + "/moto-api/", timeout=1)
            return True
        except httpx.HTTPError:
            return False

    if not wait_for(up, 30):
        stop_process(process)
        raise RuntimeError("moto server did not start")
    return process, endpoint


def _table_shapes(tpl: dict, names: dict[str, str]) -> dict[str, dict]:
    shapes = {}
    for logical_id, name in names.items():
        props = tpl["Resources"][logical_id]["Properties"]
        shapes[name] = {
            "keys": [k["AttributeName"] for k in props["KeySchema"]],
            "gsis": [{"name": g["IndexName"], "keys": [k["AttributeName"] for k in g["KeySchema"]],
                      "projection": g["Projection"]["ProjectionType"]}
                     for g in props.get("GlobalSecondaryIndexes", [])],
        }
    return shapes


async def _drive(client: httpx.AsyncClient, method: str, path: str, key: str, body: dict | None) -> httpx.Response:
    return await client.request(method, path, json=body, headers={"Authorization": f"Bearer {key}"})


def run(progress=print) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="onysoft-bench-ddb-"))
    moto, endpoint = _start_moto(workdir / "moto.log")
    upstream = FakeUpstream().start()
    saved_env = dict(os.environ)
    try:
        os.environ.update({
            "AWS_ENDPOINT_URL_DYNAMODB": endpoint, "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
            "ONYSOFT_PROVIDER_OPENAI_BASE_URL": upstream.base_url, "ONYSOFT_PROVIDER_OPENAI_API_KEY": UPSTREAM_KEY,
            "POWERTOOLS_SERVICE_NAME": "onysoft-gateway", "POWERTOOLS_LOG_LEVEL": "WARNING",
        })
        for var in [v for v in os.environ if v.startswith("ONYSOFT_TABLE_")]:
            del os.environ[var]
        return _run(endpoint, upstream, workdir, progress)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        upstream.stop()
        stop_process(moto, grace=5)
        shutil.rmtree(workdir, ignore_errors=True)


def _run(endpoint: str, upstream: FakeUpstream, workdir: Path, progress) -> dict:
    import boto3

    from onysoft import accounts, api_keys, authorization, catalog, config
    from onysoft.models import ALL_MODELS, bind_tables
    from onysoft_tools import template
    from onysoft_tools.local.api_gateway import LocalApiGateway

    bind_tables()
    raw = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="bench", aws_secret_access_key="bench")  # noqa: S106
    tpl = template.load_template()
    names = {logical_id: config.table_name(env_var) for logical_id, env_var in template.TABLE_ENV.items()}
    template.create_tables(raw, tpl, names)
    capacity = Capacity(raw, _table_shapes(tpl, names))

    catalog.set_model(MODEL, input_usd_per_mtok="0.15", output_usd_per_mtok="0.60")
    catalog.set_fx("USDTRY", "41.50")
    rich = accounts.create_account("user", name="bench")
    accounts.top_up(rich.account_id, 1_000_000 * 1_000_000)
    created = api_keys.create_key(rich.account_id, name="bench", rpm=1_000_000, tpm=1_000_000_000)
    key, key_id, key_hash = created.plaintext, created.record.key_id, created.record.key_hash
    poor = accounts.create_account("user", name="bench-empty")  # balance 0: every billed request is a 402
    poor_key = api_keys.create_key(poor.account_id, name="empty").plaintext
    limited_key = api_keys.create_key(rich.account_id, name="rpm1", rpm=1).plaintext

    recorder = Recorder()
    if RECORD_IMAGES:
        recorder.images = (raw, _table_shapes(tpl, names))
    for model in ALL_MODELS:
        recorder.install(model._get_connection().connection.client)
    # The catalog is cached per instance for 60 s; keep it loaded during the count, report its Scan apart.
    catalog.catalog_cache.ttl_seconds = 3600

    gateway = LocalApiGateway(tpl, state_dir=workdir)
    kinds = [
        ("GET /v1/key", "GET", "/v1/key", key, None, False),
        ("GET /v1/models", "GET", "/v1/models", key, None, False),
        ("chat, non-stream", "POST", "/v1/chat/completions", key, CHAT, True),
        ("chat, stream", "POST", "/v1/chat/completions", key, {**CHAT, "stream": True}, True),
        ("embeddings", "POST", "/v1/embeddings", key, {"model": MODEL, "input": "Hello"}, True),
        ("402 refused (balance 0)", "POST", "/v1/chat/completions", poor_key, CHAT, False),
        ("429 refused (rpm reached)", "POST", "/v1/chat/completions", limited_key, CHAT, False),
    ]

    async def scenario() -> dict:
        results: dict = {}
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.local", timeout=30) as client:
            # Authorizer cache misses first (2 GetItems each), then warm: catalog loaded, authorizations cached.
            for k in (key, poor_key, limited_key):
                await _drive(client, "GET", "/v1/key", k, None)
            await _drive(client, "POST", "/v1/chat/completions", key, CHAT)
            await _drive(client, "POST", "/v1/chat/completions", limited_key, CHAT)  # uses the rpm=1 window
            recorder.take()
            for label, method, path, k, body, billed in kinds:
                samples = []
                for _ in range(REPEATS):
                    upstream.first_bytes.clear()
                    began = time.monotonic()
                    response = await _drive(client, method, path, k, body)
                    elapsed_ms = (time.monotonic() - began) * 1000
                    await asyncio.sleep(0.05)  # nothing runs after the response; make sure of it
                    calls = recorder.take()
                    first = upstream.first_bytes[0] if upstream.first_bytes else None
                    samples.append((response.status_code, calls, first, elapsed_ms))
                results[label] = _summarise(samples, billed, capacity)
        return results

    progress("  DynamoDB: counting calls per request kind (in-process, moto server)")
    results = asyncio.run(scenario())

    # The authorizer on a cache miss, alone: its handler's decision code.
    recorder.take()
    started = time.monotonic()
    authorization.authorize(f"Bearer {key}")
    authorizer_ms = (time.monotonic() - started) * 1000
    auth_calls = recorder.take()
    rru = sum(capacity.of(c)[0] for c in auth_calls)
    # The catalog refresh: one Scan per proxy instance per minute.
    catalog.catalog_cache.invalidate()
    catalog.catalog_cache.model(MODEL)
    scan_calls = recorder.take()
    moto_consumed = [c.get("consumed") for c in auth_calls + scan_calls]
    return {
        "kinds": results,
        "authorizer_miss": {"round_trips": len(auth_calls), "ops": Counter(c["op"] for c in auth_calls),
                            "rru": rru, "ms": authorizer_ms},
        "catalog_scan": {"round_trips": len(scan_calls), "rru": sum(capacity.of(c)[0] for c in scan_calls)},
        "moto_consumed_examples": moto_consumed,
        "ids": {"account": rich.account_id, "key": key_id, "key_hash": key_hash},
        "rules": Capacity.RULES,
    }


def _summarise(samples: list, billed: bool, capacity: Capacity) -> dict:
    statuses = Counter(sample[0] for sample in samples)
    before_done, before_started, totals, rrus, wrus, ops, how, moto_units = [], [], [], [], [], Counter(), "", []
    for _status, calls, first, _ms in samples:
        totals.append(len(calls))
        if first is not None:
            before_done.append(sum(1 for c in calls if c["end"] <= first))
            before_started.append(sum(1 for c in calls if c["start"] < first))
        rru = wru = 0.0
        parts = []
        for call in calls:
            r, w, detail = capacity.of(call)
            rru, wru = rru + r, wru + w
            parts.append(detail)
            consumed = call.get("consumed")
            moto_units.append(consumed if consumed is not None else None)
        rrus.append(rru)
        wrus.append(wru)
        how = " | ".join(parts)
        ops.update(c["op"] for c in calls)
    return {
        "status": dict(statuses), "upstream_called": billed,
        "before_upstream": median(before_done) if before_done else None,
        "started_before_upstream": median(before_started) if before_started else None,
        "total": median(totals), "rru": median(rrus), "wru": median(wrus),
        "ops": {op: n / len(samples) for op, n in ops.items()}, "detail": how,
        "moto_consumed": moto_units[:6], "in_process_ms": median([sample[3] for sample in samples]),
        "pattern": _pattern(samples[-1], capacity),
    }


def _pattern(sample: tuple, capacity: Capacity) -> list[dict]:
    """One request's calls, in order, with the items each wrote or read (partition key values, units)."""
    _status, calls, first, _ms = sample
    pattern = []
    for call in calls:
        if first is None:
            phase = "request"
        else:
            phase = "before upstream" if call["end"] <= first else "during upstream" if call["start"] < first \
                else "after upstream"
        pattern.append({"op": call["op"], "phase": phase, "writes": capacity.write_parts(call),
                        "reads": capacity.read_parts(call)})
    return pattern


if __name__ == "__main__":
    print(json.dumps(run(), indent=2, default=str))
