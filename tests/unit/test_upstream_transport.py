"""The providers' transport (onysoft.upstream_transport) against a scripted HTTP/1.1 server on real sockets: every
framing of an answer read whole, kept-alive connections reused only when they can be, and above all what its
errors say. `upstream.never_sent` releases the hold on ConnectError/ConnectTimeout, so only a connection that was
never made may raise them; a request that left and got no answer is charged."""

import asyncio
import ssl

import httpx
import pytest

from onysoft import upstream, upstream_transport
from onysoft.upstream_transport import HIGH_WATER_BYTES, LeanTransport
from tests.helpers import self_signed_certificate


class Scripted:
    """A server that answers each request with the next of `answers` (raw bytes, or a callable given the writer),
    and counts connections and requests."""

    def __init__(self, answers, tls=None):
        self.answers = list(answers)
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.server = None

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/chat/completions"
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if callable(answer):
                    if await answer(writer) == "close":
                        break
                    continue
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer.lower() or b"content-length" not in answer.lower() and \
                        b"chunked" not in answer.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def _ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


def _client(keepalive: float = 4.0, read: float = 2.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=LeanTransport(keepalive_seconds=keepalive),
                             timeout=httpx.Timeout(5.0, read=read))


async def _post(client: httpx.AsyncClient, url: str, content: bytes = b'{"model":"x"}') -> tuple[int, bytes]:
    response = await client.send(client.build_request("POST", url, content=content), stream=True)
    try:
        return response.status_code, await response.aread()
    finally:
        await response.aclose()


def test_every_framing_of_an_answer_is_read_whole_and_a_kept_alive_connection_is_reused():
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    until_closed = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread until the end"
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + _ok(b"after hints")

    async def run():
        async with Scripted([_ok(), chunked, early_hints, until_closed]) as server, _client() as client:
            assert await _post(client, server.url) == (200, b'{"ok":true}')
            assert await _post(client, server.url) == (200, b"hello world")
            assert await _post(client, server.url) == (200, b"after hints")
            assert server.connections == 1  # three answers that say where they end: one connection
            assert await _post(client, server.url) == (200, b"read until the end")
            assert len(server.requests) == 4
            assert server.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
            assert server.requests[0].endswith(b'\r\n\r\n{"model":"x"}')
        async with Scripted([until_closed, _ok()]) as server, _client() as client:
            await _post(client, server.url)
            await _post(client, server.url)  # the first connection ended with its answer: a new one
            assert server.connections == 2

    asyncio.run(run())


def test_only_a_connection_never_made_reads_as_never_sent():
    async def read_then_hang_up(writer):
        return "close"

    async def half_the_body(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
        await writer.drain()
        await asyncio.sleep(0.05)
        return "close"

    async def silent(writer):
        await asyncio.sleep(2)

    async def run():
        refused = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = refused.sockets[0].getsockname()[1]
        refused.close()
        await refused.wait_closed()
        async with _client() as client:
            with pytest.raises(httpx.HTTPError) as raised:
                await _post(client, f"http://127.0.0.1:{port}/v1/chat/completions")
            assert upstream.never_sent(raised.value)
        seen = {}
        async with Scripted([read_then_hang_up, half_the_body, silent]) as server, _client(read=0.3) as client:
            with pytest.raises(httpx.HTTPError) as raised:
                await _post(client, server.url)
            seen["no answer"] = raised.value
            response = await client.send(client.build_request("POST", server.url, content=b"{}"), stream=True)
            with pytest.raises(httpx.HTTPError) as raised:
                await response.aread()
            await response.aclose()
            seen["cut"] = raised.value
            with pytest.raises(httpx.HTTPError) as raised:
                await _post(client, server.url)
            seen["silent"] = raised.value
            assert len(server.requests) == 3  # each request reached the server: none of these is "never sent"
        assert not any(upstream.never_sent(exc) for exc in seen.values()), seen
        assert isinstance(seen["silent"], httpx.ReadTimeout)
        assert not isinstance(seen["cut"], httpx.TimeoutException)

    asyncio.run(run())


def test_a_connection_the_provider_closed_while_idle_is_replaced_before_a_request_is_written_on_it():
    async def answer_then_close(writer):
        writer.write(_ok())
        await writer.drain()
        return "close"  # a keep-alive answer, then the server closes (its idle timeout)

    async def run():
        async with Scripted([answer_then_close, _ok(b"second")]) as server, _client() as client:
            await _post(client, server.url)
            idle = [c for kept in client._transport._idle.values() for c in kept]
            for _ in range(500):  # the close arrives while the connection is idle
                if all(c.closed for c in idle):
                    break
                await asyncio.sleep(0.01)
            assert len(idle) == 1 and idle[0].closed
            assert await _post(client, server.url) == (200, b"second")
            assert server.connections == 2 and len(server.requests) == 2

    asyncio.run(run())


def test_an_idle_connection_is_kept_no_longer_than_keepalive_seconds():
    async def run():
        # 2 s: two requests in a row reuse it even on a loaded machine; then 2.5 s idle is past it.
        async with Scripted([_ok(), _ok(), _ok()]) as server, _client(keepalive=2.0) as client:
            await _post(client, server.url)
            await _post(client, server.url)
            assert server.connections == 1
            await asyncio.sleep(2.5)
            await _post(client, server.url)
            assert server.connections == 2

    asyncio.run(run())


def test_a_header_that_could_end_its_line_never_leaves():
    async def run():
        async with Scripted([_ok()]) as server, _client() as client:
            request = client.build_request("POST", server.url, content=b"{}",
                                           headers={"x-smuggle": "a\r\nx-admin: 1"})
            with pytest.raises(httpx.LocalProtocolError):
                await client.send(request)
            await asyncio.sleep(0.05)
            assert server.connections == 0

    asyncio.run(run())


def test_an_answer_larger_than_the_high_water_mark_arrives_whole():
    body = bytes(range(256)) * (3 * HIGH_WATER_BYTES // 256 + 7)

    async def run():
        async with Scripted([_ok(body), _ok()]) as server, _client() as client:
            response = await client.send(client.build_request("POST", server.url, content=b"{}"), stream=True)
            got = []
            async for chunk in response.aiter_raw():
                got.append(chunk)
                await asyncio.sleep(0.01)  # a slow reader: the provider gets ahead, reading pauses
            await response.aclose()
            assert b"".join(got) == body
            assert await _post(client, server.url) == (200, b'{"ok":true}')
            assert server.connections == 1

    asyncio.run(run())


def test_an_answer_abandoned_before_its_end_closes_its_connection():
    async def run():
        big = b"y" * 200_000
        async with Scripted([_ok(big), _ok()]) as server, _client() as client:
            response = await client.send(client.build_request("POST", server.url, content=b"{}"), stream=True)
            async for _ in response.aiter_raw():
                break
            await response.aclose()  # the rest is never read: the connection cannot carry another answer
            assert await _post(client, server.url) == (200, b'{"ok":true}')
            assert server.connections == 2

    asyncio.run(run())


def test_a_direct_read_can_be_given_up_and_cancelled_without_losing_a_byte_and_still_times_out_on_silence():
    """forwarding._Upstream reads with `receive`: a drain after a hang-up gives up every STOP_POLL_SECONDS, and a
    relay is cancelled while it waits. Neither may lose what arrives; silence is still the read timeout. The server
    sends each part only when the test lets it, so nothing here depends on timing."""
    parts = (b"one ", b"two ", b"three")
    go: asyncio.Queue = asyncio.Queue()

    async def on_cue(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        for part in parts:
            await go.get()
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        await go.get()  # never given: silent past the read timeout
        return "close"

    async def run():
        async with Scripted([on_cue]) as server, _client(read=0.4) as client:
            response = await client.send(client.build_request("POST", server.url, content=b"{}"), stream=True)
            body = upstream_transport.direct_body(response)
            assert body is not None
            for part in parts:
                waiting = asyncio.ensure_future(body.receive(10))
                done, _ = await asyncio.wait({waiting}, timeout=0.02)
                assert not done  # the part is not sent yet
                waiting.cancel()  # a cancelled read...
                assert await body.receive(0.01) == b""  # ...and one given up: nothing came within its time
                go.put_nowait(None)
                got = b""
                while len(got) < len(part):  # what arrived meanwhile was kept for the next read
                    got += await body.receive(5)
                assert got == part
            with pytest.raises(httpx.ReadTimeout):
                for _ in range(50):  # polls shorter than the silence (0.4 s): it still counts, so well before 5 s
                    assert await body.receive(0.1) == b""
            await response.aclose()

    asyncio.run(run())


def test_an_encoded_answer_is_not_read_directly():
    """httpx decodes a compressed answer; reading its bytes as they came would hand gzip to the SSE parser."""
    import gzip
    packed = gzip.compress(b'{"ok":true}')
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(packed), packed)

    async def run():
        async with Scripted([answer]) as server, _client() as client:
            response = await client.send(client.build_request("POST", server.url, content=b"{}"), stream=True)
            assert upstream_transport.direct_body(response) is None
            assert await response.aread() == b'{"ok":true}'
            await response.aclose()

    asyncio.run(run())


def test_tls_is_verified_with_httpxs_roots_and_a_refused_certificate_is_never_sent(tmp_path, monkeypatch):
    """Providers are HTTPS: the certificate is checked against httpx's roots (certifi's, or SSL_CERT_FILE), for the
    URL's host. A certificate they do not vouch for fails the handshake, before any byte of the request: a
    ConnectError, which releases the hold (nothing reached a provider)."""
    cert, key = self_signed_certificate(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)

    async def run():
        async with Scripted([_ok(b"over tls")], tls=server_tls) as server:
            async with _client() as client:  # certifi's roots: this certificate is nobody's
                with pytest.raises(httpx.ConnectError) as raised:
                    await _post(client, server.url)
                assert upstream.never_sent(raised.value)
            assert server.requests == []
            monkeypatch.setenv("SSL_CERT_FILE", cert)  # httpx's roots, as its own transport reads them
            async with _client() as client:
                assert await _post(client, server.url) == (200, b"over tls")
            assert len(server.requests) == 1

    asyncio.run(run())


def test_a_connection_made_on_another_event_loop_is_never_reused():
    """One transport outlives event loops where a process runs several in turn (Starlette's TestClient does): a
    kept connection belongs to the loop that made it, and another loop opens its own."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class KeepAlive(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        connections: set = set()

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            KeepAlive.connections.add(self.client_address)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), KeepAlive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
    transport = LeanTransport(keepalive_seconds=30)

    async def twice():
        client = httpx.AsyncClient(transport=transport)
        assert await _post(client, url) == (200, b"ok")
        assert await _post(client, url) == (200, b"ok")

    try:
        asyncio.run(twice())
        assert len(KeepAlive.connections) == 1  # one loop: its connection kept and reused
        asyncio.run(twice())  # the kept connection's loop is closed: a new one, then kept and reused
        assert len(KeepAlive.connections) == 2
    finally:
        server.shutdown()
        server.server_close()
