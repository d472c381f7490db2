"""Allow, don't deny: what a route forwards to a provider, and what its media and tools add to the prompt bound
(docs/BILLING.md, "What goes upstream").

A route forwards only the top-level fields, content part types, input item types and tool types it knows how to
price for that provider (providers.json `_routes`, or the provider's own `routes`); anything else is a 400
`unpriced_option` naming it, before any hold, so nothing the catalog cannot price reaches a provider. A media
part (image, audio, document or file) costs what the model's catalog entry bounds it at; a kind the entry has no
bound for is refused, whatever its form (inline or by URL), because its tokens cannot be bounded before the call.
A file the provider stores (`file_id`, a Files API source) is refused too: it lives in the platform's provider
account, visible to every tenant that learns its id, and its size is not in the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from onysoft import errors
from onysoft.catalog import ModelPrice
from onysoft.providers import Provider, RoutePolicy, route_policy

MAX_DEPTH = 64  # a hostile body may nest parts anywhere; deeper than this is not a message


@dataclass(frozen=True)
class InputBound:
    """What the request's media parts and tools add to its prompt bound (beyond the body's bytes)."""

    media_parts: int = 0
    media_tokens: int = 0  # the catalog bounds of the media parts, together
    audio_tokens: int = 0  # the part of media_tokens that is audio (priced at the audio price)
    tool_tokens: int = 0  # what the provider adds for the tools the body names
    payload_bytes: int = 0  # bytes of inline media payloads (base64): bounded by media_tokens, not as text


def unpriced(param: str, why: str) -> errors.GatewayError:
    return errors.bad_request(f"'{param}' is not offered on this gateway: {why}.", param, "unpriced_option")


def check(endpoint: str, body: dict, provider: Provider, price: ModelPrice) -> InputBound:
    """400 for anything the route does not forward for this provider and model; else what the media and tools
    add to the prompt bound."""
    policy = route_policy(provider.name, endpoint)
    for name in body:
        if name not in policy.fields:
            raise unpriced(name, f"the gateway forwards only the fields it knows how to price on this route, "
                                 f"and '{str(name)[:60]}' is not one of them")
    tally = _Tally(policy, price)
    if endpoint == "chat.completions":
        for i, message in enumerate(_list(body.get("messages"))):
            tally.content(_field(message, "content"), f"messages[{i}].content")
    elif endpoint == "messages":
        tally.content(body.get("system"), "system")
        for i, message in enumerate(_list(body.get("messages"))):
            tally.content(_field(message, "content"), f"messages[{i}].content")
    elif endpoint == "responses":
        tally.responses_input(body.get("input"))
    return InputBound(tally.parts, tally.media_tokens, tally.audio_tokens, _tool_tokens(policy, body, endpoint),
                      tally.payload_bytes)


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _field(container, name: str):
    return container.get(name) if isinstance(container, dict) else None


def _tool_type(tool, endpoint: str) -> str:
    """A tool's type; Anthropic's custom tools may leave it out (elsewhere a tool without one is not a tool)."""
    kind = _field(tool, "type")
    if kind is None and isinstance(tool, dict) and endpoint == "messages":
        return "custom"
    return kind if isinstance(kind, str) else "(none)"


def _allowed_tool(policy: RoutePolicy, kind: str) -> str | None:
    """The policy entry `kind` matches: its name, or a prefix ending in '_' (versioned tools: bash_20250124)."""
    for allowed in policy.tools:
        if kind == allowed or (allowed.endswith("_") and kind.startswith(allowed)):
            return allowed
    return None


def _tool_tokens(policy: RoutePolicy, body: dict, endpoint: str) -> int:
    tools = body.get("tools")
    if tools is None:
        return 0
    if not isinstance(tools, list):
        raise errors.bad_request("'tools' must be an array.", "tools")
    extra = policy.tool_tokens.get("*", 0) if tools else 0
    for i, tool in enumerate(tools):
        kind = _tool_type(tool, endpoint)
        allowed = _allowed_tool(policy, kind)
        if allowed is None:
            raise unpriced(f"tools[{i}]", f"the tool type {kind[:40]!r} is billed apart from tokens or adds what "
                                          "the catalog cannot price")
        extra += policy.tool_tokens.get(allowed, 0)
    return extra


class _Tally:
    def __init__(self, policy: RoutePolicy, price: ModelPrice):
        self.policy, self.price = policy, price
        self.parts = self.media_tokens = self.audio_tokens = self.payload_bytes = 0

    def content(self, value, path: str, depth: int = 0) -> None:
        """A message's content: a string, or a list of typed parts (a tool result's content nests parts)."""
        if depth > MAX_DEPTH or not isinstance(value, list):
            return
        for j, part in enumerate(value):
            self.part(part, f"{path}[{j}]", depth + 1)

    def part(self, part, path: str, depth: int) -> None:
        if not isinstance(part, dict):
            return  # the provider refuses a malformed part before doing any work
        kind = part.get("type")
        if kind not in self.policy.parts:
            raise unpriced(path, f"the part type {str(kind)[:40]!r} is not one the gateway can bound or price")
        _refuse_stored_files(part, path)
        media = self.policy.parts[kind]
        if media is not None:
            bound = self.price.media_bound(media)
            if bound is None:
                why = ("its audio tokens have no price in the catalog" if media == "audio" else
                       f"the catalog gives this model no bound for {media} parts, so their tokens cannot be "
                       "bounded before the call")
                raise unpriced(path, why)
            self.parts += 1
            self.media_tokens += bound
            self.audio_tokens += bound if media == "audio" else 0
            self.payload_bytes += _inline_payload_bytes(part)
        if kind == "tool_result":  # Anthropic: a tool result's content is parts again
            self.content(part.get("content"), f"{path}.content", depth + 1)

    def responses_input(self, given) -> None:
        for i, item in enumerate(_list(given)):
            kind = _field(item, "type") or ("message" if isinstance(item, dict) and "role" in item else None)
            if kind not in self.policy.items:
                raise unpriced(f"input[{i}]", f"the input item type {str(kind)[:40]!r} is not one the gateway "
                                              "forwards")
            if kind == "message":
                self.content(_field(item, "content"), f"input[{i}].content")


def _refuse_stored_files(part: dict, path: str) -> None:
    """A file kept at the provider (an id, not its bytes or URL) is refused (see the module's doc)."""
    holders = [part, part.get("file"), part.get("source")]
    if any(_field(holder, "file_id") is not None for holder in holders) or _field(part.get("source"), "type") == "file":
        raise unpriced(path, "a file stored at the provider lives in the platform's provider account; send its "
                             "content (or a URL) instead")


def _inline_payload_bytes(part: dict) -> int:
    """The length of a part's inline base64 payload (a data: URL, `input_audio.data`, a base64 `source`): those
    body bytes are the media's, bounded by its catalog bound, so they are not counted again as text (a base64
    character is one byte of the body). Text sent as a document (Anthropic's `source.type: text`) stays counted
    as text too: only base64 is taken out."""
    source = part.get("source")
    values = [_field(part.get("image_url"), "url"), part.get("image_url"), _field(part.get("file"), "file_data"),
              part.get("file_data")]
    found = [v for v in values if isinstance(v, str) and v.startswith("data:")]
    audio = _field(part.get("input_audio"), "data")
    if isinstance(audio, str):
        found.append(audio)
    if _field(source, "type") == "base64" and isinstance(_field(source, "data"), str):
        found.append(source["data"])
    return max((len(v) for v in found), default=0)
