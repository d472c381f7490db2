"""Record the gateway's per-request DynamoDB write pattern for the scale simulation (tools/bench/scale_sim.py).

`python -m tools.bench.write_pattern [--name before|after|…]` (`make bench-scale-record`) runs the BENCHMARKS §3
recorder (tools/bench/dynamo.py: the proxy behind `onysoft dev`'s LocalApiGateway, moto server in its own
process, botocore hooks on every DynamoDB call) and writes, for one billed chat request and one 429, every item
and index entry each call wrote or read — table, partition key, units — to tools/bench/fixtures/
write_pattern_<name>.json. Partition key values are made generic: the bench account's id becomes `{account}`, its
key's id `{key}`, the key's hash `{key_hash}`, a rate window `{window}`, an open-holds index shard
`{open_shard}`, and a `#<n>` shard suffix right after an account or key id `{shard}` (sharded items, issue 16).
The simulation reads those templates to know which partition each write lands on.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from pathlib import Path

from .common import ROOT

FIXTURES = Path(__file__).parent / "fixtures"
REQUESTS = {"billed": "chat, non-stream"}


def pattern_path(name: str) -> Path:
    return FIXTURES / f"write_pattern_{name}.json"


def generic(value: str, ids: dict) -> str:
    """A partition key value with the bench's own ids replaced by placeholders."""
    text = value.replace(ids["key_hash"], "{key_hash}").replace(ids["account"], "{account}")
    text = text.replace(ids["key"], "{key}")
    text = re.sub(r"^open#\d+$", "{open_shard}", text)
    text = re.sub(r"(\{account\}|\{key\}|\{key_hash\})#\d{1,2}(?=$|#)", r"\1#{shard}", text)
    return re.sub(r"#\d{8,}$", "#{window}", text)  # a rate window's epoch start


def _short(table: str) -> str:
    return table.removeprefix("onysoft-")


def abstract(pattern: list[dict], ids: dict) -> list[dict]:
    calls = []
    for number, call in enumerate(pattern):
        writes = [{"kind": w["kind"], "table": _short(w["table"]), "index": w.get("index"),
                   "partition": generic(w["partition"], ids), "units": w["units"],
                   "transactional": w["transactional"]} for w in call["writes"]]
        reads = [{"kind": r["kind"], "table": _short(r["table"]), "partition": generic(r["partition"], ids),
                  "units": r["units"]} for r in call["reads"]]
        calls.append({"call": number, "op": call["op"], "phase": call["phase"], "writes": writes, "reads": reads})
    return calls


def _units(pattern: list[dict], kind: str) -> float:
    return sum(part["units"] for call in pattern for part in call[kind])


def record(name: str, progress=print) -> Path:
    from . import dynamo

    dynamo.RECORD_IMAGES = True
    measured = dynamo.run(progress)
    ids = measured["ids"]
    import onysoft

    code_root = Path(onysoft.__file__).resolve().parents[3]  # the checkout whose gateway code was recorded
    commit = subprocess.run(["git", "describe", "--all", "--long", "--always"], cwd=code_root, capture_output=True,
                            text=True, check=False).stdout.strip()
    fixture = {
        "name": name,
        "recorded_with": "python -m tools.bench.write_pattern (tools/bench/dynamo.py's recorder, BENCHMARKS §3)",
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,
        "requests": {label: {"request": kind, "status": measured["kinds"][kind]["status"],
                             "wru": _units(measured["kinds"][kind]["pattern"], "writes"),
                             "rru": _units(measured["kinds"][kind]["pattern"], "reads"),
                             "calls": abstract(measured["kinds"][kind]["pattern"], ids)}
                     for label, kind in REQUESTS.items()},
    }
    path = pattern_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fixture, indent=1) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="before", help="fixture name: write_pattern_<name>.json")
    args = parser.parse_args()
    path = record(args.name)
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
