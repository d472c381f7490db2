"""Requests and tokens per minute per key, counted in the RateLimits table, enforced inside the hold.

Window rule: fixed one-minute windows aligned to the UTC minute. A request is counted in the window it
starts in, at the hold (so it is refused before anything is forwarded); its tokens are added to that same
window at settle. A request is refused when the window already holds `rpm` requests, or when its tokens
already reached `tpm` (the request that would start after the limit was reached). Counters expire by TTL.
"""

import math
import time
from dataclasses import dataclass

from onysoft.caller import CallerContext
from onysoft.key_types import KEY_TYPES
from onysoft.models import RateLimitCounter

WINDOW_SECONDS = 60
TTL_SECONDS = 3 * WINDOW_SECONDS


@dataclass(frozen=True)
class Window:
    start: int  # epoch seconds

    @property
    def reset_seconds(self) -> float:
        return max(self.start + WINDOW_SECONDS - time.time(), 0.0)

    def counter_id(self, key_id: str) -> str:
        return f"{key_id}#{self.start}"


def current_window(now: float | None = None) -> Window:
    now = time.time() if now is None else now
    return Window(int(now // WINDOW_SECONDS * WINDOW_SECONDS))


def effective_limits(key_type_name: str, rpm: int | None, tpm: int | None) -> tuple[int, int]:
    """(rpm, tpm): the key's own, or its type's defaults from the registry."""
    key_type = KEY_TYPES.get(key_type_name)
    return (int(rpm or 0) or (key_type.default_rpm if key_type else 0),
            int(tpm or 0) or (key_type.default_tpm if key_type else 0))


def limits_of(caller: CallerContext) -> tuple[int, int]:
    return effective_limits(caller.key_type, caller.rpm, caller.tpm)


def count_request(tx, caller: CallerContext, window: Window) -> None:
    """Add this request to the window, if the window has room (part of the hold transaction)."""
    rpm, tpm = limits_of(caller)
    condition = None
    if rpm:
        condition = RateLimitCounter.requests.does_not_exist() | (RateLimitCounter.requests < rpm)
    if tpm:
        tokens_ok = RateLimitCounter.tokens.does_not_exist() | (RateLimitCounter.tokens < tpm)
        condition = tokens_ok if condition is None else condition & tokens_ok
    tx.update(
        RateLimitCounter(counter_id=window.counter_id(caller.key_id)),
        actions=[RateLimitCounter.requests.add(1),
                 RateLimitCounter.expires_at.set(RateLimitCounter.expires_at | window.start + TTL_SECONDS)],
        condition=condition,
        return_values="ALL_OLD",
    )


def count_tokens_now(key_id: str, window_start: int, tokens: int) -> None:
    """Add a settled request's tokens to the window it started in: one plain UpdateItem after the settle."""
    window = Window(window_start)
    RateLimitCounter(counter_id=window.counter_id(key_id)).update(
        actions=[RateLimitCounter.tokens.add(tokens),
                 RateLimitCounter.expires_at.set(RateLimitCounter.expires_at | window.start + TTL_SECONDS)])


@dataclass(frozen=True)
class Usage:
    requests: int = 0
    tokens: int = 0


def usage_from_item(raw: dict | None) -> Usage:
    raw = raw or {}
    return Usage(int(raw.get("requests", {}).get("N", 0)), int(raw.get("tokens", {}).get("N", 0)))


def read_usage(key_id: str, window: Window) -> Usage:
    try:
        counter = RateLimitCounter.get(window.counter_id(key_id), consistent_read=True)
    except RateLimitCounter.DoesNotExist:
        return Usage()
    return Usage(int(counter.requests or 0), int(counter.tokens or 0))


def _duration(seconds: float) -> str:
    """OpenAI's reset format: '1s', '6m0s', '250ms'."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def headers(caller: CallerContext, usage: Usage, window: Window) -> dict[str, str]:
    rpm, tpm = limits_of(caller)
    reset = _duration(window.reset_seconds)
    out: dict[str, str] = {}
    if rpm:
        out.update({"x-ratelimit-limit-requests": str(rpm),
                    "x-ratelimit-remaining-requests": str(max(rpm - usage.requests, 0)),
                    "x-ratelimit-reset-requests": reset})
    if tpm:
        out.update({"x-ratelimit-limit-tokens": str(tpm),
                    "x-ratelimit-remaining-tokens": str(max(tpm - usage.tokens, 0)),
                    "x-ratelimit-reset-tokens": reset})
    return out


def exceeded(caller: CallerContext, usage: Usage, window: Window):
    """The 429 for a refused request: which limit, with Retry-After and the x-ratelimit headers."""
    from onysoft import errors

    rpm, tpm = limits_of(caller)
    if rpm and usage.requests >= rpm:
        what = f"requests per minute ({rpm})"
    else:
        what = f"tokens per minute ({tpm})"
    retry_after = max(math.ceil(window.reset_seconds), 1)
    return errors.GatewayError(
        429, f"Rate limit reached for this API key: {what}. Try again in {retry_after}s.", "requests",
        "rate_limit_exceeded", headers={"retry-after": str(retry_after), **headers(caller, usage, window)},
    )
