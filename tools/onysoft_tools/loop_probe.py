"""The proxy app as the Lambda Web Adapter runs it (one uvicorn process), with a probe: tests and benchmarks only.

`python -m uvicorn onysoft_tools.loop_probe:app` serves `onysoft.proxy_app.app` unchanged, plus `GET /_probe`,
which says, for this process:
- `lag_ms`: the event loop's lag: a task asks to sleep SAMPLE_SECONDS, again and again, and the overshoot is
  how long the loop was busy elsewhere (something holding it: a blocking call, a long computation);
- `dynamodb_calls`: every botocore DynamoDB call by the thread it ran on: `on_loop` counts calls made while an
  event loop ran on the calling thread (a call that blocked the loop for a whole round trip), `off_loop` the
  others (the thread pool's);
- `rss_kb` (now and peak), and `relays_closing` (streams whose relay is still settling).
`DELETE /_probe` answers the same and starts the counts again.

Never part of the deployed function: tools/ is not in any Lambda's code.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

SAMPLE_SECONDS = 0.005

_lock = threading.Lock()
_calls = {"on_loop": 0, "off_loop": 0}
_on_loop_operations: list[str] = []
_lags: list[float] = []
_sampler: asyncio.Task | None = None


def _on_call(model=None, **kwargs) -> None:
    try:
        asyncio.get_running_loop()
        on_loop = True
    except RuntimeError:
        on_loop = False
    with _lock:
        _calls["on_loop" if on_loop else "off_loop"] += 1
        if on_loop:
            _on_loop_operations.append(getattr(model, "name", "?"))


def install_botocore_hook() -> None:
    """Every botocore session made from now on (PynamoDB makes one per thread) reports its DynamoDB calls."""
    from botocore import handlers

    entry = ("before-parameter-build.dynamodb", _on_call)  # the lean transport emits it too
    if entry not in handlers.BUILTIN_HANDLERS:
        handlers.BUILTIN_HANDLERS.append(entry)


install_botocore_hook()  # before the proxy's first botocore session: PynamoDB makes them lazily, per thread

from onysoft import forwarding  # noqa: E402
from onysoft.proxy_app import app as proxy  # noqa: E402


async def _sample() -> None:
    while True:
        asked = time.monotonic()
        await asyncio.sleep(SAMPLE_SECONDS)
        _lags.append(max(0.0, time.monotonic() - asked - SAMPLE_SECONDS))


def _rss_kb() -> dict[str, int]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line.split(":")[0]] = int(line.split()[1])
    return {"rss_kb": values.get("VmRSS", 0), "peak_rss_kb": values.get("VmHWM", 0)}


def report() -> dict:
    lags = sorted(_lags)

    def at(share: float) -> float:
        return round(lags[min(len(lags) - 1, int(share * len(lags)))] * 1000, 2) if lags else 0.0

    with _lock:
        calls, operations = dict(_calls), list(_on_loop_operations)
    return {"lag_ms": {"samples": len(lags), "p50": at(0.5), "p99": at(0.99), "max": at(1.0)},
            "dynamodb_calls": calls, "on_loop_operations": operations[:20], **_rss_kb()}


def reset() -> None:
    with _lock:
        _calls.update(on_loop=0, off_loop=0)
        _on_loop_operations.clear()
        _lags.clear()


async def app(scope, receive, send) -> None:
    global _sampler
    if scope["type"] == "http" and _sampler is None:
        _sampler = asyncio.ensure_future(_sample())
    if scope["type"] == "http" and scope.get("path") == "/_probe":
        if scope.get("method") == "DELETE":
            reset()
        body = json.dumps({**report(), "relays_closing": len(forwarding._closing)}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    await proxy(scope, receive, send)


