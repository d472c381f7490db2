"""One proxy process serving many requests at once, as Lambda Managed Instances run it (issue 25, item 3).

The proxy app runs in ONE uvicorn process, as the Lambda Web Adapter starts it (`python -m uvicorn …`; here
through onysoft_tools.loop_probe, which adds GET /_probe and nothing else), against `onysoft dev`'s moto server
(its own process) and the fake provider. The test is the adapter: it sends each request with the authorizer's
context header, 64 at once with the real OpenAI SDK (async) and Anthropic's: chat streamed and not, embeddings,
the Responses and Messages APIs (the built-in mock provider, streamed and not), and fault models mixed in
(fake-500: free; fake-cut and fake-timeout: charged their hold; fake-overrun: a debt; fake-slow-stream: a stream
open for seconds). Then:
- the books are exact (tests/integration/ledger.check_ledger on every account), with exactly one usage record
  per request that reached the hold, matched on x-onysoft-request-id;
- no DynamoDB call ran on the event loop's thread (the probe records the thread of every botocore call): none
  blocked the loop for a round trip; the loop's lag under the load is measured and printed (not asserted on
  time: this machine is shared);
- every answer, error or not, carries x-onysoft-overhead-ms as a number (item 4).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

import anthropic
import httpx
import openai
import pytest

from onysoft_tools.fake_provider import UPSTREAM_KEY
from tests.integration.conftest import ROOT, clean_env, free_port
from tests.integration.ledger import Tables, check_ledger, new_account, new_key

READ_TIMEOUT = "4"  # fake-timeout ends here; a loaded machine's stall between two chunks of a good stream must not
CONCURRENCY = 64
OVERHEAD = "x-onysoft-overhead-ms"
MOCK_PRICES = ("--input-usd-per-mtok", "1.25", "--output-usd-per-mtok", "2.5")

# (api, model, stream, how many): 64 in all
MIX = [
    ("chat", "openai/fake-ok", False, 12),
    ("chat", "openai/fake-ok", True, 12),
    ("chat", "openai/fake-slow-stream", True, 8),
    ("chat", "openai/fake-cut", True, 4),
    ("chat", "openai/fake-500", False, 4),
    ("chat", "openai/fake-timeout", False, 2),
    ("chat", "openai/fake-overrun", False, 2),
    ("embeddings", "openai/fake-embed", False, 6),
    ("responses", "mock/echo", False, 4),
    ("responses", "mock/echo", True, 3),
    ("messages", "mock/echo", False, 4),
    ("messages", "mock/echo", True, 3),
]


@dataclass
class Call:
    api: str
    model: str
    stream: bool
    key: dict
    tag: str = field(default_factory=lambda: f"one-{uuid.uuid4().hex[:12]}")
    status: int = 0
    headers: dict = field(default_factory=dict)
    error: str = ""


def authorizer_context(dev, key: str) -> dict:
    """What the authorizer hands the proxy for `key` (its real code, in a child pointed at dev's moto)."""
    code = ("import json, sys; from onysoft.models import bind_tables; bind_tables(); "
            "from onysoft.authorization import authorize; "
            "print(json.dumps(authorize('Bearer ' + sys.argv[1]).to_authorizer_context()))")
    result = subprocess.run([sys.executable, "-c", code, key], cwd=ROOT, env=clean_env(**dev.env),
                            capture_output=True, text=True, timeout=60, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def proxy(dev, upstream, tmp_path_factory):
    """The proxy alone in one uvicorn process (with the probe), on dev's tables and the fake provider."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("one_process") / "proxy.log"
    env = clean_env(**dev.env, ONYSOFT_PROVIDER_OPENAI_BASE_URL=upstream.base_url,
                    ONYSOFT_PROVIDER_OPENAI_API_KEY=UPSTREAM_KEY, ONYSOFT_UPSTREAM_READ_TIMEOUT=READ_TIMEOUT,
                    POWERTOOLS_LOG_LEVEL="WARNING")
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "uvicorn", "onysoft_tools.loop_probe:app", "--host",
                                    "127.0.0.1", "--port", str(port), "--no-access-log"],
                                   cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 45
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the proxy did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    try:
        yield base
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _overhead(headers) -> float:
    value = headers.get(OVERHEAD)
    assert value is not None, f"no {OVERHEAD}: {dict(headers)}"
    return float(value)


async def _send(call: Call, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic) -> Call:
    messages = [{"role": "user", "content": call.tag}]
    try:
        if call.api == "chat":
            raw = await oai.chat.completions.with_raw_response.create(
                model=call.model, messages=messages, max_tokens=8, stream=call.stream,
                **({"stream_options": {"include_usage": True}} if call.stream else {}))
        elif call.api == "embeddings":
            raw = await oai.embeddings.with_raw_response.create(model=call.model, input=call.tag)
        elif call.api == "responses":
            raw = await oai.responses.with_raw_response.create(model=call.model, input=call.tag,
                                                               max_output_tokens=16, stream=call.stream)
        else:
            raw = await ant.messages.with_raw_response.create(model=call.model, messages=messages, max_tokens=16,
                                                              stream=call.stream)
        call.status, call.headers = raw.status_code, dict(raw.headers)
        parsed = raw.parse()  # OpenAI's raw response parses at once, Anthropic's is awaited
        if inspect.isawaitable(parsed):
            parsed = await parsed
        if call.stream:
            async for _ in parsed:
                pass
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        call.status, call.headers, call.error = exc.status_code, dict(exc.response.headers), str(exc)[:200]
    except (openai.APIError, anthropic.APIError) as exc:  # a stream that ended with the gateway's error event
        call.error = f"{type(exc).__name__}: {str(exc)[:200]}"
    return call


async def _burst(proxy: str, calls: list[Call]) -> list[Call]:
    limits = httpx.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=CONCURRENCY * 2)
    clients = {}
    for call in calls:
        secret = call.key["key"]
        if secret not in clients:
            context = {"x-amzn-request-context": json.dumps({"authorizer": call.key["context"]})}
            http = httpx.AsyncClient(limits=limits, timeout=60)
            clients[secret] = (
                openai.AsyncOpenAI(api_key=secret, base_url=proxy + "/v1", max_retries=0, default_headers=context,
                                   http_client=http),
                anthropic.AsyncAnthropic(api_key=secret, base_url=proxy, max_retries=0, default_headers=context,
                                         timeout=60),
            )
    try:
        return await asyncio.gather(*(_send(call, *clients[call.key["key"]]) for call in calls))
    finally:
        for oai, ant in clients.values():
            await oai.close()
            await ant.close()


def test_64_requests_at_once_in_one_process_keep_the_books_and_never_block_the_loop(dev, proxy):
    for model in ("mock/echo",):
        dev.cli_json("catalog", "set", model, *MOCK_PRICES)
    accounts, keys = [], []
    for kind in ("partner_project", "user"):  # a USD account and a TRY one
        account = new_account(dev, kind, "500")
        accounts.append(account)
        for _ in range(2):
            key = new_key(dev, account["account_id"], "--rpm", "10000")
            keys.append({**key, "context": authorizer_context(dev, key["key"])})
    calls = [Call(api, model, stream, keys[i % len(keys)])
             for i, (api, model, stream) in enumerate((a, m, s) for a, m, s, n in MIX for _ in range(n))]
    assert len(calls) == CONCURRENCY

    httpx.delete(proxy + "/_probe", timeout=10)  # count this burst only (the probe's sampler starts here)
    done = asyncio.run(_burst(proxy, calls))
    probe = httpx.get(proxy + "/_probe", timeout=10).json()

    # Every answer carries the gateway's own time, a number (errors and streams included).
    for call in done:
        assert call.status, (call.api, call.model, call.error)
        assert _overhead(call.headers) >= 0, call
    statuses = {(c.api, c.model, c.stream): c.status for c in done}
    assert statuses[("chat", "openai/fake-ok", False)] == 200 and statuses[("chat", "openai/fake-500", False)] == 502
    assert statuses[("messages", "mock/echo", True)] == 200 and statuses[("responses", "mock/echo", True)] == 200
    assert not [c for c in done if c.error and c.model in ("openai/fake-ok", "mock/echo", "openai/fake-embed")]

    # The books: exact on every account, one usage record per request, matched on its request id.
    tables = Tables(dev)
    deadline = time.monotonic() + 20  # a stream's relay settles just after its last byte
    while httpx.get(proxy + "/_probe", timeout=10).json()["relays_closing"] and time.monotonic() < deadline:
        time.sleep(0.1)
    records = [r for account in accounts for r in check_ledger(tables, account["account_id"])]
    assert sorted(r["request_id"] for r in records) == sorted(c.headers["x-onysoft-request-id"] for c in done)
    by_id = {r["request_id"]: r for r in records}
    for call in done:
        record = by_id[call.headers["x-onysoft-request-id"]]
        expected = "failed" if call.model == "openai/fake-500" else "settled"
        assert record["status"] == expected, (call, record)
        if call.model in ("openai/fake-cut", "openai/fake-timeout"):
            assert record.get("usage_estimated") == "true", record  # usage unknown: charged the hold

    # The event loop: no DynamoDB call on its thread, and its lag measured.
    calls_seen = probe["dynamodb_calls"]
    assert calls_seen["off_loop"] >= 3 * CONCURRENCY, probe  # key read, hold, settle per request at least
    assert calls_seen["on_loop"] == 0, f"DynamoDB calls blocked the event loop: {probe['on_loop_operations']}"
    assert probe["lag_ms"]["samples"] > 0, probe
    print(f"\none process, {CONCURRENCY} at once: loop lag p50 {probe['lag_ms']['p50']} ms, p99 "
          f"{probe['lag_ms']['p99']} ms, max {probe['lag_ms']['max']} ms over {probe['lag_ms']['samples']} samples; "
          f"{calls_seen['off_loop']} DynamoDB calls, all off the loop; peak RSS {probe['peak_rss_kb'] // 1024} MB")
