"""onysoft.blocking: the request path's blocking calls run in the pool, in the request's context, and a
cancellation (a client that hangs up, a process that stops) waits for the call's end, as anyio's does: a settle
in flight is never abandoned half-awaited."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from onysoft.blocking import run_blocking

REQUEST = contextvars.ContextVar("request", default="none")


@pytest.fixture(autouse=True)
def in_the_pool(monkeypatch):
    """The default (managed instances, `onysoft dev`); the inline mode's own test sets it."""
    monkeypatch.delenv("ONYSOFT_BLOCKING_CALLS", raising=False)


def test_the_call_runs_off_the_loop_in_the_callers_context_and_returns_or_raises():
    async def main():
        REQUEST.set("req_1")
        loop_thread = threading.get_ident()
        seen = await run_blocking(lambda: (REQUEST.get(), threading.get_ident()))
        assert seen[0] == "req_1" and seen[1] != loop_thread
        with pytest.raises(KeyError):
            await run_blocking(dict().__getitem__, "absent")

    asyncio.run(main())


def test_inline_the_call_runs_on_the_loops_thread_in_a_copy_of_the_callers_context(monkeypatch):
    """ONYSOFT_BLOCKING_CALLS=inline (template.yaml's, on-demand Lambda: one request a process at a time): no thread
    hop. The call still sees the request's context and cannot change it (as in the pool: a copy)."""
    monkeypatch.setenv("ONYSOFT_BLOCKING_CALLS", "inline")

    def call():
        REQUEST.set("changed by the call")
        return threading.get_ident()

    async def main():
        REQUEST.set("req_2")
        assert await run_blocking(call) == threading.get_ident()
        assert REQUEST.get() == "req_2"
        with pytest.raises(KeyError):
            await run_blocking(dict().__getitem__, "absent")
        monkeypatch.setenv("ONYSOFT_BLOCKING_CALLS", "pool")
        assert await run_blocking(call) != threading.get_ident()

    asyncio.run(main())


def test_a_cancellation_waits_for_the_call_to_end():
    ended = threading.Event()

    def settle():
        time.sleep(0.3)
        ended.set()

    async def main():
        task = asyncio.ensure_future(run_blocking(settle))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0)
        task.cancel()  # twice: still waits
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ended.is_set()  # the cancellation went on only once the call was over

    asyncio.run(main())
