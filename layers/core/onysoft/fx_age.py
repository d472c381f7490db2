"""The USD→TRY rate has an age (docs/BILLING.md, "FX"): a TRY charge converts at the stored rate, so a rate nobody
has updated for days is a price nobody agreed to. Past a warning age (ONYSOFT_FX_WARN_AGE_HOURS, default 24) every
TRY request logs it and counts an `FxRateStale` metric (an alarm in template.yaml reads it; the dashboard shows
the age); past a hard age (ONYSOFT_FX_MAX_AGE_HOURS, default 168: 7 days) TRY holds are refused with 503
`fx_rate_stale` until an operator sets the rate (`onysoft fx set USDTRY RATE`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from onysoft import clock, errors

logger = logging.getLogger("onysoft.fx_age")

DEFAULT_WARN_HOURS = 24.0
DEFAULT_MAX_HOURS = 7 * 24.0


@dataclass(frozen=True)
class Limits:
    warn_hours: float
    max_hours: float


def limits() -> Limits:
    warn = float(os.environ.get("ONYSOFT_FX_WARN_AGE_HOURS") or DEFAULT_WARN_HOURS)
    hard = float(os.environ.get("ONYSOFT_FX_MAX_AGE_HOURS") or DEFAULT_MAX_HOURS)
    return Limits(warn, max(hard, warn))


def age_hours(updated_at: str, now_iso: str | None = None) -> float | None:
    """How old a rate set at `updated_at` is; None when the time is missing or unreadable (treated as stale)."""
    try:
        then = clock.parse_iso(updated_at)
    except (TypeError, ValueError):
        return None
    now = clock.parse_iso(now_iso) if now_iso else clock.utc_now()
    return (now - then).total_seconds() / 3600


def state(updated_at: str, now_iso: str | None = None) -> str:
    """'fresh', 'stale' (past the warning age: alarm) or 'expired' (past the hard age: TRY holds refused)."""
    age, bounds = age_hours(updated_at, now_iso), limits()
    if age is None or age > bounds.max_hours:
        return "expired"
    return "stale" if age > bounds.warn_hours else "fresh"


def check(pair: str, updated_at: str) -> None:
    """Before a hold in the rate's currency: 503 past the hard age; a warning and a metric past the warning age."""
    found = state(updated_at)
    if found == "fresh":
        return
    from onysoft import telemetry

    telemetry.fx_rate_stale(pair)
    age = age_hours(updated_at)
    shown = f"{age:.0f} hours" if age is not None else "an unknown time"
    if found == "expired":
        logger.error("fx rate too old: TRY holds refused", extra={"pair": pair, "updated_at": updated_at})
        raise errors.GatewayError(
            503, f"The gateway's {pair} exchange rate was last set {shown} ago, past the {limits().max_hours:g}-hour "
                 "limit: requests charged in TRY are refused until it is updated. Nothing was charged.",
            "server_error", "fx_rate_stale")
    logger.warning("fx rate past its warning age", extra={"pair": pair, "updated_at": updated_at})
