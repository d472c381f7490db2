"""A circuit breaker per provider: a provider that keeps timing out or refusing connections is given a rest.

What counts as a failure: the provider gave no HTTP answer at all — no connection (refused, reset, connect
timeout, the pool of connections to it full), or a connection that broke or stayed silent past the read timeout
before the response's headers. Those are what ties up an environment (a hanging provider holds each request for
the whole read timeout). An HTTP answer of any status is not a failure here: a 5xx or 429 comes back at once and
costs nothing (the request's fallbacks already move on from it), and a 500 can be caused by one request's content,
so counting it would let one tenant open the breaker for everyone. A stream that goes silent after its headers is
the request's own (a long generation), not counted either.

The states, per provider:
- closed: requests go through; `failures` (default 3) failures within `window_seconds` (default 600) open it.
  The window must outlast `failures` read timeouts in a row (3 × 120 s), since a Lambda environment serves one
  request at a time: a shorter one would never see three hung requests.
- open: for the cool-down (default 30 s, doubled at each opening in a row up to `max_cooldown_seconds`, 600)
  requests to it fail fast — the next fallback model, or 503 `provider_circuit_open` with Retry-After — before
  any hold, so nothing is held or charged and no write is made.
- half-open: after the cool-down one trial request goes through; its answer (any HTTP status) closes the breaker
  and resets the cool-down, its failure re-opens it for twice as long. Others fail fast meanwhile. A trial that
  never reports (every path reports; this guards a bug) stops blocking after `trial_lease_seconds`.

The state is per process: a Lambda environment learns on its own, from its own requests, and forgets it when it
is recycled. That is on purpose: a shared breaker would cost a DynamoDB read on every request and a write on
every failure, and a shared state can be opened by one environment's local network trouble for all. The price:
with N environments busy, up to N × `failures` requests meet the failing provider before all of them open (each
environment one at a time, so the reserved concurrency bounds it), and a fresh environment starts closed. On a
server that serves many requests at once (`onysoft dev`, managed instances) one breaker covers them all.

Thread- and asyncio-safe: every transition is a few operations under a `threading.Lock` that never waits on I/O,
so the event loop may take it too.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from onysoft import errors

logger = logging.getLogger("onysoft.circuit_breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number ≥ 0, not {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    failures: int = 3  # 0: no breaker
    window_seconds: float = 600.0
    cooldown_seconds: float = 30.0
    max_cooldown_seconds: float = 600.0
    trial_lease_seconds: float = 300.0

    @classmethod
    def from_env(cls) -> Settings:
        """ONYSOFT_CIRCUIT_* (template parameters Circuit*); the trial's lease outlasts one upstream call (the
        connect and read timeouts of onysoft.upstream, and a margin)."""
        read = _number("ONYSOFT_UPSTREAM_READ_TIMEOUT", 120.0) + _number("ONYSOFT_UPSTREAM_CONNECT_TIMEOUT", 5.0)
        cooldown = _number("ONYSOFT_CIRCUIT_COOLDOWN_SECONDS", cls.cooldown_seconds)
        return cls(failures=int(_number("ONYSOFT_CIRCUIT_FAILURES", cls.failures)),
                   window_seconds=_number("ONYSOFT_CIRCUIT_WINDOW_SECONDS", cls.window_seconds),
                   cooldown_seconds=cooldown,
                   max_cooldown_seconds=max(cooldown, _number("ONYSOFT_CIRCUIT_MAX_COOLDOWN_SECONDS",
                                                              cls.max_cooldown_seconds)),
                   trial_lease_seconds=read + 60.0)


@dataclass(frozen=True)
class Refused:
    """The provider's breaker is open: try again in `retry_after` seconds."""

    provider: str
    retry_after: float

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))

    def error(self) -> errors.GatewayError:
        """The client's 503, in OpenAI's envelope, with Retry-After."""
        return errors.GatewayError(
            503, f"The {self.provider} provider is failing (timeouts or connection failures), so the gateway is not "
                 f"sending it requests for now. Nothing was charged; retry in {self.retry_after_header} s.",
            "upstream_error", "provider_circuit_open", headers={"retry-after": self.retry_after_header})


class Ticket:
    """Leave to send one request to the provider; it reports how the call went, once (later reports are no-ops):
    `answered` (an HTTP answer came), `failed` (none: a timeout or a connection failure) or `unused` (never sent)."""

    def __init__(self, breaker: Breaker, generation: int, trial: bool):
        self.breaker = breaker
        self.generation = generation
        self.trial = trial
        self.done = False

    def answered(self) -> None:
        self._report("answered")

    def failed(self) -> None:
        self._report("failed")

    def unused(self) -> None:
        self._report("unused")

    def _report(self, outcome: str) -> None:
        if not self.done:
            self.done = True
            self.breaker._report(self, outcome)


class Breaker:
    """One provider's breaker. `clock` is monotonic seconds (injected by the tests); `on_open(provider,
    cooldown)` is called once per opening, outside the lock (the metric)."""

    def __init__(self, provider: str, settings: Settings, clock: Callable[[], float] = time.monotonic,
                 on_open: Callable[[str, float], None] | None = None):
        self.provider = provider
        self.settings = settings
        self.clock = clock
        self.on_open = on_open
        self._lock = threading.Lock()
        self.state = CLOSED
        self._failures: deque[float] = deque()
        self._open_until = 0.0
        self._cooldown = settings.cooldown_seconds  # the current opening's (doubles while openings follow)
        self._trial_until: float | None = None  # a trial in flight: when its lease runs out
        # Bumped at every change of state and every trial: a ticket from before reports into nothing (a request
        # admitted while closed that ends after the breaker opened neither extends nor closes it).
        self._generation = 0

    def admit(self) -> Ticket | Refused:
        with self._lock:
            now = self.clock()
            if self.settings.failures <= 0 or self.state == CLOSED:
                return Ticket(self, self._generation, trial=False)
            if self.state == OPEN:
                if now < self._open_until:
                    return Refused(self.provider, self._open_until - now)
                self.state, self._trial_until = HALF_OPEN, None
            if self._trial_until is not None and now < self._trial_until:
                # One trial at a time; the others come back after a cool-down (the trial decides by then).
                return Refused(self.provider, min(self._cooldown, self._trial_until - now))
            self._generation += 1
            self._trial_until = now + self.settings.trial_lease_seconds
            trial = Ticket(self, self._generation, trial=True)
        logger.warning("circuit half-open: one trial request", extra={"provider": self.provider})
        return trial

    def _report(self, ticket: Ticket, outcome: str) -> None:
        opened = closed = False
        with self._lock:
            if ticket.generation != self._generation or self.settings.failures <= 0:
                return
            now = self.clock()
            if ticket.trial:
                if outcome == "answered":
                    self._close()
                    closed = True
                elif outcome == "failed":
                    self._open(now, min(self._cooldown * 2, self.settings.max_cooldown_seconds))
                    opened = True
                else:
                    self._trial_until = None  # not sent: the next request is the trial
            elif outcome == "failed" and self.state == CLOSED:
                self._failures.append(now)
                while self._failures and self._failures[0] <= now - self.settings.window_seconds:
                    self._failures.popleft()
                if len(self._failures) >= self.settings.failures:
                    self._open(now, self.settings.cooldown_seconds)
                    opened = True
            cooldown = self._cooldown
        if opened:
            logger.error("circuit opened: requests to the provider fail fast",
                         extra={"provider": self.provider, "cooldown_seconds": cooldown})
            if self.on_open is not None:
                self.on_open(self.provider, cooldown)
        elif closed:
            logger.warning("circuit closed: the provider answered the trial", extra={"provider": self.provider})

    def _open(self, now: float, cooldown: float) -> None:
        self.state, self._cooldown = OPEN, cooldown
        self._open_until = now + cooldown
        self._trial_until = None
        self._failures.clear()
        self._generation += 1

    def _close(self) -> None:
        self.state, self._cooldown = CLOSED, self.settings.cooldown_seconds
        self._trial_until = None
        self._failures.clear()
        self._generation += 1


# ---------------------------------------------------------------------------------------------- the process's

_breakers: dict[str, Breaker] = {}
_registry_lock = threading.Lock()
_settings: Settings | None = None


def _opened(provider: str, cooldown: float) -> None:
    from onysoft import telemetry

    try:
        telemetry.circuit_opened(provider)
    except Exception:  # noqa: BLE001 - a metric never fails a request
        logger.exception("could not count the circuit's opening")


def breaker(provider: str) -> Breaker:
    """The process's breaker for the provider (settings read from the environment at the first one)."""
    global _settings
    with _registry_lock:
        found = _breakers.get(provider)
        if found is None:
            if _settings is None:
                _settings = Settings.from_env()
            found = _breakers[provider] = Breaker(provider, _settings, on_open=_opened)
        return found


def reset() -> None:
    """Forget every breaker and the settings (tests; a new environment starts so)."""
    global _settings
    with _registry_lock:
        _breakers.clear()
        _settings = None
