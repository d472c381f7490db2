"""Parsing the CLI's own value syntax (percentages, amounts, durations, expiry, model lists) into what the
operations take; bad input is a UsageError (exit code 2) naming the flag."""

from __future__ import annotations

import argparse

from onysoft import catalog, money
from onysoft import expiry as expiry_rules

from .output import UsageError


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


def parse_threshold(text: str, flag: str) -> int:
    """An alert threshold in currency units → micro-units; 0 (no alert) allowed."""
    if text.strip() in ("0", "0.0", "off", "none"):
        return 0
    return parse_amount(text, flag)


def parse_duration(text: str, flag: str) -> int:
    """'90s', '15m', '2h', '1d' → seconds (the syntax is onysoft.expiry's)."""
    try:
        return expiry_rules.parse_duration(text)
    except ValueError:
        raise UsageError(f"{flag} must be a duration like 90s, 15m, 2h or 1d; got {text!r}") from None


def expiry(args: argparse.Namespace) -> str | None:
    """--expires-in / --expires-at → an ISO time in the future, or None when neither is given."""
    try:
        if args.expires_in is not None:
            return expiry_rules.expires_in(args.expires_in)
        if args.expires_at is not None:
            return expiry_rules.future_expiry(args.expires_at)
    except expiry_rules.InThePast as exc:
        raise UsageError(str(exc)) from None
    except ValueError:
        if args.expires_in is not None:
            raise UsageError(f"--expires-in must be a positive whole number with a unit s, m, h or d "
                             f"(like 90s, 15m, 12h, 30d); got {args.expires_in!r}") from None
        raise UsageError(f"--expires-at must be an ISO 8601 time like 2026-12-31T23:59:59Z; "
                         f"got {args.expires_at!r}") from None
    return None


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
