"""Calling providers: one httpx client per provider, reused across invocations, and the mapping of
upstream failures to the gateway's errors (a 4xx keeps its status, 429 stays 429, 5xx or a broken
connection is 502, a timeout is 504).

Every client mounts the built-in mock provider's transport for `mock://` URLs: the mock is an upstream
like any other (providers.json gives it a `mock://` base URL), reached through httpx, never a branch here.
"""

import json
import os

import httpx

from onysoft import errors
from onysoft.mock_provider import MockTransport
from onysoft.providers import Provider

_clients: dict[str, httpx.AsyncClient] = {}
# An idle connection is dropped after this, before a server's own idle timeout can close it under a request: a
# request written into a connection the server is closing fails after it was sent, which costs the client its hold
# (forwarding.settle) for a call the provider never saw. 5 s is the shortest common server idle timeout (uvicorn's,
# nginx's keepalive_timeout is 75, AWS ALB's 60): httpx's own default, 5.0, raced it (test_shards_concurrency saw a
# fake-ok request fail with "connection broke after the request was sent").
KEEPALIVE_SECONDS = 4.0


def _timeout() -> httpx.Timeout:
    read = float(os.environ.get("ONYSOFT_UPSTREAM_READ_TIMEOUT", "120"))
    connect = float(os.environ.get("ONYSOFT_UPSTREAM_CONNECT_TIMEOUT", "5"))
    return httpx.Timeout(connect=connect, read=read, write=30.0, pool=10.0)


def client_for(provider: Provider) -> httpx.AsyncClient:
    client = _clients.get(provider.name)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(timeout=_timeout(), limits=httpx.Limits(max_keepalive_connections=20,
                                                                         keepalive_expiry=KEEPALIVE_SECONDS),
                                   mounts={"mock://": MockTransport()})
        _clients[provider.name] = client
    return client


UPSTREAM_PATHS = {"chat.completions": "/chat/completions", "embeddings": "/embeddings", "responses": "/responses",
                  "messages": "/messages"}


def upstream_url(provider: Provider, endpoint: str) -> str:
    return provider.base_url + UPSTREAM_PATHS[endpoint]


def _upstream_message(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"][:1000]
    if isinstance(error, str):
        return error[:1000]
    return None


def error_from_status(provider: Provider, status: int, body: bytes, headers: httpx.Headers) -> errors.GatewayError:
    upstream_says = _upstream_message(body)
    if status == 429:
        retry = {"retry-after": headers["retry-after"]} if "retry-after" in headers else {}
        return errors.GatewayError(429, upstream_says or f"The {provider.name} provider is rate limiting requests.",
                                   "rate_limit_error", "upstream_rate_limited", headers=retry)
    if status in (401, 403):
        # The provider refused *our* credentials: not the client's key, so never a 401 to the client.
        return errors.GatewayError(502, f"The {provider.name} provider refused the gateway's credentials.",
                                   "upstream_error", "upstream_auth_failed")
    if 400 <= status < 500:
        return errors.GatewayError(status, upstream_says or f"The {provider.name} provider rejected the request.",
                                   "invalid_request_error", "upstream_bad_request")
    return errors.GatewayError(502, f"The {provider.name} provider failed (HTTP {status}). Nothing was charged.",
                               "upstream_error", "upstream_error")


# Failures before any byte of the request left: no connection could be made, so the provider cannot bill.
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
CHARGED = " It was charged its hold: the provider may have done the work."


def never_sent(exc: Exception) -> bool:
    return isinstance(exc, NEVER_SENT)


def charged(error: errors.GatewayError) -> errors.GatewayError:
    """The same error, saying that the call was charged (its usage could not be known)."""
    if not error.message.endswith(CHARGED):
        error.message += CHARGED
    return error


def error_from_exception(provider: Provider, exc: Exception) -> errors.GatewayError:
    if never_sent(exc):
        return errors.GatewayError(502, f"Could not reach the {provider.name} provider. Nothing was charged.",
                                   "upstream_error", "upstream_unreachable")
    if isinstance(exc, httpx.TimeoutException):
        return errors.GatewayError(504, f"The {provider.name} provider did not answer in time.", "upstream_error",
                                   "upstream_timeout")
    return errors.GatewayError(502, f"The connection to the {provider.name} provider broke after the request was "
                                    "sent.", "upstream_error", "upstream_unreachable")
