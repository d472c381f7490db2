"""Where the local moto server's memory goes per chat request: `python -m tools.bench.moto_memory`.

`onysoft dev` (as tools/bench/local_gateway.py runs it) with serial_moto's memory probe on
(onysoft_tools.local.memory_probe); sequential mock/echo chat requests; at each checkpoint (after the rollup
poller has caught up) the probe reports moto's RSS, items and bytes per table, moto's tracked instances and
Python's objects by type. Prints the growth per request between the first and the last checkpoint, and with
`--tracemalloc N` (moto traces from the first checkpoint on, N frames each) the allocation sites of what was
allocated after the first checkpoint and is still alive at the last, per request.

Options: --requests 3000 --checkpoints 1000,3000 --tracemalloc 0 --malloc-arena-max N --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import httpx

from .local_gateway import Gateway, chats


def probe(gateway: Gateway, dump: Path | None = None, trace: int = 0) -> dict:
    endpoint = gateway.env()["AWS_ENDPOINT_URL_DYNAMODB"]
    params = {"dump": str(dump)} if dump else {"trace": str(trace)} if trace else {}
    response = httpx.get(endpoint + "/_onysoft/memory", params=params, timeout=600)
    response.raise_for_status()
    return response.json()


def settle(gateway: Gateway, seconds: float = 4.0) -> None:
    """Let the rollup poller read what the last requests put on the stream (it polls every 1-2 s)."""
    time.sleep(seconds)


def top_growth(dump: Path, requests: int, limit: int = 20) -> dict:
    """What was allocated after tracing started and is still alive: by line (the innermost frame), and the
    largest by traceback."""
    snapshot = tracemalloc.Snapshot.load(str(dump))
    where = lambda frame: f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"  # noqa: E731
    by_line = [{"bytes_per_request": stat.size / requests, "blocks_per_request": stat.count / requests,
                "at": where(stat.traceback[0])} for stat in snapshot.statistics("lineno")[:limit]]
    by_traceback = [{"bytes_per_request": stat.size / requests, "blocks_per_request": stat.count / requests,
                     "traceback": [where(frame) for frame in stat.traceback][-10:]}
                    for stat in snapshot.statistics("traceback")[:limit // 2]]
    return {"traced_bytes_per_request": sum(s.size for s in snapshot.statistics("filename")) / requests,
            "by_line": by_line, "by_traceback": by_traceback}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--checkpoints", default="1000,3000")
    parser.add_argument("--tracemalloc", type=int, default=0, help="frames per allocation (0: off)")
    parser.add_argument("--malloc-arena-max", default="")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    checkpoints = sorted({int(c) for c in args.checkpoints.split(",")} | {args.requests})
    with tempfile.TemporaryDirectory(prefix="onysoft-moto-memory-") as tmp:
        workdir = Path(tmp)
        gateway = Gateway(workdir / "state")
        gateway.extra_env = {"ONYSOFT_DEV_MEMORY_PROBE": "1"}
        if args.malloc_arena_max:
            gateway.extra_env["MALLOC_ARENA_MAX"] = args.malloc_arena_max
        gateway.start()
        points = []
        try:
            key = gateway.key()["key"]
            done = 0
            for checkpoint in checkpoints:
                chats(gateway, key, checkpoint - done)  # + 10 warm-up requests each time
                done = checkpoint
                settle(gateway)
                dump = workdir / f"trace-{checkpoint}.bin" if args.tracemalloc and points else None
                point = probe(gateway, dump, trace=args.tracemalloc if not points else 0)
                point["requests"] = checkpoint
                point["dump"] = str(dump) if dump else None
                points.append(point)
                print(f"{checkpoint:>6} requests: moto RSS {point['rss_bytes'] / 1e6:,.1f} MB, "
                      f"{sum(t['items'] for t in point['tables'].values()):,} items", flush=True)
            result = summarize(points, workdir)
        finally:
            gateway.stop()
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def summarize(points: list[dict], workdir: Path) -> dict:
    first, last = points[0], points[-1]
    # each chats() call adds 10 warm-up requests: count them
    n = (last["requests"] - first["requests"]) + 10 * (len(points) - 1)
    per = lambda a, b: (b - a) / n  # noqa: E731
    tables = {}
    for name, after in last["tables"].items():
        before = first["tables"].get(name, {"items": 0, "json_bytes": 0})
        tables[name] = {"items_per_request": per(before["items"], after["items"]),
                        "json_bytes_per_request": per(before["json_bytes"], after["json_bytes"]),
                        "stream_records": after["stream_records"], "per_item": after.get("per_item"),
                        "per_stream_record": after.get("per_stream_record")}
    out = {
        "requests_between": n,
        "rss_bytes_per_request": per(first["rss_bytes"], last["rss_bytes"]),
        "json_bytes_per_request": sum(t["json_bytes_per_request"] for t in tables.values()),
        "tables": tables,
        "shard_iterators": last["shard_iterators"],
        "instances_tracked_per_request": {k: per(first["instances_tracked"].get(k, 0), v)
                                          for k, v in last["instances_tracked"].items()},
        "gc_objects_per_request": per(first["gc_objects"], last["gc_objects"]),
        "gc_by_type_per_request": {k: per(first["gc_by_type"].get(k, 0), v)
                                   for k, v in last["gc_by_type"].items()},
        "points": [{k: v for k, v in p.items() if k not in ("gc_by_type",)} for p in points],
    }
    if "mallinfo2" in last and "mallinfo2" in first:
        out["malloc_in_use_bytes_per_request"] = per(first["mallinfo2"]["in_use"], last["mallinfo2"]["in_use"])
    if first.get("traced_bytes") is not None and last.get("traced_bytes") is not None:
        out["traced_bytes_per_request"] = per(first["traced_bytes"], last["traced_bytes"])
    if last.get("dump"):
        out["alive_since_first_checkpoint"] = top_growth(Path(last["dump"]), n)
    return out


if __name__ == "__main__":
    sys.exit(main())
