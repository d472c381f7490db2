"""x-onysoft-overhead-ms (onysoft.overhead): the gateway's own time on every answer, the provider's wait left out.

The arithmetic on a fake clock (no timed assertion); then the proxy app in-process: the header on answers,
errors and streams alike, and the pool sizes (ONYSOFT_DYNAMODB_THREADS)."""

import asyncio
import json

import pytest

from onysoft import overhead
from tests.unit.conftest import new_key


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _run(app, path="/v1/chat/completions") -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "POST", "path": path, "headers": []}, receive, send))
    return sent


def _header(message: dict) -> str | None:
    return dict(message["headers"]).get(overhead.HEADER.encode(), b"").decode() or None


def test_the_header_is_the_time_minus_the_providers_wait(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(overhead.time, "monotonic", clock)
    noted: list[float] = []

    async def app(scope, receive, send):
        clock.now += 0.004  # the gateway's own work: 4 ms
        with overhead.upstream_wait():
            clock.now += 2.5  # the provider: 2.5 s, not the gateway's
        clock.now += 0.0013
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"x-onysoft-overhead-ms", b"stale")]})
        clock.now += 7.0  # after the headers (a stream's body): not in the header
        await send({"type": "http.response.body", "body": b"{}"})

    sent = _run(overhead.GatewayOverhead(app, on_headers=noted.append))
    assert _header(sent[0]) == "5.3"
    assert [k for k, _ in sent[0]["headers"]].count(b"x-onysoft-overhead-ms") == 1  # one header, the gateway's
    assert noted == [pytest.approx(5.3)]


def test_an_error_raised_past_the_wait_carries_it_too(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(overhead.time, "monotonic", clock)

    async def app(scope, receive, send):
        try:
            with overhead.upstream_wait():
                clock.now += 1.0
                raise TimeoutError
        except TimeoutError:
            clock.now += 0.002
        await send({"type": "http.response.start", "status": 504, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    assert _header(_run(overhead.GatewayOverhead(app))[0]) == "2.0"


def test_no_request_clock_outside_a_request():
    with overhead.upstream_wait():  # a call outside any request (a tool): nothing to count, no error
        pass
    assert overhead.current_ms() is None


def _number(response) -> float:
    value = response.headers.get(overhead.HEADER)
    assert value is not None, f"no {overhead.HEADER} on {response.status_code}: {dict(response.headers)}"
    return float(value)


def test_every_v1_answer_of_the_proxy_carries_it(gateway):
    _, _, headers = new_key("user")
    chat = {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    ok = gateway.post("/v1/chat/completions", headers=headers, json=chat)
    assert ok.status_code == 200 and _number(ok) >= 0
    with gateway.stream("POST", "/v1/chat/completions", headers=headers, json={**chat, "stream": True}) as stream:
        assert stream.status_code == 200 and _number(stream) >= 0
        assert "[DONE]" in "".join(stream.iter_text())
    embed = gateway.post("/v1/embeddings", headers=headers, json={"model": "mock/embed", "input": "hi"})
    assert embed.status_code == 200 and _number(embed) >= 0
    upstream_500 = gateway.post("/v1/chat/completions", headers=headers, json={**chat, "model": "mock/error-500"})
    assert upstream_500.status_code >= 500 and _number(upstream_500) >= 0
    for response in (
        gateway.post("/v1/chat/completions", json=chat),  # no key: 401
        gateway.post("/v1/chat/completions", headers=headers, content=b"{not json"),  # 400
        gateway.post("/v1/chat/completions", headers=headers, json={**chat, "model": "mock/nope"}),  # 404
        gateway.get("/v1/nowhere", headers=headers),  # unknown URL
        gateway.get("/v1/models", headers=headers),
        gateway.get("/v1/key", headers=headers),
    ):
        assert _number(response) >= 0
        assert json.loads(response.content)  # the answer itself is untouched


def test_dynamodb_threads_size_the_pool_and_botocores_connections(monkeypatch, aws_tables):
    from starlette.testclient import TestClient

    from onysoft import blocking, config, models, proxy_app

    monkeypatch.setenv("ONYSOFT_DYNAMODB_THREADS", "24")
    assert config.dynamodb_threads() == 24
    models.bind_tables()
    try:
        assert models.ApiKey.Meta.max_pool_connections == 24
        monkeypatch.setattr(blocking, "_pool", None)  # as a fresh process: made at the app's start
        with TestClient(proxy_app.app):
            assert blocking._pool is not None and blocking._pool._max_workers == 24
        for bad in ("0", "-3", "many"):
            monkeypatch.setenv("ONYSOFT_DYNAMODB_THREADS", bad)
            assert config.dynamodb_threads() in (1, config.DYNAMODB_THREADS_DEFAULT)
    finally:
        monkeypatch.delenv("ONYSOFT_DYNAMODB_THREADS")
        models.bind_tables()
