"""A fake OpenAI-compatible provider on loopback, for the integration tests and the benchmark (one fake for
both): it records what the gateway sends (headers, body, when each request arrived) and fails in known ways
chosen by the model name. Never part of the gateway itself.

Models: fake-ok (and any other name) answers; fake-500, fake-429 (Retry-After: 7), fake-bad-json (a 400),
fake-timeout (TIMEOUT_DELAY before answering), fake-cut (a stream that breaks after 3 chunks), fake-slow-stream,
fake-reset (the TCP connection is reset before any answer byte), fake-malformed-200 (HTTP 200 whose body
is not JSON), fake-overrun (reports OVERRUN_COMPLETION output tokens, far above any small hold),
fake-bill (bills what it was sent, as a provider would: see `bill`), fake-ledger* (keeps its own bill of every
request and misbehaves as the request's directive says: onysoft_tools.fake_billing), fake-embed-greedy (embeddings
that report
GREEDY_EMBED_TOKENS tokens per input), fake-endless-stream (a chunk every CHUNK_DELAY seconds for
ENDLESS_SECONDS: a stream that is still open whenever the test needs one), fake-gated (holds every request until
the test opens `gate`, counting how many it holds at once: `gated_now`, `gated_most`, `gated_arrived`; then
answers like fake-ok). No delay of its own otherwise.
With `hanging` set, the whole provider hangs: it takes every request (recorded) and never answers, until the
client gives up (a provider down behind a load balancer that still accepts connections).

Run it in-process (`FakeUpstream().start()`, a thread) or as its own process:
`python -m onysoft_tools.fake_provider --port N` prints `ready` when it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

# fake-bill's prices per part and output without a limit are fake-ledger's (one provider, one tokenizer)
from onysoft_tools.fake_billing import IMAGE_TOKENS, UNLIMITED_OUTPUT, Biller, media_parts, text_bytes

UPSTREAM_KEY = "upstream-provider-secret"  # noqa: S105 - what the gateway is configured with; a loopback fake
REPLY = ["The", "fake", "provider", "says", "hello", "to", "you", "today."]
PROMPT_TOKENS = 17
CHUNK_DELAY = 0.3  # slow-stream and endless-stream: seconds between chunks
ENDLESS_SECONDS = 120.0  # endless-stream: how long it goes on
TIMEOUT_DELAY = 30.0  # fake-timeout: seconds before it answers (a gateway read timeout ends the wait long before)
OVERRUN_COMPLETION = 5_000
GREEDY_EMBED_TOKENS = 1_000
GATE_SECONDS = 120.0  # fake-gated: the longest it holds a request if the gate is never opened


def bill(body: dict) -> dict:
    """fake-bill's usage, from what it was sent: a token per byte of message text plus 3 per message,
    IMAGE_TOKENS per media part (a third of the prompt read from cache), and every answer as long as its
    output limit allows (UNLIMITED_OUTPUT without one; half of it reasoning)."""
    messages = body.get("messages") or []
    prompt = sum(text_bytes(m) + 3 for m in messages) + IMAGE_TOKENS * media_parts(messages)
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or UNLIMITED_OUTPUT
    completion = limit * (body.get("n") or 1)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": prompt // 3},
            "completion_tokens_details": {"reasoning_tokens": completion // 2}}


@dataclass
class FakeUpstream:
    port: int = 0  # 0: any free port
    nodelay: bool = True  # False: like a pre-bound socket without TCP_NODELAY (the benchmark's stall check)
    record: bool = True  # keep each request in `requests` (off for a long benchmark in its own process)
    requests: list[dict] = field(default_factory=list)  # headers, body, arrival and usage of each request
    biller: Biller = field(default_factory=Biller)  # fake-ledger*: the provider's own bill (fake_billing)
    first_bytes: list[float] = field(default_factory=list)  # time.monotonic() when each request's head arrived
    hanging: bool = False  # every request is read, recorded and never answered (see the module's doc)
    server: uvicorn.Server | None = None
    gate: threading.Event = field(default_factory=threading.Event)  # fake-gated: set to let its requests answer
    gated_now: int = 0  # fake-gated requests held right now
    gated_most: int = 0  # the most ever held at once
    gated_arrived: int = 0  # every fake-gated request that arrived

    def _record(self, headers: dict, body: dict) -> None:
        if self.record:
            self.requests.append({"headers": headers, "body": body, "at": time.monotonic()})

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> Starlette:
        async def chat(request: Request):
            body = json.loads(await request.body())
            self._record(dict(request.headers), body)
            model = body.get("model", "")
            if model.startswith("fake-ledger"):
                status, headers, answer = self.biller.answer(body)
                if hasattr(answer, "__aiter__"):
                    return StreamingResponse(answer, media_type="text/event-stream")
                return JSONResponse(await answer if asyncio.iscoroutine(answer) else answer, status_code=status,
                                    headers=headers)
            if model == "fake-500":
                return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
            if model == "fake-429":
                return JSONResponse({"error": {"message": "slow down", "type": "rate_limit"}}, status_code=429,
                                    headers={"retry-after": "7"})
            if model == "fake-bad-json":
                return JSONResponse({"choices": "not what you expect"}, status_code=400)
            if model == "fake-timeout":
                await asyncio.sleep(TIMEOUT_DELAY)
            if model == "fake-gated":  # one event loop: these counts need no lock
                self.gated_now += 1
                self.gated_arrived += 1
                self.gated_most = max(self.gated_most, self.gated_now)
                try:
                    for _ in range(int(GATE_SECONDS / 0.01)):
                        if self.gate.is_set():
                            break
                        await asyncio.sleep(0.01)
                finally:
                    self.gated_now -= 1
            if model == "fake-malformed-200":
                return Response(b'{"id": "chatcmpl-fake", "choices": [ this is not json', status_code=200,
                                media_type="application/json")
            usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(REPLY),
                     "total_tokens": PROMPT_TOKENS + len(REPLY)}
            if model == "fake-overrun":
                usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": OVERRUN_COMPLETION,
                         "total_tokens": PROMPT_TOKENS + OVERRUN_COMPLETION}
            elif model == "fake-bill":
                usage = bill(body)
            if self.record:
                self.requests[-1]["usage"] = usage
            if not body.get("stream"):
                return JSONResponse({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": " ".join(REPLY)}}],
                                     "usage": usage})

            async def events():
                base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model}
                # A provider writes no more than the limit it was sent: never more chunks than tokens.
                limit = body.get("max_completion_tokens") or body.get("max_tokens")
                words = REPLY[:limit] if isinstance(limit, int) and limit > 0 else REPLY
                if model == "fake-endless-stream":
                    words = [REPLY[i % len(REPLY)] for i in range(int(ENDLESS_SECONDS / CHUNK_DELAY))]
                for index, word in enumerate(words):
                    if model == "fake-cut" and index == 3:
                        raise RuntimeError("the fake provider drops the connection")
                    text = word if index == 0 else " " + word  # the deltas join into the whole answer's content
                    chunk = {**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                    if model in ("fake-slow-stream", "fake-endless-stream"):
                        await asyncio.sleep(CHUNK_DELAY)
                done = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                yield f"data: {json.dumps(done)}\n\n"
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        async def embeddings(request: Request):
            body = json.loads(await request.body())
            self._record(dict(request.headers), body)
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            per_input = GREEDY_EMBED_TOKENS if body.get("model") == "fake-embed-greedy" else 5
            return JSONResponse({"object": "list", "model": body.get("model", ""),
                                 "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                                          for i, _ in enumerate(inputs)],
                                 "usage": {"prompt_tokens": per_input * len(inputs),
                                           "total_tokens": per_input * len(inputs)}})

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                                 Route("/v1/embeddings", embeddings, methods=["POST"])])

    def asgi(self):
        """The app, behind a layer that notes when each request's head arrived (before its body is read) and
        resets the TCP connection of a `fake-reset` request before answering.

        Starlette cannot reach the socket; uvicorn's own `send` (a bound method of its request cycle) holds
        the transport, so this layer sits outside Starlette and aborts it with SO_LINGER 0: an RST."""
        app = self.app()

        async def asgi(scope, receive, send):
            if scope["type"] == "http":
                self.first_bytes.append(time.monotonic())
            if scope["type"] != "http" or scope["method"] != "POST":
                return await app(scope, receive, send)
            chunks, more = [], True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False) and message["type"] == "http.request"
            raw = b"".join(chunks)
            try:
                model = json.loads(raw).get("model")
            except (ValueError, AttributeError):
                model = None
            if self.hanging:
                self._record({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}, json.loads(raw))
                while (await receive())["type"] != "http.disconnect":  # no answer: until the client hangs up
                    pass
                return None
            if model == "fake-reset":
                self._record({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}, json.loads(raw))
                transport = send.__self__.transport  # uvicorn's RequestResponseCycle
                sock = transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
                return None
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": raw, "more_body": False}
                return await receive()

            return await app(scope, replay, send)

        return asgi

    def _socket(self) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.nodelay:  # accepted sockets inherit it (Linux); uvicorn does not set it on a passed-in socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        return sock

    def start(self) -> FakeUpstream:
        """In this process, in a daemon thread."""
        sock = self._socket()
        self.server = uvicorn.Server(uvicorn.Config(self.asgi(), log_level="critical", lifespan="off"))
        threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True).start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self.server:
            self.server.should_exit = True

    def serve_forever(self) -> None:
        """In the foreground (its own process): prints `ready` once it listens."""
        sock = self._socket()
        self.server = uvicorn.Server(uvicorn.Config(self.asgi(), log_level="critical", lifespan="off",
                                                    access_log=False))
        print("ready", flush=True)
        self.server.run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onysoft_tools.fake_provider", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-nodelay", action="store_true", help="leave TCP_NODELAY off (to measure the stall)")
    args = parser.parse_args(argv)
    FakeUpstream(port=args.port, nodelay=not args.no_nodelay, record=False).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
