"""Where the request path's blocking calls run: DynamoDB through PynamoDB, off the event loop (issue 25), unless
the process serves one request at a time (on-demand Lambda: ONYSOFT_BLOCKING_CALLS=inline, see run_blocking).

One thread pool per process, as many threads as DynamoDB connections (onysoft.config.dynamodb_threads), so
many requests at once on managed instances never wait on the loop's thread. The call runs in a copy of the
caller's context (the request's id, telemetry and overhead clock are context variables), as Starlette's
`run_in_threadpool` runs it, but straight on the loop's executor: anyio's worker-thread machinery (a cancel
scope, a capacity limiter and a loop round trip a call) was ~6% of the proxy's CPU a request in the profile.

Cancellation as anyio's (and Starlette's) default: the call runs to its end and only then does the
cancellation go on, so a settle or a release in flight is never abandoned by a client that hangs up or a
process that stops.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from onysoft import config

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=config.dynamodb_threads(), thread_name_prefix="onysoft-io")
    return _pool


async def run_blocking(func: Callable[..., T], *args, **kwargs) -> T:
    """`func(*args, **kwargs)` in the pool, in a copy of the current context; its result or its exception. With
    ONYSOFT_BLOCKING_CALLS=inline (on-demand Lambda: one request per process at a time, config.blocking_calls_inline)
    it runs right here, in a copy of the context too: a thread hop there buys nothing and costs ~6-7% of a request's
    CPU each (two a billed request; docs/BENCHMARKS.md section 6)."""
    if config.blocking_calls_inline():
        return contextvars.copy_context().run(func, *args, **kwargs)
    context = contextvars.copy_context()
    call = functools.partial(context.run, func, *args, **kwargs)
    future = asyncio.get_running_loop().run_in_executor(pool(), call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        # Cancelled while the thread works: wait for its end (cancelled again meanwhile: still wait), then go on.
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                continue
            except BaseException:  # noqa: BLE001 - the call's own failure: the cancellation is what goes on
                break
        raise
