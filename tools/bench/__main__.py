"""`python -m tools.bench` (`make bench`): every measurement in one run, then docs/BENCHMARKS.md."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from . import coldstart, dynamo, local_gateway, overhead, report
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
    # Section 4 (cost) is written by tools/bench/cost.py after the right-sizing section: `make bench` runs both.
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
