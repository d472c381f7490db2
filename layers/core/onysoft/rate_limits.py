"""Requests and tokens per minute per key, counted in the RateLimits table, enforced inside the hold.

Window rule: fixed one-minute windows aligned to the UTC minute. A request is counted in the window it
starts in, at the hold (so it is refused before anything is forwarded), with the tokens it may use: its
prompt bound plus the output it is allowed (what the hold is sized on; OpenAI's own limits count max_tokens
the same way). The settle (or release) transaction gives the window back what the request did not use, in the
same transaction that closes the hold (issue 23: the usage rollup used to, a second or two later, and a quick
loop of small requests outran it), when the window is still the current one (a past window decides nothing).
A request is refused when the window already holds `rpm` requests, or when its tokens already reached `tpm`
(the request that would start after the limit was reached). So under concurrency rpm is exact, and tpm is
passed by less than one request's count (the last one admitted saw the window under the limit): a burst is
bounded by what its requests may use while they run; once they end, the window counts what they used.
Counters expire by TTL.

Shards (issue 16). One counter item per key and window is one hot item: each request writes it once in the
hold (2 write units), so one key would stop near 500 requests a second. A key of an account with N balance
shards counts in N counters, `<key_id>#<window>` (shard 0) and `<key_id>#<window>#<k>`: the hold counts in
the counter of the balance shard it takes from, and each counter has its share of the limits (`share`: the
shares add up to the limit exactly). A counter at its share refuses; the hold then moves to a shard whose
counter has room (read from all N), and the request is refused only when the shares are all used: requests
never pass rpm, tokens pass tpm by less than one request's count per counter, and a request is refused early
only when a concurrent request took the room it saw.
"""

import math
import time
from dataclasses import dataclass

from onysoft import transact_items
from onysoft.caller import CallerContext
from onysoft.dynamo import batch_get_raw
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

    def counter_id(self, key_id: str, shard: int = 0) -> str:
        return f"{key_id}#{self.start}" if not shard else f"{key_id}#{self.start}#{shard}"

    def counter_ids(self, key_id: str, shards: int) -> list[str]:
        return [self.counter_id(key_id, k) for k in range(max(shards, 1))]


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


def share(limit: int, shards: int, shard: int) -> int:
    """Counter `shard`'s part of a limit split over `shards` counters: the parts add up to the limit."""
    shards = max(shards, 1)
    return limit // shards + (1 if shard < limit % shards else 0)


def count_request(caller: CallerContext, window: Window, shard: int, tokens: int) -> transact_items.Update:
    """Add this request, and the tokens it may use, to its counter, if the counter has room (part of the
    hold transaction)."""
    rpm, tpm = limits_of(caller)
    shards = max(caller.shards, 1)
    counter = transact_items.Update(RateLimitCounter, {"counter_id": window.counter_id(caller.key_id, shard)}) \
        .add("requests", 1).add("tokens", tokens).set_if_absent("expires_at", window.start + TTL_SECONDS)
    for limit, name in ((rpm, "requests"), (tpm, "tokens")):
        if limit:
            # A counter whose share is 0 (a limit smaller than the shard count) takes nothing, not even a first one.
            counter.where_absent_or_below(name, share(limit, shards, shard))
    return counter.old_item_on_failure()


def give_back_now(window_start: int, counted_for: int, used: int, now: float | None = None) -> int:
    """The tokens the settle gives its window back (negative: a provider reported more than was counted), or 0
    when there is nothing to give: nothing counted, nothing unused, or the window has ended. A past window
    decides no request any more, so nothing goes back to it; and because the window is still the current one,
    its counter item exists (the hold wrote it, and its TTL is two windows after this one ends)."""
    if not window_start or not counted_for or counted_for == used:
        return 0
    if current_window(now).start != window_start:
        return 0
    return used - counted_for


def give_back(key_id: str, window_start: int, shard: int, tokens: int) -> transact_items.Update:
    """Correct the window's tokens by what the request used against what it was counted for (part of the settle
    or release transaction). No condition, so it can never cancel the settle: should the item be gone anyway
    (a window that ended between give_back_now and the write), the ADD makes one that its TTL removes."""
    return transact_items.Update(RateLimitCounter, {"counter_id": Window(window_start).counter_id(key_id, shard)}) \
        .add("tokens", tokens).set_if_absent("expires_at", window_start + TTL_SECONDS)


def shard_with_room(caller: CallerContext, counters: dict[str, dict], window: Window, full: set[int]) -> int | None:
    """A shard (not in `full`) whose counter is below its share of both limits, from the counters as read."""
    rpm, tpm = limits_of(caller)
    shards = max(caller.shards, 1)
    for k in range(shards):
        if k in full:
            continue
        used = usage_from_item(counters.get(window.counter_id(caller.key_id, k)))
        if (not rpm or used.requests < share(rpm, shards, k)) and (not tpm or used.tokens < share(tpm, shards, k)):
            return k
    return None


@dataclass(frozen=True)
class Usage:
    requests: int = 0
    tokens: int = 0


def usage_from_item(raw: dict | None) -> Usage:
    raw = raw or {}
    return Usage(int(raw.get("requests", {}).get("N", 0)), int(raw.get("tokens", {}).get("N", 0)))


def summed(counters: dict[str, dict], key_id: str, window: Window, shards: int) -> Usage:
    """The window's use over the key's counters (raw items by counter_id, absent ones missing)."""
    used = [usage_from_item(counters.get(c)) for c in window.counter_ids(key_id, shards)]
    return Usage(sum(u.requests for u in used), sum(u.tokens for u in used))


def read_counters(key_id: str, window: Window, shards: int) -> dict[str, dict]:
    """The key's counters for the window, strongly consistent, raw items by counter_id."""
    return {item["counter_id"]["S"]: item for item in batch_get_raw(
        RateLimitCounter.Meta.table_name, [{"counter_id": {"S": c}} for c in window.counter_ids(key_id, shards)])}


def read_usage(key_id: str, window: Window, shards: int = 1) -> Usage:
    return summed(read_counters(key_id, window, shards), key_id, window, shards)


def count_unbilled(caller: CallerContext, window: Window, counters: dict[str, dict]) -> Usage:
    """Count one request that holds nothing (count_tokens) in the key's window: one request, no tokens, only if a
    counter has room for a request under rpm (tpm is not its concern: it uses no tokens). A conditional
    UpdateItem, not a transaction: there is nothing else to write.
    Returns the window's use after it; a full window raises the 429 (`exceeded`)."""
    from pynamodb.exceptions import UpdateError

    rpm, _ = limits_of(caller)
    shards = max(caller.shards, 1)
    full: set[int] = set()
    while True:
        shard = 0 if not rpm else next(
            (k for k in range(shards) if k not in full and usage_from_item(
                counters.get(window.counter_id(caller.key_id, k))).requests < share(rpm, shards, k)), None)
        if shard is None:
            raise exceeded(caller, summed(counters, caller.key_id, window, shards), window)
        part = share(rpm, shards, shard) if rpm else 0
        condition = (RateLimitCounter.requests.does_not_exist() | (RateLimitCounter.requests < part)) if rpm else None
        counter_id = window.counter_id(caller.key_id, shard)
        try:
            RateLimitCounter(counter_id=counter_id).update(
                actions=[RateLimitCounter.requests.add(1),
                         RateLimitCounter.expires_at.set(RateLimitCounter.expires_at | window.start + TTL_SECONDS)],
                condition=condition)
        except UpdateError as exc:
            if exc.cause_response_code != "ConditionalCheckFailedException":
                raise
            full.add(shard)  # taken meanwhile: another shard, if one has room
            counters = read_counters(caller.key_id, window, shards)
            continue
        raw = counters.setdefault(counter_id, {})
        raw["requests"] = {"N": str(int(raw.get("requests", {}).get("N", 0)) + 1)}
        return summed(counters, caller.key_id, window, shards)


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
