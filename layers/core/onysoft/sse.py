"""Server-sent events from an OpenAI-compatible stream: split into events, read usage, count what was delivered,
drop the usage chunk the gateway asked for when the client did not."""

from dataclasses import dataclass, field

from onysoft import wire_json


@dataclass
class StreamTally:
    """What the provider's stream has said so far: its usage (the last seen), whether it ended as the API says a
    stream ends, and what it delivered, every kind of delta counted (text, reasoning, refusals, tool-call
    arguments): each event with a non-empty delta carries at least one output token, a floor a provider's
    reported usage must reach to be believed (onysoft.forwarding)."""

    usage: dict | None = None
    usage_final: bool = False  # the usage came in its own chunk (after the last choice): the provider's last word
    delivered_chars: int = 0
    content_chunks: int = 0
    done: bool = field(default=False)

    def delivered(self, text) -> None:
        if isinstance(text, str) and text:
            self.delivered_chars += len(text)
            self.content_chunks += 1


CHAT_DELTA_TEXT = ("content", "reasoning_content", "reasoning", "refusal")


def chat_delta_texts(delta) -> list:
    """Every piece of output a chat delta carries: text, reasoning, refusal, tool-call and function arguments."""
    if not isinstance(delta, dict):
        return []
    texts = [delta.get(name) for name in CHAT_DELTA_TEXT]
    for call in delta.get("tool_calls") or []:
        if isinstance(call, dict):
            function = call.get("function") if isinstance(call.get("function"), dict) else {}
            custom = call.get("custom") if isinstance(call.get("custom"), dict) else {}
            texts += [function.get("name"), function.get("arguments"), custom.get("input")]
    if isinstance(delta.get("function_call"), dict):
        texts += [delta["function_call"].get("name"), delta["function_call"].get("arguments")]
    return texts


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete events (each ending in a blank line) and the incomplete rest."""
    normalized = buffer.replace(b"\r\n", b"\n")
    parts = normalized.split(b"\n\n")
    return [p + b"\n\n" for p in parts[:-1] if p.strip()], parts[-1]


def event_data(event: bytes) -> bytes | None:
    lines = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def inspect(event: bytes, tally: StreamTally) -> bool:
    """Update the tally from one event; True when the event is a usage-only chunk (choices empty)."""
    data = event_data(event)
    if data is None:
        return False
    if data.strip() == b"[DONE]":
        tally.done = True
        return False
    try:
        chunk = wire_json.loads(data)
    except ValueError:
        return False
    if not isinstance(chunk, dict):
        return False
    usage_only = False
    if isinstance(chunk.get("usage"), dict):
        tally.usage = chunk["usage"]  # the last seen wins (some providers repeat a growing usage on every chunk)
        usage_only = not chunk.get("choices")
        tally.usage_final = usage_only
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        texts = [t for t in chat_delta_texts(delta) if isinstance(t, str) and t]
        if texts:
            tally.delivered_chars += sum(len(t) for t in texts)
            tally.content_chunks += 1
    return usage_only


def event_json(event: bytes):
    """The event's data as JSON, or None (no data, [DONE], not JSON)."""
    data = event_data(event)
    if data is None:
        return None
    try:
        return wire_json.loads(data)
    except ValueError:
        return None
