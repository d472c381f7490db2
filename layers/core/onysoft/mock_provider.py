"""The built-in `mock` provider: an OpenAI-compatible upstream inside the process (an httpx transport),
so the whole gateway path — hold, forward, stream, settle — works offline and every fault can be tried.

Models (the part after `mock/`):
  echo          deterministic reply and usage; streams one word per chunk
  slow-stream   like echo, 100 ms between chunks (to see the first chunk arrive before the last)
  error-500     answers HTTP 500
  rate-limited  answers HTTP 429
  timeout       never answers within the read timeout (raises httpx.ReadTimeout)
  cut-stream    streams a few chunks, then the connection breaks
  embed         embeddings: a deterministic 8-dimension vector per input
Tokens are words: prompt tokens = words in all message contents + 3 per message; completion tokens =
words in the reply, at most max_tokens / max_completion_tokens.
"""

import asyncio
import hashlib
import json
import time

import httpx

CHUNK_DELAY = {"slow-stream": 0.1}
CUT_AFTER_CHUNKS = 3


def _words(value) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):  # content parts
        return [w for part in value if isinstance(part, dict) for w in str(part.get("text", "")).split()]
    return []


def _prompt_tokens(messages: list) -> int:
    return sum(len(_words(m.get("content"))) + 3 for m in messages if isinstance(m, dict))


def _reply_words(body: dict) -> tuple[list[str], str]:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    heard = _words(last.get("content"))[:12]
    words = ["Mock", "reply", "to:"] + (heard or ["(nothing)"]) + ["—", "the", "end."]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < len(words):
        return words[:limit], "length"
    return words, "stop"


def _json(status: int, payload: dict) -> httpx.Response:
    return httpx.Response(status, json=payload)


def _error(status: int, message: str, type_: str, code: str) -> httpx.Response:
    return _json(status, {"error": {"message": message, "type": type_, "code": code, "param": None}})


class _BrokenStream(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes], delay: float, cut: bool):
        self.chunks, self.delay, self.cut = chunks, delay, cut

    async def __aiter__(self):
        for index, chunk in enumerate(self.chunks):
            if self.cut and index == CUT_AFTER_CHUNKS:
                raise httpx.RemoteProtocolError("mock upstream cut the stream")
            if index and self.delay:
                await asyncio.sleep(self.delay)
            yield chunk


class MockTransport(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread() or b"{}")
        name = str(body.get("model", ""))
        if request.url.path.endswith("/embeddings"):
            return self._embeddings(body)
        if name == "error-500":
            return _error(500, "mock upstream failure", "server_error", "mock_error")
        if name == "rate-limited":
            return _error(429, "mock upstream rate limit", "rate_limit_error", "rate_limit_exceeded")
        if name == "timeout":
            raise httpx.ReadTimeout("mock upstream did not answer", request=request)
        return self._chat(body, name)

    def _chat(self, body: dict, name: str) -> httpx.Response:
        words, finish = _reply_words(body)
        prompt = _prompt_tokens(body.get("messages") or [])
        usage = {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words)}
        ident = "chatcmpl-mock" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        created = int(time.time())
        if not body.get("stream"):
            return _json(200, {
                "id": ident, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                             "finish_reason": finish}],
                "usage": usage,
            })

        def event(payload: dict) -> bytes:
            return f"data: {json.dumps(payload)}\n\n".encode()

        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": name}
        chunks = [event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "finish_reason": None}]})]
        for i, word in enumerate(words):
            chunks.append(event({**base, "choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word},
                                                      "finish_reason": None}]}))
        chunks.append(event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append(event({**base, "choices": [], "usage": usage}))
        chunks.append(b"data: [DONE]\n\n")
        stream = _BrokenStream(chunks, CHUNK_DELAY.get(name, 0.0), cut=name == "cut-stream")
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)

    def _embeddings(self, body: dict) -> httpx.Response:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else [inputs]
        data, tokens = [], 0
        for index, item in enumerate(items):
            text = item if isinstance(item, str) else json.dumps(item)
            tokens += max(len(text.split()), 1)
            digest = hashlib.sha256(text.encode()).digest()
            data.append({"object": "embedding", "index": index,
                         "embedding": [round(b / 255 - 0.5, 6) for b in digest[:8]]})
        return _json(200, {"object": "list", "data": data, "model": body.get("model"),
                           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
