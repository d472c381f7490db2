"""`make test-stress`: the integration suites N times in a row with one core kept busy by another process.

A test that passes alone and fails under load has a race or a timing assumption in it; this is where those show
before CI finds them. Each run is a fresh pytest process (fresh gateways, fresh state dirs). The busy core is a
separate process spinning at full speed (`--busy 0` turns it off, `--busy 2` takes both cores of a 2-core
machine). Writes one line per run and a summary to `.stress/summary.json`; exits 1 when any run failed.

    python -m tools.stress --runs 5 [--busy 1] [--workers 2] [--stop-on-failure] [-- PYTEST ARGS…]

Without PYTEST ARGS it runs `tests/integration`; with them (after `--`), those instead. The suites run on
`--workers` pytest-xdist workers, as `make test` runs them (2), plus the busy core(s): harsher than CI.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".stress"
FAILED_LINE = re.compile(r"^(FAILED|ERROR) (\S+)", re.MULTILINE)
SUMMARY_LINE = re.compile(r"^=*\s*(\d+ (?:passed|failed).*?)\s*=*$", re.MULTILINE)


def spin() -> None:  # pragma: no cover - a busy core, nothing else
    os.nice(0)
    while True:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, pytest_args = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(prog="python -m tools.stress", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--busy", type=int, default=1, help="cores kept busy by other processes (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers, as make test (0: none)")
    parser.add_argument("--stop-on-failure", action="store_true")
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for process in spinners:
        process.start()
    runs = []
    try:
        for number in range(1, args.runs + 1):
            log = OUT / f"run-{number}.log"
            workers = ["-n", str(args.workers), "--dist", "loadfile"] if args.workers else []
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=10", *workers,
                       *(pytest_args or ["tests/integration"])]
            started = time.monotonic()
            with open(log, "wb") as handle:
                code = subprocess.call(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
            text = log.read_text(errors="replace")
            summary = SUMMARY_LINE.findall(text)
            run = {"run": number, "exit_code": code, "seconds": round(time.monotonic() - started, 1),
                   "failed": sorted(set(f"{kind} {test}" for kind, test in FAILED_LINE.findall(text))),
                   "summary": summary[-1] if summary else "", "log": str(log.relative_to(ROOT))}
            runs.append(run)
            print(f"run {number}/{args.runs}: {'green' if code == 0 else 'RED'} in {run['seconds']:.0f} s — "
                  f"{run['summary']}" + "".join(f"\n    {f}" for f in run["failed"]), flush=True)
            if code != 0 and args.stop_on_failure:
                break
    finally:
        for process in spinners:
            process.terminate()
    green = sum(run["exit_code"] == 0 for run in runs)
    (OUT / "summary.json").write_text(json.dumps({"busy_cores": args.busy, "workers": args.workers, "runs": runs,
                                                   "green": green,
                                                   "pytest_args": pytest_args or ["tests/integration"]}, indent=2))
    print(f"{green} of {len(runs)} runs green with {args.busy} core(s) kept busy (.stress/summary.json)")
    return 0 if green == len(runs) == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
