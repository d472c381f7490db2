"""POST /v1/chat/completions, /v1/embeddings, /v1/responses and /v1/messages: validate, hold, forward, settle.

One path for every route; what differs between the APIs (body checks, the output limit's field, headers,
where the usage is) is onysoft.api_formats. The body goes upstream as the client sent it, but for the model
name (the provider's), the stream usage option (always asked for, so a stream is always billed) and the output
limit, which belongs to the gateway: exactly one, in the provider's field, equal to the held output per answer
(hold_sizing). The client's key never goes upstream. With fallbacks (onysoft.fallbacks) the models are tried
in order under one hold.

A call that reached the upstream is never free: a deadline before the function's timeout ends a long stream
and settles what was delivered; a settle that fails is retried and, failing still, left pending for the
sweeper to settle (never released).
"""

import asyncio
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from decimal import Decimal

import anyio
import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from onysoft import (
    api_formats,
    billing,
    errors,
    fallbacks,
    provider_usage,
    rate_limits,
    spend_limits,
    sse,
    telemetry,
    upstream,
)
from onysoft.caller import CallerContext
from onysoft.catalog import ModelPrice, catalog_cache
from onysoft.hold_sizing import ChargeFactors, HoldPlan, plan_hold, shrink_to_balance
from onysoft.key_use import note_use, usable_key
from onysoft.models import ApiKey
from onysoft.provider_usage import Usage
from onysoft.providers import Provider, ProviderUnavailable, api_key, get_provider
from onysoft.request_ids import current_request_id
from onysoft.retries import Backoff, retry

logger = logging.getLogger("onysoft.forwarding")
MODEL_HEADER = "x-onysoft-model"  # the model that answered, by the gateway's name (fallbacks)
MAX_BODY_BYTES = 6 * 1024 * 1024  # Lambda's request payload limit (API Gateway's own 10 MB never applies)
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
    fallbacks.adopt_first(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise errors.bad_request("You must provide a model parameter, like 'openai/gpt-4o-mini'.", "model",
                                 "missing_model")
    api_formats.get(endpoint).check_shape(body)
    return body


@dataclass(frozen=True)
class Candidate:
    """One model the request may be answered by: its charge factors, provider and the provider's key."""

    model: str
    factors: ChargeFactors
    provider: Provider
    provider_key: str


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


def _candidates(names: list[tuple[str, bool]], caller: CallerContext, endpoint: str) -> list[Candidate]:
    """Every model the request may go to, each checked as `model` is (404, 403, provider), before the hold; a
    key's default fallback that fails a check is skipped."""
    found = []
    for name, required in names:
        try:
            factors = _model_and_factors(name, caller)
            provider, key = _provider_and_key(factors.price)
            if not provider.serves(endpoint):
                raise errors.bad_request(f"The model '{name}' is not offered on this route (its provider "
                                         f"'{provider.name}' does not serve it).", "model", "model_not_supported")
        except errors.GatewayError:
            if required:
                raise
            logger.warning("key's default fallback skipped", extra={"model": name, "key_id": caller.key_id})
            continue
        found.append(Candidate(name, factors, provider, key))
    return found


def _hold(request_id: str, key_hash: str, caller: CallerContext, plans: list[HoldPlan],
          candidates: list[Candidate], endpoint: str, body: dict
          ) -> tuple[billing.Hold, list[HoldPlan], ApiKey]:
    """The key read again (401 before any money moves: onysoft.key_use), then the hold. Sequential on
    purpose: a key deleted before this read gets no hold, so no usage record, at all."""
    key = usable_key(key_hash, caller)
    return (*_hold_for_candidates(request_id, key_hash, caller, plans, candidates, endpoint, body, key), key)


def _refused(caller: CallerContext, needed: int, refused: billing.HoldRefused, key: ApiKey | None
             ) -> errors.GatewayError:
    """The 402; and when it is the key's spend limit that refused (the answer says the key "has reached its
    spend limit"), Spend Limit Reached, once a period: the counter's old image, returned with the refusal, says
    whether it fired already (then no write). Never fails the answer."""
    error = billing.refusal_error(caller, needed, refused)
    if error.code == "key_spend_limit_reached" and key is not None and not refused.limit_flagged:
        try:
            from onysoft import balance_alerts  # only here: nothing of it on a request that is served

            balance_alerts.mark_limit_reached(key, spend_limits.period_start(caller.limit_reset),
                                              refused.limit_spent_micros or 0, caller.spend_limit_micros)
        except Exception:  # noqa: BLE001 - an event never fails the request
            logger.exception("could not mark the key's spend limit reached")
    return error


def _hold_for_candidates(request_id: str, key_hash: str, caller: CallerContext, plans: list[HoldPlan],
                         candidates: list[Candidate], endpoint: str, body: dict, key: ApiKey | None = None
                         ) -> tuple[billing.Hold, list[HoldPlan]]:
    """One hold for the most expensive candidate (each plan is that model's own bound); when the balance is
    short, every plan shrinks to what it affords. Returns the hold and the plans it covers."""
    def place(plans: list[HoldPlan], attempt: int) -> billing.Hold:
        top = max(range(len(plans)), key=lambda i: plans[i].micros)
        return billing.place_hold(request_id=request_id, key_hash=key_hash, caller=caller, plan=plans[top],
                                  factors=candidates[top].factors, endpoint=endpoint, stream=bool(body.get("stream")),
                                  model=candidates[top].model, attempt=attempt, sending=True)

    try:
        return place(plans, 0), plans
    except billing.HoldRefused as refused:
        needed = max(plan.micros for plan in plans)
        affordable = refused.affordable_micros
        smaller = [shrink_to_balance(plan, affordable, c.factors) if affordable is not None else None
                   for plan, c in zip(plans, candidates, strict=True)]
        if any(plan is None for plan in smaller):
            raise _refused(caller, needed, refused, key) from None
        try:
            return place(smaller, 1), smaller
        except billing.HoldRefused as again:
            raise _refused(caller, max(plan.micros for plan in smaller), again, key) from None


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
    fmt = api_formats.get(endpoint)
    raw = await request.body()
    body = _parse_body(raw, endpoint)
    telemetry.note(model=body.get("model"))
    fmt.validate(body)
    names = fallbacks.candidates(body, caller, endpoint)
    candidates = await run_in_threadpool(_candidates, names, caller, endpoint)
    plans = [plan_hold(endpoint, body, len(raw), c.factors) for c in candidates]
    request_id = current_request_id()  # the one in the answer's x-onysoft-request-id (request_ids.RequestIds)
    held, plans, key = await run_in_threadpool(_hold, request_id, key_hash, caller, plans, candidates, endpoint,
                                               body)
    # While the upstream works: the key's last use (when due), then the window's count after this request for
    # the x-ratelimit headers.
    window = rate_limits.Window(held.window_start)
    counted = asyncio.ensure_future(_note_use_and_window_usage(key, caller, window))
    failed: list[str] = []
    for index, candidate in enumerate(candidates):
        last = index + 1 == len(candidates)
        # Each attempt is billed as its own model, within the one hold (the record says which answered).
        hold = dataclasses.replace(held, plan=plans[index], factors=candidate.factors, attempts=tuple(failed),
                                   answered_model=candidate.model if len(candidates) > 1 else "",
                                   requested_model=body["model"])
        provider = candidate.provider
        client = upstream.client_for(provider)
        try:
            outgoing = client.build_request(
                "POST", upstream.upstream_url(provider, endpoint),
                content=_upstream_body(fmt, body, candidate.factors.price, provider, hold.plan.output_limit),
                headers=fmt.upstream_headers(candidate.provider_key, bool(body.get("stream")), request.headers),
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
            if not last:  # before the first byte: the next model is tried
                failed.append(f"{candidate.model}: {error.code}")
                continue
            await run_in_threadpool(billing.release, hold, code=error.code or "upstream_error",
                                    message=str(exc) or error.message)
            error.headers.update(_headers(hold, caller, window, await counted))
            raise error from None
        telemetry.note(upstream_ms=int((time.monotonic() - upstream_started) * 1000))
        if response.status_code != 200:
            content = await response.aread()
            await response.aclose()
            error = upstream.error_from_status(provider, response.status_code, content, response.headers)
            if not last and fallbacks.worth_another_try(response.status_code):
                failed.append(f"{candidate.model}: {response.status_code}")
                continue
            await run_in_threadpool(billing.release, hold, code=error.code or "upstream_error",
                                    message=error.message, upstream_status=response.status_code)
            error.headers.update(_headers(hold, caller, window, await counted))
            raise error
        break
    headers = {**_headers(hold, caller, window, await counted), MODEL_HEADER: candidate.model}
    rename = candidate.model if len(candidates) > 1 else None
    if fmt.streams and body.get("stream"):
        content_type = response.headers.get("content-type", "")
        if content_type and "event-stream" not in content_type:
            # A 200 that is not a stream is no answer to a stream request: 502, as a malformed 200 is.
            await response.aclose()
            raise await _malformed(provider, hold, headers)
        deadline_at = started + deadline_seconds()
        return StreamingResponse(_relay_stream(response, hold, fmt, fmt.wants_usage(body), len(raw), deadline_at,
                                               rename),
                                 media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})
    return await _relay_whole(response, provider, hold, fmt, headers, len(raw), started + deadline_seconds(), rename)


def _upstream_body(fmt: api_formats.ApiFormat, body: dict, price: ModelPrice, provider: Provider,
                   output_limit: int) -> bytes:
    return json.dumps(fmt.upstream_body(body, price, provider, output_limit)).encode()


def settle(hold: billing.Hold, usage: Usage, upstream_status: int | None = 200) -> None:
    """Settle, retrying any failure with backoff. Never turned into a release: if every attempt fails, the
    hold stays pending (its request marked sent) and the sweeper settles it on its prompt bound."""
    def failed(attempt: int, exc: Exception) -> None:
        logger.exception("settle failed", extra={"request_id": hold.request_id, "attempt": attempt})

    try:
        retry(lambda: billing.settle(hold, usage, upstream_status=upstream_status),
              Backoff(SETTLE_ATTEMPTS, base_seconds=0.05, cap_seconds=1.0),
              retry_if=lambda exc: not isinstance(exc, billing.AlreadyClosed), on_failure=failed)
    except billing.AlreadyClosed:  # settled by an earlier attempt whose answer was lost: charged once
        logger.warning("hold already closed", extra={"request_id": hold.request_id})
    except Exception:  # noqa: BLE001 - every attempt failed, each one logged
        logger.error("settle failed on every attempt: left for the sweeper", extra={"request_id": hold.request_id})


def _media_tokens(hold: billing.Hold) -> int:
    return hold.plan.media_parts * hold.plan.tokens_per_image


def deadline_error(provider: Provider) -> errors.GatewayError:
    return errors.GatewayError(
        504, f"The request reached the gateway's time limit ({deadline_seconds():g} s) before the {provider.name} "
             "provider finished; what was delivered is billed.", "server_error", "gateway_deadline")


async def _note_use_and_window_usage(key: ApiKey, caller: CallerContext, window: rate_limits.Window
                                     ) -> rate_limits.Usage | None:
    await run_in_threadpool(note_use, key)  # never raises: a display field
    return await _window_usage(caller, window)


async def _window_usage(caller: CallerContext, window: rate_limits.Window) -> rate_limits.Usage | None:
    """The window's counts for the x-ratelimit headers; None if they cannot be read (the answer still goes out)."""
    try:
        return await run_in_threadpool(rate_limits.read_usage, caller.key_id, window, caller.shards)
    except Exception:
        logger.exception("rate-limit counter unreadable", extra={"key_id": caller.key_id})
        return None


def _headers(hold: billing.Hold, caller: CallerContext, window: rate_limits.Window,
             usage: rate_limits.Usage | None) -> dict[str, str]:
    return rate_limits.headers(caller, usage, window) if usage is not None else {}


async def _relay_whole(response: httpx.Response, provider: Provider, hold: billing.Hold, fmt: api_formats.ApiFormat,
                       headers: dict, body_size: int, deadline_at: float, rename: str | None) -> Response:
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
    usage = _usage_of(payload, body_size, hold, fmt)
    # Settled before the body goes out: Lambda may freeze the instance once the response has ended.
    await run_in_threadpool(settle, hold, usage, response.status_code)
    if rename:
        content = json.dumps(api_formats.rename_model(payload, rename)).encode()
    return Response(content, status_code=200, media_type="application/json", headers=headers)


async def _malformed(provider: Provider, hold: billing.Hold, headers: dict) -> errors.GatewayError:
    """Release the hold of a request the provider answered with an unusable 200; the error to raise."""
    error = errors.GatewayError(502, f"The {provider.name} provider sent a malformed response. Nothing was "
                                     "charged.", "upstream_error", "upstream_malformed_response")
    await run_in_threadpool(billing.release, hold, code=error.code, message=error.message, upstream_status=200)
    error.headers.update(headers)
    return error


def _usage_of(payload: dict, body_size: int, hold: billing.Hold, fmt: api_formats.ApiFormat) -> Usage:
    """The provider's usage, or an estimate (~4 characters a token) when it sent none or nonsense: an answer
    is never free, and never billed on numbers that cannot be trusted."""
    reported = fmt.read_usage(payload.get("usage"), output_expected=hold.plan.output_tokens > 0,
                              request_id=hold.request_id)
    if reported is not None:
        return reported
    chars = fmt.delivered_chars(payload)
    return provider_usage.estimate(body_size, _media_tokens(hold), (chars + 3) // 4)


async def _relay_stream(response: httpx.Response, hold: billing.Hold, fmt: api_formats.ApiFormat, wants_usage: bool,
                        body_size: int, deadline_at: float, rename: str | None):
    tally = fmt.new_tally()
    buffer = b""
    held_back: list[bytes] = []  # the final event ([DONE], response.completed, message_stop): after the settle
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
                verdict = fmt.inspect(event, tally)
                if verdict == api_formats.USAGE_ONLY and not wants_usage:
                    continue  # the usage chunk the gateway asked for, not the client
                if rename:
                    event = api_formats.rename_model_in_event(event, rename)
                if verdict == api_formats.FINAL and not held_back:
                    held_back.append(event)
                    continue
                out.append(event)
            if out:
                yield b"".join(out)
        complete = not timed_out and fmt.stream_complete(tally)
    except httpx.HTTPError:
        logger.warning("upstream stream cut", extra={"request_id": hold.request_id})
    finally:
        with anyio.CancelScope(shield=True):  # a client that went away must not stop the billing
            await response.aclose()
            await run_in_threadpool(_settle_stream, hold, fmt, tally, complete, body_size)
    if timed_out:
        yield fmt.stream_error(errors.GatewayError(
            504, f"The stream reached the gateway's time limit ({deadline_seconds():g} s) and was ended; what was "
                 "delivered is billed.", "server_error", "gateway_deadline"))
    elif held_back:
        yield b"".join(held_back)


def _settle_stream(hold: billing.Hold, fmt: api_formats.ApiFormat, tally: sse.StreamTally, complete: bool,
                   body_size: int) -> None:
    reported = fmt.read_usage(tally.usage, request_id=hold.request_id) if complete else None
    # Cut, abandoned, past the deadline, or nonsense usage: the prompt and what was delivered, estimated.
    usage = reported or provider_usage.estimate(body_size, _media_tokens(hold), tally.estimated_completion_tokens())
    settle(hold, usage, 200)
