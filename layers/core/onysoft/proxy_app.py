"""The proxy's ASGI app (Starlette), run by uvicorn behind the Lambda Web Adapter, and by `onysoft dev`.

Every answer, error or not, is OpenAI's shape — Anthropic's on /v1/messages; errors never carry a stack trace
or a key.
"""

import contextlib
import json
import logging

from botocore.exceptions import ClientError
from pynamodb.exceptions import PynamoDBException
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from onysoft import (
    blocking,
    dynamo_transport,
    errors,
    forwarding,
    key_use,
    keys,
    overhead,
    parallel,
    rate_limits,
    spend_limits,
    telemetry,
)
from onysoft.api_formats.messages import error_envelope
from onysoft.blocking import run_blocking
from onysoft.caller import REQUEST_CONTEXT_HEADER, CallerContext, from_request_context_header
from onysoft.catalog import catalog_cache
from onysoft.clock import parse_iso
from onysoft.dynamo import get_key_and_account
from onysoft.models import Account, ApiKey
from onysoft.operations.views import KeyState, key_view
from onysoft.request_ids import RequestIds, current_request_id
from onysoft.usage_rollup import totals_from_item

logger = logging.getLogger("onysoft.proxy")
telemetry.logger()  # the onysoft.* loggers write JSON, with their extra fields


ANTHROPIC_PATHS = keys.ANTHROPIC_PATHS  # errors in Anthropic's envelope, so its SDK raises the right exception
RELAYS_CLOSE_SECONDS = 1.0  # at a stop: a relay's drain ends within 0.25 s, then one settle transaction


def _error_response(error: errors.GatewayError, path: str = "") -> Response:
    # x-onysoft-request-id: request_ids.RequestIds sets it on every answer
    body = error.body() if path not in ANTHROPIC_PATHS else json.dumps(error_envelope(error.status, error.message))
    return Response(body, status_code=error.status, media_type="application/json", headers=error.headers)


def caller_of(request: Request) -> tuple[str, CallerContext]:
    """The key's hash and the authorizer's context, or 401. The key is read by the authorizer's rule (Bearer, or
    x-api-key on Anthropic's routes): the secret the authorizer judged is the one re-read before the hold. The
    key itself is hashed, never kept."""
    key = keys.request_key(request.headers.get("authorization"), request.headers.get("x-api-key"),
                           anthropic=request.url.path in keys.ANTHROPIC_PATHS)
    caller = from_request_context_header(request.headers.get(REQUEST_CONTEXT_HEADER))
    if key is None or caller is None:
        raise errors.invalid_api_key()
    return keys.hash_key(key), caller


def read_usable_key(key_hash: str, caller: CallerContext, counter_ids: tuple[str, ...], with_totals: bool = False
                    ) -> tuple[ApiKey, Account, dict[str, dict], dict | None]:
    """Re-read the key record itself, with its account, the given limit counters and (`with_totals`) its
    usage totals, in one BatchGetItem: a key deleted or expired while the authorizer's answer is cached gets
    401 now."""
    record, account, counters, totals = get_key_and_account(key_hash, caller.account_id, counter_ids,
                                                            caller.key_id if with_totals else None)
    record = key_use.check(record, caller)
    if account is None:
        raise errors.invalid_api_key()
    return record, account, counters, totals


def load_key_view(key_hash: str, caller: CallerContext) -> dict:
    """GET /v1/key: the key, its account, its usage totals, and its current rate-limit window and
    spend-period counters, rendered by the one key view (onysoft.operations.views) the dashboard and the
    CLI render too."""
    window = rate_limits.current_window()
    rate_ids = tuple(window.counter_ids(caller.key_id, caller.shards))
    spend_id = spend_limits.counter_id(caller.key_id, spend_limits.period_start(caller.limit_reset or None))
    # The key's requests in flight, in the same read, for a key with a max_parallel (onysoft.parallel).
    slots_id = (parallel.key_counter_id(caller.key_id),) if caller.max_parallel else ()
    record, account, counters, totals = read_usable_key(key_hash, caller, (*rate_ids, spend_id, *slots_id),
                                                        with_totals=True)
    usage = rate_limits.summed(counters, caller.key_id, window, caller.shards)
    spent = spend_limits.spent(counters.get(spend_id)) if record.spend_limit_micros else 0
    in_flight = int(counters.get(slots_id[0], {}).get("in_flight", {}).get("N", 0)) if slots_id else None
    return key_view(record, totals=totals_from_item(totals), account=account,
                    state=KeyState(usage, window, spent, in_flight))


async def get_key(request: Request) -> Response:
    key_hash, caller = caller_of(request)
    view = await run_blocking(load_key_view, key_hash, caller)
    usage = rate_limits.Usage(view["usage"]["requests_this_minute"], view["usage"]["tokens_this_minute"])
    headers = rate_limits.headers(caller, usage, rate_limits.current_window())
    return JSONResponse(view, headers=headers)


def load_usage_of_usable_key(key_hash: str, caller: CallerContext, window: rate_limits.Window) -> rate_limits.Usage:
    """GET /v1/models: the key re-checked, and its rate-limit usage for the headers, at no extra round trip."""
    _, _, counters, _ = read_usable_key(key_hash, caller, tuple(window.counter_ids(caller.key_id, caller.shards)))
    return rate_limits.summed(counters, caller.key_id, window, caller.shards)


async def list_models(request: Request) -> Response:
    key_hash, caller = caller_of(request)
    window = rate_limits.current_window()
    usage = await run_blocking(load_usage_of_usable_key, key_hash, caller, window)
    prices = await run_blocking(catalog_cache.enabled_models)
    data = [
        {"id": p.model, "object": "model", "owned_by": p.provider,
         "created": int(parse_iso(p.created_at).timestamp()) if p.created_at else 0}
        for p in sorted(prices, key=lambda p: p.model)
        if not caller.models or p.model in caller.models  # a key limited to some models lists only those
    ]
    headers = rate_limits.headers(caller, usage, window)
    return JSONResponse({"object": "list", "data": data}, headers=headers)


def billed(endpoint: str):
    """The handler of a billed route: the caller, then hold → forward → settle (onysoft.forwarding)."""
    async def handler(request: Request) -> Response:
        key_hash, caller = caller_of(request)
        return await forwarding.forward(request, endpoint, key_hash, caller)

    return handler


chat_completions, embeddings = billed("chat.completions"), billed("embeddings")
responses, messages = billed("responses"), billed("messages")


async def messages_count_tokens(request: Request) -> Response:
    """Anthropic's count_tokens: the provider's count, never charged (onysoft.count_tokens)."""
    from onysoft.count_tokens import count_tokens

    key_hash, caller = caller_of(request)
    return await count_tokens(request, key_hash, caller)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.GatewayError)
    telemetry.note(error_code=exc.code)
    return _error_response(exc, request.url.path)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = errors.not_found(f"Unknown request URL: {request.method} {request.url.path}.", "unknown_url")
    elif exc.status_code == 405:
        error = errors.method_not_allowed(request.method, request.url.path)
    else:
        error = errors.GatewayError(exc.status_code, str(exc.detail))
    return _error_response(error, request.url.path)


async def _on_storage_error(request: Request, exc: Exception) -> Response:
    """A DynamoDB error no code path expected: 503 when it is throttling past the retries, else a 500."""
    if not dynamo_transport.throttled(exc):
        return await _on_unexpected_error(request, exc)
    logger.warning("DynamoDB throttled past its retries", extra={"request_id": current_request_id()})
    error = errors.capacity_exhausted()
    telemetry.note(error_code=error.code)
    return _error_response(error, request.url.path)


async def _on_unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error", extra={"request_id": current_request_id()})
    return _error_response(errors.internal_error(), request.url.path)


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette):
    forwarding.stopping = False
    # The pool that runs every blocking DynamoDB call (onysoft.blocking), made before the first request.
    blocking.pool()
    yield
    # The process is stopping (SIGTERM to the execution environment; Ctrl-C locally): a drain still reading a
    # provider after its client hung up stops and charges the hold, and the stop waits for the relays still
    # closing to settle before the event loop ends (onysoft.forwarding).
    forwarding.stopping = True
    await forwarding.finish_relays(timeout=RELAYS_CLOSE_SECONDS)


def create_app() -> Starlette:
    return Starlette(
        lifespan=_lifespan,
        routes=[
            Route("/v1/key", get_key, methods=["GET"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/responses", responses, methods=["POST"]),
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", messages_count_tokens, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={
            errors.GatewayError: _on_gateway_error,
            HTTPException: _on_http_error,
            ClientError: _on_storage_error,
            PynamoDBException: _on_storage_error,
            Exception: _on_unexpected_error,
        },
    )


def _note_overhead(ms: float) -> None:
    telemetry.note(overhead_ms=round(ms, 1))


# the gateway's own time on every answer (x-onysoft-overhead-ms, outermost: it counts the other two); one request
# id per request; one structured log line and the metrics per request
app = overhead.GatewayOverhead(telemetry.RequestTelemetry(RequestIds(create_app())), on_headers=_note_overhead)
