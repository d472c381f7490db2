"""Parsing the CLI's own value syntax (percentages, amounts, durations, expiry, model lists) into what the
operations take; bad input is a UsageError (exit code 2) naming the flag."""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta

from onysoft import catalog, clock, money

from .output import UsageError

_DURATION = re.compile(r"(\d{1,9})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_markup(text: str) -> int:
    """--markup PCT → basis points."""
    try:
        return money.parse_markup_pct(text)
    except money.MoneyError as exc:
        raise UsageError(str(exc)) from None


def parse_amount(text: str, flag: str | None = None) -> int:
    """An amount in currency units (at most 6 decimals) → micro-units."""
    try:
        return money.parse_amount(text)
    except money.MoneyError as exc:
        raise UsageError(f"{flag}: {exc}" if flag else str(exc)) from None


def parse_duration(text: str, flag: str) -> int:
    """'90s', '15m', '2h', '1d' → seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise UsageError(f"{flag} must be a duration like 90s, 15m, 2h or 1d; got {text!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_expires_in(text: str, now: datetime | None = None) -> datetime:
    """'90s', '15m', '12h', '30d' → the UTC datetime that far from now."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"--expires-in must be a positive whole number with a unit s, m, h or d "
                         f"(like 90s, 15m, 12h, 30d); got {text!r}")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        return (now or clock.utc_now()) + timedelta(seconds=seconds)
    except OverflowError:
        raise UsageError(f"--expires-in {text!r} is too far in the future") from None


def parse_expires_at(text: str) -> datetime:
    try:
        return clock.parse_iso(text.strip())
    except ValueError:
        raise UsageError(f"--expires-at must be an ISO 8601 time like 2026-12-31T23:59:59Z; got {text!r}") from None


def expiry(args: argparse.Namespace) -> str | None:
    """--expires-in / --expires-at → an ISO time in the future, or None when neither is given."""
    if args.expires_in is not None:
        moment = parse_expires_in(args.expires_in)
    elif args.expires_at is not None:
        moment = parse_expires_at(args.expires_at)
    else:
        return None
    expires_at = clock.to_iso(moment)
    if expires_at <= clock.now_iso():
        raise UsageError(f"the expiry time {expires_at} is in the past")
    return expires_at


def model_list(text: str | None) -> list[str] | None:
    """--models M,M → distinct provider/model names, in order."""
    if text is None:
        return None
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise UsageError("--models needs at least one model name (provider/model, comma-separated)")
    for model in models:
        try:
            catalog.split_model_name(model)
        except catalog.CatalogError as exc:
            raise UsageError(str(exc)) from None
    return list(dict.fromkeys(models))
