"""Overhead: one client, one loopback fake upstream, called directly and through `onysoft dev`.

`onysoft dev` runs as a subprocess (as tests/integration's DevGateway starts it) with the openai provider
pointed at the fake upstream, which runs in its own process. Through the gateway every request is
authorized (cached after the first), held, forwarded and settled over moto server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from onysoft_tools.fake_provider import UPSTREAM_KEY

from .common import (
    PYTHON,
    ROOT,
    clean_env,
    free_port,
    median,
    onysoft_command,
    onysoft_json,
    percentile,
    stop_process,
    wait_for,
)

SEQUENTIAL = 200
CONCURRENCY = 8
CONCURRENT = 400
STREAMS = 100
WARMUP = 20
MODEL = "openai/bench-model"
MESSAGES = [{"role": "user", "content": "Hello, how are you today?"}]


class Target:
    def __init__(self, name: str, base_url: str, key: str, model: str):
        self.name, self.base_url, self.key, self.model = name, base_url, key, model

    def body(self, stream: bool = False) -> dict:
        body = {"model": self.model, "messages": MESSAGES, "max_tokens": 16}
        return {**body, "stream": True} if stream else body


FAILURES: list[str] = []  # non-200 answers: counted and reported, never hidden


def _one(client: httpx.Client, target: Target) -> float | None:
    started = time.perf_counter()
    try:
        response = client.post(target.base_url + "/chat/completions", json=target.body(),
                               headers={"Authorization": f"Bearer {target.key}"})
    except httpx.HTTPError as exc:  # e.g. the server dropped the connection after an error
        FAILURES.append(f"{target.name}: {type(exc).__name__} {exc}")
        return None
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        FAILURES.append(f"{target.name}: HTTP {response.status_code} {response.text[:200]}")
        return None
    return elapsed


def _ok(values: list) -> list[float]:
    return [v for v in values if v is not None]


def _ttfb(client: httpx.Client, target: Target) -> tuple[float, float]:
    started = time.perf_counter()
    first = None
    with client.stream("POST", target.base_url + "/chat/completions", json=target.body(stream=True),
                       headers={"Authorization": f"Bearer {target.key}"}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{target.name}: HTTP {response.status_code}")
        for chunk in response.iter_raw():
            if first is None and chunk:
                first = (time.perf_counter() - started) * 1000
    return first or float("nan"), (time.perf_counter() - started) * 1000


def measure(target: Target) -> dict:
    limits = httpx.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=CONCURRENCY * 2)
    with httpx.Client(timeout=30, limits=limits) as client:
        for _ in range(WARMUP):
            _one(client, target)
        started = time.perf_counter()
        sequential = [_one(client, target) for _ in range(SEQUENTIAL)]
        seq_failed = SEQUENTIAL - len(_ok(sequential))
        sequential = _ok(sequential)
        seq_rps = SEQUENTIAL / (time.perf_counter() - started)
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(lambda _: _one(client, target), range(CONCURRENCY * 2)))  # warm the connections
            started = time.perf_counter()
            concurrent = list(pool.map(lambda _: _one(client, target), range(CONCURRENT)))
            conc_rps = CONCURRENT / (time.perf_counter() - started)
        conc_failed = CONCURRENT - len(_ok(concurrent))
        concurrent = _ok(concurrent)
        for _ in range(5):
            _ttfb(client, target)
        streams = [_ttfb(client, target) for _ in range(STREAMS)]
    ttfb = [first for first, _ in streams]
    whole = [total for _, total in streams]
    return {
        "seq_p50": median(sequential), "seq_p99": percentile(sequential, 99), "seq_rps": seq_rps,
        "conc_p50": median(concurrent), "conc_p99": percentile(concurrent, 99), "conc_rps": conc_rps,
        "ttfb_p50": median(ttfb), "ttfb_p99": percentile(ttfb, 99), "stream_p50": median(whole),
        "seq_failed": seq_failed, "conc_failed": conc_failed,
    }


def nagle_stall(samples: int = 30) -> dict:
    """p50 of the same POST against the fake upstream on a pre-bound socket without and with TCP_NODELAY."""
    out = {}
    for label, extra in (("without", ["--no-nodelay"]), ("with", [])):
        port = free_port()
        process = subprocess.Popen([PYTHON, "-m", "onysoft_tools.fake_provider", "--port", str(port), *extra],
                                   cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   text=True)
        try:
            if process.stdout is None or process.stdout.readline().strip() != "ready":
                raise RuntimeError("the fake upstream did not start")
            target = Target(label, f"http://127.0.0.1:{port}/v1", UPSTREAM_KEY, "bench-model")
            with httpx.Client(timeout=30) as client:
                _one(client, target)
                out[label] = median(_ok([_one(client, target) for _ in range(samples)]))
        finally:
            stop_process(process, grace=5)
    return out


class DevGateway:
    def __init__(self, upstream_url: str, state_dir: Path):
        self.port = free_port()
        self.state_dir = state_dir
        self.upstream_url = upstream_url
        self.process: subprocess.Popen | None = None
        self.log = state_dir.parent / "dev.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DevGateway:
        env = clean_env(ONYSOFT_PROVIDER_OPENAI_BASE_URL=self.upstream_url,
                        ONYSOFT_PROVIDER_OPENAI_API_KEY=UPSTREAM_KEY)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([*onysoft_command(), "dev", "--port", str(self.port), "--state-dir",
                                             str(self.state_dir)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log)

        def up() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"onysoft dev exited:\n{self.log.read_text()[-3000:]}")
            try:
                httpx.get(self.base_url + "/v1/models", timeout=2)
                return True
            except httpx.HTTPError:
                return False

        if not wait_for(up, 60, 0.1):
            raise RuntimeError("onysoft dev did not answer within 60 s")
        return self

    def cli(self, *args: str) -> dict:
        return onysoft_json(self.state_dir, *args)

    def stop(self) -> None:
        stop_process(self.process)  # SIGINT, like Ctrl-C: it stops its moto server too


def run(progress=print) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="onysoft-bench-overhead-"))
    port = free_port()
    upstream = subprocess.Popen([PYTHON, "-m", "onysoft_tools.fake_provider", "--port", str(port)], cwd=ROOT,
                                env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    gateway = None
    try:
        if upstream.stdout is None or upstream.stdout.readline().strip() != "ready":
            raise RuntimeError("the fake upstream did not start")
        upstream_url = f"http://127.0.0.1:{port}/v1"
        progress("  overhead: starting onysoft dev (moto server, template routes, authorizer, proxy)")
        gateway = DevGateway(upstream_url, workdir / "state").start()
        gateway.cli("catalog", "set", MODEL, "--input-usd-per-mtok", "0.15", "--output-usd-per-mtok", "0.60")
        gateway.cli("fx", "set", "USDTRY", "41.5")
        account = gateway.cli("accounts", "create", "--kind", "user", "--name", "bench")["account_id"]
        gateway.cli("accounts", "topup", account, "1000000000")
        key = gateway.cli("keys", "create", "--account", account, "--name", "bench", "--rpm", "1000000",
                          "--tpm", "1000000000")["key"]
        direct = Target("direct", upstream_url, UPSTREAM_KEY, "bench-model")
        through = Target("through onysoft dev", gateway.base_url + "/v1", key, MODEL)
        progress(f"  overhead: direct ({SEQUENTIAL} sequential, {CONCURRENT} at concurrency {CONCURRENCY}, "
                 f"{STREAMS} streams)")
        result_direct = measure(direct)
        progress("  overhead: through onysoft dev (the same)")
        result_through = measure(through)
        usage = gateway.cli("usage", "--account", account, "--limit", "5")
        settled = sum(1 for r in usage.get("records", []) if r.get("status") == "settled")
        moto_log = workdir / "state" / "moto.log"  # onysoft dev's own moto server (serialized)
        moto_errors = moto_log.read_text(errors="replace").count("Traceback") if moto_log.exists() else 0
        progress("  overhead: the TCP_NODELAY stall, measured on the fake upstream")
        stall = nagle_stall()
        return {"direct": result_direct, "through": result_through, "settled_sample": settled,
                "failures": FAILURES[:5], "failure_count": len(FAILURES), "moto_concurrency_errors": moto_errors,
                "nagle": stall,
                "counts": {"sequential": SEQUENTIAL, "concurrent": CONCURRENT, "concurrency": CONCURRENCY,
                           "streams": STREAMS, "warmup": WARMUP}}
    finally:
        if gateway is not None:
            gateway.stop()
        stop_process(upstream, grace=5)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
