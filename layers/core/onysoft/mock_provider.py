"""The built-in `mock` provider: an upstream inside the process, an httpx transport that every upstream client
mounts for `mock://` URLs (onysoft.upstream), so the whole gateway path — hold, forward, stream, settle —
works offline and every fault can be tried. It answers OpenAI's chat completions, embeddings and Responses
API, and Anthropic's Messages API, streamed and not.

Models (the part after `mock/`):
  echo          deterministic reply and usage; streams one word per chunk
  slow-stream   like echo, 100 ms between chunks (to see the first chunk arrive before the last)
  error-500     answers HTTP 500
  rate-limited  answers HTTP 429
  timeout       never answers within the read timeout (raises httpx.ReadTimeout)
  cut-stream    streams a few chunks, then the connection breaks
  embed         embeddings: a deterministic 8-dimension vector per input
Tokens are words: prompt tokens = words in all message contents (and instructions / system) + 3 per message;
completion tokens = words in the reply, at most the request's output limit. On the Messages API, the words of
a content block marked `cache_control` are reported as a cache write the first time this process sees the
block, and as a cache read after that (as Anthropic's prompt cache does).
"""

import asyncio
import hashlib
import json
import time

import httpx

CHUNK_DELAY = {"slow-stream": 0.1}
CUT_AFTER_CHUNKS = 3
LIMIT_FIELDS = {"/chat/completions": ("max_completion_tokens", "max_tokens"), "/responses": ("max_output_tokens",),
                "/messages": ("max_tokens",)}


def _words(value) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):  # content parts
        return [w for part in value if isinstance(part, dict) for w in str(part.get("text", "")).split()]
    return []


def _messages(body: dict, path: str) -> list[dict]:
    if path == "/responses":
        given = body.get("input")
        if isinstance(given, str):
            return [{"role": "user", "content": given}]
        return [m for m in given or [] if isinstance(m, dict)]
    return [m for m in body.get("messages") or [] if isinstance(m, dict)]


def _prompt_tokens(body: dict, path: str) -> int:
    extra = len(_words(body.get("instructions"))) + len(_words(body.get("system")))
    return extra + sum(len(_words(m.get("content"))) + 3 for m in _messages(body, path))


def _reply_words(body: dict, path: str) -> tuple[list[str], bool]:
    """The reply, and whether the output limit cut it."""
    last = next((m for m in reversed(_messages(body, path)) if m.get("role") == "user"), {})
    heard = _words(last.get("content"))[:12]
    words = ["Mock", "reply", "to:"] + (heard or ["(nothing)"]) + ["—", "the", "end."]
    limit = next((body[f] for f in LIMIT_FIELDS[path] if body.get(f)), None)
    if isinstance(limit, int) and 0 < limit < len(words):
        return words[:limit], True
    return words, False


def _json(status: int, payload: dict) -> httpx.Response:
    return httpx.Response(status, json=payload)


def _error(path: str, status: int, message: str, type_: str, code: str) -> httpx.Response:
    if path == "/messages":  # Anthropic's envelope
        anthropic_type = {500: "api_error", 429: "rate_limit_error"}.get(status, "api_error")
        return _json(status, {"type": "error", "error": {"type": anthropic_type, "message": message}})
    return _json(status, {"error": {"message": message, "type": type_, "code": code, "param": None}})


def _event(payload: dict, name: str | None = None) -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(payload)}\n\n".encode()


def _ident(prefix: str, body: dict) -> str:
    return prefix + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


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


def _stream(chunks: list[bytes], name: str) -> httpx.Response:
    stream = _BrokenStream(chunks, CHUNK_DELAY.get(name, 0.0), cut=name == "cut-stream")
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)


class MockTransport(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self._cached_blocks: set[str] = set()  # Anthropic cache_control blocks seen: the next sight is a read

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread() or b"{}")
        name = str(body.get("model", ""))
        path = "/" + request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if path == "/completions":
            path = "/chat/completions"
        if path == "/embeddings":
            return self._embeddings(body)
        if name == "error-500":
            return _error(path, 500, "mock upstream failure", "server_error", "mock_error")
        if name == "rate-limited":
            return _error(path, 429, "mock upstream rate limit", "rate_limit_error", "rate_limit_exceeded")
        if name == "timeout":
            raise httpx.ReadTimeout("mock upstream did not answer", request=request)
        if path == "/responses":
            return self._responses(body, name)
        if path == "/count_tokens":  # Anthropic's free count: what /messages would report as its whole input
            return _json(200, {"input_tokens": _prompt_tokens(body, "/messages")})
        if path == "/messages":
            return self._messages(body, name)
        return self._chat(body, name)

    def _chat(self, body: dict, name: str) -> httpx.Response:
        words, cut = _reply_words(body, "/chat/completions")
        finish = "length" if cut else "stop"
        prompt = _prompt_tokens(body, "/chat/completions")
        usage = {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words)}
        ident = _ident("chatcmpl-mock", body)
        created = int(time.time())
        if not body.get("stream"):
            return _json(200, {
                "id": ident, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                             "finish_reason": finish}],
                "usage": usage,
            })
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": name}
        chunks = [_event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                               "finish_reason": None}]})]
        for i, word in enumerate(words):
            chunks.append(_event({**base, "choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word},
                                                       "finish_reason": None}]}))
        chunks.append(_event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append(_event({**base, "choices": [], "usage": usage}))
        chunks.append(b"data: [DONE]\n\n")
        return _stream(chunks, name)

    def _responses(self, body: dict, name: str) -> httpx.Response:
        words, cut = _reply_words(body, "/responses")
        prompt = _prompt_tokens(body, "/responses")
        text = " ".join(words)
        ident, item_id = _ident("resp_mock", body), _ident("msg_mock", body)
        usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": len(words), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": prompt + len(words)}
        item = {"type": "message", "id": item_id, "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}
        response = {"id": ident, "object": "response", "created_at": int(time.time()), "model": name,
                    "status": "incomplete" if cut else "completed",
                    "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
                    "output": [item], "usage": usage, "store": body.get("store", True),
                    "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "error": None}
        if not body.get("stream"):
            return _json(200, response)
        seq = iter(range(1_000_000))

        def event(kind: str, **fields) -> bytes:
            return _event({"type": kind, "sequence_number": next(seq), **fields}, kind)

        started = {**response, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
        chunks = [event("response.created", response=started),
                  event("response.output_item.added", output_index=0,
                        item={**item, "status": "in_progress", "content": []}),
                  event("response.content_part.added", item_id=item_id, output_index=0, content_index=0,
                        part={"type": "output_text", "text": "", "annotations": []})]
        for i, word in enumerate(words):
            chunks.append(event("response.output_text.delta", item_id=item_id, output_index=0, content_index=0,
                                delta=word if i == 0 else " " + word, logprobs=[]))
        chunks += [event("response.output_text.done", item_id=item_id, output_index=0, content_index=0, text=text,
                         logprobs=[]),
                   event("response.content_part.done", item_id=item_id, output_index=0, content_index=0,
                         part=item["content"][0]),
                   event("response.output_item.done", output_index=0, item=item),
                   event("response.incomplete" if cut else "response.completed", response=response)]
        return _stream(chunks, name)

    def _cache_usage(self, body: dict) -> tuple[int, int]:
        """(cache writes, cache reads) of the blocks marked cache_control, in words."""
        writes = reads = 0
        blocks = [b for b in body.get("system") or [] if isinstance(b, dict)] if isinstance(body.get("system"), list) \
            else []
        for message in body.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            blocks += [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
        for block in blocks:
            if not block.get("cache_control"):
                continue
            count = len(_words(block.get("text")))
            digest = hashlib.sha256(str(block.get("text")).encode()).hexdigest()
            if digest in self._cached_blocks:
                reads += count
            else:
                self._cached_blocks.add(digest)
                writes += count
        return writes, reads

    def _messages(self, body: dict, name: str) -> httpx.Response:
        words, cut = _reply_words(body, "/messages")
        writes, reads = self._cache_usage(body)
        prompt = _prompt_tokens(body, "/messages") - writes - reads  # Anthropic: input_tokens excludes the cache
        usage = {"input_tokens": prompt, "cache_creation_input_tokens": writes, "cache_read_input_tokens": reads,
                 "output_tokens": len(words)}
        stop = "max_tokens" if cut else "end_turn"
        message = {"id": _ident("msg_mock", body), "type": "message", "role": "assistant", "model": name,
                   "content": [{"type": "text", "text": " ".join(words)}], "stop_reason": stop,
                   "stop_sequence": None, "usage": usage}
        if not body.get("stream"):
            return _json(200, message)
        chunks = [_event({"type": "message_start",
                          "message": {**message, "content": [], "stop_reason": None,
                                      "usage": {**usage, "output_tokens": 1}}}, "message_start"),
                  _event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                         "content_block_start"),
                  _event({"type": "ping"}, "ping")]
        for i, word in enumerate(words):
            chunks.append(_event({"type": "content_block_delta", "index": 0,
                                  "delta": {"type": "text_delta", "text": word if i == 0 else " " + word}},
                                 "content_block_delta"))
        chunks += [_event({"type": "content_block_stop", "index": 0}, "content_block_stop"),
                   _event({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                           "usage": {"output_tokens": len(words)}}, "message_delta"),
                   _event({"type": "message_stop"}, "message_stop")]
        return _stream(chunks, name)

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
