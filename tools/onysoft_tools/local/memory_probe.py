"""Where moto server's memory goes: a diagnostic for `onysoft_tools.serial_moto`, off unless asked for.

`ONYSOFT_DEV_MEMORY_PROBE=1` in the environment of `onysoft dev` (moto inherits it) makes serial_moto answer
`GET /_onysoft/memory` (under its lock, so nothing changes while it counts) with JSON: moto's resident memory,
the items each table holds and their size as DynamoDB JSON, the stream's records and shard iterators, moto's
per-class instance lists (`instances_tracked`), Python's object counts by type; `?trace=N` starts tracemalloc
(N frames) in moto only, and then `?dump=PATH` writes a snapshot there: every allocation made since and still
alive, by traceback.
`python -m tools.bench.moto_memory` drives it.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

PATH = "/_onysoft/memory"
ENV = "ONYSOFT_DEV_MEMORY_PROBE"


def enabled() -> bool:
    return os.environ.get(ENV, "") == "1"


def rss_bytes() -> int:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def deep_size(root: Any) -> tuple[int, int]:
    """(bytes, objects) of `root` and everything it refers to through containers and instance attributes,
    each object once (classes, modules and functions not counted)."""
    import types

    seen: set[int] = set()
    stack = [root]
    size = count = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType)):
            continue
        seen.add(id(obj))
        size += sys.getsizeof(obj)
        count += 1
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        if hasattr(obj, "__dict__") and not isinstance(obj, (str, bytes, int, float)):
            stack.append(vars(obj))
    return size, count


def _per_object(objects: list, sample: int = 200) -> dict[str, float] | None:
    """Mean deep size of up to `sample` of `objects` (the newest)."""
    picked = objects[-sample:]
    if not picked:
        return None
    sizes = [deep_size(obj) for obj in picked]
    return {"bytes": sum(s for s, _ in sizes) / len(sizes), "objects": sum(c for _, c in sizes) / len(sizes)}


def _tables() -> dict[str, Any]:
    from moto.dynamodb.models import dynamodb_backends

    out: dict[str, Any] = {}
    for account in list(dynamodb_backends.keys()):
        for _region, backend in list(dict.items(dynamodb_backends[account])):
            for name, table in backend.tables.items():
                items = [item for bucket in table.items.values()
                         for item in (bucket.values() if table.range_key_attr else [bucket])]
                size = sum(len(json.dumps(item.to_json()["Attributes"], default=str)) for item in items)
                shard = table.stream_shard
                out[name] = {"items": len(items), "json_bytes": size,
                             "stream_records": len(shard.items) if shard is not None else None,
                             "per_item": _per_object(items),
                             "per_stream_record": _per_object(shard.items) if shard is not None else None}
    return out


def _shard_iterators() -> int:
    try:
        from moto.dynamodbstreams.models import dynamodbstreams_backends
    except ImportError:
        return 0
    total = 0
    for account in list(dynamodbstreams_backends.keys()):
        for _region, backend in list(dict.items(dynamodbstreams_backends[account])):
            total += len(backend.shard_iterators)
    return total


def _tracked() -> dict[str, int]:
    from moto.core.model_instances import model_data

    counts = {}
    for service, models in model_data.items():
        for name, model in models.items():
            n = len(getattr(model, "instances_tracked", ()) or ())
            if n:
                counts[f"{service}.{name}"] = n
    return counts


def _parse_cache() -> dict[str, int] | None:
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    parsed = getattr(UpdateExpressionParser.make.__func__, "parsed", None)  # moto_hot_path's LRU
    if parsed is None:
        return None
    info = parsed.cache_info()
    return {"entries": info.currsize, "max": info.maxsize, "hits": info.hits, "misses": info.misses}


def report(query: str = "") -> dict[str, Any]:
    """Everything above, as a dict (the caller holds serial_moto's lock)."""
    import tracemalloc

    gc.collect()
    by_type = Counter(type(obj).__name__ for obj in gc.get_objects())
    out: dict[str, Any] = {
        "rss_bytes": rss_bytes(),
        "tables": _tables(),
        "shard_iterators": _shard_iterators(),
        "instances_tracked": _tracked(),
        "update_expression_cache": _parse_cache(),
        "gc_objects": sum(by_type.values()),
        "gc_by_type": dict(by_type.most_common(25)),
        "tracemalloc": tracemalloc.is_tracing(),
    }
    params = parse_qs(query)
    if tracemalloc.is_tracing():
        out["traced_bytes"] = tracemalloc.get_traced_memory()[0]
        if params.get("dump"):
            tracemalloc.take_snapshot().dump(params["dump"][0])
            out["dumped"] = params["dump"][0]
    elif params.get("trace"):  # from now on: what is allocated after this and still alive shows in a dump
        tracemalloc.start(int(params["trace"][0]))
    try:
        import ctypes

        out["mallinfo2"] = _mallinfo2(ctypes)
    except (OSError, AttributeError):
        pass
    return out


def _mallinfo2(ctypes: Any) -> dict[str, int]:
    """glibc's view: arena bytes in use vs free (free but not returned to the OS is fragmentation)."""
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return {"arena": info.arena, "in_use": info.uordblks, "free": info.fordblks, "mmap": info.hblkhd}


def answer(environ: dict) -> tuple[str, list, bytes]:
    body = json.dumps(report(environ.get("QUERY_STRING", "")), indent=1).encode("utf-8")
    return "200 OK", [("Content-Type", "application/json")], body


def wants(environ: dict) -> bool:
    return environ.get("PATH_INFO") == PATH and enabled()
