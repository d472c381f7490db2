"""Anthropic's Messages API (POST /v1/messages), native to the `anthropic` provider (providers.json "messages").

- Upstream: `x-api-key` (the provider's key) and `anthropic-version` (the client's, else DEFAULT_VERSION);
  `anthropic-beta` only for betas that change no price (ALLOWED_BETAS).
- `max_tokens` is required by Anthropic and is the held output: whole number, lowered to the catalog's cap,
  sent as held.
- Usage: `input_tokens` (uncached), `cache_read_input_tokens`, `cache_creation_input_tokens` (beside the
  input: provider_usage adds them to the prompt and prices them at the catalog's cached and cache-write
  prices) and `output_tokens` (thinking included). In a stream `message_start` carries the input usage and
  `message_delta` the output (cumulative); the stream is complete at `message_stop`.
- Refused as unpriced (400): whatever the allow-list (onysoft.request_policy, providers.json) does not name —
  server tools billed per use (web search, web fetch, code execution), MCP servers, containers —, a service tier
  other than standard, and one-hour cache writes (`cache_control.ttl` "1h", priced at 2× input where the catalog
  holds one cache-write price, the 5-minute one). Client tools Anthropic expands (bash, text editor, computer)
  add the prompt tokens providers.json says they add.
- A bare model name (`claude-opus-4-8`, what Claude Code sends by default) means `anthropic/<name>`.
- Claude Code's `context_management` (edits that clear thinking or tool uses: fewer input tokens) and
  `output_config` (an effort level; the held max_tokens still caps the output) go upstream with their betas;
  any other edit or option in them is refused as unpriced.
- Errors are Anthropic's envelope, {"type": "error", "error": {"type", "message"}}, with the same statuses, so
  the anthropic SDK raises the matching exception (AuthenticationError, RateLimitError…).
"""

import json

from onysoft import answer_assembly, errors, hold_sizing, provider_usage, sse
from onysoft.api_formats import FINAL, PASS, ApiFormat, field, require_stream_flag
from onysoft.catalog import ModelPrice
from onysoft.provider_usage import Usage
from onysoft.providers import Provider

DEFAULT_VERSION = "2023-06-01"
ALLOWED_BETAS = frozenset({"claude-code-20250219", "interleaved-thinking-2025-05-14",
                           "fine-grained-tool-streaming-2025-05-14", "token-efficient-tools-2025-02-19",
                           "prompt-caching-2024-07-31", "context-management-2025-06-27", "effort-2025-11-24"})
# What Claude Code sends with every request (2026-12): context editing that only takes from the prompt the
# provider bills, and an effort level the held max_tokens still caps. Anything else in them is refused.
CONTEXT_EDITS = frozenset({"clear_thinking_20251015", "clear_tool_uses_20250919"})
EFFORTS = frozenset({"low", "medium", "high"})
STANDARD_TIERS = (None, "auto", "standard_only")
# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
               413: "request_too_large", 429: "rate_limit_error", 504: "timeout_error", 529: "overloaded_error"}
USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def error_envelope(status: int, message: str) -> dict:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


def as_chat_usage(raw) -> dict | None:
    """Anthropic's usage in the names provider_usage reads (cache reads/writes stay beside the input)."""
    if not isinstance(raw, dict):
        return None
    return {"prompt_tokens": raw.get("input_tokens"), "completion_tokens": raw.get("output_tokens"),
            "cache_read_input_tokens": raw.get("cache_read_input_tokens"),
            "cache_creation_input_tokens": raw.get("cache_creation_input_tokens")}


def _one_hour_cache(value, depth: int = 0) -> bool:
    if depth > 64:
        return False
    if isinstance(value, list):
        return any(_one_hour_cache(item, depth + 1) for item in value)
    if not isinstance(value, dict):
        return False
    if field(value.get("cache_control"), "ttl") not in (None, "5m"):
        return True
    return any(_one_hour_cache(item, depth + 1) for item in value.values() if isinstance(item, list | dict))


def _unpriced(name: str, why: str) -> errors.GatewayError:
    return errors.bad_request(f"'{name}' is not offered on this gateway: {why}, at a price the catalog does not "
                              "know.", name, "unpriced_option")


def _check_context_management(value) -> None:
    """Context edits that clear thinking or old tool uses from the prompt (fewer input tokens, never more)."""
    if value is None:
        return
    edits = value.get("edits") if isinstance(value, dict) else None
    if not isinstance(value, dict) or set(value) - {"edits"} or not isinstance(edits, list) or not all(
            isinstance(edit, dict) and edit.get("type") in CONTEXT_EDITS for edit in edits):
        raise _unpriced("context_management", "only the edits clearing thinking or tool uses "
                        f"({', '.join(sorted(CONTEXT_EDITS))}) are priced")


def _check_output_config(value) -> None:
    """An effort level: how much of max_tokens the model spends, never more than was held."""
    if value is None:
        return
    if not isinstance(value, dict) or set(value) - {"effort"} or value.get("effort", "high") not in EFFORTS:
        raise _unpriced("output_config", f"only an effort of {', '.join(sorted(EFFORTS))} is priced")


class MessagesTally(sse.StreamTally):
    def __init__(self) -> None:
        super().__init__()
        self.reported: dict = {}  # message_start's usage, then each message_delta's fields over it
        self.delta_seen = False


NATIVE_PROVIDER = "anthropic"  # whose names Anthropic's clients send bare (Claude Code: `claude-opus-4-8`)


class Messages(ApiFormat):
    endpoint = "messages"

    def qualified_model(self, name: str) -> str:
        """A bare model name (no `provider/`) is Anthropic's: Claude Code, configured with nothing but
        ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL, asks for its default model by Anthropic's name."""
        return name if "/" in name else f"{NATIVE_PROVIDER}/{name}"

    def check_shape(self, body: dict) -> None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise errors.bad_request("'messages' must be a non-empty array.", "messages", "invalid_messages")
        require_stream_flag(body)

    def validate(self, body: dict) -> None:
        if body.get("max_tokens") is None:
            raise errors.bad_request("'max_tokens' is required.", "max_tokens", "invalid_value")
        hold_sizing.whole_number(body, "max_tokens", 1, hold_sizing.MAX_OUTPUT_LIMIT)
        if body.get("service_tier") not in STANDARD_TIERS:
            raise _unpriced("service_tier", "only the standard tier is priced")
        if _one_hour_cache([body.get("system"), body.get("messages"), body.get("tools")]):
            raise _unpriced("cache_control", "only 5-minute cache writes are priced (ttl '5m')")
        _check_context_management(body.get("context_management"))
        _check_output_config(body.get("output_config"))

    def upstream_body(self, body: dict, price: ModelPrice, provider: Provider, output_limit: int) -> dict:
        outgoing = dict(body)
        outgoing["model"] = price.upstream_model
        outgoing["max_tokens"] = output_limit  # what was held: the provider cannot produce more
        outgoing["stream"] = True  # always: message_delta brings the output usage (onysoft.api_formats)
        return outgoing

    def upstream_headers(self, provider_key: str, stream: bool, client_headers) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json",
                   "anthropic-version": (client_headers or {}).get("anthropic-version") or DEFAULT_VERSION}
        if provider_key:
            headers["x-api-key"] = provider_key
        betas = [b.strip() for b in ((client_headers or {}).get("anthropic-beta") or "").split(",")]
        allowed = [b for b in betas if b in ALLOWED_BETAS]
        if allowed:
            headers["anthropic-beta"] = ",".join(allowed)
        return headers

    def wants_usage(self, body: dict) -> bool:
        return True

    def read_usage(self, raw, *, output_expected: bool = True, request_id: str = "") -> Usage | None:
        return provider_usage.read(as_chat_usage(raw), output_expected=output_expected, request_id=request_id)

    def assembler(self):
        return answer_assembly.MessagesAnswer()

    def new_tally(self) -> MessagesTally:
        return MessagesTally()

    def inspect(self, event: bytes, tally: sse.StreamTally) -> str:
        assert isinstance(tally, MessagesTally)
        payload = sse.event_json(event)
        kind = field(payload, "type")
        if kind == "content_block_delta":
            delta = payload.get("delta")
            for name in ("text", "thinking", "partial_json"):
                tally.delivered(field(delta, name))
        elif kind == "message_start":
            usage = field(payload.get("message"), "usage")
            tally.reported = dict(usage) if isinstance(usage, dict) else {}
        elif kind == "message_delta":
            usage = payload.get("usage")
            if isinstance(usage, dict):  # cumulative counts: the latest wins, field by field
                tally.reported.update({k: usage[k] for k in USAGE_FIELDS if usage.get(k) is not None})
            tally.delta_seen = True
            tally.usage = tally.reported
        elif kind == "message_stop":
            tally.done = True
            return FINAL
        return PASS

    def stream_complete(self, tally: sse.StreamTally) -> bool:
        return tally.done and tally.usage is not None

    def final_usage(self, tally: sse.StreamTally):
        return tally.usage  # set only by the event that carries the final usage

    def error_body(self, error: errors.GatewayError) -> bytes:
        return json.dumps(error_envelope(error.status, error.message)).encode()

    def stream_error(self, error: errors.GatewayError) -> bytes:
        return f"event: error\ndata: {json.dumps(error_envelope(error.status, error.message))}\n\n".encode()
