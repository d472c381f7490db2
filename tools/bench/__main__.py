"""`python -m tools.bench` (`make bench`): every measurement in one run, then docs/BENCHMARKS.md."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from . import coldstart, cost, dynamo, local_gateway, overhead, report
from .common import ROOT, machine


def main() -> int:
    started = time.monotonic()
    print("make bench: measuring (about 20 minutes on 2 cores); loopback only", flush=True)

    def progress(message: str) -> None:
        print(message, flush=True)

    measurements: dict = {"machine": machine(), "dynamo_repeats": dynamo.REPEATS}
    progress("1/3 cold starts")
    measurements["coldstart"] = coldstart.run(progress)
    progress("2/3 DynamoDB per request")
    measurements["dynamo"] = dynamo.run(progress)
    progress("3/3 overhead through onysoft dev")
    measurements["overhead"] = overhead.run(progress)
    direct = measurements["overhead"]["direct"]
    # The proxy's own billed time: the in-process chat latency (gateway code + moto, no loopback hop).
    proxy_ms = max(measurements["dynamo"]["kinds"]["chat, non-stream"]["in_process_ms"], 1.0)
    measurements["cost"] = {
        "proxy_ms": proxy_ms,
        "table": cost.per_million(measurements["dynamo"]["kinds"], proxy_ms, [direct["seq_p50"], 1000.0, 5000.0],
                                  measurements["dynamo"]["authorizer_miss"]),
    }
    progress("then: the local gateway as its tables grow (tools/bench/local_gateway.py, ~15 minutes)")
    measurements["local_gateway"] = local_gateway.run(progress)
    measurements["elapsed_s"] = time.monotonic() - started
    out = ROOT / "docs" / "BENCHMARKS.md"
    out.write_text(report.render(measurements))
    local_gateway.update_doc(out, measurements["local_gateway"])  # its own section, after the others
    raw = Path(tempfile.gettempdir()) / "onysoft-bench-results.json"
    raw.write_text(json.dumps(measurements, indent=2, default=str))
    print(f"wrote {out.relative_to(ROOT)} ({measurements['elapsed_s']:.0f} s); raw figures in {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
