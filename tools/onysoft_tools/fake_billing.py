"""fake-ledger: the fake provider's models that keep their own bill (issue 22's proof).

A provider bills for what it was sent and what it produced, whatever reached the client and whatever it
reported. Each `fake-ledger*` request carries its behaviour in its last message as a directive,
`[[ledger id=… usage=full out=120 …]]` (a test writes it; the gateway forwards message text as is), and the
fake invoices every request it took in `Biller.bills`, keyed by the directive's id:

- prompt: a token per byte of message text and of tool definitions, 3 per message, IMAGE_TOKENS per media
  part (a third read from cache, billed at the cached price); a realistic tokenizer counts fewer tokens than
  bytes, never more;
- output: `out` tokens per answer, never more than the output limit it was sent (a provider honours
  `max_completion_tokens`), × n; billed in full once the answer started, even when the connection is cut or
  the client is gone: the provider did the work;
- an error status (`first=500|429`, on the first attempt of an id; fallbacks see the next) bills nothing.

What it reports is another matter (`usage=`): `full` (itemized), `total` (only `total_tokens` counts the
hidden reasoning: `completion_tokens` is what was visible), `none` (no usage at all). Where the answer goes
wrong: `cut=K` drops the connection after K events, `gap=S` goes silent S seconds after the first event, `late=S`
answers after S seconds of silence (the first attempt only, with `first=late`). `kind=` is what the output is
made of: `content`, `tool` (tool-call arguments) or `reasoning` (`reasoning_content`).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from dataclasses import dataclass, field

IMAGE_TOKENS = 1_000  # per media part, as the catalog's --tokens-per-image says
UNLIMITED_OUTPUT = 40_000  # what it writes per answer when it was sent no limit
MEDIA = {"image_url", "input_audio", "file"}
DIRECTIVE = re.compile(r"\[\[ledger ([^\]]*)\]\]")


@dataclass
class Plan:
    id: str = ""
    usage: str = "full"  # full | total | none
    kind: str = "content"  # content | tool | reasoning
    out: int = 40  # output tokens per answer, before the limit it was sent
    events: int = 4  # delta events per answer (never more than its output tokens)
    cut: int = -1  # drop the connection after this many events (-1: never)
    gap: float = 0.0  # seconds of silence after the first event
    late: float = 0.0  # seconds before the first byte, with first=late
    first: str = ""  # the first attempt of this id: 500 | 429 | late | cut

    @classmethod
    def of(cls, body: dict) -> Plan:
        found = DIRECTIVE.findall(json.dumps(body.get("messages") or []))
        plan = cls()
        for pair in (found[-1].split() if found else []):
            name, _, value = pair.partition("=")
            if hasattr(plan, name):
                kind = type(getattr(cls(), name))
                setattr(plan, name, kind(value))
        return plan


def text_bytes(value) -> int:
    """Bytes of text in a JSON value (a provider's prompt tokens are at most this)."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(text_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(text_bytes(v) for v in value.values())
    return 0


def media_parts(value) -> int:
    """Image, audio and file parts anywhere in a JSON value."""
    if isinstance(value, list):
        return sum(media_parts(v) for v in value)
    if isinstance(value, dict):
        return (value.get("type") in MEDIA) + sum(media_parts(v) for v in value.values())
    return 0


@dataclass
class Bill:
    id: str
    model: str
    attempt: int
    prompt: int = 0
    cached: int = 0
    completion: int = 0  # per all answers
    cut: bool = False  # it dropped the connection before the usage event
    silence: float = 0.0  # the longest it went quiet
    status: int = 200


@dataclass
class Biller:
    bills: list[Bill] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, request_id: str) -> list[Bill]:
        with self._lock:
            return [b for b in self.bills if b.id == request_id]

    def ids(self) -> set[str]:
        with self._lock:
            return {b.id for b in self.bills}

    def answer(self, body: dict):
        """(status, headers, JSON or an async iterator of SSE lines) for one request, its bill kept."""
        plan = Plan.of(body)
        with self._lock:
            attempt = sum(1 for b in self.bills if b.id == plan.id) + 1
            bill = Bill(plan.id, str(body.get("model")), attempt)
            self.bills.append(bill)
        failure = plan.first if attempt == 1 else ""
        if failure in ("500", "429"):
            bill.status = int(failure)
            return bill.status, {"retry-after": "1"}, {"error": {"message": "the fake fails", "type": "server_error"}}
        messages = body.get("messages") or []
        bill.prompt = (sum(text_bytes(m) + 3 for m in messages) + text_bytes(body.get("tools"))
                       + IMAGE_TOKENS * media_parts(messages))
        bill.cached = bill.prompt // 3
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or UNLIMITED_OUTPUT
        per_answer = max(1, min(plan.out, int(limit)))
        answers = int(body.get("n") or 1)
        bill.completion = per_answer * answers
        visible = bill.completion // 2 if plan.kind == "reasoning" else bill.completion
        usage = {"prompt_tokens": bill.prompt, "completion_tokens": bill.completion,
                 "total_tokens": bill.prompt + bill.completion, "prompt_tokens_details": {"cached_tokens": bill.cached},
                 "completion_tokens_details": {"reasoning_tokens": bill.completion - visible}}
        if plan.usage == "total":
            usage = {"prompt_tokens": bill.prompt, "completion_tokens": visible,
                     "total_tokens": bill.prompt + bill.completion,
                     "prompt_tokens_details": {"cached_tokens": bill.cached}}
        late = plan.late if failure == "late" else 0.0
        bill.silence = late
        cut = 0 if failure == "cut" else plan.cut
        if not body.get("stream"):
            answer = {"id": "chatcmpl-ledger", "object": "chat.completion", "created": 1, "model": bill.model,
                      "choices": [{"index": i, "finish_reason": "stop", "message": {
                          "role": "assistant", "content": "ledger " * min(plan.events, per_answer)}}
                          for i in range(answers)]}
            if plan.usage != "none":
                answer["usage"] = usage
            return 200, {}, self._late(late, answer)
        return 200, {}, self._events(body, plan, bill, usage, per_answer, answers, late, cut)

    @staticmethod
    async def _late(seconds: float, answer: dict) -> dict:
        await asyncio.sleep(seconds)
        return answer

    async def _events(self, body, plan: Plan, bill: Bill, usage: dict, per_answer: int, answers: int,
                      late: float, cut: int):
        await asyncio.sleep(late)
        base = {"id": "chatcmpl-ledger", "object": "chat.completion.chunk", "created": 1, "model": bill.model}
        sent = 0
        count = min(plan.events, per_answer)  # a delta is at least a token
        for index in range(count):
            for choice in range(answers):
                if sent == cut:
                    bill.cut = True
                    raise RuntimeError("the fake provider drops the connection")
                yield _sse({**base, "choices": [{"index": choice, "delta": _delta(plan.kind, index),
                                                 "finish_reason": None}]})
                sent += 1
            if index == 0 and plan.gap:
                bill.silence = max(bill.silence, plan.gap)
                await asyncio.sleep(plan.gap)
        if sent == cut:
            bill.cut = True
            raise RuntimeError("the fake provider drops the connection")
        finish = "tool_calls" if plan.kind == "tool" else "stop"
        for choice in range(answers):
            yield _sse({**base, "choices": [{"index": choice, "delta": {}, "finish_reason": finish}]})
        if plan.usage != "none" and (body.get("stream_options") or {}).get("include_usage"):
            yield _sse({**base, "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"


def _sse(event: dict) -> str:
    return f"data: {json.dumps(event)}\n\n"


def _delta(kind: str, index: int) -> dict:
    if kind == "tool":
        call = {"index": 0, "function": {"arguments": '{"q":' if index == 0 else ' "x"'}}
        if index == 0:
            call.update(id="call_ledger", type="function")
            call["function"]["name"] = "lookup"
        return {"tool_calls": [call]}
    if kind == "reasoning":
        return {"reasoning_content": "hmm " if index else "Let me think. "}
    return {"content": "word " if index else "Ledger "}
