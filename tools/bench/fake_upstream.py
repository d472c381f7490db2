"""A fake OpenAI-compatible provider on loopback, with no delay of its own, for the benchmark.

A copy of tests/integration/fake_upstream.py's happy path (chat, streamed chat, embeddings), plus a record of
when each request's first byte reached it (an ASGI wrapper called as soon as uvicorn has parsed the request
head, before the body is read). Run it in-process (`FakeUpstream().start()`, a thread) or as its own process:
`python -m tools.bench.fake_upstream --port N` prints `ready` when it listens.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

UPSTREAM_KEY = "bench-upstream-key"  # noqa: S105 - a loopback fake, not a secret
REPLY = ["The", "fake", "provider", "says", "hello", "to", "you", "today."]
PROMPT_TOKENS = 17


def _usage() -> dict:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(REPLY), "total_tokens": PROMPT_TOKENS + len(REPLY)}


async def _chat(request: Request):
    body = json.loads(await request.body())
    model = body.get("model", "")
    if not body.get("stream"):
        return JSONResponse({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": model,
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": " ".join(REPLY)}}],
                             "usage": _usage()})

    async def events():
        base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": model}
        for word in REPLY:
            chunk = {**base, "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n"
        yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
        if (body.get("stream_options") or {}).get("include_usage"):
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': _usage()})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _embeddings(request: Request):
    body = json.loads(await request.body())
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    return JSONResponse({"object": "list", "model": body.get("model", ""),
                         "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                                  for i, _ in enumerate(inputs)],
                         "usage": {"prompt_tokens": 5 * len(inputs), "total_tokens": 5 * len(inputs)}})


@dataclass
class FakeUpstream:
    port: int = 0
    nodelay: bool = True  # False: like a pre-bound socket without TCP_NODELAY (see overhead.py)
    first_bytes: list[float] = field(default_factory=list)  # time.monotonic() at each request's arrival
    server: uvicorn.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self):
        inner = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"]),
                                  Route("/v1/embeddings", _embeddings, methods=["POST"])])

        async def recording(scope, receive, send):
            if scope["type"] == "http":
                self.first_bytes.append(time.monotonic())
            await inner(scope, receive, send)

        return recording

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
        self.server = uvicorn.Server(uvicorn.Config(self.app(), log_level="critical", lifespan="off"))
        threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True).start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self.server:
            self.server.should_exit = True

    def serve_forever(self) -> None:
        sock = self._socket()
        self.server = uvicorn.Server(uvicorn.Config(self.app(), log_level="critical", lifespan="off",
                                                    access_log=False))
        print("ready", flush=True)
        self.server.run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-nodelay", action="store_true", help="leave TCP_NODELAY off (to measure the stall)")
    args = parser.parse_args(argv)
    FakeUpstream(port=args.port, nodelay=not args.no_nodelay).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
