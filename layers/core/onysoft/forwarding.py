"""POST /v1/chat/completions and /v1/embeddings: validate, hold, forward, settle.

The body goes upstream as the client sent it, but for the model name (the provider's), the stream usage
option (always asked for, so a stream is always billed) and, when the hold had to shrink to the balance,
an output cap. The client's key never goes upstream.
"""

import asyncio
import json
import logging
import math
import time
import uuid
from decimal import Decimal

import anyio
import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from onysoft import billing, errors, rate_limits, sse, telemetry, upstream
from onysoft.caller import CallerContext
from onysoft.catalog import CatalogCache, ModelPrice
from onysoft.hold_sizing import ChargeFactors, HoldPlan, choices, plan_hold, shrink_to_balance
from onysoft.providers import Provider, ProviderUnavailable, api_key, get_provider

logger = logging.getLogger("onysoft.forwarding")
REQUEST_ID_HEADER = "x-onysoft-request-id"
MAX_BODY_BYTES = 6 * 1024 * 1024  # Lambda's request payload limit (API Gateway's own 10 MB never applies)
catalog_cache = CatalogCache()


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: no provider accepts it, and it cannot be sent on as JSON
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _not_json_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: Python's extension, not JSON


def _parse_body(raw: bytes, endpoint: str) -> dict:
    if len(raw) > MAX_BODY_BYTES:
        raise errors.GatewayError(413, "Request body is larger than 6 MB (Lambda's request payload limit).",
                                  "invalid_request_error", "request_too_large")
    try:
        body = json.loads(raw, parse_float=_finite_float, parse_constant=_not_json_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting is bad input too
        raise errors.bad_request("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise errors.bad_request("The request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise errors.bad_request("You must provide a model parameter, like 'openai/gpt-4o-mini'.", "model",
                                 "missing_model")
    if endpoint == "chat.completions":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise errors.bad_request("'messages' must be a non-empty array.", "messages", "invalid_messages")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise errors.bad_request("'stream' must be true or false.", "stream")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise errors.bad_request("'stream_options' must be an object.", "stream_options")
    elif body.get("input") in (None, "", []):
        raise errors.bad_request("'input' must be a string or a non-empty array.", "input", "invalid_input")
    return body


def _model_and_factors(model: str, caller: CallerContext) -> ChargeFactors:
    price: ModelPrice | None = catalog_cache.model(model)
    if price is None:
        raise errors.not_found(f"The model '{model}' does not exist or is not enabled on this gateway.",
                               "model_not_found", "model")
    if caller.models and model not in caller.models:
        raise errors.GatewayError(403, f"This API key is not allowed to use the model '{model}'.",
                                  "invalid_request_error", "model_not_allowed", "model")
    if caller.currency == "USD":
        return ChargeFactors(price, caller.markup_bp, Decimal(1), "")
    fx = catalog_cache.fx("USDTRY")
    if fx is None:
        logger.error("no USDTRY rate in the catalog")
        raise errors.GatewayError(500, "The gateway has no USD→TRY rate configured. Nothing was charged.",
                                  "server_error", "fx_rate_missing")
    return ChargeFactors(price, caller.markup_bp, fx[0], fx[1])


def _provider_and_key(price: ModelPrice) -> tuple[Provider, str]:
    try:
        provider = get_provider(price.provider)
        return provider, api_key(provider)
    except ProviderUnavailable as exc:
        logger.error("provider unavailable", extra={"provider": price.provider, "why": str(exc)})
        raise errors.GatewayError(502, f"The provider '{price.provider}' is not available on this gateway.",
                                  "upstream_error", "provider_unavailable") from None


def _hold(request_id: str, key_hash: str, caller: CallerContext, plan: HoldPlan, factors: ChargeFactors,
          endpoint: str, body: dict) -> billing.Hold:
    common = dict(request_id=request_id, key_hash=key_hash, caller=caller, factors=factors, endpoint=endpoint,
                  stream=bool(body.get("stream")), model=body["model"])
    try:
        return billing.place_hold(plan=plan, **common)
    except billing.HoldRefused as refused:
        affordable = refused.affordable_micros
        smaller = shrink_to_balance(plan, affordable, body, factors) if affordable is not None else None
        if smaller is None:
            raise billing.refusal_error(caller, plan.micros, refused) from None
        try:
            return billing.place_hold(plan=smaller, attempt=1, **common)
        except billing.HoldRefused as again:
            raise billing.refusal_error(caller, smaller.micros, again) from None


def _upstream_body(body: dict, endpoint: str, price: ModelPrice, provider: Provider, hold: billing.Hold) -> bytes:
    outgoing = dict(body)
    outgoing["model"] = price.upstream_model
    if endpoint == "chat.completions":
        if outgoing.get("stream"):
            outgoing["stream_options"] = {**(outgoing.get("stream_options") or {}), "include_usage": True}
        if hold.plan.shrunk:  # the balance only covers this many output tokens
            outgoing[provider.output_limit_field] = hold.plan.output_tokens // choices(body)
    return json.dumps(outgoing).encode()


async def forward(request: Request, endpoint: str, key_hash: str, caller: CallerContext) -> Response:
    try:
        return await _forward(request, endpoint, key_hash, caller)
    except errors.GatewayError as error:
        if "x-ratelimit-limit-requests" not in error.headers:  # refused before the hold counted it
            window = rate_limits.current_window()
            usage = await _window_usage(caller, window)
            if usage is not None:
                error.headers.update(rate_limits.headers(caller, usage, window))
        raise


async def _forward(request: Request, endpoint: str, key_hash: str, caller: CallerContext) -> Response:
    raw = await request.body()
    body = _parse_body(raw, endpoint)
    telemetry.note(model=body.get("model"))
    factors = await run_in_threadpool(_model_and_factors, body["model"], caller)
    provider, provider_key = await run_in_threadpool(_provider_and_key, factors.price)
    plan = plan_hold(endpoint, body, len(raw), factors)
    request_id = "req_" + uuid.uuid4().hex[:24]  # ≤ 36 chars with its DynamoDB token prefix
    hold = await run_in_threadpool(_hold, request_id, key_hash, caller, plan, factors, endpoint, body)
    # The x-ratelimit headers need the window's count after this request: read it while the upstream works.
    window = rate_limits.Window(hold.window_start)
    counted = asyncio.ensure_future(_window_usage(caller, window))
    client = upstream.client_for(provider)
    try:
        outgoing = client.build_request(
            "POST", upstream.upstream_url(provider, endpoint),
            content=_upstream_body(body, endpoint, factors.price, provider, hold),
            headers={"authorization": f"Bearer {provider_key}", "content-type": "application/json",
                     "accept": "text/event-stream" if body.get("stream") else "application/json"},
        )
    except Exception:  # a bug between hold and send must not keep the customer's money until the sweeper
        await run_in_threadpool(billing.release, hold, code="internal_error", message="request not sent")
        raise
    sent_at = time.monotonic()
    try:
        response = await client.send(outgoing, stream=True)
    except httpx.HTTPError as exc:
        error = upstream.error_from_exception(provider, exc)
        await run_in_threadpool(billing.release, hold, code=error.code or "upstream_error",
                                message=str(exc) or error.message)
        error.headers.update(_headers(hold, caller, window, await counted))
        raise error from None
    telemetry.note(upstream_ms=int((time.monotonic() - sent_at) * 1000))
    headers = _headers(hold, caller, window, await counted)
    if response.status_code != 200:
        content = await response.aread()
        await response.aclose()
        error = upstream.error_from_status(provider, response.status_code, content, response.headers)
        await run_in_threadpool(billing.release, hold, code=error.code or "upstream_error", message=error.message,
                                upstream_status=response.status_code)
        error.headers.update(headers)
        raise error
    if endpoint == "chat.completions" and body.get("stream"):
        content_type = response.headers.get("content-type", "")
        if content_type and "event-stream" not in content_type:
            # A 200 that is not a stream is no answer to a stream request: 502, as a malformed 200 is.
            await response.aclose()
            raise await _malformed(provider, hold, headers)
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_relay_stream(response, hold, wants_usage, len(raw)), media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})
    return await _relay_whole(response, provider, hold, headers, len(raw))


async def _window_usage(caller: CallerContext, window: rate_limits.Window) -> rate_limits.Usage | None:
    """The window's counts for the x-ratelimit headers; None if they cannot be read (the answer still goes out)."""
    try:
        return await run_in_threadpool(rate_limits.read_usage, caller.key_id, window)
    except Exception:
        logger.exception("rate-limit counter unreadable", extra={"key_id": caller.key_id})
        return None


def _headers(hold: billing.Hold, caller: CallerContext, window: rate_limits.Window,
             usage: rate_limits.Usage | None) -> dict[str, str]:
    limits = rate_limits.headers(caller, usage, window) if usage is not None else {}
    return {REQUEST_ID_HEADER: hold.request_id, **limits}


async def _relay_whole(response: httpx.Response, provider: Provider, hold: billing.Hold, headers: dict,
                       body_size: int) -> Response:
    try:
        content = await response.aread()
    except httpx.HTTPError as exc:
        error = upstream.error_from_exception(provider, exc)
        await run_in_threadpool(billing.release, hold, code=error.code or "upstream_error", message=error.message)
        error.headers.update(headers)
        raise error from None
    finally:
        await response.aclose()
    try:
        payload = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict):
        # A 200 that is not a JSON object is no answer: the client gets 502 and pays nothing.
        raise await _malformed(provider, hold, headers)
    prompt, completion, estimated = _usage_of(payload, body_size)
    # Settled before the body goes out: Lambda may freeze the instance once the response has ended.
    try:
        await run_in_threadpool(billing.settle, hold, prompt_tokens=prompt, completion_tokens=completion,
                                estimated=estimated, upstream_status=response.status_code)
    except billing.AlreadyClosed:  # settled by an earlier attempt whose answer was lost: charged once
        logger.warning("hold already closed", extra={"request_id": hold.request_id})
    return Response(content, status_code=200, media_type="application/json", headers=headers)


async def _malformed(provider: Provider, hold: billing.Hold, headers: dict) -> errors.GatewayError:
    """Release the hold of a request the provider answered with an unusable 200; the error to raise."""
    error = errors.GatewayError(502, f"The {provider.name} provider sent a malformed response. Nothing was "
                                     "charged.", "upstream_error", "upstream_malformed_response")
    await run_in_threadpool(billing.release, hold, code=error.code, message=error.message, upstream_status=200)
    error.headers.update(headers)
    return error


def _usage_of(payload: dict, body_size: int) -> tuple[int, int, bool]:
    """(prompt, completion, estimated): the provider's usage, or an estimate (~4 characters a token) when it
    sent none, so an answer is never free and never charged beyond what it holds."""
    usage = payload.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        completion = usage.get("completion_tokens")
        return usage["prompt_tokens"], completion if isinstance(completion, int) else 0, False
    chars = 0
    for choice in payload.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        chars += len(content) if isinstance(content, str) else 0
    return (body_size + 3) // 4, (chars + 3) // 4, True


async def _relay_stream(response: httpx.Response, hold: billing.Hold, wants_usage: bool, body_size: int):
    tally = sse.StreamTally()
    buffer = b""
    held_back: list[bytes] = []  # the final [DONE]: sent only after the settle
    complete = False
    try:
        async for raw in response.aiter_raw():
            events, buffer = sse.split_events(buffer + raw)
            out = []
            for event in events:
                if sse.inspect(event, tally) and not wants_usage:
                    continue  # the usage chunk the gateway asked for, not the client
                if tally.done and not held_back and sse.event_data(event) == b"[DONE]":
                    held_back.append(event)
                    continue
                out.append(event)
            if out:
                yield b"".join(out)
        complete = tally.done or tally.usage is not None
    except httpx.HTTPError:
        logger.warning("upstream stream cut", extra={"request_id": hold.request_id})
    finally:
        with anyio.CancelScope(shield=True):  # a client that went away must not stop the billing
            await response.aclose()
            await run_in_threadpool(_settle_stream, hold, tally, complete, body_size)
    if held_back:
        yield b"".join(held_back)


def _settle_stream(hold: billing.Hold, tally: sse.StreamTally, complete: bool, body_size: int) -> None:
    try:
        if complete and tally.usage is not None:
            billing.settle(hold, prompt_tokens=int(tally.usage.get("prompt_tokens", 0)),
                           completion_tokens=int(tally.usage.get("completion_tokens", 0)), upstream_status=200)
        else:
            # Cut or abandoned: the prompt and what was delivered so far, estimated and marked so.
            billing.settle(hold, prompt_tokens=(body_size + 3) // 4,
                           completion_tokens=tally.estimated_completion_tokens(), estimated=True, upstream_status=200)
    except billing.AlreadyClosed:
        logger.warning("hold already closed", extra={"request_id": hold.request_id})
