"""What differs between the APIs the gateway speaks, and nothing else: one ApiFormat per route.

The hold → forward → settle path (onysoft.forwarding, onysoft.billing, onysoft.hold_sizing) is one for every
route. A format says how a request body is checked, what goes upstream (always a stream with its usage where the
API streams, the output limit in its field, the provider's headers), where the usage is in a stream or an
answer, how a whole answer is assembled from a stream (onysoft.answer_assembly), and how an error is shaped.

Formats: `chat.completions` and `embeddings` (OpenAI), `responses` (OpenAI's Responses API,
onysoft.api_formats.responses) and `messages` (Anthropic's Messages API, onysoft.api_formats.messages).
"""

import json

from onysoft import answer_assembly, errors, hold_sizing, provider_usage, sse, wire_json
from onysoft.catalog import ModelPrice
from onysoft.provider_usage import Usage
from onysoft.providers import Provider

# What the stream relay does with one event (ApiFormat.inspect).
PASS, USAGE_ONLY, FINAL = "pass", "usage_only", "final"


def field(container, name: str):
    """container[name] when container is an object: provider JSON is hostile, any level may be anything."""
    return container.get(name) if isinstance(container, dict) else None


def require_stream_flag(body: dict) -> None:
    if not isinstance(body.get("stream", False), bool):
        raise errors.bad_request("'stream' must be true or false.", "stream")


class ApiFormat:
    """OpenAI's chat completions: the base every other format adjusts."""

    endpoint = "chat.completions"
    streams = True

    def check_shape(self, body: dict) -> None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise errors.bad_request("'messages' must be a non-empty array.", "messages", "invalid_messages")
        require_stream_flag(body)
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise errors.bad_request("'stream_options' must be an object.", "stream_options")

    def validate(self, body: dict) -> None:
        hold_sizing.validate(self.endpoint, body)

    def qualified_model(self, name: str) -> str:
        """The catalog's `provider/model` name a request's `model` stands for (on OpenAI's routes: itself)."""
        return name

    def upstream_body(self, body: dict, price: ModelPrice, provider: Provider, output_limit: int) -> dict:
        outgoing = dict(body)
        outgoing["model"] = price.upstream_model
        outgoing.pop("models", None)  # fallbacks are the gateway's, never the provider's
        outgoing.pop("store", None)  # never stored at the provider (absent is false; validate refused true)
        # Always a stream, with its usage, whatever the client asked for (see the module's doc).
        outgoing["stream"] = True
        outgoing["stream_options"] = {**(outgoing.get("stream_options") or {}), "include_usage": True}
        # One output limit, the provider's field, what was held: the provider cannot produce more than that.
        for name in hold_sizing.OUTPUT_LIMIT_FIELDS:
            outgoing.pop(name, None)
        outgoing[provider.output_limit_field] = output_limit
        return outgoing

    def upstream_headers(self, provider_key: str, stream: bool, client_headers) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
        if provider_key:
            headers["authorization"] = f"Bearer {provider_key}"
        return headers

    def wants_usage(self, body: dict) -> bool:
        """Whether the client asked for the stream's usage event (else the one the gateway asked for is dropped)."""
        return bool((body.get("stream_options") or {}).get("include_usage"))

    # ------------------------------------------------------------------ usage

    def read_usage(self, raw, *, output_expected: bool = True, request_id: str = "") -> Usage | None:
        return provider_usage.read(raw, output_expected=output_expected, request_id=request_id)

    def assembler(self):
        """What puts a whole answer together from the stream, for a client that asked for none."""
        return answer_assembly.ChatAnswer()

    def new_tally(self) -> sse.StreamTally:
        return sse.StreamTally()

    def inspect(self, event: bytes, tally: sse.StreamTally) -> str:
        usage_only = sse.inspect(event, tally)
        if tally.done and sse.event_data(event) == b"[DONE]":
            return FINAL
        return USAGE_ONLY if usage_only else PASS

    def stream_complete(self, tally: sse.StreamTally) -> bool:
        return tally.done or tally.usage is not None

    def final_usage(self, tally: sse.StreamTally):
        """The stream's usage once it is the provider's last word on it (its own chunk, or [DONE] came), else
        None: a usage seen mid-stream may still grow."""
        return tally.usage if (tally.usage_final or tally.done) else None

    # ------------------------------------------------------------------ errors

    def error_body(self, error: errors.GatewayError) -> bytes:
        return error.body()

    def stream_error(self, error: errors.GatewayError) -> bytes:
        return f"data: {json.dumps(error.envelope())}\n\n".encode()


class Embeddings(ApiFormat):
    endpoint = "embeddings"
    streams = False

    def check_shape(self, body: dict) -> None:
        if body.get("input") in (None, "", []):
            raise errors.bad_request("'input' must be a string or a non-empty array.", "input", "invalid_input")

    def upstream_body(self, body: dict, price: ModelPrice, provider: Provider, output_limit: int) -> dict:
        outgoing = dict(body)
        outgoing["model"] = price.upstream_model
        return outgoing

    def assembler(self):
        return None  # embeddings never stream


def rename_model(event_or_payload, name: str):
    """Set the `model` an answer or stream event names (top level, or in its `response` / `message`): with
    fallbacks, the client learns which model answered, by the gateway's name."""
    if not isinstance(event_or_payload, dict):
        return event_or_payload
    for holder in (event_or_payload, event_or_payload.get("response"), event_or_payload.get("message")):
        if isinstance(holder, dict) and "model" in holder:
            holder["model"] = name
    return event_or_payload


def rename_model_in_event(event: bytes, name: str) -> bytes:
    data = sse.event_data(event)
    if data is None or data.strip() == b"[DONE]":
        return event
    try:
        payload = wire_json.loads(data)
    except ValueError:
        return event
    head = b"".join(line + b"\n" for line in event.split(b"\n") if line and not line.startswith(b"data:"))
    return head + b"data: " + wire_json.dumps(rename_model(payload, name)) + b"\n\n"


_FORMATS: dict[str, ApiFormat] = {}


def get(endpoint: str) -> ApiFormat:
    if not _FORMATS:
        from onysoft.api_formats.messages import Messages
        from onysoft.api_formats.responses import Responses

        for fmt in (ApiFormat(), Embeddings(), Responses(), Messages()):
            _FORMATS[fmt.endpoint] = fmt
    return _FORMATS[endpoint]
