"""Cold start: each function's import-and-init in a fresh interpreter (median of RUNS), and what dominates it.

Every run is a new `python` process with the environment a Lambda function has (the template's Globals:
table names, AWS_REGION, POWERTOOLS_*; tracing off, so nothing imports X-Ray). Measured inside the child:
- import: the handler module's import (Lambda's INIT phase runs exactly this), for the proxy as uvicorn
  does it (`app:app` from functions/proxy, which builds the Starlette app);
- clients: building the botocore DynamoDB client(s) the function's first invocation builds (PynamoDB builds
  them lazily, one per model class used, so the first request pays for them, not INIT); no network;
- process: spawn to exit of the whole child, interpreter start included.
The proxy is also timed as the Lambda Web Adapter sees it: `python -m uvicorn app:app` spawned, until
GET /healthz answers 200 ("ready").
`python -X importtime` on one more run gives the imports that dominate.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time

import httpx

from .common import PYTHON, ROOT, clean_env, free_port, median, percentile, stop_process

RUNS = 9
REGION = "eu-central-1"  # samconfig.toml's region

# Which models each function's first invocation touches (and so builds a botocore client for).
FUNCTIONS = {
    "authorizer": {"dir": "functions/authorizer", "module": "app", "attr": "handler",
                   "models": ["ApiKey", "Account"]},
    "proxy": {"dir": "functions/proxy", "module": "app", "attr": "app",
              "models": ["Account", "RateLimitCounter", "CatalogEntry", "ApiKey"]},
    "dashboard": {"dir": "functions/dashboard", "module": "app", "attr": "handler",
                  "models": ["Account", "ApiKey", "UsageRecord", "AuditRecord"]},
    "sweeper": {"dir": "functions/sweeper", "module": "app", "attr": "handler",
                "models": ["UsageRecord", "Account", "ApiKey", "RateLimitCounter"]},
}

# What-if: every model shares one botocore client (measured by patching PynamoDB in the child only).
# "Before": PynamoDB's own behaviour, one botocore session and client per model class (what models.py's
# GatewayModel replaced with one shared client).
PER_MODEL_CLIENT_PATCH = """
from pynamodb.models import Model as _Model
from onysoft import models as _models
_models.GatewayModel._get_connection = _Model.__dict__["_get_connection"]
"""

CHILD = """
import sys, time, json, os
t0 = time.perf_counter()
sys.path.insert(0, {dir!r})
{import_stmt}
t1 = time.perf_counter()
{patch}
from onysoft import models as _m
t2 = time.perf_counter()
for name in {models!r}:
    getattr(_m, name)._get_connection().connection.client
t3 = time.perf_counter()
print(json.dumps({{"import_ms": (t1 - t0) * 1000, "clients_ms": (t3 - t2) * 1000}}))
"""


def lambda_env(function: str) -> dict[str, str]:
    return clean_env(
        ONYSOFT_TABLE_API_KEYS="onysoft-ApiKeysTable-BENCH", ONYSOFT_TABLE_ACCOUNTS="onysoft-AccountsTable-BENCH",
        ONYSOFT_TABLE_USAGE="onysoft-UsageTable-BENCH", ONYSOFT_TABLE_RATE_LIMITS="onysoft-RateLimitsTable-BENCH",
        ONYSOFT_TABLE_CATALOG="onysoft-CatalogTable-BENCH",
        POWERTOOLS_SERVICE_NAME="onysoft-gateway", POWERTOOLS_LOG_LEVEL="INFO",
        POWERTOOLS_METRICS_NAMESPACE="Onysoft", POWERTOOLS_TRACE_DISABLED="true",
        AWS_REGION=REGION, AWS_DEFAULT_REGION=REGION, AWS_LAMBDA_FUNCTION_NAME=f"onysoft-bench-{function}",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1024" if function == "proxy" else "512",
        AWS_ACCESS_KEY_ID="ASIABENCHBENCHBENCH00", AWS_SECRET_ACCESS_KEY="bench-secret-not-real",  # noqa: S106
        AWS_SESSION_TOKEN="bench", PORT="8080",  # noqa: S106
    )


def _import_stmt(spec: dict) -> str:
    if spec["attr"] == "app":  # as uvicorn imports "app:app"
        return "from uvicorn.importer import import_from_string; import_from_string('app:app')"
    return f"import {spec['module']}; {spec['module']}.{spec['attr']}"


def _child_code(name: str, patch: str = "") -> str:
    spec = FUNCTIONS[name]
    return CHILD.format(dir=str(ROOT / spec["dir"]), import_stmt=_import_stmt(spec), patch=patch,
                        models=spec["models"])


def measure_function(name: str, runs: int = RUNS, patch: str = "") -> dict:
    imports, clients, processes = [], [], []
    code = _child_code(name, patch)
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run([PYTHON, "-c", code], cwd=ROOT / FUNCTIONS[name]["dir"], env=lambda_env(name),
                                capture_output=True, text=True, timeout=60, check=False)
        processes.append((time.perf_counter() - started) * 1000)
        if result.returncode != 0:
            raise RuntimeError(f"cold start of {name} failed:\n{result.stderr[-2000:]}")
        data = json.loads(result.stdout.strip().splitlines()[-1])
        imports.append(data["import_ms"])
        clients.append(data["clients_ms"])
    return {"import_ms": median(imports), "import_max_ms": max(imports), "clients_ms": median(clients),
            "process_ms": median(processes), "runs": runs, "client_models": FUNCTIONS[name]["models"]}


def interpreter_baseline(runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([PYTHON, "-c", "pass"], env=clean_env(), check=True, timeout=30)
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


def proxy_ready(runs: int = RUNS) -> dict:
    """Spawn uvicorn as functions/proxy/run.sh does; time until GET /healthz answers 200."""
    times = []
    for _ in range(runs):
        port = free_port()
        env = lambda_env("proxy")
        env["PORT"] = str(port)
        started = time.perf_counter()
        process = subprocess.Popen([PYTHON, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port),
                                    "--no-access-log"], cwd=ROOT / "functions" / "proxy", env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready = None
            deadline = started + 30
            with httpx.Client(timeout=0.5) as client:
                while time.perf_counter() < deadline:
                    if process.poll() is not None:
                        raise RuntimeError("uvicorn exited before it was ready")
                    try:
                        if client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                            ready = (time.perf_counter() - started) * 1000
                            break
                    except httpx.HTTPError:
                        time.sleep(0.003)
            if ready is None:
                raise RuntimeError("uvicorn did not answer /healthz within 30 s")
            times.append(ready)
        finally:
            stop_process(process, grace=5)
    return {"ready_ms": median(times), "ready_p90_ms": percentile(times, 90), "runs": runs}


_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_profile(name: str, top: int = 10) -> dict:
    """`python -X importtime`: the heaviest imports (cumulative), shallow ones first, with their share."""
    with tempfile.TemporaryDirectory():
        result = subprocess.run([PYTHON, "-X", "importtime", "-c", _child_code(name)],
                                cwd=ROOT / FUNCTIONS[name]["dir"], env=lambda_env(name), capture_output=True,
                                text=True, timeout=60, check=False)
    rows = []
    for line in result.stderr.splitlines():
        match = _LINE.match(line)
        if match:
            rows.append((int(match.group(2)) / 1000, len(match.group(3)) // 2, match.group(4)))
    total = sum(ms for ms, depth, _ in rows if depth == 0)
    # Packages that matter: the heaviest third-party roots and the heaviest onysoft modules.
    roots: dict[str, float] = {}
    for ms, _depth, module in rows:
        root = module.split(".")[0]
        if module == root or module.count(".") == 1:
            roots[module] = max(roots.get(module, 0.0), ms)
    heaviest = sorted(((ms, m) for m, ms in roots.items() if m not in ("app", "site", "encodings")),
                      reverse=True)[:top]
    return {"total_ms": total, "top": [{"module": m, "cumulative_ms": ms} for ms, m in heaviest]}


def run(progress=print) -> dict:
    out: dict = {"interpreter_ms": interpreter_baseline(), "functions": {}, "profiles": {}}
    for name in FUNCTIONS:
        progress(f"  cold start: {name} ({RUNS} fresh interpreters)")
        out["functions"][name] = measure_function(name)
        out["profiles"][name] = import_profile(name)
    progress("  cold start: proxy ready (uvicorn until /healthz answers)")
    out["proxy_ready"] = proxy_ready()
    progress("  cold start: before, one botocore client per model (PynamoDB's default)")
    out["per_model_clients"] = {name: measure_function(name, patch=PER_MODEL_CLIENT_PATCH)
                                for name in ("authorizer", "proxy")}
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
