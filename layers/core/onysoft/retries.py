"""The one retry policy: a bounded number of attempts with capped exponential backoff, optionally jittered.

A few lines of our own rather than a library (tenacity, stamina): the proxy pays every import at each cold
start, and all that is needed is this loop. Used for DynamoDB transactions (onysoft.billing), the settle after
an answer (onysoft.forwarding) and, on developer machines, the moto server's start (onysoft_tools.local).
"""

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    attempts: int  # how many calls in all, the first included
    base_seconds: float  # the wait after the first failure; doubled after each next one
    cap_seconds: float  # no wait longer than this
    jitter: bool = False  # "full jitter": a random wait up to the backoff, so racing callers spread out

    def delay(self, failures: int) -> float:
        """The wait after the `failures`-th failure (1 = the first)."""
        ceiling = min(self.base_seconds * 2 ** (failures - 1), self.cap_seconds)
        return random.uniform(0, ceiling) if self.jitter else ceiling  # noqa: S311 - jitter, not secrets


def retry(fn: Callable[[], T], policy: Backoff, *, retry_if: Callable[[Exception], bool] = lambda exc: True,
         on_failure: Callable[[int, Exception], None] | None = None) -> T:
    """fn's result, calling it again after a failure that `retry_if` accepts, up to policy.attempts calls.
    The last failure, or one not to retry, is raised. `on_failure(attempt, exc)` sees every retryable failure
    (the last one too) while it is being handled, so it may log it with its traceback."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not retry_if(exc):
                raise
            if on_failure is not None:
                on_failure(attempt, exc)
            if attempt == policy.attempts:
                raise
            time.sleep(policy.delay(attempt))
    raise AssertionError("unreachable: policy.attempts must be at least 1")
