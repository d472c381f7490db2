"""Server-sent events from an OpenAI-compatible stream: split into events, read usage, drop the usage chunk
the gateway asked for when the client did not."""

import json
from dataclasses import dataclass, field


@dataclass
class StreamTally:
    """What the client has been sent so far, to bill a stream that ends early."""

    usage: dict | None = None
    delivered_chars: int = 0
    content_chunks: int = 0
    done: bool = field(default=False)

    def estimated_completion_tokens(self) -> int:
        # ~4 characters a token, and never fewer tokens than content chunks (each chunk is ≥ 1 token).
        return max(self.content_chunks, (self.delivered_chars + 3) // 4)


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
        chunk = json.loads(data)
    except ValueError:
        return False
    if not isinstance(chunk, dict):
        return False
    usage_only = False
    if isinstance(chunk.get("usage"), dict):
        tally.usage = chunk["usage"]
        usage_only = not chunk.get("choices")
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str) and content:
            tally.delivered_chars += len(content)
            tally.content_chunks += 1
    return usage_only


def event_json(event: bytes):
    """The event's data as JSON, or None (no data, [DONE], not JSON)."""
    data = event_data(event)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None
