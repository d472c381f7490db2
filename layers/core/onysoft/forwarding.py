"""POST /v1/chat/completions and /v1/embeddings: validate, hold, forward, settle.

The body goes upstream as the client sent it, but for the model name (the provider's), the stream usage
option (always asked for, so a stream is always billed) and the output limit, which belongs to the gateway:
exactly one, in the provider's field, equal to the held output per answer (hold_sizing). The client's key
never goes upstream.

A call that reached the upstream is never free: a deadline before the function's timeout ends a long stream
and settles what was delivered; a settle that fails is retried and, failing still, left pending for the
sweeper to settle (never released).
"""

import asyncio
import json
import logging
import math
import os
import time
import uuid
from decimal import Decimal

import anyio
import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from onysoft import billing, errors, hold_sizing, provider_usage, rate_limits, sse, telemetry, upstream
from onysoft.caller import CallerContext
from onysoft.catalog import CatalogCache, ModelPrice
from onysoft.hold_sizing import ChargeFactors, HoldPlan, plan_hold, shrink_to_balance
from onysoft.provider_usage import Usage
from onysoft.providers import Provider, ProviderUnavailable, api_key, get_provider

logger = logging.getLogger("onysoft.forwarding")
REQUEST_ID_HEADER = "x-onysoft-request-id"
MAX_BODY_BYTES = 6 * 1024 * 1024  # Lambda's request payload limit (API Gateway's own 10 MB never applies)
catalog_cache = CatalogCache()
FUNCTION_TIMEOUT_SECONDS = 900  # template.yaml's ProxyFunction Timeout (a template test keeps them equal)
DEADLINE_MARGIN_SECONDS = 30  # time to settle and answer before Lambda would end the invocation
SETTLE_ATTEMPTS = 5


def deadline_seconds() -> float:
    """How long one request may last in the proxy: ONYSOFT_PROXY_DEADLINE_SECONDS, or the function's timeout
    minus a margin."""
    configured = os.environ.get("ONYSOFT_PROXY_DEADLINE_SECONDS")
    return float(configured) if configured else float(FUNCTION_TIMEOUT_SECONDS - DEADLINE_MARGIN_SECONDS)


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
                  stream=bool(body.get("stream")), model=body["model"], sending=True)
    try:
        return billing.place_hold(plan=plan, **common)
    except billing.HoldRefused as refused:
        affordable = refused.affordable_micros
        smaller = shrink_to_balance(plan, affordable, factors) if affordable is not None else None
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
        # One output limit, the provider's field, what was held: the provider cannot produce more than that.
        for field in hold_sizing.OUTPUT_LIMIT_FIELDS:
            outgoing.pop(field, None)
        outgoing[provider.output_limit_field] = hold.plan.output_limit
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
    started = time.monotonic()
    raw = await request.body()
    body = _parse_body(raw, endpoint)
    telemetry.note(model=body.get("model"))
    hold_sizing.validate(endpoint, body)
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
    # The hold's record already says `sent_at` (place_hold(sending=True)): from now on, never free.
    upstream_started = time.monotonic()
    try:
        response = await client.send(outgoing, stream=True)
    except httpx.HTTPError as exc:
        error = upstream.error_from_exception(provider, exc)
        await run_in_threadpool(billing.release, hold, code=error.code or "upstream_error",
                                message=str(exc) or error.message)
        error.headers.update(_headers(hold, caller, window, await counted))
        raise error from None
    telemetry.note(upstream_ms=int((time.monotonic() - upstream_started) * 1000))
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
        deadline_at = started + deadline_seconds()
        return StreamingResponse(_relay_stream(response, hold, wants_usage, len(raw), deadline_at),
                                 media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})
    return await _relay_whole(response, provider, hold, headers, len(raw), started + deadline_seconds())


def settle(hold: billing.Hold, usage: Usage, upstream_status: int | None = 200) -> None:
    """Settle, retrying any failure with backoff. Never turned into a release: if every attempt fails, the
    hold stays pending (its request marked sent) and the sweeper settles it on its prompt bound."""
    for attempt in range(SETTLE_ATTEMPTS):
        try:
            billing.settle(hold, usage, upstream_status=upstream_status)
            return
        except billing.AlreadyClosed:  # settled by an earlier attempt whose answer was lost: charged once
            logger.warning("hold already closed", extra={"request_id": hold.request_id})
            return
        except Exception:
            logger.exception("settle failed", extra={"request_id": hold.request_id, "attempt": attempt + 1})
            if attempt + 1 < SETTLE_ATTEMPTS:
                time.sleep(min(0.05 * 2 ** attempt, 1.0))
    logger.error("settle failed on every attempt: left for the sweeper", extra={"request_id": hold.request_id})


def _media_tokens(hold: billing.Hold) -> int:
    return hold.plan.media_parts * hold.plan.tokens_per_image


def deadline_error(provider: Provider) -> errors.GatewayError:
    return errors.GatewayError(
        504, f"The request reached the gateway's time limit ({deadline_seconds():g} s) before the {provider.name} "
             "provider finished; what was delivered is billed.", "server_error", "gateway_deadline")


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
                       body_size: int, deadline_at: float) -> Response:
    try:
        content = await asyncio.wait_for(response.aread(), max(deadline_at - time.monotonic(), 0.001))
    except TimeoutError:
        await response.aclose()
        usage = provider_usage.estimate(body_size, _media_tokens(hold), 0)
        await run_in_threadpool(settle, hold, usage, None)
        error = deadline_error(provider)
        error.headers.update(headers)
        raise error from None
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
    usage = _usage_of(payload, body_size, hold)
    # Settled before the body goes out: Lambda may freeze the instance once the response has ended.
    await run_in_threadpool(settle, hold, usage, response.status_code)
    return Response(content, status_code=200, media_type="application/json", headers=headers)


async def _malformed(provider: Provider, hold: billing.Hold, headers: dict) -> errors.GatewayError:
    """Release the hold of a request the provider answered with an unusable 200; the error to raise."""
    error = errors.GatewayError(502, f"The {provider.name} provider sent a malformed response. Nothing was "
                                     "charged.", "upstream_error", "upstream_malformed_response")
    await run_in_threadpool(billing.release, hold, code=error.code, message=error.message, upstream_status=200)
    error.headers.update(headers)
    return error


def _usage_of(payload: dict, body_size: int, hold: billing.Hold) -> Usage:
    """The provider's usage, or an estimate (~4 characters a token) when it sent none or nonsense: an answer
    is never free, and never billed on numbers that cannot be trusted."""
    reported = provider_usage.read(payload.get("usage"), output_expected=hold.plan.output_tokens > 0,
                                   request_id=hold.request_id)
    if reported is not None:
        return reported
    chars = 0
    for choice in payload.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        chars += len(content) if isinstance(content, str) else 0
    return provider_usage.estimate(body_size, _media_tokens(hold), (chars + 3) // 4)


async def _relay_stream(response: httpx.Response, hold: billing.Hold, wants_usage: bool, body_size: int,
                        deadline_at: float):
    tally = sse.StreamTally()
    buffer = b""
    held_back: list[bytes] = []  # the final [DONE]: sent only after the settle
    complete = timed_out = False
    chunks = response.aiter_raw()
    try:
        while True:
            remaining = deadline_at - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                raw = await asyncio.wait_for(chunks.__anext__(), remaining)
            except StopAsyncIteration:
                break
            except TimeoutError:
                timed_out = True
                logger.warning("stream reached the proxy's deadline", extra={"request_id": hold.request_id})
                break
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
        complete = not timed_out and (tally.done or tally.usage is not None)
    except httpx.HTTPError:
        logger.warning("upstream stream cut", extra={"request_id": hold.request_id})
    finally:
        with anyio.CancelScope(shield=True):  # a client that went away must not stop the billing
            await response.aclose()
            await run_in_threadpool(_settle_stream, hold, tally, complete, body_size)
    if timed_out:
        error = {"error": {"message": f"The stream reached the gateway's time limit ({deadline_seconds():g} s) "
                                      "and was ended; what was delivered is billed.",
                           "type": "server_error", "code": "gateway_deadline", "param": None}}
        yield f"data: {json.dumps(error)}\n\n".encode()
    elif held_back:
        yield b"".join(held_back)


def _settle_stream(hold: billing.Hold, tally: sse.StreamTally, complete: bool, body_size: int) -> None:
    reported = provider_usage.read(tally.usage, request_id=hold.request_id) if complete else None
    # Cut, abandoned, past the deadline, or nonsense usage: the prompt and what was delivered, estimated.
    usage = reported or provider_usage.estimate(body_size, _media_tokens(hold), tally.estimated_completion_tokens())
    settle(hold, usage, 200)
