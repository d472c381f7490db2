"""POST /v1/messages/count_tokens: how many input tokens a Messages request would have, before sending it.

Forwarded to the provider's own count endpoint (Anthropic's `/v1/messages/count_tokens`, free; the mock's), not
answered by the gateway: only the provider's tokenizer gives the number it will bill, and clients (Claude Code)
use it to decide what fits a context window. An estimate of ours would be the hold's upper bound (bytes, not
tokens): several times too high. Never charged: no hold, no usage record.

The same key checks as every /v1 call: the authorizer, then the key read again (deleted, expired, leaked, a
rotated secret past its grace: 401), the model known (404) and allowed for the key (403), a provider that serves
Anthropic's API (400). It counts as one request in the key's rpm window (no tokens): it is free for the client,
but it spends the platform's rate limit at the provider's count endpoint, which every key shares; so one key
cannot flood it, and a full window answers 429 with the usual headers. A provider whose circuit breaker is open
(onysoft.circuit_breaker) is not asked: 503 `provider_circuit_open` at once; its timeouts count towards opening it.
"""

import json

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse

from onysoft import api_formats, circuit_breaker, errors, overhead, rate_limits, telemetry, upstream
from onysoft.blocking import run_blocking
from onysoft.caller import CallerContext
from onysoft.forwarding import MAX_BODY_BYTES, usable_model
from onysoft.providers import ProviderUnavailable, api_key, get_provider

ENDPOINT = "messages"  # the API whose tokens are counted (providers.json "apis")
UPSTREAM_PATH = "/messages/count_tokens"


def _body(raw: bytes) -> dict:
    if len(raw) > MAX_BODY_BYTES:
        raise errors.GatewayError(413, "Request body is larger than 6 MB (Lambda's request payload limit).",
                                  "invalid_request_error", "request_too_large")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise errors.bad_request("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise errors.bad_request("The request body must be a JSON object.", code="invalid_json")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise errors.bad_request("You must provide a model parameter, like 'anthropic/claude-sonnet-4-5'.", "model",
                                 "missing_model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.bad_request("'messages' must be a non-empty array.", "messages", "invalid_messages")
    return body


def _upstream(model: str, caller: CallerContext):
    """The catalog entry, provider and provider key for `model`, checked as a billed request checks it."""
    price = usable_model(model, caller)
    try:
        provider = get_provider(price.provider)
        if not provider.serves(ENDPOINT):
            raise errors.bad_request(f"The model '{model}' is not offered on this route (its provider "
                                     f"'{provider.name}' does not serve Anthropic's API).", "model",
                                     "model_not_supported")
        key = api_key(provider)
    except ProviderUnavailable:
        raise errors.GatewayError(502, f"The provider '{price.provider}' is not available on this gateway.",
                                  "upstream_error", "provider_unavailable") from None
    return price, provider, key


def _admit(key_hash: str, caller: CallerContext) -> tuple[rate_limits.Usage, rate_limits.Window]:
    """The key read again with its window's counters (one BatchGetItem), then one request counted in the window."""
    from onysoft.proxy_app import read_usable_key  # the one re-read every /v1 route makes

    window = rate_limits.current_window()
    _, _, counters, _ = read_usable_key(key_hash, caller, tuple(window.counter_ids(caller.key_id, caller.shards)))
    return rate_limits.count_unbilled(caller, window, counters), window


async def count_tokens(request: Request, key_hash: str, caller: CallerContext) -> JSONResponse:
    body = _body(await request.body())
    fmt = api_formats.get(ENDPOINT)
    body["model"] = fmt.qualified_model(body["model"])
    telemetry.note(model=body["model"])
    price, provider, provider_key = await run_blocking(_upstream, body["model"], caller)
    # A provider whose circuit breaker is open is not asked (onysoft.circuit_breaker), before the window counts it.
    ticket = circuit_breaker.breaker(provider.name).admit()
    if isinstance(ticket, circuit_breaker.Refused):
        raise ticket.error()
    try:
        return await _count(request, key_hash, caller, body, fmt, price, provider, provider_key, ticket)
    finally:
        ticket.unused()  # not sent (a 429 of the window): says nothing about the provider


async def _count(request: Request, key_hash: str, caller: CallerContext, body: dict, fmt, price, provider,
                 provider_key: str, ticket: circuit_breaker.Ticket) -> JSONResponse:
    usage, window = await run_blocking(_admit, key_hash, caller)
    headers = rate_limits.headers(caller, usage, window)
    outgoing = {name: value for name, value in body.items() if name != "models"}  # fallbacks are the gateway's
    outgoing["model"] = price.upstream_model
    try:
        with overhead.upstream_wait():
            response = await upstream.client_for(provider).post(
                provider.base_url + UPSTREAM_PATH, content=json.dumps(outgoing).encode(),
                headers=fmt.upstream_headers(provider_key, False, request.headers))
    except httpx.HTTPError as exc:
        ticket.failed()
        error = upstream.error_from_exception(provider, exc)
        error.headers.update(headers)
        raise error from None
    ticket.answered()
    if response.status_code != 200:
        error = upstream.error_from_status(provider, response.status_code, response.content, response.headers)
        error.headers.update(headers)
        raise error
    try:
        payload = response.json()
    except ValueError:
        payload = None
    tokens = payload.get("input_tokens") if isinstance(payload, dict) else None
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise errors.GatewayError(502, f"The {provider.name} provider sent a malformed token count.",
                                  "upstream_error", "upstream_malformed_response", headers=headers)
    return JSONResponse({**payload, "input_tokens": tokens}, headers=headers)
