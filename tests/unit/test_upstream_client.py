"""The client that calls providers keeps no state between requests (onysoft.upstream): a provider's Set-Cookie
from one call never goes out with the next, which is another tenant's."""

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from onysoft import upstream
from onysoft.providers import Provider


class _CookieSetter(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cookies_seen: list = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.cookies_seen.append(self.headers.get("Cookie"))
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Set-Cookie", "affinity=tenant-a; Path=/")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _calls(client: httpx.AsyncClient, url) -> list:
    async def three():
        for _ in range(3):
            response = await client.send(client.build_request("POST", url, content=b"{}"), stream=True)
            await response.aread()
            await response.aclose()
        await client.aclose()

    asyncio.run(three())


def test_a_providers_cookie_is_never_sent_back():
    _CookieSetter.cookies_seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CookieSetter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    provider = Provider("cookie-test", f"http://127.0.0.1:{server.server_address[1]}/v1", "", "max_tokens")
    try:
        url = upstream.upstream_url(provider, "chat.completions")
        assert str(url).endswith("/v1/chat/completions") and upstream.upstream_url(provider, "chat.completions") is url
        _calls(upstream.client_for(provider), url)
        gateway_saw = list(_CookieSetter.cookies_seen)
        _CookieSetter.cookies_seen = []
        _calls(httpx.AsyncClient(), url)  # the check can fail: httpx's own client sends the cookie back
        httpx_saw = list(_CookieSetter.cookies_seen)
    finally:
        upstream._clients.pop(provider.name, None)
        server.shutdown()
        server.server_close()
    assert gateway_saw == [None, None, None]
    assert httpx_saw == [None, "affinity=tenant-a", "affinity=tenant-a"]


def test_the_providers_transport_is_the_lean_one_unless_told_httpx(monkeypatch):
    """ONYSOFT_UPSTREAM_TRANSPORT=httpx is the way back to httpx's own transport; both keep no connection idle past
    KEEPALIVE_SECONDS (below a server's 5 s idle timeout), and both call a provider the same way."""
    from onysoft.upstream_transport import LeanTransport

    _CookieSetter.cookies_seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CookieSetter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    provider = Provider("transport-test", f"http://127.0.0.1:{server.server_address[1]}/v1", "", "max_tokens")
    try:
        for setting, kind in ((None, LeanTransport), ("lean", LeanTransport), ("httpx", httpx.AsyncHTTPTransport)):
            if setting is None:
                monkeypatch.delenv("ONYSOFT_UPSTREAM_TRANSPORT", raising=False)
            else:
                monkeypatch.setenv("ONYSOFT_UPSTREAM_TRANSPORT", setting)
            upstream._clients.pop(provider.name, None)
            client = upstream.client_for(provider)
            assert type(client._transport) is kind
            _calls(client, upstream.upstream_url(provider, "chat.completions"))
        assert len(_CookieSetter.cookies_seen) == 9
    finally:
        upstream._clients.pop(provider.name, None)
        server.shutdown()
        server.server_close()
