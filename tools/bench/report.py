"""docs/BENCHMARKS.md from one run's measurements."""

from __future__ import annotations

from . import cost

AIM_AUTHORIZER_MS = 250
AIM_PROXY_READY_MS = 600


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} ms"


def _n(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:g}"


def render(m: dict) -> str:
    mach, ov, cs, ddb = m["machine"], m["overhead"], m["coldstart"], m["dynamo"]
    d, t = ov["direct"], ov["through"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`tools/bench/`) in one run; rerun it to refresh every figure. Not part of "
        "`make test`. All load goes to 127.0.0.1 only.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {mach['cpu']} |",
        f"| cores | {mach['cores']} |",
        f"| memory | {mach['memory']} |",
        f"| OS | {mach['os']} |",
        f"| Python | {mach['python']} (Lambda runs python3.13 on arm64) |",
        f"| date | {mach['date']} |",
        f"| this run took | {m['elapsed_s']:.0f} s |",
        "",
        "## 1. Overhead: direct vs through `onysoft dev`",
        "",
        "One httpx client, one fake OpenAI-compatible upstream on loopback (its own process, no delay of its "
        "own; `tools/onysoft_tools/fake_provider.py`), called directly and through `onysoft dev` (a subprocess: "
        "moto server, "
        "the template's routes, the authorizer handler with its 60 s cache, the proxy ASGI app). Model "
        "`openai/bench-model` in the catalog, a `user` account (TRY, 50%) with a large top-up, a key with "
        "`--rpm 1000000 --tpm 1000000000`. Non-streaming chat completions: "
        f"{ov['counts']['sequential']} sequential, then {ov['counts']['concurrent']} at concurrency "
        f"{ov['counts']['concurrency']}; streaming: {ov['counts']['streams']} sequential streams, time to the "
        f"first body byte (TTFB). {ov['counts']['warmup']} warm-up requests first (authorizer cached, catalog "
        "loaded, connections open).",
        "",
        "| | direct | through the gateway | added by the gateway |",
        "|---|---:|---:|---:|",
        f"| sequential p50 | {_ms(d['seq_p50'])} | {_ms(t['seq_p50'])} | {_ms(t['seq_p50'] - d['seq_p50'])} |",
        f"| sequential p99 | {_ms(d['seq_p99'])} | {_ms(t['seq_p99'])} | {_ms(t['seq_p99'] - d['seq_p99'])} |",
        f"| sequential requests/s | {d['seq_rps']:.0f} | {t['seq_rps']:.0f} | |",
        f"| concurrency {ov['counts']['concurrency']} p50 | {_ms(d['conc_p50'])} | {_ms(t['conc_p50'])} | "
        f"{_ms(t['conc_p50'] - d['conc_p50'])} |",
        f"| concurrency {ov['counts']['concurrency']} p99 | {_ms(d['conc_p99'])} | {_ms(t['conc_p99'])} | "
        f"{_ms(t['conc_p99'] - d['conc_p99'])} |",
        f"| concurrency {ov['counts']['concurrency']} requests/s | {d['conc_rps']:.0f} | {t['conc_rps']:.0f} | |",
        f"| stream TTFB p50 | {_ms(d['ttfb_p50'])} | {_ms(t['ttfb_p50'])} | {_ms(t['ttfb_p50'] - d['ttfb_p50'])} |",
        f"| stream TTFB p99 | {_ms(d['ttfb_p99'])} | {_ms(t['ttfb_p99'])} | {_ms(t['ttfb_p99'] - d['ttfb_p99'])} |",
        f"| whole stream p50 | {_ms(d['stream_p50'])} | {_ms(t['stream_p50'])} | "
        f"{_ms(t['stream_p50'] - d['stream_p50'])} |",
        f"| failed requests | {d['seq_failed'] + d['conc_failed']} | {t['seq_failed'] + t['conc_failed']} | |",
        "",
        "**What these numbers are.** The local gateway talks to **moto server, not DynamoDB**: every request "
        "here pays for the hold and settle transactions (and a rate-counter read) as moto executes them, in "
        "Python, on the same two cores as the client, the fake upstream and the gateway; plus the local API "
        "Gateway stand-in and uvicorn's access log. So *added latency* = the gateway code's own work + "
        "moto's + one more loopback HTTP hop. In AWS the same path is API Gateway + the Lambda Web Adapter + "
        "two DynamoDB transactions in-region (typically single-digit ms each): these figures are an upper "
        "bound on the code's cost on this machine, not a prediction of latency in AWS. What carries over is "
        "the *shape* (one DynamoDB round trip before the first upstream byte, the settle before the last "
        "byte: section 3) and the CPU per request.",
        "",
        f"- **The same request in-process** (section 3's harness: the same proxy app and authorizer behind "
        f"LocalApiGateway, httpx's ASGITransport, so no sockets on the client side; moto server in its own "
        f"process): chat p50 **{_ms(m['dynamo']['kinds']['chat, non-stream']['in_process_ms'])}**, stream "
        f"{_ms(m['dynamo']['kinds']['chat, stream']['in_process_ms'])}, embeddings "
        f"{_ms(m['dynamo']['kinds']['embeddings']['in_process_ms'])} (median of {m['dynamo_repeats']}). That is "
        "the gateway code + moto, without the HTTP hop into `onysoft dev`.",
        f"- **A loopback stall, fixed in dev.** uvicorn serving a socket it was handed "
        f"(`server.run(sockets=[sock])`, as `onysoft dev` does) leaves TCP_NODELAY off, so a response written as "
        f"headers then body waits for the client's delayed ACK. Measured on the fake upstream: p50 "
        f"{_ms(ov['nagle']['without'])} without TCP_NODELAY, {_ms(ov['nagle']['with'])} with it. "
        "`onysoft dev` now sets TCP_NODELAY on its listening socket (`_bind` in `tools/onysoft_tools/dev.py`; "
        "accepted connections inherit it), so the figures above do not pay that stall. Lambda never did: run.sh "
        "starts uvicorn with `--port`, where asyncio sets TCP_NODELAY itself.",
        "- **moto server, serialized.** `onysoft dev` runs moto server through `onysoft_tools.serial_moto`, "
        "which handles one DynamoDB request at a time. Stock `python -m moto.server` runs each request on its "
        "own thread with no lock in moto's DynamoDB backend: under concurrent TransactWriteItems it fails "
        "(`RuntimeError: dictionary changed size during iteration` while it deep-copies a table, HTTP 500) and, "
        "worse, rolls a cancelled transaction back by restoring whole-table copies, erasing transactions that "
        "committed meanwhile (seen: 12 of 50 concurrent requests forwarded on a key limited to 10 a minute; "
        "241 of 400 requests failed at concurrency 8 in an early run of this benchmark). Real DynamoDB "
        "serializes transactions per item; the lock gives moto the same guarantee. It also means moto "
        "serialises every DynamoDB call, which is what limits requests/s through the gateway here. Its "
        "TransactWriteItems no longer deep-copies the tables it touches (a cost that grew with every usage "
        "record): see *Local gateway: a request's cost as the tables grow* below.",
        f"- Failed requests this run: {t['seq_failed'] + t['conc_failed']} through the gateway; moto's log has "
        f"{ov['moto_concurrency_errors']} tracebacks.",
    ]
    if t["seq_failed"] + t["conc_failed"]:
        lines += [
            "",
            f"**Failures (this run).** {t['seq_failed'] + t['conc_failed']} request(s) through the gateway failed "
            f"(first: `{(ov['failures'] or ['?'])[0][:160]}`). Latency figures are over the successful requests "
            "only.",
        ]
    f = cs["functions"]
    lines += [
        "",
        "## 2. Cold start",
        "",
        f"Each figure is the median of {f['authorizer']['runs']} fresh interpreters (a new `python` process each), "
        "with the environment a Lambda function has: the template's Globals (table names, "
        "`POWERTOOLS_SERVICE_NAME`, `POWERTOOLS_LOG_LEVEL=INFO`, `POWERTOOLS_METRICS_NAMESPACE`), "
        "`AWS_REGION=eu-central-1`, `AWS_LAMBDA_FUNCTION_NAME`, tracing off (`POWERTOOLS_TRACE_DISABLED=true`; "
        "nothing imports X-Ray). *import* is the handler module's import — exactly what Lambda's INIT runs (for "
        "the proxy: uvicorn's `import_from_string('app:app')`, which builds the Starlette app). "
        "*first-invocation client* is building the botocore DynamoDB client that the first request builds "
        "(lazily; one client shared by every model the function uses, section 5), no network. "
        "*process* is spawn-to-exit of the whole child. .pyc files were cached (a warm disk), as in a layer "
        f"built with compiled bytecode. A bare `python -c pass` takes {cs['interpreter_ms']:.0f} ms here.",
        "",
        "| function | import (INIT) | first-invocation client | process | models it serves |",
        "|---|---:|---:|---:|---|",
    ]
    for name, r in f.items():
        lines.append(f"| {name} | {_ms(r['import_ms'])} | {_ms(r['clients_ms'])} | {_ms(r['process_ms'])} | "
                     f"{', '.join(r['client_models'])} |")
    pr = cs["proxy_ready"]
    lines += [
        "",
        f"**Proxy ready** (as the Lambda Web Adapter sees it: `python -m uvicorn app:app` spawned in "
        f"functions/proxy until `GET /healthz` answers 200): median **{pr['ready_ms']:.0f} ms**, p90 "
        f"{pr['ready_p90_ms']:.0f} ms over {pr['runs']} runs.",
        "",
        "What dominates (`python -X importtime`, cumulative, one run each; nested modules are included in "
        "their parents):",
        "",
    ]
    for name, profile in cs["profiles"].items():
        top = ", ".join(f"`{e['module']}` {e['cumulative_ms']:.0f}" for e in profile["top"][:8])
        lines.append(f"- **{name}** ({profile['total_ms']:.0f} ms of imports): {top} (ms)")
    lines += [
        "",
        "In words: every function pays ~100 ms for PynamoDB, which imports botocore (botocore.config → "
        "botocore.compat → urllib3/http.client/ssl); Powertools' Logger ~25–30 ms; the proxy adds uvicorn "
        "(asyncio, click) and Starlette; the dashboard adds pydantic and Powertools' OpenAPI/validation models. "
        "None of it is X-Ray or otherwise needless at import: with tracing off nothing imports aws_xray_sdk. "
        "The largest avoidable cost was not an import but PynamoDB's **per-model botocore clients** built on "
        "the first request; they are now one shared client (section 5).",
        "",
        "## 3. DynamoDB per request",
        "",
        "Counted in-process (`tools/bench/dynamo.py`): the proxy ASGI app and the authorizer handler behind "
        "`onysoft dev`'s LocalApiGateway, driven by httpx's ASGITransport, against a moto server process; "
        "botocore event hooks (`before-parameter-build` / `before-call` / `after-call` on `dynamodb`) on every "
        "PynamoDB model's client record each call with its start and end time; the fake upstream (a thread, "
        "same clock) records when each request's first byte arrives. *before upstream* = calls that had "
        "ended when the upstream saw the first byte (on the request's path); *started before* also counts a "
        "call running concurrently with the upstream call. Authorization cached (the authorizer's own reads "
        "are the last rows), catalog loaded. Median of "
        f"{m['dynamo_repeats']} requests each.",
        "",
        "| request | status | round trips before upstream | started before upstream | round trips in all | "
        "operations | RRU | WRU |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for label, k in ddb["kinds"].items():
        ops = ", ".join(f"{op} ×{n:g}" for op, n in k["ops"].items())
        status = "/".join(str(s) for s in k["status"])
        lines.append(f"| {label} | {status} | {_n(k['before_upstream'])} | {_n(k['started_before_upstream'])} | "
                     f"{_n(k['total'])} | {ops} | {_n(k['rru'])} | {_n(k['wru'])} |")
    am, sc = ddb["authorizer_miss"], ddb["catalog_scan"]
    lines += [
        f"| authorizer, cache miss (per key per `ReauthorizeEvery`=60 s) | – | – | – | {am['round_trips']} | "
        f"{', '.join(f'{op} ×{n}' for op, n in am['ops'].items())} | {_n(am['rru'])} | 0 |",
        f"| catalog refresh (per proxy instance per 60 s) | – | – | – | {sc['round_trips']} | Scan ×1 | "
        f"{_n(sc['rru'])} | 0 |",
        "",
        "Item sizes behind the units (chat, non-stream): " + ddb["kinds"]["chat, non-stream"]["detail"]
        .replace(" | ", "; then ") + ". (*n+m idx*: transactional units + index-entry units.)",
        "",
        "- On a cached authorization the hold (`TransactWriteItems`: key ConditionCheck, usage Put, account "
        "Update, rate counter Update) is the **only** round trip before the upstream call: the aim is met.",
        "- The rate-limit counter read for the `x-ratelimit-*` headers (`_window_usage` in `forwarding.py`, a "
        "strongly "
        "consistent GetItem) runs concurrently with the upstream call; it is awaited only once the upstream "
        "answered, so it is off the latency path but costs 1 RRU per request.",
        "- The settle (`TransactWriteItems`: usage, account, key, rate counter) runs before the last byte "
        "goes out (BILLING.md: Lambda may freeze after the response ends), so it is on the response's path "
        "but after the first byte of a stream.",
        "- `GET /v1/models` reads the key (and its rate counter) and takes the model list from the proxy's 60 s "
        "catalog cache.",
        f"- An uncached authorization adds the authorizer's {am['round_trips']} GetItems ({_n(am['rru'])} RRU; "
        f"{am['ms']:.1f} ms in-process against moto) once per key per 60 s — API Gateway caches the "
        "answer per Authorization header for the whole stage, so for a key sending r requests a minute the "
        "amortised cost is 2/r GetItems a request.",
        "",
        "**Capacity units** are computed from DynamoDB's rules and the items' sizes (read back from moto "
        "after each request), not taken from moto: asked for `ReturnConsumedCapacity=TOTAL`, moto reports "
        "0.5 units for a strongly consistent GetItem (DynamoDB charges 1), and nothing for "
        "TransactWriteItems (an empty list) or index writes. Rules used (DynamoDB developer guide, "
        "\"DynamoDB read and write operations\", and the on-demand pricing page's key terms):",
        "",
    ]
    lines += [f"- {rule}" for rule in ddb["rules"]]
    lines += [
        "",
        "Where the write units go, per billed request (issue 16): hold 4 items × 2 (usage Put with `sent_at`, "
        "balance shard, rate counter, key Update that is its check and counts the request) + 1 index entry "
        "(`open_holds`); settle 2 items × 2 (usage, balance shard) + 1 index entry (`open_holds` removed); then "
        "2 plain UpdateItems × 1 (the key's spend, the window's tokens). No `by_key` index any more, no separate "
        "`sent_at` write. The ApiKeys and Accounts indexes project KEYS_ONLY, so the key and balance updates write "
        "no index entry. A key with a spend limit adds its spend counter to both transactions (+4).",
        "",
        # Section 4 is tools/bench/cost.py's (`make bench` runs it after the right-sizing section it reads).
        cost.MARK_BEGIN,
        "## 4. Cost per million requests",
        "",
        "(written by `make bench-cost`)",
        cost.MARK_END,
        "",
        "## 5. Make it fast",
        "",
        "| aim (issue 6) | measured | |",
        "|---|---|---|",
        f"| ≤ 1 DynamoDB round trip before the upstream call on a cached authorization | "
        f"{_n(ddb['kinds']['chat, non-stream']['before_upstream'])} (chat), "
        f"{_n(ddb['kinds']['chat, stream']['before_upstream'])} (stream), "
        f"{_n(ddb['kinds']['embeddings']['before_upstream'])} (embeddings) | "
        f"{'met' if (ddb['kinds']['chat, non-stream']['before_upstream'] or 9) <= 1 else 'NOT met'} |",
        f"| authorizer init well under {AIM_AUTHORIZER_MS} ms | import {f['authorizer']['import_ms']:.0f} ms "
        f"(+ {f['authorizer']['clients_ms']:.0f} ms of clients on the first request) | "
        f"{'met' if f['authorizer']['import_ms'] < AIM_AUTHORIZER_MS else 'NOT met'} for INIT |",
        f"| proxy ready well under {AIM_PROXY_READY_MS} ms (tracing off) | {pr['ready_ms']:.0f} ms to /healthz "
        f"(+ {f['proxy']['clients_ms']:.0f} ms of clients on the first request) | "
        f"{'met' if pr['ready_ms'] < AIM_PROXY_READY_MS else 'NOT met'} |",
        "",
    ]
    before = cs["per_model_clients"]
    lines += [
        "**One botocore client for every model (applied).** PynamoDB gives each model class its own "
        "`TableConnection` → `Connection` → botocore session and client, so a cold proxy built four clients on its "
        "first billed request (Account for the transactions, RateLimitCounter for the counter read, CatalogEntry "
        "for the catalog Scan, ApiKey for `/v1/key`), each loading the DynamoDB service model again and each "
        "opening its own HTTPS connection pool to DynamoDB. `GatewayModel` in `layers/core/onysoft/models.py` "
        "now hands every model's connection one shared client. Before = the same run with PynamoDB's default "
        "restored in the child process (`PER_MODEL_CLIENT_PATCH` in `tools/bench/coldstart.py`):",
        "",
        "| function | first-invocation clients, before (one per model) | after (one shared client) |",
        "|---|---:|---:|",
        f"| authorizer | {_ms(before['authorizer']['clients_ms'])} | {_ms(f['authorizer']['clients_ms'])} |",
        f"| proxy | {_ms(before['proxy']['clients_ms'])} | {_ms(f['proxy']['clients_ms'])} |",
        "",
        "Also applied: `GET /v1/models` is served from the proxy's 60 s catalog cache (it queried the catalog "
        "table on every call); `onysoft dev` sets TCP_NODELAY (section 1); and the ApiKeys indexes "
        "(`by_account`, `by_key_id`) and the Accounts index (`by_owner`) project KEYS_ONLY. With ALL, every "
        "settle's update of the key item rewrote both ApiKeys index entries (+2 WRU a request; the first run of "
        "this benchmark counted `Update keys 314 B (2+2 idx)`), and every hold and settle on an account with an "
        "owner rewrote its `by_owner` entry. The dashboard and the CLI now read the items behind those "
        "indexes with a BatchGetItem, a rare path. Section 3's units are after the change.",
        "",
        "Left as they are, with the reason:",
        "",
        "1. The Usage table has no `by_key` index (issue 16): a key's usage list reads its account's partition with "
        "a filter (more reads on the dashboard, 2 WRU a request fewer).",
        "2. The rate-counter read for the x-ratelimit headers runs while the upstream works (off the latency path) "
        "and costs 1 RRU a request. An eventually consistent read would halve that, but the remaining-requests "
        "header could then fail to count down on consecutive requests, which issue 4 asks it to do.",
        "",
        "Nothing in the import profile is X-Ray or otherwise needless at INIT with tracing off, so no lazy "
        "import was changed: the imports that dominate (botocore via PynamoDB, Powertools' Logger, uvicorn, "
        "Starlette) are all used by every invocation.",
        "",
    ]
    return "\n".join(lines)
