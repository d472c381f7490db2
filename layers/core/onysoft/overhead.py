"""`x-onysoft-overhead-ms`: the gateway's own time in an answer, the wait for the provider left out.

The proxy's ASGI app is wrapped once (GatewayOverhead). Per request it keeps a clock: when the request reached the
app, and how long the request has spent waiting on the provider (`upstream_wait()` around every await of the
provider: connecting and its response headers, each read of its body). When the answer's headers go out, the
header says (now − start − waited) in milliseconds, one decimal: key read, hold, body checks, DynamoDB round
trips, JSON, and for a whole answer the settle too. Errors carry it as well (a 401, a 402 or a provider's 502
are answers of the proxy). A stream's headers go out before its body, so on a stream the figure covers the work
up to the first byte; the settle after the provider's last event is not in it (the request's log line has it, as
`overhead_ms` at the headers and the log's `duration_ms`). API Gateway's own answers (the authorizer's 401, a
throttle) never reach the proxy and carry none.

The clock is per request (a context variable, copied into the threads that run DynamoDB calls and into a stream's
tasks): nothing of a request is kept in the module, so many requests in one process (managed instances) each
read their own.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

HEADER = "x-onysoft-overhead-ms"
_HEADER = HEADER.encode("latin-1")


class RequestClock:
    """One request's start and its time spent waiting on the provider (seconds, monotonic)."""

    __slots__ = ("started", "waited")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.waited = 0.0

    def overhead_ms(self) -> float:
        return max(0.0, (time.monotonic() - self.started - self.waited) * 1000)


_current: contextvars.ContextVar[RequestClock | None] = contextvars.ContextVar("onysoft_overhead", default=None)


@contextlib.contextmanager
def upstream_wait() -> Iterator[None]:
    """Around an await of the provider: that time is the provider's, not the gateway's."""
    clock = _current.get()
    started = time.monotonic()
    try:
        yield
    finally:
        if clock is not None:
            clock.waited += time.monotonic() - started


def current_ms() -> float | None:
    clock = _current.get()
    return clock.overhead_ms() if clock is not None else None


def header_value(ms: float) -> str:
    return f"{ms:.1f}"


class GatewayOverhead:
    """ASGI middleware: a RequestClock per HTTP request; the header on the answer's start."""

    def __init__(self, app, on_headers=None):
        self.app = app
        self.on_headers = on_headers  # called with the figure as the headers go out (the request's log line)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        clock = RequestClock()

        async def send_with_overhead(message: dict) -> None:
            if message["type"] == "http.response.start":
                ms = clock.overhead_ms()
                headers = [(k, v) for k, v in message.get("headers") or [] if k.lower() != _HEADER]
                message = dict(message, headers=[*headers, (_HEADER, header_value(ms).encode("latin-1"))])
                if self.on_headers is not None:
                    self.on_headers(ms)
            await send(message)

        token = _current.set(clock)
        try:
            await self.app(scope, receive, send_with_overhead)
        finally:
            _current.reset(token)
