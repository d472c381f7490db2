"""Calling providers: one httpx client per provider, reused across invocations (its transport: HTTP/1.1 on asyncio's
own transports, onysoft.upstream_transport), and the mapping of
upstream failures to the gateway's errors (a 4xx keeps its status, 429 stays 429, 5xx or a broken
connection is 502, a timeout is 504).

Every client mounts the built-in mock provider's transport for `mock://` URLs: the mock is an upstream
like any other (providers.json gives it a `mock://` base URL), reached through httpx, never a branch here.

A client keeps no state between requests: no cookie jar. httpx's keeps every Set-Cookie and sends it with the
next request to that host, which here is another tenant's request (and it parsed every answer's headers for them:
~2% of the proxy's CPU a request).
"""

import json
import logging
import os
import re

import httpx

from onysoft import errors
from onysoft.mock_provider import MockTransport
from onysoft.providers import Provider
from onysoft.upstream_transport import LeanTransport

logger = logging.getLogger("onysoft.upstream")

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


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing it is given (and, empty, adds nothing to a request)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass

    def set(self, name: str, value: str, domain: str = "", path: str = "/") -> None:
        pass


class _StatelessClient(httpx.AsyncClient):
    """httpx's client without its cookie jar (see the module's docstring)."""

    _no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies) -> None:
        if cookies:
            raise ValueError("the upstream client keeps no cookies")


def _transport() -> httpx.AsyncBaseTransport:
    """The providers' transport: onysoft.upstream_transport's (`lean`, the default), or httpx's own over httpcore
    (ONYSOFT_UPSTREAM_TRANSPORT=httpx: a way back if a provider ever answers the lean one differently)."""
    if os.environ.get("ONYSOFT_UPSTREAM_TRANSPORT", "lean") == "httpx":
        return httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=20,
                                                            keepalive_expiry=KEEPALIVE_SECONDS))
    return LeanTransport(keepalive_seconds=KEEPALIVE_SECONDS)


def client_for(provider: Provider) -> httpx.AsyncClient:
    client = _clients.get(provider.name)
    if client is None or client.is_closed:
        client = _StatelessClient(timeout=_timeout(), transport=_transport(), mounts={"mock://": MockTransport()})
        _clients[provider.name] = client
    return client


UPSTREAM_PATHS = {"chat.completions": "/chat/completions", "embeddings": "/embeddings", "responses": "/responses",
                  "messages": "/messages"}


_urls: dict[tuple[str, str], httpx.URL] = {}


def upstream_url(provider: Provider, endpoint: str) -> httpx.URL:
    """Parsed once per base URL and endpoint (httpx parses a str URL in Python on every request)."""
    key = (provider.base_url, endpoint)
    url = _urls.get(key)
    if url is None:
        url = _urls[key] = httpx.URL(provider.base_url + UPSTREAM_PATHS[endpoint])
    return url


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


# What a provider's text may carry about the platform's own account: its organisation and project ids, request
# ids, fragments of its API key. A client sees none of it (issue 23); the operator's logs keep the whole text.
_PLATFORM_IDENTIFIERS = re.compile(
    r"\b(?:org|proj|user|req|request|acct|sess)[-_][A-Za-z0-9_-]{6,}"  # org-…, proj_…, req_… (call_ ids: the client's)
    r"|\bsk-[A-Za-z0-9_*.-]{3,}"  # a key or its masked form (sk-proj-****abcd)
    r"|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"  # request ids as UUIDs
    r"|\b[0-9a-f]{24,}\b",  # long hex ids
    re.IGNORECASE)
_PLATFORM_SENTENCES = re.compile(  # a sentence about the account, not the request
    r"[^.!?\n]*\b(?:organization|organisation|your account|billing|quota|credit balance)\b[^.!?\n]*[.!?]?",
    re.IGNORECASE)


def scrubbed(text: str) -> str:
    """A provider's message about the request, without what it says about the platform's provider account."""
    text = _PLATFORM_SENTENCES.sub("", text)
    return re.sub(r"\s{2,}", " ", _PLATFORM_IDENTIFIERS.sub("[redacted]", text)).strip()


def error_from_status(provider: Provider, status: int, body: bytes, headers: httpx.Headers) -> errors.GatewayError:
    """The client's error for a provider's error status. A 429 or a 5xx is about the platform's provider account
    (its quota, its organisation), never about the request: the gateway's own words, with the status class; the
    provider's text goes to the logs only. A 4xx about the request keeps the provider's message, which the
    client needs to fix it, scrubbed of the platform's identifiers."""
    upstream_says = _upstream_message(body)
    if upstream_says:
        logger.warning("provider error", extra={"provider": provider.name, "status": status,
                                                "provider_message": upstream_says})
    if status == 429:
        retry = {"retry-after": headers["retry-after"]} if "retry-after" in headers else {}
        return errors.GatewayError(429, f"The {provider.name} provider is rate limiting requests. Nothing was "
                                        "charged; retry later.", "rate_limit_error", "upstream_rate_limited",
                                   headers=retry)
    if status in (401, 403):
        # The provider refused *our* credentials: not the client's key, so never a 401 to the client.
        return errors.GatewayError(502, f"The {provider.name} provider refused the gateway's credentials.",
                                   "upstream_error", "upstream_auth_failed")
    if 400 <= status < 500:
        message = scrubbed(upstream_says or "")
        return errors.GatewayError(status, message or f"The {provider.name} provider rejected the request.",
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
