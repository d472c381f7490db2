"""The proxy's ASGI app (Starlette), run by uvicorn behind the Lambda Web Adapter, and by `onysoft dev`.

Every answer, error or not, is OpenAI's shape; errors never carry a stack trace or a key.
"""

import logging
import uuid

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from onysoft import balances, errors, forwarding, keys, money, rate_limits, spend_limits, telemetry
from onysoft.api_keys import is_usable
from onysoft.caller import REQUEST_CONTEXT_HEADER, CallerContext, from_request_context_header
from onysoft.clock import parse_iso
from onysoft.dynamo import get_key_and_account
from onysoft.models import Account, ApiKey

logger = logging.getLogger("onysoft.proxy")
telemetry.logger()  # the onysoft.* loggers write JSON, with their extra fields
REQUEST_ID_HEADER = "x-onysoft-request-id"


def _error_response(error: errors.GatewayError, request_id: str) -> Response:
    headers = {REQUEST_ID_HEADER: request_id, **error.headers}
    return Response(error.body(), status_code=error.status, media_type="application/json", headers=headers)


def _request_id(request: Request) -> str:
    if not hasattr(request.state, "request_id"):
        request.state.request_id = "req_" + uuid.uuid4().hex
    return request.state.request_id


def caller_of(request: Request) -> tuple[str, CallerContext]:
    """The key's hash and the authorizer's context, or 401. The key itself is hashed, never kept."""
    key = keys.bearer_key(request.headers.get("authorization"))
    caller = from_request_context_header(request.headers.get(REQUEST_CONTEXT_HEADER))
    if key is None or caller is None:
        raise errors.invalid_api_key()
    return keys.hash_key(key), caller


def read_usable_key(key_hash: str, caller: CallerContext, counter_ids: tuple[str, ...]
                    ) -> tuple[ApiKey, Account, dict[str, dict]]:
    """Re-read the key record itself, with its account and the given limit counters, in one BatchGetItem:
    a key deleted or expired while the authorizer's answer is cached gets 401 now."""
    record, account, counters = get_key_and_account(key_hash, caller.account_id, counter_ids)
    if (record is None or account is None or not is_usable(record)
            or record.key_id != caller.key_id or record.account_id != account.account_id):
        raise errors.invalid_api_key()
    return record, account, counters


def load_key_view(key_hash: str, caller: CallerContext) -> dict:
    """GET /v1/key: the key, its account, and its current rate-limit window and spend-period counters."""
    window = rate_limits.current_window()
    rate_id = window.counter_id(caller.key_id)
    spend_id = spend_limits.counter_id(caller.key_id, spend_limits.period_start(caller.limit_reset or None))
    record, account, counters = read_usable_key(key_hash, caller, (rate_id, spend_id))
    usage = rate_limits.usage_from_item(counters.get(rate_id))
    spent = spend_limits.spent(counters.get(spend_id)) if record.spend_limit_micros else 0
    return key_view(record, account, usage, window, spent)


def key_view(record: ApiKey, account: Account, usage: rate_limits.Usage, window: rate_limits.Window,
             spent_micros: int) -> dict:
    rpm, tpm = rate_limits.effective_limits(record.key_type, record.rpm, record.tpm)
    limit = int(record.spend_limit_micros or 0)
    return {
        "object": "api_key",
        "key_id": record.key_id,
        "display": record.display,
        "name": record.name,
        "type": record.key_type,
        "status": record.status,
        "account_id": account.account_id,
        "currency": account.currency,
        "balance": money.format_micros(balances.total(account)),
        "balance_micros": balances.total(account),
        "markup_pct": money.markup_pct(int(account.markup_bp)),
        "created_at": record.created_at,
        "last_used_at": record.last_used_at,
        "expires_at": record.expires_at,
        "request_count": int(record.request_count or 0),
        "spend": money.format_micros(int(record.spend_micros or 0)),
        "spend_micros": int(record.spend_micros or 0),
        "limits": {
            "rpm": rpm, "tpm": tpm, "rpm_is_default": not record.rpm, "tpm_is_default": not record.tpm,
            "models": list(record.models or []),
            "spend_limit": money.format_micros(limit) if limit else None,
            "spend_limit_micros": limit or None,
            "limit_reset": record.limit_reset if limit else None,
            "expires_at": record.expires_at,
        },
        "usage": {
            "requests_this_minute": usage.requests, "tokens_this_minute": usage.tokens,
            "window_resets_in_seconds": round(window.reset_seconds, 3),
            "spend_this_period": money.format_micros(spent_micros) if limit else None,
            "spend_this_period_micros": spent_micros if limit else None,
        },
    }


async def get_key(request: Request) -> Response:
    key_hash, caller = caller_of(request)
    view = await run_in_threadpool(load_key_view, key_hash, caller)
    usage = rate_limits.Usage(view["usage"]["requests_this_minute"], view["usage"]["tokens_this_minute"])
    headers = {REQUEST_ID_HEADER: _request_id(request),
               **rate_limits.headers(caller, usage, rate_limits.current_window())}
    return JSONResponse(view, headers=headers)


def load_usage_of_usable_key(key_hash: str, caller: CallerContext, window: rate_limits.Window) -> rate_limits.Usage:
    """GET /v1/models: the key re-checked, and its rate-limit usage for the headers, at no extra round trip."""
    rate_id = window.counter_id(caller.key_id)
    _, _, counters = read_usable_key(key_hash, caller, (rate_id,))
    return rate_limits.usage_from_item(counters.get(rate_id))


async def list_models(request: Request) -> Response:
    key_hash, caller = caller_of(request)
    window = rate_limits.current_window()
    usage = await run_in_threadpool(load_usage_of_usable_key, key_hash, caller, window)
    prices = await run_in_threadpool(forwarding.catalog_cache.enabled_models)
    data = [
        {"id": p.model, "object": "model", "owned_by": p.provider,
         "created": int(parse_iso(p.created_at).timestamp()) if p.created_at else 0}
        for p in sorted(prices, key=lambda p: p.model)
        if not caller.models or p.model in caller.models  # a key limited to some models lists only those
    ]
    headers = {REQUEST_ID_HEADER: _request_id(request), **rate_limits.headers(caller, usage, window)}
    return JSONResponse({"object": "list", "data": data}, headers=headers)


async def chat_completions(request: Request) -> Response:
    key_hash, caller = caller_of(request)
    return await forwarding.forward(request, "chat.completions", key_hash, caller)


async def embeddings(request: Request) -> Response:
    key_hash, caller = caller_of(request)
    return await forwarding.forward(request, "embeddings", key_hash, caller)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.GatewayError)
    telemetry.note(error_code=exc.code)
    return _error_response(exc, _request_id(request))


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = errors.not_found(f"Unknown request URL: {request.method} {request.url.path}.", "unknown_url")
    elif exc.status_code == 405:
        error = errors.method_not_allowed(request.method, request.url.path)
    else:
        error = errors.GatewayError(exc.status_code, str(exc.detail))
    return _error_response(error, _request_id(request))


async def _on_unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error", extra={"request_id": _request_id(request)})
    return _error_response(errors.internal_error(), _request_id(request))


def create_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/v1/key", get_key, methods=["GET"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={
            errors.GatewayError: _on_gateway_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected_error,
        },
    )


app = telemetry.RequestTelemetry(create_app())  # one structured log line and the metrics per request
