"""HTTP/1.1 to the providers on asyncio's own transports, parsed by httptools: the upstream clients' transport
(issue 25, docs/BENCHMARKS.md section 6).

httpx's default transport is httpcore over h11 over anyio: each chunk of an answer passes through four layers of
Python (h11's event machine, httpcore's state, anyio's stream wrappers and cancel scopes), about a fifth of the
proxy's CPU a request. Here an `asyncio.Protocol` is the connection: the event loop (uvloop's, in C) hands it the
bytes, httptools (llhttp, in C: uvicorn's parser, already in the layer) cuts them into the status, headers and
body, and httpx above it stays what the rest of the gateway sees (its Request, Response, timeouts, decoders and
exceptions; proxies from the environment are still httpx's own transports, mounted before this one).

What an error says matters more here than anywhere: `upstream.never_sent` reads ConnectError and ConnectTimeout as
"no byte of the request left" and releases the hold. So only a failure to open the connection (DNS, refused, TLS
handshake, the connect timeout) is raised as one; once the request is written, a broken connection is a
RemoteProtocolError or ReadError and a silence a ReadTimeout, and the call is charged. A kept-alive connection the
provider closed while it was idle is seen before it is used (its close has been read by then) and replaced: the
request goes out on a new one.

Connections are kept per origin (scheme, host, port) for `keepalive_seconds` after their last answer, at most
`max_idle` of them; there is no cap on open ones (the event loop's concurrency bounds them), so no request waits
for a connection.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections import deque

import httptools
import httpx

BODY_EXTENSION = "onysoft.body"  # where an answer's extensions keep its _Body (direct_body)

# A provider faster than the client reading it: reading pauses past this many bytes held, resumes below it.
HIGH_WATER_BYTES = 1024 * 1024


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection and the answer being read on it (one at a time: no pipelining)."""

    def __init__(self, origin: tuple, loop: asyncio.AbstractEventLoop):
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.reason = b""
        self.head_done = False
        self.interim = False
        self.complete = False
        self.keep_alive = False
        self.chunks: deque[bytes] = deque()
        self.held = 0
        self.error: BaseException | None = None
        self.paused = False
        self._waiter: asyncio.Future | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.complete:  # bytes nobody asked for after a whole answer: the connection is in no known state
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed answer from the provider: {exc}"))
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost says what that means for the answer

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self.complete or self.error is not None:
            self._wake()
            return
        if self.head_done and not self.parser.should_keep_alive() and not _framed(self.headers):
            self.complete = True  # an answer delimited by the close of its connection (no length, not chunked)
            self._wake()
            return
        what = "before its answer was whole" if self.head_done else "without sending an answer"
        self._fail(httpx.RemoteProtocolError(f"the provider closed the connection {what}"))

    def pause_writing(self) -> None:
        pass  # a request is written whole; a provider that does not read it fails by the read timeout

    def resume_writing(self) -> None:
        pass

    # -- httptools' callbacks ---------------------------------------------------------------------------------
    # After the answer is whole, anything more is an answer nobody asked for: the connection is not reused.
    def on_message_begin(self) -> None:
        if self.complete:
            self.keep_alive = False

    def on_status(self, reason: bytes) -> None:
        if not self.complete:
            self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # an interim answer (103 Early Hints): the real one follows
            self.interim = True
            return
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.chunks.append(body)
        self.held += len(body)
        if self.held > HIGH_WATER_BYTES and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.complete:
            return
        if self.interim:
            self.interim, self.headers, self.reason = False, [], b""
            return
        # llhttp's should_keep_alive() reads "no" once the message is complete: asked here, before that.
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True
        self._wake()

    # -- the reader's side ------------------------------------------------------------------------------------
    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    @staticmethod
    def _timed_out(waiter: asyncio.Future) -> None:
        if not waiter.done():
            waiter.set_result(False)

    async def _wait(self, timeout: float | None) -> bool:
        """Until the parser has something new or the connection ended (True), or `timeout` seconds passed (False).
        A cancelled wait loses nothing: what arrives stays in the connection's buffer."""
        waiter = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, self._timed_out, waiter) if timeout is not None else None
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def head(self, timeout: float | None) -> None:
        while not self.head_done:
            if self.error is not None:
                raise self.error
            if not await self._wait(timeout):
                raise _silent()

    def take(self) -> bytes:
        """Everything of the body that has arrived, as one piece (b"" if nothing has)."""
        if not self.chunks:
            return b""
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        self.held = 0
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        return data

    async def next_body(self, timeout: float | None) -> bytes | None:
        """What of the body has arrived, waiting for it if nothing has; None once the body is whole."""
        while True:
            if data := self.take():
                return data
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            if not await self._wait(timeout):
                raise _silent()

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abandon(self) -> None:
        """Closed from outside its event loop (which may be closed itself): its socket, as far as it can be."""
        try:
            self.close()
        except RuntimeError:  # the loop is closed: the transport cannot schedule its own close
            self.closed = True


def _silent() -> httpx.ReadTimeout:
    return httpx.ReadTimeout("the provider went silent for the read timeout")


def _framed(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether an answer says where it ends (a length, or chunks): if so, a close before that end is a cut."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            return True
    return False


class _Body(httpx.AsyncByteStream):
    """The answer's body as it arrives; closing it gives the connection back when the answer was read whole."""

    def __init__(self, transport: LeanTransport, connection: _Connection, read_timeout: float | None):
        self._transport = transport
        self._connection = connection
        self._read_timeout = read_timeout
        self._released = False
        self._heard_at = connection.loop.time()

    async def __aiter__(self):
        while (data := await self._connection.next_body(self._read_timeout)) is not None:
            yield data

    async def receive(self, within: float) -> bytes | None:
        """What of the body has arrived, waiting at most `within` seconds for it (b"" if nothing came by then);
        None once the body is whole. Safe to cancel, unlike an async iterator (a cancelled one is finished): the
        caller may give up waiting as often as it likes and lose nothing. The read timeout still counts the
        provider's silence since it last sent something."""
        connection = self._connection
        loop = connection.loop
        give_up_at = loop.time() + within
        while True:
            if data := connection.take():
                self._heard_at = loop.time()
                return data
            if connection.complete:
                return None
            if connection.error is not None:
                raise connection.error
            now = loop.time()
            silence_left = self._heard_at + self._read_timeout - now if self._read_timeout is not None \
                else math.inf
            if silence_left <= 0:
                raise _silent()
            if now >= give_up_at:
                return b""
            await connection._wait(min(give_up_at - now, silence_left))

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._transport._release(self._connection)


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, keepalive_seconds: float, max_idle: int = 20, tls: ssl.SSLContext | None = None):
        self.keepalive_seconds = keepalive_seconds
        self.max_idle = max_idle
        self._tls = tls
        self._idle: dict[tuple, list[_Connection]] = {}

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = httpx.create_ssl_context()  # httpx's: certifi's roots, SSL_CERT_FILE/DIR from the environment
        return self._tls

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"no transport for {url.scheme!r} URLs")
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout") or {}
        wire = _request_bytes(request, await request.aread())  # before any connection: a bad header never leaves
        connection = self._idle_connection(origin) or await self._connect(origin, timeouts.get("connect"))
        try:
            connection.transport.write(wire)
            await connection.head(timeouts.get("read"))
        except BaseException:
            connection.close()
            raise
        body = _Body(self, connection, timeouts.get("read"))
        return httpx.Response(connection.status, headers=connection.headers, stream=body,
                              extensions={"http_version": b"HTTP/1.1", "reason_phrase": connection.reason,
                                          BODY_EXTENSION: body})

    def _idle_connection(self, origin: tuple) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to have been closed
            if connection.loop is not loop:  # made on another event loop (a test's): unusable on this one
                connection.abandon()
                continue
            if connection.closed or connection.transport.is_closing() or connection.chunks or \
                    now - connection.idle_since > self.keepalive_seconds:
                connection.close()  # closed (or written to) by the provider while idle, or kept too long
                continue
            connection._reset()
            return connection
        return None

    async def _connect(self, origin: tuple, timeout: float | None) -> _Connection:
        """A new connection. Every failure here is before the request: raised as httpx's ConnectError or
        ConnectTimeout, which the gateway reads as "nothing was sent" (onysoft.upstream.never_sent)."""
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(lambda: _Connection(origin, loop), host, port, ssl=tls,
                                                             server_hostname=host if tls else None)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"could not connect to {host}:{port} in {timeout} s") from exc
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"could not connect to {host}:{port}: {exc}") from exc
        return connection

    def _release(self, connection: _Connection) -> None:
        if not connection.reusable():
            connection.close()
            return
        idle = self._idle.setdefault(connection.origin, [])
        if len(idle) >= self.max_idle:
            connection.close()
            return
        connection.idle_since = connection.loop.time()
        idle.append(connection)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.abandon()
        self._idle.clear()


def _request_bytes(request: httpx.Request, body: bytes) -> bytes:
    """The request as it goes on the wire. A name or value that could end a header line is refused: a header must
    never smuggle another (the client's own headers reach this through fmt.upstream_headers)."""
    lines = [request.method.encode("ascii") + b" " + request.url.raw_path + b" HTTP/1.1"]
    length_given = False
    for name, value in request.headers.raw:
        if b"\r" in name or b"\n" in name or b":" in name or b"\r" in value or b"\n" in value:
            raise httpx.LocalProtocolError(f"invalid header {name!r}")
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            continue  # the body was read whole: it goes out with its length, not in chunks
        length_given = length_given or lowered == b"content-length"
        lines.append(name + b": " + value)
    if body and not length_given:
        lines.append(b"Content-Length: " + str(len(body)).encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def direct_body(response: httpx.Response) -> _Body | None:
    """An answer's body to read as it arrives (`_Body.receive`: cancel-safe, no async generators in between) when
    httpx has nothing to do to its bytes: this transport's answer, not content-encoded. Else None: read it through
    httpx (the mock provider's answers, a compressed one)."""
    body = response.extensions.get(BODY_EXTENSION)
    if body is None or response.headers.get("content-encoding", "identity").strip().lower() not in ("identity", ""):
        return None
    return body
