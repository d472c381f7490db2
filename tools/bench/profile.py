"""`make bench-profile`: the proxy's own CPU per billed request, where it goes, and memory per concurrent stream.

Rewrites only its section of docs/BENCHMARKS.md (between the PROFILE markers). ~4 minutes on 2 cores.

1. CPU per request, as the right-sizing section measures it ("proxy alone"): the proxy in one uvicorn process
   (`python -m uvicorn app:app` in functions/proxy, a Lambda environment: EMF metrics and JSON logs on), against
   `onysoft dev`'s moto server and the fake provider in their own processes; N chat requests one at a time, then
   N streamed; every thread's CPU time from /proc (schedstat) per request. Side by side with the proxy as issue 25
   found it (BEFORE_COMMIT, from git's history), in alternating blocks: their ratio is the figure that carries over
   between runs on a shared machine whose speed moves.
2. The profile: the same process and requests under yappi (CPU clock, every thread: the DynamoDB calls run in the
   thread pool), its functions' own time summed by package and the top functions, per request. yappi slows what
   it measures (each call is hooked): its shares say where the time goes, section 1 says how much there is.
3. Memory per concurrent stream: the proxy with the probe (onysoft_tools.loop_probe) while bursts of
   fake-slow-stream streams (~2.4 s each) are open at once; the process's RSS, sampled every 20 ms, at its
   highest in each burst; the slope between bursts is the memory one more open stream takes. The probe's event
   loop lag and DynamoDB calls on the loop thread are reported for the largest burst.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from .common import PYTHON, ROOT, clean_env, free_port, machine, onysoft_command, stop_process, wait_for
from .memory import _answers, _authorizer_context, _cli, lambda_env, proc_status

MODEL = "openai/bench-model"
SLOW_MODEL = "openai/fake-slow-stream"
REQUESTS = 400
PROFILED = 200
WARMUP = 20
BURSTS = (1, 16, 64)
TOP = 15
MARK_BEGIN = "<!-- PROFILE:BEGIN (tools/bench/profile.py) -->"
MARK_END = "<!-- PROFILE:END -->"


# ---------------------------------------------------------------------------------------------- the stack


class Stack:
    """The fake provider and `onysoft dev` (moto) in their own processes, one funded key and its context."""

    def __init__(self, workdir: Path):
        from onysoft_tools.fake_provider import UPSTREAM_KEY
        from onysoft_tools.settings import read_env_file

        self.workdir = workdir
        state = workdir / "state"
        up_port, dev_port = free_port(), free_port()
        self.upstream = subprocess.Popen([PYTHON, "-m", "onysoft_tools.fake_provider", "--port", str(up_port)],
                                         cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
        self.dev = None
        if self.upstream.stdout is None or self.upstream.stdout.readline().strip() != "ready":
            raise RuntimeError("the fake upstream did not start")
        with open(workdir / "dev.log", "wb") as log:
            self.dev = subprocess.Popen([*onysoft_command(), "dev", "--port", str(dev_port), "--state-dir",
                                         str(state)], cwd=ROOT, env=clean_env(), stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=log)
        if not wait_for(lambda: (state / "dev.env").exists() and _answers(f"http://127.0.0.1:{dev_port}/v1/models"),
                        60, 0.2):
            raise RuntimeError("onysoft dev did not start")
        prices = ("--input-usd-per-mtok", "0.15", "--output-usd-per-mtok", "0.60")
        _cli(state, "catalog", "set", MODEL, SLOW_MODEL, *prices)
        _cli(state, "fx", "set", "USDTRY", "41.5")
        account = _cli(state, "accounts", "create", "--kind", "user", "--name", "bench")["account_id"]
        _cli(state, "accounts", "topup", account, "1000000000")
        self.key = _cli(state, "keys", "create", "--account", account, "--name", "bench", "--rpm", "1000000",
                        "--tpm", "1000000000")["key"]
        self.dev_env = {k: v for k, v in read_env_file(state / "dev.env").items()
                        if k.startswith(("AWS_", "ONYSOFT_T"))}
        context = _authorizer_context(self.dev_env, self.key)
        self.headers = {"authorization": f"Bearer {self.key}",
                        "x-amzn-request-context": json.dumps({"authorizer": context})}
        self.provider_env = {"ONYSOFT_PROVIDER_OPENAI_BASE_URL": f"http://127.0.0.1:{up_port}/v1",
                             "ONYSOFT_PROVIDER_OPENAI_API_KEY": UPSTREAM_KEY}

    def proxy(self, name: str, command: list[str], cwd: Path = ROOT, **extra_env: str) -> tuple[subprocess.Popen, str]:
        port = free_port()
        env = lambda_env("proxy", PORT=str(port), **self.provider_env, **self.dev_env, **extra_env)
        with open(self.workdir / f"{name}.log", "wb") as log:
            process = subprocess.Popen([*command, "--port", str(port)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=log)
        base = f"http://127.0.0.1:{port}"
        if not wait_for(lambda: _answers(base + "/healthz"), 45, 0.1):
            stop_process(process, grace=2)
            raise RuntimeError(f"{name} did not start:\n{(self.workdir / f'{name}.log').read_text()[-2000:]}")
        return process, base

    def stop(self) -> None:
        stop_process(self.dev)
        stop_process(self.upstream, grace=5)


def _chat(client: httpx.Client, base: str, headers: dict, stream: bool, model: str = MODEL) -> httpx.Response:
    response = client.post(base + "/v1/chat/completions", headers=headers, timeout=60,
                           json={"model": model, "messages": [{"role": "user", "content": "Where does it go?"}],
                                 "stream": stream})
    if response.status_code != 200:
        raise RuntimeError(f"proxy answered {response.status_code}: {response.text[:300]}")
    return response


UVICORN = [PYTHON, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--no-access-log"]


# ---------------------------------------------------------------------------------------------- 1. CPU


# "before" is the proxy as issue 25 found it, at the commit below (botocore's client for every DynamoDB call,
# asyncio's own loop and h11 under uvicorn, four DynamoDB calls a billed request), taken out of the repository's
# history into the bench's work directory and run by this Python; "now" is the working tree. Both in their own
# process on the one stack, taking turns in blocks of BLOCK requests, so a change in the shared machine's speed
# falls on both; the figure that carries over between runs is their ratio.
BEFORE_COMMIT = "7079d91"
ISSUE_BEFORE_MS = 9.9  # what issue 25 read for "before" ("proxy alone"); its target: 3 ms in the same measure
VARIANTS = {"before": f"before: as issue 25 found it ({BEFORE_COMMIT})",
            "now": "now (the working tree, as template.yaml runs it on on-demand Lambda: DynamoDB calls inline)",
            "pool": "now, as on managed instances (template.managed.json: DynamoDB calls in the thread pool)"}
# What each variant of the working tree is told (the template's ProxyFunction environment, and the variant's).
NOW_ENV = {"now": {}, "pool": {"ONYSOFT_BLOCKING_CALLS": "pool"}}
BLOCK = 25  # requests a block


def cpu_seconds_exact(pid: int) -> float:
    """The process's CPU time to the nanosecond: every thread's time on a CPU (/proc/<pid>/task/*/schedstat);
    /proc/<pid>/stat counts in 10 ms ticks, 0.4 ms a request over a block of 25."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def before_tree(workdir: Path, commit: str = BEFORE_COMMIT) -> Path:
    """The proxy's code at `commit` (its core layer and function), from git's history."""
    target = workdir / "before"
    target.mkdir(exist_ok=True)
    archive = subprocess.run(["git", "archive", commit, "layers/core", "functions/proxy"], cwd=ROOT,
                             capture_output=True, check=False)
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {commit} failed (a shallow clone?): {archive.stderr.decode()[:300]}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def measure_cpu(stack: Stack, progress=print, commit: str = BEFORE_COMMIT) -> dict:
    """`before` (the proxy at `commit`) and `now` in their own proxy processes on the same stack, in alternating
    blocks of BLOCK requests: CPU per request (the median block) and the overhead header's median, by variant, and
    the median of the blocks' now/before ratios."""
    before = before_tree(stack.workdir, commit)
    # As issue 25 found it, the proxy ran on asyncio's loop and h11; a later commit runs as its own run.sh says.
    server = ["UVICORN_LOOP=asyncio", "UVICORN_HTTP=h11"] if commit == BEFORE_COMMIT else []
    commands = {
        "before": (["env", *server, f"PYTHONPATH={before / 'layers' / 'core'}", *UVICORN],
                   before / "functions" / "proxy", {}),
        **{name: (UVICORN, ROOT / "functions" / "proxy", env) for name, env in NOW_ENV.items()},
    }
    proxies = {name: stack.proxy(f"proxy-{name}", command, cwd, **env)
               for name, (command, cwd, env) in commands.items()}
    try:
        result: dict[str, dict[str, float]] = {name: {} for name in VARIANTS}
        overheads: dict[str, dict[str, list[float]]] = {name: {} for name in VARIANTS}
        ratios: dict[str, dict[str, float]] = {}
        with httpx.Client() as client:
            for _, base in proxies.values():
                for i in range(WARMUP):
                    _chat(client, base, stack.headers, stream=i % 2 == 1)
            for label, stream in (("chat", False), ("chat, streamed", True)):
                progress(f"  profile: {REQUESTS} requests one at a time ({label}), before, now and pool")
                blocks: dict[str, list[float]] = {name: [] for name in VARIANTS}
                for _ in range(REQUESTS // BLOCK):
                    for name, (proxy, base) in proxies.items():
                        cpu0 = cpu_seconds_exact(proxy.pid)
                        for _ in range(BLOCK):
                            overheads[name].setdefault(label, []).append(float(_chat(
                                client, base, stack.headers, stream).headers.get("x-onysoft-overhead-ms", "nan")))
                        blocks[name].append((cpu_seconds_exact(proxy.pid) - cpu0) * 1000 / BLOCK)
                for name in VARIANTS:  # the median block: a burst of other work on the machine moves it least
                    result[name][label] = sorted(blocks[name])[len(blocks[name]) // 2]
                for name in NOW_ENV:
                    pairs = sorted(now / was for now, was in zip(blocks[name], blocks["before"], strict=True))
                    ratios.setdefault(name, {})[label] = pairs[len(pairs) // 2]
        return {"cpu_ms": result, "ratio": ratios["now"], "ratio_pool": ratios["pool"],
                "overhead_ms": {name: {k: sorted(v)[len(v) // 2] for k, v in by.items()}
                                for name, by in overheads.items()}}
    finally:
        for proxy, _ in proxies.values():
            stop_process(proxy, grace=5)


# ---------------------------------------------------------------------------------------------- 2. the profile


def serve_profiled(port: int, out: str, app_dir: str | None = None, loop: str = "auto", http: str = "auto") -> None:
    """Child: the proxy app in uvicorn under yappi (CPU clock, all threads); the stats written at its stop.
    `app_dir`: another tree's functions/proxy (its onysoft package comes first on PYTHONPATH)."""
    import uvicorn
    import yappi

    sys.path.insert(0, app_dir or str(ROOT / "functions" / "proxy"))
    from app import app  # the same module the adapter's uvicorn imports

    yappi.set_clock_type("cpu")
    started = {"on": False}

    async def gated(scope, receive, send):  # profile the measured requests only, not start-up or warm-up
        if scope["type"] == "http" and scope["path"] == "/_profile/start":
            yappi.clear_stats()
            yappi.start(builtins=False, profile_threads=True)  # a builtin's time stays its caller's
            started["on"] = True
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await app(scope, receive, send)

    uvicorn.run(gated, host="127.0.0.1", port=port, access_log=False, log_level="warning", loop=loop, http=http)
    yappi.stop()
    rows = [{"module": s.module, "name": s.name, "line": s.lineno, "ncall": s.ncall, "tsub": s.tsub,
             "ttot": s.ttot} for s in yappi.get_func_stats()]
    Path(out).write_text(json.dumps(rows))


def _package(module: str) -> str:
    """The package a function's file belongs to: onysoft, a third-party one, the stdlib module, or builtins."""
    path = module.replace("\\", "/")
    if "layers/core/onysoft" in path or "functions/proxy" in path:
        return "onysoft"
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            if marker == "/lib/python3":
                rest = rest.split("/", 1)[1] if "/" in rest else rest
            return rest.split("/")[0].removesuffix(".py")
    return "builtins" if "/" not in path else "other"


def run_profile(stack: Stack, progress=print, before: bool = False) -> dict:
    """The profile of the proxy now, or (`before`) of the proxy as issue 25 found it, as measure_cpu runs it."""
    out = stack.workdir / ("yappi-before.json" if before else "yappi.json")
    port = free_port()
    env = lambda_env("proxy", **stack.provider_env, **stack.dev_env)
    command = [PYTHON, "-m", "tools.bench.profile", "--serve-profiled", str(port), str(out)]
    if before:
        tree = stack.workdir / "before"
        if not tree.exists():
            before_tree(stack.workdir)
        env["PYTHONPATH"] = str(tree / "layers" / "core")
        command += ["--profiled-app", str(tree / "functions" / "proxy"), "--profiled-loop", "asyncio",
                    "--profiled-http", "h11"]
    with open(stack.workdir / "profiled.log", "wb") as log:
        proxy = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_for(lambda: _answers(base + "/healthz"), 45, 0.1):
            raise RuntimeError(f"profiled proxy did not start:\n{(stack.workdir / 'profiled.log').read_text()}")
        with httpx.Client() as client:
            for i in range(WARMUP):
                _chat(client, base, stack.headers, stream=i % 2 == 1)
            client.post(base + "/_profile/start")
            progress(f"  profile: {PROFILED} requests under yappi (half streamed)")
            for i in range(PROFILED):
                _chat(client, base, stack.headers, stream=i % 2 == 1)
        proxy.send_signal(signal.SIGINT)
        proxy.wait(60)
    finally:
        stop_process(proxy, grace=5)
    rows = json.loads(out.read_text())
    by_package: dict[str, float] = defaultdict(float)
    for row in rows:
        by_package[_package(row["module"])] += row["tsub"]
    total = sum(by_package.values())
    per = 1000 / PROFILED

    def label(row: dict) -> str:
        module = row["module"]
        for marker in ("site-packages/", "layers/core/", "lib/python3.11/", "lib/python3.12/", "lib/python3.13/"):
            if marker in module:
                module = module.split(marker, 1)[1]
                break
        return f"{row['name']} ({module}:{row['line']})" if module not in ("", "~") else row["name"]

    own = sorted(rows, key=lambda r: r["tsub"], reverse=True)[:TOP]
    onysoft = sorted((r for r in rows if "layers/core/onysoft" in r["module"]), key=lambda r: r["ttot"],
                     reverse=True)[:TOP]
    return {"total_ms": total * per,
            "packages": sorted(((p, t * per, t / total) for p, t in by_package.items()), key=lambda x: -x[1])[:14],
            "own": [(label(r), r["ncall"] / PROFILED, r["tsub"] * per) for r in own],
            "onysoft": [(label(r), r["ncall"] / PROFILED, r["ttot"] * per) for r in onysoft]}


# ---------------------------------------------------------------------------------------------- 3. streams


def measure_streams(stack: Stack, progress=print) -> dict:
    # Many streams in one process: as on managed instances (the DynamoDB calls in the pool, never on the loop).
    proxy, base = stack.proxy("probe", [PYTHON, "-m", "uvicorn", "onysoft_tools.loop_probe:app", "--host",
                                        "127.0.0.1", "--no-access-log"], ONYSOFT_BLOCKING_CALLS="pool")
    try:
        with httpx.Client() as client:
            for i in range(WARMUP):
                _chat(client, base, stack.headers, stream=i % 2 == 1)
        peaks, probes = {}, {}
        for size in BURSTS:
            progress(f"  profile: {size} slow streams open at once")
            httpx.delete(base + "/_probe", timeout=10)
            stop = threading.Event()
            peak = [0]

            def sample(stop: threading.Event = stop, peak: list[int] = peak) -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], proc_status(proxy.pid).get("VmRSS", 0))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()

            def one(_: int) -> None:
                with httpx.Client() as client:
                    _chat(client, base, stack.headers, stream=True, model=SLOW_MODEL)

            with ThreadPoolExecutor(size) as pool:
                list(pool.map(one, range(size)))
            stop.set()
            sampler.join()
            peaks[size] = peak[0] / 1024
            probes[size] = httpx.get(base + "/_probe", timeout=10).json()
        low, high = BURSTS[0], BURSTS[-1]
        return {"peak_rss_mb": peaks, "per_stream_kb": (peaks[high] - peaks[low]) * 1024 / (high - low),
                "probe": probes[high]}
    finally:
        stop_process(proxy, grace=5)


# ---------------------------------------------------------------------------------------------- the report


def render(cpu: dict, profile: dict, streams: dict) -> str:
    when, box = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine()
    host = f"{box['cpu']}, {box['cores']} cores, Python {box['python']}"
    lines = [MARK_BEGIN, "## 6. The gateway's own time: CPU per request, its profile, memory per stream", "",
             f"Written by `make bench-profile` (`python -m tools.bench.profile`) on {when}, {host}. The proxy "
             "alone in one uvicorn process as the adapter runs it, a Lambda environment (EMF metrics and the JSON "
             "log line on), moto and the fake provider in their own processes; the provider answers at once.", "",
             f"**Before and now**: the proxy as issue 25 found it (commit {BEFORE_COMMIT}, from git's history: "
             "botocore's client for every DynamoDB call, asyncio and h11 under uvicorn, four DynamoDB calls a billed "
             f"request) and the working tree, each in its own process on the one stack, taking turns in blocks of "
             f"{BLOCK} requests (so a change in the shared machine's speed falls on both); CPU is every thread's time "
             "on a CPU (/proc schedstat), the figure the median block's. moto answers over HTTP/1.1 keep-alive, as "
             "DynamoDB does.", "",
             "| what | proxy | CPU per request | x-onysoft-overhead-ms (median) |", "|---|---|---:|---:|"]
    for name, by_label in cpu["cpu_ms"].items():
        for label, ms in by_label.items():
            lines.append(f"| {label}, {REQUESTS} one at a time | {VARIANTS[name]} | {ms:.1f} ms | "
                         f"{cpu['overhead_ms'][name][label]:.1f} ms |")
    def against_before(ratios: dict[str, float]) -> str:
        return "; ".join(f"{label}: **{ratio:.2f}** ({ratio * ISSUE_BEFORE_MS:.1f} ms)" for label, ratio in
                         ratios.items())

    lines += ["", "**Now against before** (the median of the paired blocks' ratios), and that ratio applied to the "
              f"{ISSUE_BEFORE_MS} ms issue 25 measured for before (its target: 3 ms, a ratio of "
              f"{3 / ISSUE_BEFORE_MS:.2f}). As template.yaml deploys it (on-demand Lambda): "
              f"{against_before(cpu['ratio'])}. As on managed instances: {against_before(cpu['ratio_pool'])}.",
              "", "The header's figure is wall time (the proxy's own work plus its waits on moto, which answers from "
              "another process on the same two cores): above the CPU, as it will be in AWS by the DynamoDB round "
              "trips.", "",
              f"**Profile** of the proxy now and before (yappi, CPU clock, every thread; {PROFILED} requests, half "
              f"streamed, each; {profile['total_ms']:.1f} ms a request now under the profiler, "
              f"{profile['before']['total_ms']:.1f} ms before: yappi inflates every call it hooks, so read the "
              "shares). Own time by package, per request:", "",
              "| package | now: ms / request | now: share | before: ms / request | before: share |",
              "|---|---:|---:|---:|---:|"]
    now = {p: (ms, share) for p, ms, share in profile["packages"]}
    was = {p: (ms, share) for p, ms, share in profile["before"]["packages"]}
    for package in sorted(now.keys() | was.keys(), key=lambda p: -max(now.get(p, (0, 0))[0], was.get(p, (0, 0))[0])):
        cells = [f"{t[0]:.2f} | {t[1]:.0%}" if t else "– | –" for t in (now.get(package), was.get(package))]
        lines.append(f"| {package} | {cells[0]} | {cells[1]} |")
    lines += ["", "Top functions by own time, now:", "", "| function | calls / request | own ms / request |",
              "|---|---:|---:|"]
    lines += [f"| `{name}` | {calls:.1f} | {ms:.2f} |" for name, calls, ms in profile["own"]]
    lines += ["", "The gateway's own functions by total time (their callees included), now:", "",
              "| function | calls / request | total ms / request |", "|---|---:|---:|"]
    lines += [f"| `{name}` | {calls:.1f} | {ms:.2f} |" for name, calls, ms in profile["onysoft"]]
    probe = streams["probe"]
    peaks = ", ".join(f"{size} open: {mb:.0f} MB" for size, mb in streams["peak_rss_mb"].items())
    lines += ["", f"**Memory per concurrent stream**: peak RSS with fake-slow-stream streams open at once ({peaks}): "
              f"**{streams['per_stream_kb']:.0f} KB** more per open stream. With {BURSTS[-1]} open: event loop lag "
              f"p50 {probe['lag_ms']['p50']} ms, p99 {probe['lag_ms']['p99']} ms, max {probe['lag_ms']['max']} ms "
              f"({probe['lag_ms']['samples']} samples of a 5 ms sleep); DynamoDB calls on the loop's thread: "
              f"{probe['dynamodb_calls']['on_loop']} of {sum(probe['dynamodb_calls'].values())}.", MARK_END]
    return "\n".join(lines)


def write_doc(section: str) -> None:
    path = ROOT / "docs" / "BENCHMARKS.md"
    text = path.read_text()
    if MARK_BEGIN in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + section + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.profile", description=__doc__)
    parser.add_argument("--serve-profiled", nargs=2, metavar=("PORT", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--profiled-app", help=argparse.SUPPRESS)
    parser.add_argument("--profiled-loop", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--profiled-http", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--no-doc", action="store_true", help="print the section, do not write BENCHMARKS.md")
    parser.add_argument("--cpu-only", action="store_true", help="only section 1's figures, printed (~1 minute)")
    parser.add_argument("--against", metavar="COMMIT", default=BEFORE_COMMIT,
                        help="with --cpu-only: the working tree against this commit, not the proxy as issue 25 "
                             "found it (a change's own effect, side by side)")
    args = parser.parse_args(argv)
    if args.against != BEFORE_COMMIT and not args.cpu_only:
        parser.error("--against goes with --cpu-only (section 6 always compares with the proxy as issue 25 found it)")
    if args.serve_profiled:
        serve_profiled(int(args.serve_profiled[0]), args.serve_profiled[1], args.profiled_app, args.profiled_loop,
                       args.profiled_http)
        return 0
    stack = Stack(Path(tempfile.mkdtemp(prefix="onysoft-bench-profile-")))
    if args.cpu_only:
        try:
            print(json.dumps(measure_cpu(stack, commit=args.against)))
        finally:
            stack.stop()
        return 0
    try:
        cpu = measure_cpu(stack)
        profile = run_profile(stack)
        profile["before"] = run_profile(stack, before=True)
        streams = measure_streams(stack)
    finally:
        stack.stop()
    section = render(cpu, profile, streams)
    print(section)
    (stack.workdir / "profile.json").write_text(json.dumps({"cpu": cpu, "profile": profile, "streams": streams},
                                                           default=str))
    if not args.no_doc:
        write_doc(section)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
