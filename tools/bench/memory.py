"""Right-size the Lambdas: memory (RSS) and CPU per request, measured; latency and cost modelled per MemorySize.

`python -m tools.bench.memory` (part of `make bench`, after the main run; ~3 minutes). It rewrites only its
own section of docs/BENCHMARKS.md (between the MEMORY markers), so the rest of the report stays.

Measured here (x86 CPU, CPython 3.11; Lambda runs Graviton arm64 with 3.13, so CPU figures carry over
approximately, not exactly):
1. Each function's import in a fresh interpreter with a Lambda environment: peak RSS and CPU time of the
   import (Lambda's INIT), via getrusage in the child.
2. The proxy alone, as the Lambda Web Adapter runs it (`python -m uvicorn app:app` in functions/proxy),
   against `onysoft dev`'s moto server and a fake upstream in their own processes: requests one at a time
   (as Lambda sends them: one request per execution environment), then at concurrency 8; the proxy
   process's CPU time (utime+stime from /proc) per request and its peak RSS (VmHWM).
3. `onysoft dev` (proxy + authorizer + dashboard + the local API Gateway, in one process) while
   tests/integration/test_concurrency.py runs against it: its peak RSS, an upper bound for the proxy.

Modelled: Lambda gives a function CPU in proportion to its memory (one full vCPU at 1769 MB), so CPU-bound
time stretches by 1769/MB below that; waiting (provider, DynamoDB) does not. A request's billed duration is
provider time + DynamoDB round trips + CPU × stretch; cost = GB-s × the arm64 price + the request price.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from .common import (
    PYTHON,
    ROOT,
    clean_env,
    free_port,
    machine,
    median,
    onysoft_command,
    onysoft_json,
    stop_process,
    wait_for,
)

FULL_CPU_MB = 1769  # Lambda: one vCPU's worth of CPU at 1769 MB, proportionally less below
SIZES_MB = (128, 256, 512, 1024)
PROVIDER_SECONDS = (1.0, 5.0)
ARM64_GB_SECOND = 0.0000133334  # USD, arm64 (tools/bench/cost.py PRICES)
REQUEST_PRICE = 0.20 / 1e6
DYNAMO_ROUND_TRIPS = 3  # per chat request: the hold transaction, the window read, the settle transaction
DYNAMO_ROUND_TRIP_MS = 6.0  # assumed in-region latency of one DynamoDB call (single-digit ms)
LWA_AND_RUNTIME_MB = 30  # the adapter extension and the runtime's own share of the function's memory
SEQUENTIAL = 150
CONCURRENT = 200
CONCURRENCY = 8
WARMUP = 15
MODEL = "openai/bench-model"
MARK_BEGIN = "<!-- MEMORY:BEGIN (tools/bench/memory.py) -->"
MARK_END = "<!-- MEMORY:END -->"
CLK_TCK = os.sysconf("SC_CLK_TCK")

FUNCTIONS = {  # function -> (code dir, import statement as Lambda/uvicorn runs it)
    "authorizer": ("functions/authorizer", "import app; app.handler"),
    "proxy": ("functions/proxy", "from uvicorn.importer import import_from_string; import_from_string('app:app')"),
    "dashboard": ("functions/dashboard", "import app; app.handler"),
    "sweeper": ("functions/sweeper", "import app; app.handler"),
}
IMPORT_CHILD = """
import json, resource, sys
sys.path.insert(0, {dir!r})
before = resource.getrusage(resource.RUSAGE_SELF)
{stmt}
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
print(json.dumps({{"rss_mb": after.ru_maxrss / 1024, "cpu_ms": cpu}}))
"""


def lambda_env(function: str, **extra: str) -> dict[str, str]:
    region = "eu-central-1"
    env = clean_env(
        POWERTOOLS_SERVICE_NAME="onysoft-gateway", POWERTOOLS_LOG_LEVEL="INFO", POWERTOOLS_METRICS_NAMESPACE="Onysoft",
        POWERTOOLS_TRACE_DISABLED="true", AWS_REGION=region, AWS_DEFAULT_REGION=region,
        AWS_LAMBDA_FUNCTION_NAME=f"onysoft-bench-{function}",
        AWS_ACCESS_KEY_ID="ASIABENCHBENCHBENCH00", AWS_SECRET_ACCESS_KEY="bench-secret-not-real",  # noqa: S106
    )
    if function == "proxy":  # as template.yaml runs it on on-demand Lambda (one request per environment at a time)
        env["ONYSOFT_BLOCKING_CALLS"] = proxy_template_env("ONYSOFT_BLOCKING_CALLS")
    env.update(extra)
    return env


def proxy_template_env(name: str) -> str:
    """A literal environment variable of template.yaml's ProxyFunction (template.managed.json's differ: see
    onysoft_tools.proxy_compute)."""
    from onysoft_tools.template import load_template

    return str(load_template()["Resources"]["ProxyFunction"]["Properties"]["Environment"]["Variables"][name])


# ---------------------------------------------------------------------------------------------- 1. imports


def measure_imports(runs: int = 5) -> dict:
    out = {}
    for name, (directory, stmt) in FUNCTIONS.items():
        rss, cpu = [], []
        for _ in range(runs):
            result = subprocess.run([PYTHON, "-c", IMPORT_CHILD.format(dir=str(ROOT / directory), stmt=stmt)],
                                    cwd=ROOT / directory, env=lambda_env(name), capture_output=True, text=True,
                                    timeout=60, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"import of {name} failed:\n{result.stderr[-2000:]}")
            data = json.loads(result.stdout.strip().splitlines()[-1])
            rss.append(data["rss_mb"])
            cpu.append(data["cpu_ms"])
        out[name] = {"rss_mb": median(rss), "cpu_ms": median(cpu)}
    return out


# ---------------------------------------------------------------------------------------------- /proc


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in kB."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return values


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


# ---------------------------------------------------------------------------------------------- 2. proxy alone


def _cli(state: Path, *args: str) -> dict:
    return onysoft_json(state, *args)


def _authorizer_context(dev_env: dict[str, str], key: str) -> dict:
    """What the authorizer would hand the proxy for `key` (computed in a child against dev's moto)."""
    code = ("import json, sys; from onysoft.models import bind_tables; bind_tables(); "
            "from onysoft.authorization import authorize; "
            "print(json.dumps(authorize('Bearer ' + sys.argv[1]).to_authorizer_context()))")
    result = subprocess.run([PYTHON, "-c", code, key], cwd=ROOT, env=clean_env(**dev_env), capture_output=True,
                            text=True, timeout=60, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_proxy(progress=print, blocking: str | None = None) -> dict:
    """The proxy alone as template.yaml runs it on on-demand Lambda, or with ONYSOFT_BLOCKING_CALLS=`blocking`
    (`pool`: as on managed instances, template.managed.json)."""
    from onysoft_tools.settings import read_env_file

    workdir = Path(tempfile.mkdtemp(prefix="onysoft-bench-memory-"))
    state = workdir / "state"
    up_port, dev_port, proxy_port = free_port(), free_port(), free_port()
    upstream = subprocess.Popen([PYTHON, "-m", "onysoft_tools.fake_provider", "--port", str(up_port)], cwd=ROOT,
                                env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    dev = proxy = None
    try:
        if upstream.stdout is None or upstream.stdout.readline().strip() != "ready":
            raise RuntimeError("the fake upstream did not start")
        upstream_url = f"http://127.0.0.1:{up_port}/v1"
        from onysoft_tools.fake_provider import UPSTREAM_KEY

        with open(workdir / "dev.log", "wb") as log:
            dev = subprocess.Popen([*onysoft_command(), "dev", "--port", str(dev_port), "--state-dir", str(state)],
                                   cwd=ROOT, env=clean_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        if not wait_for(lambda: (state / "dev.env").exists() and _answers(f"http://127.0.0.1:{dev_port}/v1/models"),
                        60, 0.2):
            raise RuntimeError("onysoft dev did not start")
        _cli(state, "catalog", "set", MODEL, "--input-usd-per-mtok", "0.15", "--output-usd-per-mtok", "0.60")
        _cli(state, "fx", "set", "USDTRY", "41.5")
        account = _cli(state, "accounts", "create", "--kind", "user", "--name", "bench")["account_id"]
        _cli(state, "accounts", "topup", account, "1000000000")
        key = _cli(state, "keys", "create", "--account", account, "--name", "bench", "--rpm", "1000000",
                   "--tpm", "1000000000")["key"]
        dev_env = {k: v for k, v in read_env_file(state / "dev.env").items() if k.startswith(("AWS_", "ONYSOFT_T"))}
        context = _authorizer_context(dev_env, key)
        env = lambda_env("proxy", PORT=str(proxy_port), ONYSOFT_PROVIDER_OPENAI_BASE_URL=upstream_url,
                         ONYSOFT_PROVIDER_OPENAI_API_KEY=UPSTREAM_KEY, **dev_env,
                         **({"ONYSOFT_BLOCKING_CALLS": blocking} if blocking else {}))
        with open(workdir / "proxy.log", "wb") as log:  # EMF lines and logs, as in Lambda
            proxy = subprocess.Popen([PYTHON, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port",
                                      str(proxy_port), "--no-access-log"], cwd=ROOT / "functions" / "proxy", env=env,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        base = f"http://127.0.0.1:{proxy_port}"
        if not wait_for(lambda: _answers(base + "/healthz"), 30, 0.1):
            raise RuntimeError(f"the proxy did not start:\n{(workdir / 'proxy.log').read_text()[-2000:]}")
        ready_rss = proc_status(proxy.pid).get("VmRSS", 0) / 1024
        headers = {"authorization": f"Bearer {key}", "x-amzn-request-context": json.dumps({"authorizer": context})}
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "How big should this Lambda be?"}]}

        def one(client: httpx.Client, stream: bool) -> None:
            response = client.post(base + "/v1/chat/completions", headers=headers,
                                   json={**chat, "stream": stream}, timeout=60)
            if response.status_code != 200:
                raise RuntimeError(f"proxy answered {response.status_code}: {response.text[:300]}")

        with httpx.Client() as client:
            for i in range(WARMUP):
                one(client, stream=i % 2 == 1)
            results = {}
            progress(f"  memory: proxy alone, {SEQUENTIAL} requests one at a time (as Lambda sends them)")
            for label, stream in (("chat", False), ("chat, streamed", True)):
                cpu0, t0 = cpu_seconds(proxy.pid), time.monotonic()
                for _ in range(SEQUENTIAL):
                    one(client, stream)
                results[label] = {"cpu_ms": (cpu_seconds(proxy.pid) - cpu0) * 1000 / SEQUENTIAL,
                                  "wall_ms": (time.monotonic() - t0) * 1000 / SEQUENTIAL}
            sequential_hwm = proc_status(proxy.pid).get("VmHWM", 0) / 1024
        progress(f"  memory: proxy alone, {CONCURRENT} requests at concurrency {CONCURRENCY}")
        cpu0 = cpu_seconds(proxy.pid)
        local = threading.local()

        def concurrent_one(i: int) -> None:
            if not hasattr(local, "client"):
                local.client = httpx.Client()
            one(local.client, stream=i % 2 == 1)

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(concurrent_one, range(CONCURRENT)))
        concurrent_cpu = (cpu_seconds(proxy.pid) - cpu0) * 1000 / CONCURRENT
        return {"ready_rss_mb": ready_rss, "sequential_peak_rss_mb": sequential_hwm,
                "concurrent_peak_rss_mb": proc_status(proxy.pid).get("VmHWM", 0) / 1024,
                "per_request": results, "concurrent_cpu_ms": concurrent_cpu}
    finally:
        stop_process(proxy, grace=5)
        stop_process(dev)
        stop_process(upstream, grace=5)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------------------------------------- 3. the suite


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _is_dev_gateway(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"dev" in cmdline and any(part.endswith((b"onysoft", b"onysoft_tools.cli")) for part in cmdline)


def measure_suite(progress=print) -> dict:
    """Peak RSS of every `onysoft dev` the concurrency suite starts, sampled while it runs."""
    progress("  memory: tests/integration/test_concurrency.py, sampling onysoft dev's peak RSS")
    suite = subprocess.Popen([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "tests/integration/test_concurrency.py"], cwd=ROOT, env=clean_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_kb, gateways = 0, set()
    started = time.monotonic()
    while suite.poll() is None:
        for pid in _descendants(suite.pid):
            if _is_dev_gateway(pid):
                gateways.add(pid)
                peak_kb = max(peak_kb, proc_status(pid).get("VmHWM", 0))
        time.sleep(0.2)
    output = suite.stdout.read() if suite.stdout else ""
    summary = re.findall(r"\d+ (?:passed|failed|error)[^\n]*", output)
    return {"peak_rss_mb": peak_kb / 1024, "gateways": len(gateways), "seconds": time.monotonic() - started,
            "result": summary[-1] if summary else output[-300:], "returncode": suite.returncode}


# ---------------------------------------------------------------------------------------------- the model


def stretch(memory_mb: int) -> float:
    return max(1.0, FULL_CPU_MB / memory_mb)


def model(cpu_ms: float, init_cpu_ms: float, provider_s: float, memory_mb: int) -> dict:
    """Latency the function adds, its billed duration and USD per million requests at `memory_mb`."""
    cpu = cpu_ms * stretch(memory_mb)
    duration_ms = provider_s * 1000 + DYNAMO_ROUND_TRIPS * DYNAMO_ROUND_TRIP_MS + cpu
    usd = 1e6 * (memory_mb / 1024 * duration_ms / 1000 * ARM64_GB_SECOND + REQUEST_PRICE)
    return {"memory_mb": memory_mb, "provider_s": provider_s, "cpu_ms": cpu, "duration_ms": duration_ms,
            "usd_per_million": usd, "init_ms": init_cpu_ms * stretch(memory_mb)}


CHOICE = {  # function -> (MemorySize, why); template.yaml carries these
    "proxy": (512, "the knee: about half of 1024's cost per provider-second for ~{more_512:.0f} ms more CPU time "
                   "per request; 256 would add ~{more_256:.0f} ms more again and double the cold start "
                   "(~{init_256:.1f} s) for {save_256:.0%} less"),
    "authorizer": (256, "two GetItems per call: its time is DynamoDB I/O, and it runs only on a cache miss; "
                        "256 keeps the cold start ~{auth_init_256:.1f} s (128: ~{auth_init_128:.1f} s); "
                        "peak RSS {auth_rss:.0f} MB"),
    "dashboard": (512, "people wait on it; the pydantic + OpenAPI import is the heaviest (~{dash_init_512:.1f} s "
                       "cold at 512); a few requests a day: cost is noise"),
    "sweeper": (256, "288 runs a day; peak RSS {sweep_rss:.0f} MB; time is DynamoDB I/O"),
}


def choose(imports: dict, proxy: dict) -> dict:
    cpu = proxy["per_request"]["chat"]["cpu_ms"]
    init = imports["proxy"]["cpu_ms"]
    cost = {mb: model(cpu, init, 1.0, mb)["usd_per_million"] for mb in SIZES_MB}
    facts = {
        "more_512": cpu * (stretch(512) - stretch(1024)), "more_256": cpu * (stretch(256) - stretch(512)),
        "init_256": init * stretch(256) / 1000,
        "save_256": 1 - cost[256] / cost[512],
        "auth_init_256": imports["authorizer"]["cpu_ms"] * stretch(256) / 1000,
        "auth_init_128": imports["authorizer"]["cpu_ms"] * stretch(128) / 1000,
        "auth_rss": imports["authorizer"]["rss_mb"],
        "dash_init_512": imports["dashboard"]["cpu_ms"] * stretch(512) / 1000,
        "sweep_rss": imports["sweeper"]["rss_mb"],
    }
    return {name: {"memory_mb": mb, "why": why.format(**facts)} for name, (mb, why) in CHOICE.items()}


# ---------------------------------------------------------------------------------------------- report


def render(m: dict) -> str:
    imports, proxy, suite = m["imports"], m["proxy"], m["suite"]
    chat, streamed = proxy["per_request"]["chat"], proxy["per_request"]["chat, streamed"]
    lines = [
        MARK_BEGIN,
        "## Right-sizing the Lambdas (memory and CPU)",
        "",
        f"Written by `python -m tools.bench.memory` (part of `make bench`) on {m['machine']['date']}, "
        f"{m['machine']['cpu']}, {m['machine']['cores']} cores, Python {m['machine']['python']}. CPU times are "
        "this x86 machine's; Lambda runs arm64 (Graviton) with Python 3.13, so they carry over approximately.",
        "",
        "**Measured.** Peak RSS (VmHWM / ru_maxrss) and CPU time (user + system) of the process itself:",
        "",
        "| what | peak RSS | CPU |",
        "|---|---:|---:|",
    ]
    for name, data in imports.items():
        lines.append(f"| {name}: import (Lambda INIT), median of 5 | {data['rss_mb']:.0f} MB "
                     f"| {data['cpu_ms']:.0f} ms |")
    lines += [
        f"| proxy alone (`uvicorn app:app`, as the adapter runs it): ready | {proxy['ready_rss_mb']:.0f} MB | |",
        f"| proxy alone: {SEQUENTIAL} chat requests one at a time, then {SEQUENTIAL} streamed (as template.yaml "
        "runs it on on-demand Lambda: ONYSOFT_BLOCKING_CALLS=inline) | "
        f"{proxy['sequential_peak_rss_mb']:.0f} MB | {chat['cpu_ms']:.1f} ms / request "
        f"(streamed {streamed['cpu_ms']:.1f} ms) |",
        *([f"| proxy alone as on managed instances (ONYSOFT_BLOCKING_CALLS=pool, template.managed.json): "
           f"{SEQUENTIAL} chat requests one at a time, then {SEQUENTIAL} streamed | | "
           f"{proxy['managed']['chat']['cpu_ms']:.1f} ms / request "
           f"(streamed {proxy['managed']['chat, streamed']['cpu_ms']:.1f} ms) |"] if "managed" in proxy else []),
        f"| proxy alone: {CONCURRENT} requests at concurrency {CONCURRENCY} (more than Lambda ever sends one "
        f"environment) | {proxy['concurrent_peak_rss_mb']:.0f} MB | {proxy['concurrent_cpu_ms']:.1f} ms / request |",
        f"| `onysoft dev` (proxy + authorizer + dashboard + local API Gateway in one process) under "
        f"tests/integration/test_concurrency.py ({suite['result']}) | {suite['peak_rss_mb']:.0f} MB | |",
        "",
        "The proxy's CPU per request covers the whole of its work: parsing, hold and settle transactions "
        "(the DynamoDB client's side, not the DynamoDB server: moto runs in its own process), the upstream call, "
        "relaying, and the structured log line with its EMF metrics. The fake provider answers at once.",
        "",
        f"**Modelled** per MemorySize: Lambda's CPU share is MemorySize / {FULL_CPU_MB} MB of a vCPU (1 vCPU at "
        f"{FULL_CPU_MB} MB), so the proxy's {chat['cpu_ms']:.1f} ms of CPU stretches by {FULL_CPU_MB}/MB below "
        f"that; waiting does not. Billed duration = provider time + {DYNAMO_ROUND_TRIPS} DynamoDB round trips "
        f"× {DYNAMO_ROUND_TRIP_MS:.0f} ms (assumed in-region) + stretched CPU. Cost = GB-s × "
        f"${ARM64_GB_SECOND} (arm64) + $0.20 per million requests (Lambda only: API Gateway and DynamoDB cost "
        "the same at any size, see the cost section). Cold start = the import's CPU, stretched: an upper bound, "
        "if INIT ran at the function's CPU share.",
        "",
        "| MemorySize | CPU share | proxy CPU per request | added latency | cold-start import | "
        + " | ".join(f"billed ({p:.0f} s provider) | $ per million ({p:.0f} s)" for p in PROVIDER_SECONDS) + " |",
        "|---:|---:|---:|---:|---:|" + "---:|---:|" * len(PROVIDER_SECONDS),
    ]
    for mb in SIZES_MB:
        cells = []
        first = None
        for seconds in PROVIDER_SECONDS:
            row = model(chat["cpu_ms"], imports["proxy"]["cpu_ms"], seconds, mb)
            first = first or row
            cells += [f"{row['duration_ms']:.0f} ms", f"${row['usd_per_million']:.2f}"]
        added = first["cpu_ms"] + DYNAMO_ROUND_TRIPS * DYNAMO_ROUND_TRIP_MS
        lines.append(f"| {mb} MB | {min(1.0, mb / FULL_CPU_MB):.2f} vCPU | {first['cpu_ms']:.0f} ms | {added:.0f} ms | "
                     f"{first['init_ms'] / 1000:.1f} s | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Memory: every size fits the proxy's peak RSS when one request at a time runs "
        f"({proxy['sequential_peak_rss_mb']:.0f} MB, plus ~{LWA_AND_RUNTIME_MB} MB for the adapter and runtime), "
        f"but 128 MB leaves no headroom for a large request body (up to 6 MB, held two or three times while "
        "parsed and re-serialised) or a long stream's buffers.",
        "",
        "**Chosen** (template.yaml):",
        "",
        "| function | MemorySize | why |",
        "|---|---:|---|",
    ]
    for name, choice in m["choice"].items():
        lines.append(f"| {name} | {choice['memory_mb']} MB | {choice['why']} |")
    lines += [
        "",
        "Waiting on the provider dominates the proxy's bill at every size: each second of provider time costs "
        "$1.67 per million requests at 128 MB, $3.33 at 256, $6.67 at 512 and $13.33 at 1024. The proxy cannot "
        "return the CPU it does not use while it waits, so the size to pick is the smallest whose CPU stretch "
        "users do not notice.",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def write_section(section: str, path: Path) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if MARK_BEGIN in text and MARK_END in text:
        before, rest = text.split(MARK_BEGIN, 1)
        after = rest.split(MARK_END, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def run(progress=print) -> dict:
    progress("memory 1/3: each function's import (RSS, CPU)")
    imports = measure_imports()
    progress("memory 2/3: the proxy alone under load")
    proxy = measure_proxy(progress)
    progress("memory 2/3: the proxy alone as on managed instances (DynamoDB calls in the thread pool)")
    proxy["managed"] = measure_proxy(progress, blocking="pool")["per_request"]
    progress("memory 3/3: onysoft dev under the concurrency suite")
    suite = measure_suite(progress)
    measurements = {"machine": machine(), "imports": imports, "proxy": proxy, "suite": suite}
    measurements["choice"] = choose(imports, proxy)
    return measurements


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="right-size the Lambdas (docs/BENCHMARKS.md section)")
    parser.add_argument("--from-json", metavar="FILE", help="re-render the section from an earlier run's raw figures")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.from_json:
        measurements = json.loads(Path(args.from_json).read_text())
        measurements["choice"] = choose(measurements["imports"], measurements["proxy"])
    else:
        measurements = run()
    out = ROOT / "docs" / "BENCHMARKS.md"
    write_section(render(measurements), out)
    raw = Path(tempfile.gettempdir()) / "onysoft-bench-memory.json"
    raw.write_text(json.dumps(measurements, indent=2, default=str))
    print(f"wrote the memory section of {out.relative_to(ROOT)} ({time.monotonic() - started:.0f} s); raw: {raw}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
