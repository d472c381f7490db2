"""A whole answer, assembled from the provider's stream, for a client that did not ask for one.

The gateway always asks the provider for a stream with usage (docs/BILLING.md, "Know the usage"): the usage
arrives with the last event, a silence from the provider is a gap between events rather than a whole answer's
wait, and a client that hangs up does not stop the gateway from reading the provider to the end. A client that
asked for no stream gets the answer it would have had: the deltas put back together into the API's own shape.

One assembler per API: `feed(payload)` for each event's JSON, `answer()` once the stream has ended. Provider JSON
is hostile: anything of the wrong type is skipped, never trusted to be a dict or a string.
"""

from __future__ import annotations

import json


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _str(value) -> str:
    return value if isinstance(value, str) else ""


class ChatAnswer:
    """OpenAI chat completions: chunks (`chat.completion.chunk`) → one `chat.completion`."""

    def __init__(self) -> None:
        self.head: dict = {}
        self.choices: dict[int, dict] = {}
        self.usage = None

    def feed(self, chunk) -> None:
        chunk = _dict(chunk)
        for name in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(name) is not None:
                self.head[name] = chunk[name]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for raw in chunk.get("choices") or []:
            choice = _dict(raw)
            index = choice.get("index") if isinstance(choice.get("index"), int) else 0
            into = self.choices.setdefault(index, {"index": index, "message": {"role": "assistant"},
                                                   "logprobs": None, "finish_reason": None})
            self._delta(into["message"], _dict(choice.get("delta")))
            if choice.get("finish_reason") is not None:
                into["finish_reason"] = choice["finish_reason"]
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict):
                merged = into["logprobs"] or {}
                for name in ("content", "refusal"):
                    if isinstance(logprobs.get(name), list):
                        merged[name] = (merged.get(name) or []) + logprobs[name]
                into["logprobs"] = merged

    @staticmethod
    def _delta(message: dict, delta: dict) -> None:
        if isinstance(delta.get("role"), str):
            message["role"] = delta["role"]
        for name in ("content", "refusal", "reasoning_content", "reasoning"):
            if isinstance(delta.get(name), str):
                message[name] = (message.get(name) or "") + delta[name]
        if isinstance(delta.get("annotations"), list):
            message["annotations"] = (message.get("annotations") or []) + delta["annotations"]
        if isinstance(delta.get("function_call"), dict):
            call = message.setdefault("function_call", {"name": "", "arguments": ""})
            for name in ("name", "arguments"):
                call[name] += _str(delta["function_call"].get(name))
        for raw in delta.get("tool_calls") or []:
            part = _dict(raw)
            calls = message.setdefault("tool_calls", [])
            index = part.get("index") if isinstance(part.get("index"), int) else len(calls)
            while len(calls) <= index:
                calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            call = calls[index]
            if isinstance(part.get("id"), str):
                call["id"] = part["id"]
            if isinstance(part.get("type"), str):
                call["type"] = part["type"]
            function = _dict(part.get("function"))
            for name in ("name", "arguments"):
                call["function"][name] += _str(function.get(name))
            if isinstance(part.get("custom"), dict):  # a custom tool's input
                custom = call.setdefault("custom", {"name": "", "input": ""})
                for name in ("name", "input"):
                    custom[name] += _str(part["custom"].get(name))

    def answer(self) -> dict:
        choices = [self.choices[i] for i in sorted(self.choices)]
        for choice in choices:
            choice["message"].setdefault("content", None)
        answer = {"id": self.head.get("id", ""), "object": "chat.completion", "created": self.head.get("created", 0),
                  "model": self.head.get("model", ""), "choices": choices}
        for name in ("system_fingerprint", "service_tier"):
            if name in self.head:
                answer[name] = self.head[name]
        if self.usage is not None:
            answer["usage"] = self.usage
        return answer


class ResponsesAnswer:
    """OpenAI's Responses API: the final event (`response.completed`, `.incomplete` or `.failed`) carries the
    whole response object."""

    FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})

    def __init__(self) -> None:
        self.response: dict | None = None

    def feed(self, event) -> None:
        event = _dict(event)
        if event.get("type") in self.FINAL and isinstance(event.get("response"), dict):
            self.response = event["response"]

    def answer(self) -> dict | None:
        return self.response


class MessagesAnswer:
    """Anthropic's Messages API: message_start's message, its content blocks built from their deltas, and
    message_delta's stop reason and usage."""

    def __init__(self) -> None:
        self.message: dict | None = None
        self.blocks: dict[int, dict] = {}
        self.partial_json: dict[int, str] = {}

    def feed(self, event) -> None:
        event = _dict(event)
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            self.message = dict(event["message"])
        elif kind == "content_block_start" and isinstance(event.get("index"), int):
            self.blocks[event["index"]] = dict(_dict(event.get("content_block")))
        elif kind == "content_block_delta" and isinstance(event.get("index"), int):
            block = self.blocks.setdefault(event["index"], {})
            delta = _dict(event.get("delta"))
            for name, into in (("text", "text"), ("thinking", "thinking"), ("signature", "signature")):
                if isinstance(delta.get(name), str):
                    block[into] = _str(block.get(into)) + delta[name]
            if isinstance(delta.get("partial_json"), str):
                self.partial_json[event["index"]] = self.partial_json.get(event["index"], "") + delta["partial_json"]
            if isinstance(delta.get("citation"), dict):
                block.setdefault("citations", []).append(delta["citation"])
        elif kind == "message_delta" and self.message is not None:
            delta = _dict(event.get("delta"))
            for name in ("stop_reason", "stop_sequence"):
                if name in delta:
                    self.message[name] = delta[name]
            if isinstance(event.get("usage"), dict):
                self.message["usage"] = {**_dict(self.message.get("usage")), **event["usage"]}

    def answer(self) -> dict | None:
        if self.message is None:
            return None
        for index, text in self.partial_json.items():
            try:
                self.blocks.setdefault(index, {})["input"] = json.loads(text) if text else {}
            except ValueError:
                self.blocks[index]["input"] = {}
        return {**self.message, "content": [self.blocks[i] for i in sorted(self.blocks)]}
