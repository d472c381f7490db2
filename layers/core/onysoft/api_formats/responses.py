"""OpenAI's Responses API (POST /v1/responses), for the providers providers.json marks with "responses".

- The output limit is `max_output_tokens` (reasoning included): the gateway holds it and sends it.
- Usage: `usage.input_tokens` (cached reads inside, `input_tokens_details.cached_tokens`) and `output_tokens`
  (reasoning inside, `output_tokens_details.reasoning_tokens`); in a stream the final `response.completed`
  (or `response.incomplete` / `response.failed`) event carries the response with its usage.
- State kept at the provider is refused (docs/ARCHITECTURE.md, "Stateful APIs"): every request goes upstream
  under the platform's one provider account, so a stored response, a `previous_response_id`, a conversation,
  a stored prompt or a background job would be readable by every other key that learns its id, and would
  outlive the key that made it. `store` is sent as false; `store: true`, `previous_response_id`,
  `conversation`, `prompt`, `background: true` and `item_reference` input items are a 400 (`stateful_option`).
- Hosted tools (web search, file search, code interpreter, image generation, computer use, MCP) are billed
  apart from tokens, at prices the catalog does not hold: the allow-list (onysoft.request_policy) refuses them
  (400 `unpriced_option`). Function and custom tools are fine.
"""

import json

from onysoft import answer_assembly, errors, hold_sizing, provider_usage, sse
from onysoft.api_formats import FINAL, PASS, ApiFormat, field, require_stream_flag
from onysoft.catalog import ModelPrice
from onysoft.provider_usage import Usage
from onysoft.providers import Provider

STATEFUL = {
    "previous_response_id": "a previous response is stored at the provider under the gateway's account",
    "conversation": "a conversation is stored at the provider under the gateway's account",
    "prompt": "stored prompts live in the gateway's provider account",
}
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
TEXT_DELTAS = frozenset({"response.output_text.delta", "response.reasoning_summary_text.delta",
                         "response.reasoning_text.delta", "response.function_call_arguments.delta",
                         "response.refusal.delta", "response.custom_tool_call_input.delta"})


def as_chat_usage(raw) -> dict | None:
    """The Responses API's usage in chat completions' names, numbers untouched (provider_usage validates them).
    No total: reasoning is inside output_tokens here, never beside it."""
    if not isinstance(raw, dict):
        return None
    return {"prompt_tokens": raw.get("input_tokens"), "completion_tokens": raw.get("output_tokens"),
            "prompt_tokens_details": {"cached_tokens": field(raw.get("input_tokens_details"), "cached_tokens")},
            "completion_tokens_details": {
                "reasoning_tokens": field(raw.get("output_tokens_details"), "reasoning_tokens")}}


def _refuse(name: str, why: str, code: str) -> errors.GatewayError:
    return errors.bad_request(f"'{name}' is not offered on this gateway: {why}.", name, code)


class Responses(ApiFormat):
    endpoint = "responses"

    def check_shape(self, body: dict) -> None:
        given = body.get("input")
        if not (isinstance(given, str) and given) and not (isinstance(given, list) and given):
            raise errors.bad_request("'input' must be a non-empty string or array.", "input", "invalid_input")
        require_stream_flag(body)

    def validate(self, body: dict) -> None:
        hold_sizing.whole_number(body, "max_output_tokens", 1, hold_sizing.MAX_OUTPUT_LIMIT)
        if body.get("store") not in (None, False):
            raise _refuse("store", "responses are not stored at the provider (every key shares the gateway's "
                                   "provider account); send store: false or leave it out", "stateful_option")
        if body.get("background") not in (None, False):
            raise _refuse("background", "background responses are stored at the provider under the gateway's "
                                        "account", "stateful_option")
        for name, why in STATEFUL.items():
            if body.get(name) is not None:
                raise _refuse(name, why, "stateful_option")
        given = body.get("input")
        if isinstance(given, list) and any(field(item, "type") == "item_reference" for item in given):
            raise _refuse("input", "an item_reference names an item stored at the provider under the gateway's "
                                   "account; send the item itself", "stateful_option")
        if body.get("service_tier") not in hold_sizing.STANDARD_SERVICE_TIERS:
            raise _refuse("service_tier", "its price is not in the catalog; use 'auto' or 'default'",
                          "unpriced_option")

    def upstream_body(self, body: dict, price: ModelPrice, provider: Provider, output_limit: int) -> dict:
        outgoing = dict(body)
        outgoing.pop("models", None)
        outgoing["model"] = price.upstream_model
        outgoing["max_output_tokens"] = output_limit  # what was held: the provider cannot produce more
        outgoing["store"] = False  # OpenAI stores by default
        outgoing["stream"] = True  # always: the usage comes with the final event (onysoft.api_formats)
        return outgoing

    def wants_usage(self, body: dict) -> bool:
        return True  # the usage is inside the final event the client needs anyway

    def read_usage(self, raw, *, output_expected: bool = True, request_id: str = "") -> Usage | None:
        return provider_usage.read(as_chat_usage(raw), output_expected=output_expected, request_id=request_id)

    def assembler(self):
        return answer_assembly.ResponsesAnswer()

    def inspect(self, event: bytes, tally: sse.StreamTally) -> str:
        payload = sse.event_json(event)
        kind = field(payload, "type")
        if kind in TEXT_DELTAS:
            tally.delivered(payload.get("delta"))
        elif kind in FINAL_EVENTS:
            usage = field(payload.get("response"), "usage")
            tally.usage = usage if isinstance(usage, dict) else None
            tally.done = True
            return FINAL
        return PASS

    def stream_complete(self, tally: sse.StreamTally) -> bool:
        return tally.done

    def final_usage(self, tally: sse.StreamTally):
        return tally.usage  # set only by the event that carries the final usage

    def stream_error(self, error: errors.GatewayError) -> bytes:
        payload = {"type": "error", "code": error.code, "message": error.message, "param": error.param}
        return f"event: error\ndata: {json.dumps(payload)}\n\n".encode()
