"""Structured logs and CloudWatch metrics: Powertools Logger (JSON) and Metrics (EMF, namespace Onysoft).

Logs: every `onysoft.*` stdlib logger writes through Powertools' JSON formatter, so `extra={...}` fields
reach CloudWatch as keys (stdlib's default formatter drops them). The proxy writes one line per request:
request id, key_id, account_id, model, status, upstream latency, charge. Never a key: only ids.

Metrics (dimension `service`, plus `currency` where it says so); the alarms in template.yaml read them. A
request's own (Requests, ChargeMicros, UpstreamLatency, HoldRefusals, ServerErrors) ride on its log line as EMF
(emit_request); the others are Powertools Metrics' documents (_emit):
- Requests, ChargeMicros {currency}: per answered /v1 request; the charge in the account's micro-units
  (an integer; EMF carries doubles, exact below 2**53).
- UpstreamLatency (ms to the provider's response headers), HoldRefusals (402/429 before any upstream call),
  ServerErrors (5xx answers), SettleFailures (a hold that could not be settled or released).
- StaleHoldsFound, StaleHoldsSettled, SweeperCloseFailures, OpenHoldsOlderThan30Min: the sweeper's, every
  run (a record it could not close is counted and skipped, never a stop of the run).
- FxRateStale {pair}: a request met a USD→TRY rate past its warning age (onysoft.fx_age); ChargedAtHold {reason}:
  a call whose usage could not be known was charged its hold (onysoft.forwarding).
- CircuitOpened: a provider's circuit breaker opened (onysoft.circuit_breaker), twice: with `service` only (the
  alarm's) and with `provider` too (which one).

Metrics are written to stdout (EMF) only in Lambda (AWS_LAMBDA_FUNCTION_NAME set): locally nothing reads
them, and the local gateway's console stays readable.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

NAMESPACE = "Onysoft"
HOLD_REFUSAL_CODES = frozenset({"insufficient_balance", "key_spend_limit_reached", "rate_limit_exceeded"})
REQUEST_CONTEXT_HEADER = b"x-amzn-request-context"
UNLOGGED_PATHS = frozenset({"/healthz"})  # the adapter's readiness probe

_lock = threading.Lock()
_logger: Any = None
_metrics: dict[str, Any] = {}  # the EMF writer per service name, used under _lock (_emit)


def service() -> str:
    return os.environ.get("POWERTOOLS_SERVICE_NAME") or "onysoft-gateway"


def metrics_enabled() -> bool:
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))


# ---------------------------------------------------------------------------------------------- logs


def logger():
    """The Powertools Logger; on first use the `onysoft` stdlib loggers are routed through its JSON
    formatter (unless something, e.g. `onysoft dev`, configured them already)."""
    global _logger
    if _logger is None:
        from aws_lambda_powertools import Logger

        _logger = Logger(service=service())
        parent = logging.getLogger("onysoft")
        if not parent.handlers:
            for handler in _logger.handlers:  # Powertools' own handler, with its JSON formatter
                parent.addHandler(handler)
            parent.setLevel(_logger.log_level)
            parent.propagate = False
    return _logger


# ---------------------------------------------------------------------------------------------- metrics


def _emit(metrics: dict[str, tuple[str, float]], dimensions: dict[str, str] | None = None) -> None:
    """One EMF document: {name: (unit, value)} under `dimensions` (plus service)."""
    if not metrics or not metrics_enabled():
        return
    from aws_lambda_powertools.metrics import EphemeralMetrics

    with _lock:  # EphemeralMetrics is not thread-safe; settles run in worker threads
        # One writer per service for the process (each flush clears it back to its defaults): a new one per
        # document was ~2% of the proxy's CPU a request, which emits two.
        emf = _metrics.get(name := service())
        if emf is None:
            emf = _metrics[name] = EphemeralMetrics(namespace=NAMESPACE, service=name)
        try:
            for key, value in (dimensions or {}).items():
                emf.add_dimension(key, value or "none")
            for key, (unit, value) in metrics.items():
                emf.add_metric(name=key, unit=unit, value=value)
            emf.flush_metrics()
        except Exception:
            emf.clear_metrics()  # nothing of a failed document left for the next one
            raise


def settle_failed() -> None:
    """A hold could not be closed (settled or released): the money stays held until the sweeper runs."""
    _emit({"SettleFailures": ("Count", 1)})


def fx_rate_stale(pair: str) -> None:
    """A request in the pair's currency met a rate past its warning age (onysoft.fx_age): the alarm's metric."""
    _emit({"FxRateStale": ("Count", 1)}, {"pair": pair})


def charged_hold(reason: str) -> None:
    """A call whose usage could not be known was charged its hold (a timeout after the send, a cut stream…)."""
    _emit({"ChargedAtHold": ("Count", 1)}, {"reason": reason})


def circuit_opened(provider: str) -> None:
    """A provider's breaker opened: its requests fail fast for a cool-down. The alarm reads the sum over providers
    (one alarm whatever the provider), the second document says which."""
    _emit({"CircuitOpened": ("Count", 1)})
    _emit({"CircuitOpened": ("Count", 1)}, {"provider": provider})


def record_sweep(result: dict[str, int], open_over_30_min: int, quarantined: int = 0) -> None:
    """The sweeper's run: every hold it found stale, those it closed, and what is still open too long or
    quarantined (onysoft.sweeper: a gauge each run, so the alarm stays on until the operator acts).
    Reads the run's counts by name, so a new outcome key adds to Found without code here."""
    found = sum(v for v in result.values() if isinstance(v, int))
    settled = sum(v for k, v in result.items() if k in ("settled", "released") and isinstance(v, int))
    failures = result.get("close_failures", 0) + result.get("quarantined", 0)  # quarantined: a failure too
    _emit({"StaleHoldsFound": ("Count", found), "StaleHoldsSettled": ("Count", settled),
           "SweeperCloseFailures": ("Count", failures),
           "OpenHoldsOlderThan30Min": ("Count", open_over_30_min), "QuarantinedHolds": ("Count", quarantined)})
    logger().info("stale holds swept", extra={**result, "open_over_30_min": open_over_30_min,
                                              "quarantined_holds": quarantined})


def rollup_quarantined(records: int) -> None:
    """The usage rollup set aside records it cannot count (onysoft.rollup_quarantine): the alarm's metric."""
    _emit({"RollupRecordsQuarantined": ("Count", records)})


def consumer_failures(consumer: str, failures: int) -> None:
    """A scheduled consumer (key_expiry) skipped records it could not handle: counted, the others went on."""
    _emit({"ConsumerRecordFailures": ("Count", failures)}, {"consumer": consumer})


def malformed_items(count: int, table: str) -> None:
    """A list met items it cannot read (unknown kind, missing or mistyped fields): skipped, never a 500."""
    _emit({"MalformedItemsSkipped": ("Count", count)}, {"table": table})


# ---------------------------------------------------------------------------------------------- requests


@dataclass
class RequestRecord:
    """What the proxy learned about one request; the code that learns a field notes it (note())."""

    request_id: str = ""
    method: str = ""
    path: str = ""
    key_id: str = ""
    account_id: str = ""
    currency: str = ""
    model: str | None = None
    status: int = 0
    error_code: str | None = None
    upstream_ms: int | None = None
    charge_micros: int | None = None
    overhead_ms: float | None = None  # x-onysoft-overhead-ms as the headers went out (onysoft.overhead)
    started: float = 0.0

    def log_fields(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "method": self.method, "path": self.path, "key_id": self.key_id,
                "account_id": self.account_id, "currency": self.currency, "model": self.model,
                "status": self.status, "error_code": self.error_code, "upstream_latency_ms": self.upstream_ms,
                "charge_micros": self.charge_micros, "overhead_ms": self.overhead_ms,
                "duration_ms": int((time.monotonic() - self.started) * 1000)}


_current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("onysoft_request", default=None)


def note(**fields: Any) -> None:
    """Add what is known now to the running request's record (no-op outside a request)."""
    record = _current.get()
    if record is not None:
        for name, value in fields.items():
            setattr(record, name, value)


def _from_request_context(raw: bytes | None) -> tuple[str, dict]:
    """(API Gateway's request id, the authorizer's context) from the adapter's request-context header."""
    try:
        context = json.loads(raw or b"{}")
        return str(context.get("requestId") or ""), dict(context.get("authorizer") or {})
    except (ValueError, TypeError, AttributeError):
        return "", {}


def emit_request(record: RequestRecord) -> None:
    """The request's log line, which in Lambda is also its metrics' EMF document: one write and one JSON
    serialisation a request. Powertools Metrics writes a document per dimension set, each its own line: the line
    and those two documents cost 7.5% more of the proxy's CPU a request (side by side) and 17% more bytes for
    CloudWatch Logs to ingest (1,032 against 881). The request's metrics only; the others stay Powertools'."""
    plain = {"ServerErrors": ("Count", 1 if record.status >= 500 else 0)}
    if record.upstream_ms is not None:
        plain["UpstreamLatency"] = ("Milliseconds", record.upstream_ms)
    if record.error_code in HOLD_REFUSAL_CODES:
        plain["HoldRefusals"] = ("Count", 1)
    by_currency = {"Requests": ("Count", 1)}
    if record.charge_micros is not None:
        by_currency["ChargeMicros"] = ("Count", record.charge_micros)
    fields = record.log_fields()
    if metrics_enabled() and record.currency:
        fields.update(_emf_fields(plain, by_currency))
        logger().info("request", extra=fields)
        return
    logger().info("request", extra=fields)
    _emit(plain)
    _emit(by_currency, {"currency": record.currency})


def _emf_fields(plain: dict[str, tuple[str, float]], by_currency: dict[str, tuple[str, float]]) -> dict[str, Any]:
    """EMF in the request's own log line: two metric directives (`service`; `currency` and `service`), whose
    dimension values are the line's own `service` (Powertools Logger's) and `currency` fields."""
    def directive(metrics: dict, dimensions: list[str]) -> dict:
        return {"Namespace": NAMESPACE, "Dimensions": [dimensions],
                "Metrics": [{"Name": name, "Unit": unit} for name, (unit, _) in metrics.items()]}

    fields: dict[str, Any] = {"_aws": {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": [
        directive(plain, ["service"]), directive(by_currency, ["currency", "service"])]}}
    for name, (_, value) in (plain | by_currency).items():
        fields[name] = value
    return fields


class RequestTelemetry:
    """ASGI middleware: one RequestRecord per HTTP request, logged and counted when the answer is done
    (after a stream's last byte, so a streamed request's charge is in it)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNLOGGED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id, authorizer = _from_request_context(headers.get(REQUEST_CONTEXT_HEADER))
        record = RequestRecord(request_id=request_id, method=scope.get("method", ""), path=scope.get("path", ""),
                               key_id=str(authorizer.get("key_id") or ""),
                               account_id=str(authorizer.get("account_id") or ""),
                               currency=str(authorizer.get("currency") or ""), started=time.monotonic())

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                record.status = int(message["status"])
            await send(message)

        token = _current.set(record)
        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            record.status = record.status or 500
            raise
        finally:
            _current.reset(token)
            try:
                emit_request(record)
            except Exception:  # noqa: BLE001, S110 - telemetry must never fail a request
                pass
