"""POST /v1/chat/completions, /v1/embeddings, /v1/responses and /v1/messages: validate, hold, forward, settle.

One path for every route; what differs between the APIs (body checks, the output limit's field, headers,
where the usage is, how a whole answer is assembled) is onysoft.api_formats. What goes upstream is what the
route's allow-list lets through (onysoft.request_policy), the model name (the provider's), the output limit, which
belongs to the gateway (exactly one, in the provider's field, equal to the held output per answer: hold_sizing),
and, where the API streams, always a stream with its usage: a client that asked for a whole answer gets one
assembled from it (onysoft.answer_assembly). The client's key never goes upstream. With fallbacks
(onysoft.fallbacks) the models are tried in order under one hold. A model whose provider's circuit breaker is open
(onysoft.circuit_breaker) is skipped before the hold; none left is a 503 `provider_circuit_open`, nothing held.

What a call costs is decided in one place, `settle` (docs/BILLING.md, "The platform never pays more than it
charged"):
- never sent (no connection could be made) or refused by the provider before doing any work (an HTTP error
  status): nothing, the hold is released; only then is a fallback tried;
- sent, and the provider's usage is known (its final usage event, and numbers that make sense): exactly that;
- sent, and the usage cannot be known (a timeout after the send, a stream cut or gone silent, the proxy's
  deadline, an answer too large to keep or not JSON, usage that makes no sense): the hold — the bound the client
  agreed to — marked estimated. A client that hangs up does not make the usage unknown: the gateway keeps
  reading the provider (within the deadline) until its usage arrives.
A settle that fails is retried and, failing still, left pending for the sweeper, which charges the hold.
"""

import asyncio
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from decimal import Decimal

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from onysoft import (
    api_formats,
    billing,
    circuit_breaker,
    clock,
    errors,
    fallbacks,
    fx_age,
    overhead,
    rate_limits,
    request_policy,
    spend_limits,
    sse,
    telemetry,
    upstream,
    upstream_transport,
    wire_json,
)
from onysoft.blocking import run_blocking
from onysoft.caller import CallerContext
from onysoft.catalog import ModelPrice, catalog_cache
from onysoft.deadline import deadline_seconds
from onysoft.hold_sizing import MAX_ANSWER_BYTES, ChargeFactors, HoldPlan, plan_hold, shrink_to_balance
from onysoft.key_use import due, note_use, usable_key_and_window
from onysoft.models import ApiKey
from onysoft.provider_usage import Usage
from onysoft.providers import Provider, ProviderUnavailable, api_key, get_provider, key_at_hand
from onysoft.request_ids import current_request_id
from onysoft.request_policy import InputBound
from onysoft.retries import Backoff, retry

logger = logging.getLogger("onysoft.forwarding")
MODEL_HEADER = "x-onysoft-model"  # the model that answered, by the gateway's name (fallbacks)
MAX_BODY_BYTES = 6 * 1024 * 1024  # Lambda's request payload limit (API Gateway's own 10 MB never applies)
ERROR_BODY_BYTES = 64 * 1024  # what is read of a provider's error answer (its message, for a 4xx)
SETTLE_ATTEMPTS = 5
STOP_POLL_SECONDS = 0.25  # how often a drain after a hang-up looks whether the process is stopping


# Set when the process is stopping (the app's lifespan shutdown): a drain after a client's hang-up then stops
# reading and charges the hold, rather than keep the process up until the provider ends.
stopping = False
# Stream relays still closing (draining, settling) after their client or the server let go of them: a stop waits
# for them (`finish_relays`) before the event loop ends. The loop's end cancels every task left, and a task's
# cancellation reaches its awaits whatever anyio shields, so a relay cut off there would leave its hold open.
_closing: set[asyncio.Future] = set()


async def finish_relays(timeout: float) -> int:
    """At a stop (after `stopping` is set): wait up to `timeout` for the relays still closing; how many were."""
    loop = asyncio.get_running_loop()
    pending = [f for f in _closing if not f.done() and f.get_loop() is loop]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    return len(pending)


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
    body["model"] = api_formats.get(endpoint).qualified_model(model)
    api_formats.get(endpoint).check_shape(body)
    return body


@dataclass(frozen=True)
class Candidate:
    """One model the request may be answered by: its charge factors, provider, the provider's key, and what the
    body's media and tools add to its prompt bound there (its allow-list passed)."""

    model: str
    factors: ChargeFactors
    provider: Provider
    provider_key: str
    bound: InputBound


def usable_model(model: str, caller: CallerContext) -> ModelPrice:
    """The model's catalog entry, if it is enabled (404) and the key may use it (403): every /v1 route's check."""
    price: ModelPrice | None = catalog_cache.model(model)
    if price is None:
        raise errors.not_found(f"The model '{model}' does not exist or is not enabled on this gateway.",
                               "model_not_found", "model")
    if caller.models and model not in caller.models:
        raise errors.GatewayError(403, f"This API key is not allowed to use the model '{model}'.",
                                  "invalid_request_error", "model_not_allowed", "model")
    return price


def _model_and_factors(model: str, caller: CallerContext) -> ChargeFactors:
    price = usable_model(model, caller)
    if caller.currency == "USD":
        return ChargeFactors(price, caller.markup_bp, Decimal(1), "")
    fx = catalog_cache.fx("USDTRY")
    if fx is None:
        logger.error("no USDTRY rate in the catalog")
        raise errors.GatewayError(500, "The gateway has no USD→TRY rate configured. Nothing was charged.",
                                  "server_error", "fx_rate_missing")
    fx_age.check("USDTRY", fx[1])
    return ChargeFactors(price, caller.markup_bp, fx[0], fx[1])


def _provider_and_key(price: ModelPrice) -> tuple[Provider, str]:
    try:
        provider = get_provider(price.provider)
        return provider, api_key(provider)
    except ProviderUnavailable as exc:
        logger.error("provider unavailable", extra={"provider": price.provider, "why": str(exc)})
        raise errors.GatewayError(502, f"The provider '{price.provider}' is not available on this gateway.",
                                  "upstream_error", "provider_unavailable") from None


def _at_hand(names: list[tuple[str, bool]]) -> bool:
    """Whether _candidates can run without I/O: the catalog within its TTL, every named model's provider key at
    hand (a name the catalog lacks needs nothing: its 404 is raised from the cache)."""
    if not catalog_cache.fresh():
        return False
    for name, _ in names:
        price = catalog_cache.model(name)
        if price is None:
            continue
        try:
            if not key_at_hand(get_provider(price.provider)):
                return False
        except ProviderUnavailable:
            continue  # raised again, without I/O, by _candidates
    return True


def _candidates(names: list[tuple[str, bool]], caller: CallerContext, endpoint: str, body: dict) -> list[Candidate]:
    """Every model the request may go to, each checked as `model` is (404, 403, provider, the route's allow-list
    for that provider and model), before the hold; a key's default fallback that fails a check is skipped."""
    found = []
    for name, required in names:
        try:
            factors = _model_and_factors(name, caller)
            provider, key = _provider_and_key(factors.price)
            if not provider.serves(endpoint):
                raise errors.bad_request(f"The model '{name}' is not offered on this route (its provider "
                                         f"'{provider.name}' does not serve it).", "model", "model_not_supported")
            bound = request_policy.check(endpoint, body, provider, factors.price)
        except errors.GatewayError:
            if required:
                raise
            logger.warning("key's default fallback skipped", extra={"model": name, "key_id": caller.key_id})
            continue
        found.append(Candidate(name, factors, provider, key, bound))
    return found


def _hold(request_id: str, key_hash: str, caller: CallerContext, plans: list[HoldPlan],
          candidates: list[Candidate], endpoint: str, body: dict
          ) -> tuple[billing.Hold, list[HoldPlan], ApiKey, rate_limits.Usage | None]:
    """The key read again (401 before any money moves: onysoft.key_use), with the rate window's use so far, then
    the hold. Sequential on purpose: a key deleted before this read gets no hold, so no usage record, at all.
    Also returns the window's use after the hold, for the x-ratelimit headers (None: read it again)."""
    window = rate_limits.current_window()
    key, before = usable_key_and_window(key_hash, caller, window)
    held, plans = _hold_for_candidates(request_id, key_hash, caller, plans, candidates, endpoint, body, key)
    return held, plans, key, _window_use_after(held, window, before)


def _window_use_after(held: billing.Hold, window: rate_limits.Window, before: rate_limits.Usage
                      ) -> rate_limits.Usage | None:
    """What the key's read found in the window, and what the hold counted in it (one request, its rate tokens).
    None when the minute turned between the read and the hold: that window is read after the hold, as before."""
    if held.window_start != window.start:
        return None
    return rate_limits.Usage(before.requests + 1, before.tokens + held.rate_tokens)


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
    deadline_at = started + deadline_seconds()
    fmt = api_formats.get(endpoint)
    raw = await request.body()
    body = _parse_body(raw, endpoint)
    telemetry.note(model=body.get("model"))
    fmt.validate(body)
    names = fallbacks.candidates(body, caller, endpoint)
    # On a warm instance nothing _candidates reads is fetched: then it runs here, without a thread hop (~3% of the
    # proxy's CPU a request); else in the pool (a catalog Scan, a provider key's secret).
    candidates = _candidates(names, caller, endpoint, body) if _at_hand(names) else \
        await run_blocking(_candidates, names, caller, endpoint, body)
    several = len(candidates) > 1  # fallbacks: the answer and the record name the model that answered
    # Before the hold: a provider whose breaker is open is skipped (the next fallback) or, if none is left, the
    # request fails fast — nothing held, nothing charged, nothing written.
    candidates, tickets, skipped = _admitted(candidates)
    try:
        return await _hold_and_send(request, endpoint, key_hash, caller, fmt, raw, body, candidates, tickets,
                                    skipped, several, deadline_at)
    finally:
        for ticket in tickets:
            ticket.unused()  # a candidate never tried (an earlier one answered, or the request stopped before it)


def _admitted(candidates: list[Candidate]
              ) -> tuple[list[Candidate], list[circuit_breaker.Ticket], list[str]]:
    """The candidates whose provider's breaker lets them through, with their tickets, and the attempts skipped
    ("model: provider_circuit_open", for the record). None left: 503 `provider_circuit_open`, Retry-After the
    soonest a breaker lets a request through."""
    admitted, tickets, skipped, refusals = [], [], [], []
    for candidate in candidates:
        answer = circuit_breaker.breaker(candidate.provider.name).admit()
        if isinstance(answer, circuit_breaker.Refused):
            refusals.append(answer)
            skipped.append(f"{candidate.model}: provider_circuit_open")
            continue
        admitted.append(candidate)
        tickets.append(answer)
    if not admitted:
        soonest = min(refusals, key=lambda refused: refused.retry_after)
        logger.warning("provider circuit open: failed fast", extra={"provider": soonest.provider})
        raise soonest.error()
    return admitted, tickets, skipped


async def _hold_and_send(request: Request, endpoint: str, key_hash: str, caller: CallerContext,
                         fmt: api_formats.ApiFormat, raw: bytes, body: dict, candidates: list[Candidate],
                         tickets: list[circuit_breaker.Ticket], skipped: list[str], several: bool,
                         deadline_at: float) -> Response:
    plans = [plan_hold(endpoint, body, len(raw), c.factors, c.bound) for c in candidates]
    request_id = current_request_id()  # the one in the answer's x-onysoft-request-id (request_ids.RequestIds)
    held, plans, key, usage = await run_blocking(_hold, request_id, key_hash, caller, plans, candidates, endpoint,
                                                 body)
    # While the upstream works: the key's last use (when due), and the window's count after this request for the
    # x-ratelimit headers if the hold's read could not say it.
    window = rate_limits.Window(held.window_start)
    counted = asyncio.ensure_future(_note_use_and_window_usage(key, caller, window, usage))
    failed: list[str] = list(skipped)
    for index, candidate in enumerate(candidates):
        last = index + 1 == len(candidates)
        # Each attempt is billed as its own model, within the one hold (the record says which answered).
        hold = dataclasses.replace(held, plan=plans[index], factors=candidate.factors, attempts=tuple(failed),
                                   answered_model=candidate.model if several else "",
                                   requested_model=body["model"])
        provider = candidate.provider
        client = upstream.client_for(provider)
        try:
            outgoing = client.build_request(
                "POST", upstream.upstream_url(provider, endpoint),
                content=_upstream_body(fmt, body, candidate.factors.price, provider, hold.plan.output_limit),
                headers=fmt.upstream_headers(candidate.provider_key, fmt.streams, request.headers),
            )
        except Exception:  # a bug between hold and send must not keep the customer's money until the sweeper
            await run_blocking(billing.release, hold, code="internal_error", message="request not sent")
            raise
        # The hold's record already says `sent_at` (place_hold(sending=True)): from now on, never free.
        upstream_started = time.monotonic()
        try:
            with overhead.upstream_wait():
                response = await client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            tickets[index].failed()  # no HTTP answer: a timeout or a connection failure (onysoft.circuit_breaker)
            error = upstream.error_from_exception(provider, exc)
            if not upstream.never_sent(exc):
                # It left: the provider may be working on it and will bill. Charged the hold; no other model.
                await run_blocking(settle, hold, None, None, error.code or "upstream_error")
                error = upstream.charged(error)
            elif not last:  # no connection could be made: nothing reached the provider, the next model is tried
                failed.append(f"{candidate.model}: {error.code}")
                continue
            else:
                await run_blocking(billing.release, hold, code=error.code or "upstream_error",
                                   message=str(exc) or error.message)
            error.headers.update(_headers(hold, caller, window, await counted))
            raise error from None
        tickets[index].answered()  # an HTTP answer, whatever its status: the provider is there
        telemetry.note(upstream_ms=int((time.monotonic() - upstream_started) * 1000))
        if response.status_code != 200:
            # An error status: the provider refused before doing any work, and bills nothing.
            content = await _read_capped(response, ERROR_BODY_BYTES)
            error = upstream.error_from_status(provider, response.status_code, content, response.headers)
            if not last and fallbacks.worth_another_try(response.status_code):
                failed.append(f"{candidate.model}: {response.status_code}")
                continue
            await run_blocking(billing.release, hold, code=error.code or "upstream_error",
                               message=error.message, upstream_status=response.status_code)
            error.headers.update(_headers(hold, caller, window, await counted))
            raise error
        break
    headers = {**_headers(hold, caller, window, await counted), MODEL_HEADER: candidate.model}
    rename = candidate.model if several else None
    content_type = response.headers.get("content-type", "")
    if fmt.streams and "event-stream" in content_type:
        if body.get("stream"):
            return BilledStream(_relay_stream(response, hold, fmt, fmt.wants_usage(body), deadline_at, rename),
                                media_type="text/event-stream",
                                headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})
        return await _answer_from_stream(response, provider, hold, fmt, headers, deadline_at, rename)
    if fmt.streams and body.get("stream"):
        # A whole answer to a stream request is no stream: 502 (what it cost is read from it if it says).
        content, ended = await _read_answer(response, deadline_at)
        usage = _usage_of_answer(content, hold, fmt)
        await run_blocking(settle, hold, usage, 200, ended or "not_a_stream")
        raise _with_headers(_malformed(provider, usage), headers)
    return await _relay_whole(response, provider, hold, fmt, headers, deadline_at, rename)


def _upstream_body(fmt: api_formats.ApiFormat, body: dict, price: ModelPrice, provider: Provider,
                   output_limit: int) -> bytes:
    return wire_json.dumps(fmt.upstream_body(body, price, provider, output_limit))


def settle(hold: billing.Hold, usage: Usage | None, upstream_status: int | None = 200, reason: str = "") -> None:
    """What a sent call costs, the one rule (see the module's doc): the provider's usage when it is known, else
    the hold (`reason` says why it is not known). Retried with backoff, every attempt the same transaction
    (one settled_at), so a retry after an unseen success is a no-op. Never turned into a release: if every
    attempt fails, the hold stays pending (its request marked sent) and the sweeper charges it."""
    if usage is None:
        usage = hold.plan.as_usage()
        telemetry.charged_hold(reason or "unknown")
        logger.warning("usage unknown: charged the hold", extra={"request_id": hold.request_id, "why": reason})
    settled_at = clock.now_iso()

    def failed(attempt: int, exc: Exception) -> None:
        logger.exception("settle failed", extra={"request_id": hold.request_id, "attempt": attempt})

    try:
        retry(lambda: billing.settle(hold, usage, upstream_status=upstream_status, settled_at=settled_at,
                                     reason=reason if usage.estimated else ""),
              Backoff(SETTLE_ATTEMPTS, base_seconds=0.05, cap_seconds=1.0),
              retry_if=lambda exc: not isinstance(exc, billing.AlreadyClosed), on_failure=failed)
    except billing.AlreadyClosed:  # settled by an earlier attempt whose answer was lost: charged once
        logger.warning("hold already closed", extra={"request_id": hold.request_id})
    except Exception:  # noqa: BLE001 - every attempt failed, each one logged
        logger.error("settle failed on every attempt: left for the sweeper", extra={"request_id": hold.request_id})


def known_usage(fmt: api_formats.ApiFormat, raw, tally: sse.StreamTally | None, hold: billing.Hold) -> Usage | None:
    """The provider's usage, if it said it and it can be believed: numbers that make sense (provider_usage), and
    never less output than the stream visibly delivered (each event with a non-empty delta is at least a token)."""
    reported = fmt.read_usage(raw, output_expected=hold.plan.output_tokens > 0, request_id=hold.request_id)
    if reported is not None and tally is not None and reported.completion_tokens < tally.content_chunks:
        logger.warning("provider usage below what it delivered", extra={
            "request_id": hold.request_id, "reported": reported.completion_tokens, "chunks": tally.content_chunks})
        return None
    return reported


def deadline_error(provider: Provider) -> errors.GatewayError:
    return errors.GatewayError(
        504, f"The request reached the gateway's time limit ({deadline_seconds():g} s) before the {provider.name} "
             "provider finished. It was charged its hold: the provider may have done the work.",
        "server_error", "gateway_deadline")


async def _note_use_and_window_usage(key: ApiKey, caller: CallerContext, window: rate_limits.Window,
                                     usage: rate_limits.Usage | None) -> rate_limits.Usage | None:
    if due(key.last_used_at, clock.now_iso()):  # about once a minute a key: no thread hop on other requests
        await run_blocking(note_use, key)  # never raises: a display field
    return usage if usage is not None else await _window_usage(caller, window)


async def _window_usage(caller: CallerContext, window: rate_limits.Window) -> rate_limits.Usage | None:
    """The window's counts for the x-ratelimit headers; None if they cannot be read (the answer still goes out)."""
    try:
        return await run_blocking(rate_limits.read_usage, caller.key_id, window, caller.shards)
    except Exception:
        logger.exception("rate-limit counter unreadable", extra={"key_id": caller.key_id})
        return None


def _headers(hold: billing.Hold, caller: CallerContext, window: rate_limits.Window,
             usage: rate_limits.Usage | None) -> dict[str, str]:
    return rate_limits.headers(caller, usage, window) if usage is not None else {}


def _with_headers(error: errors.GatewayError, headers: dict) -> errors.GatewayError:
    error.headers.update(headers)
    return error


def _malformed(provider: Provider, usage: Usage | None) -> errors.GatewayError:
    """A 200 that is no usable answer. It cost what the provider's usage says, when it says it, else the hold."""
    error = errors.GatewayError(502, f"The {provider.name} provider sent a malformed response.", "upstream_error",
                                "upstream_malformed_response")
    if usage is None:
        return upstream.charged(error)
    error.message += " It was charged the usage the provider reported."
    return error


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """Up to `limit` bytes of an answer (an error's message), then the connection is closed."""
    chunks, size = [], 0
    try:
        with overhead.upstream_wait():
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size >= limit:
                    break
    except httpx.HTTPError:
        pass
    finally:
        await response.aclose()
    return b"".join(chunks)[:limit]


async def _read_answer(response: httpx.Response, deadline_at: float) -> tuple[bytes | None, str]:
    """A whole (non-stream) answer: (its bytes, "") or (None, why it could not be read: a timeout, a cut, the
    deadline, or larger than the gateway keeps)."""
    chunks, size = [], 0
    reader = _Upstream(response, deadline_at)
    try:
        while (raw := await reader.next_chunk()) is not None:
            size += len(raw)
            if size > MAX_ANSWER_BYTES:
                return None, "too_large"
            chunks.append(raw)
    finally:
        await response.aclose()
    return (b"".join(chunks), "") if reader.ended == "complete" else (None, reader.ended)


def _usage_of_answer(content: bytes | None, hold: billing.Hold, fmt: api_formats.ApiFormat) -> Usage | None:
    try:
        payload = wire_json.loads(content) if content is not None else None
    except (ValueError, UnicodeDecodeError):
        return None
    return known_usage(fmt, payload.get("usage"), None, hold) if isinstance(payload, dict) else None


async def _relay_whole(response: httpx.Response, provider: Provider, hold: billing.Hold, fmt: api_formats.ApiFormat,
                       headers: dict, deadline_at: float, rename: str | None) -> Response:
    """A whole answer from the provider (embeddings; a provider that answers a stream request whole)."""
    content, ended = await _read_answer(response, deadline_at)
    try:
        payload = wire_json.loads(content) if content is not None else None
    except (ValueError, UnicodeDecodeError):
        payload = None
    usage = known_usage(fmt, payload.get("usage"), None, hold) if isinstance(payload, dict) else None
    # Settled before the body goes out: Lambda may freeze the instance once the response has ended.
    await run_blocking(settle, hold, usage, 200, ended or ("no_usage" if isinstance(payload, dict)
                                                            else "not_json"))
    if ended:
        raise _with_headers(_ended_early(provider, ended), headers)
    if not isinstance(payload, dict):
        raise _with_headers(_malformed(provider, usage), headers)  # a 200 that is not a JSON object is no answer
    if rename:
        payload = api_formats.rename_model(payload, rename)
        content = wire_json.dumps(payload)
    return Response(content, status_code=200, media_type="application/json", headers=headers)


def _ended_early(provider: Provider, ended: str) -> errors.GatewayError:
    """The client's error for an answer that did not arrive whole (the call was charged: see settle)."""
    if ended == "deadline":
        return deadline_error(provider)
    if ended == "too_large":
        return errors.GatewayError(502, f"The {provider.name} provider's answer is larger than the "
                                        f"{MAX_ANSWER_BYTES // (1024 * 1024)} MB the gateway keeps for a client that "
                                        "does not stream; it was charged as the provider reported it. Stream it, "
                                        "or ask for less.", "upstream_error", "response_too_large")
    timeout = ended == "timeout"
    return upstream.charged(errors.GatewayError(
        504 if timeout else 502,
        f"The {provider.name} provider {'went silent' if timeout else 'broke off'} before its answer was complete.",
        "upstream_error", "upstream_timeout" if timeout else "upstream_cut"))


class _Upstream:
    """The provider's response read chunk by chunk under the proxy's deadline. `ended` says how it ended: None
    while open, then "complete" (the provider closed it), "cut" (a broken connection), "timeout" (silent for the
    read timeout), "deadline" (the proxy's), or "stopping" (the process is stopping).

    Waiting never breaks the read (a drain after a hang-up gives up every STOP_POLL_SECONDS to look whether the
    process is stopping, and a cancelled relay hands the reader to its `finally`): an answer on the providers' own
    transport is read with its cancel-safe `receive`; any other (the mock provider's, a compressed one) through
    httpx's async iterator in a task of its own, which a wait that gives up leaves pending."""

    def __init__(self, response: httpx.Response, deadline_at: float):
        self.response = response
        self.deadline_at = deadline_at
        self.direct = upstream_transport.direct_body(response)
        self.chunks = response.aiter_bytes() if self.direct is None else None
        self.ended: str | None = None
        self.buffer = b""
        self._pending: asyncio.Future | None = None

    async def next_chunk(self, watch_stop: bool = False) -> bytes | None:
        while self.ended is None:
            remaining = self.deadline_at - time.monotonic()
            if remaining <= 0:
                self.ended = "deadline"
                break
            if watch_stop and stopping:
                self.ended = "stopping"
                break
            within = min(remaining, STOP_POLL_SECONDS) if watch_stop else remaining
            try:
                with overhead.upstream_wait():
                    chunk = await (self.direct.receive(within) if self.direct is not None else self._iterate(within))
            except StopAsyncIteration:
                self.ended = "complete"
            except httpx.TimeoutException:
                self.ended = "timeout"
            except httpx.HTTPError:
                self.ended = "cut"
            else:
                if chunk is None:
                    self.ended = "complete"
                elif chunk:
                    return chunk
        self._abandon()
        return None

    async def _iterate(self, within: float) -> bytes:
        """httpx's next chunk, b"" if none came within `within` seconds (the read goes on, kept pending)."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self.chunks.__anext__())
        done, _ = await asyncio.wait({self._pending}, timeout=within)
        if not done:
            return b""
        pending, self._pending = self._pending, None
        return pending.result()

    async def next_events(self, watch_stop: bool = False) -> list[bytes] | None:
        """The next complete server-sent events, or None once the stream has ended."""
        while True:
            raw = await self.next_chunk(watch_stop)
            if raw is None:
                return None
            events, self.buffer = sse.split_events(self.buffer + raw)
            if events:
                return events

    def _abandon(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


async def _answer_from_stream(response: httpx.Response, provider: Provider, hold: billing.Hold,
                              fmt: api_formats.ApiFormat, headers: dict, deadline_at: float,
                              rename: str | None) -> Response:
    """A whole answer for a client that asked for none, assembled from the provider's stream (the usage comes with
    it). Past MAX_ANSWER_BYTES the assembly stops but the reading goes on, for the usage."""
    tally, assembler, size = fmt.new_tally(), fmt.assembler(), 0
    reader = _Upstream(response, deadline_at)
    try:
        while (events := await reader.next_events()) is not None:
            for event in events:
                fmt.inspect(event, tally)
                size += len(event)
                if assembler is not None and size > MAX_ANSWER_BYTES:
                    assembler = None
                if assembler is not None:
                    payload = sse.event_json(event)
                    if payload is not None:
                        assembler.feed(payload)
    finally:
        with anyio.CancelScope(shield=True):
            await response.aclose()
    usage = known_usage(fmt, fmt.final_usage(tally), tally, hold)
    ended = reader.ended if reader.ended != "complete" else ""
    # Settled before the body goes out: Lambda may freeze the instance once the response has ended.
    await run_blocking(settle, hold, usage, 200, ended or "no_usage")
    if assembler is None:
        raise _with_headers(_ended_early(provider, "too_large"), headers)
    answer = assembler.answer() if (usage is not None or fmt.stream_complete(tally)) else None
    if answer is None:
        raise _with_headers(_ended_early(provider, ended) if ended else _malformed(provider, usage), headers)
    if rename:
        answer = api_formats.rename_model(answer, rename)
    return Response(wire_json.dumps(answer), status_code=200, media_type="application/json", headers=headers)


class BilledStream(StreamingResponse):
    """A streamed answer whose relay always ends in its own task: however the response ends (the client hangs up
    while the relay waits to send, or the server cancels it at a stop), the relay generator is closed here, so
    its `finally` settles the call now, never at some later garbage collection of the generator (which may not
    come before the process ends: a hold left open until the sweeper)."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


async def _relay_stream(response: httpx.Response, hold: billing.Hold, fmt: api_formats.ApiFormat, wants_usage: bool,
                        deadline_at: float, rename: str | None):
    tally = fmt.new_tally()
    held_back: list[bytes] = []  # the final event ([DONE], response.completed, message_stop): after the settle
    reader = _Upstream(response, deadline_at)
    try:
        while (events := await reader.next_events()) is not None:
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
    finally:
        closed = asyncio.get_running_loop().create_future()
        _closing.add(closed)
        try:
            with anyio.CancelScope(shield=True):  # a client that went away must not stop the billing
                if reader.ended is None and fmt.final_usage(tally) is None:
                    # The client went away first: read on (not to it) until the provider's usage comes, within
                    # the deadline, so the call is charged what it used rather than its whole hold.
                    while fmt.final_usage(tally) is None and (events := await reader.next_events(watch_stop=True)):
                        for event in events:
                            fmt.inspect(event, tally)
                await response.aclose()
                usage = known_usage(fmt, fmt.final_usage(tally), tally, hold)
                ended = reader.ended if reader.ended not in (None, "complete") else ""
                await run_blocking(settle, hold, usage, 200, ended or "no_usage")
        finally:
            closed.set_result(None)
            _closing.discard(closed)
    if reader.ended not in (None, "complete") and (usage is None or reader.ended == "deadline"):
        yield fmt.stream_error(_ended_early(hold_provider(hold), reader.ended))
    elif held_back:
        yield b"".join(held_back)


def hold_provider(hold: billing.Hold) -> Provider:
    return get_provider(hold.factors.price.provider)
