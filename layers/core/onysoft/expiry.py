"""Key expiry, written once: the duration syntax (`90s`, `15m`, `12h`, `30d`), what an acceptable expiry
time is (an ISO 8601 time in the future, stored in clock's sortable form), and when a key has expired.

Callers (the key store, the dashboard and CLI operations, the CLI's flags) turn ValueError into their own
error; the messages here say what was wrong, without a flag name.
"""

import re
from datetime import datetime, timedelta

from onysoft import clock

_DURATION = re.compile(r"(\d{1,9})([smhd])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class NotATime(ValueError):
    """Not an ISO 8601 time, or not a duration."""


class InThePast(ValueError):
    """An expiry time that is not in the future."""


def parse_duration(text: str) -> int:
    """'90s', '15m', '12h', '30d' → seconds (a whole number and one unit; blanks and case ignored)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise NotATime(f"not a duration like 90s, 15m, 12h or 30d: {text!r}")
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


def expires_in(text: str, now: datetime | None = None) -> str:
    """The expiry time a positive duration from now."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise NotATime(f"not a positive duration: {text!r}")
    try:
        return clock.to_iso((now or clock.utc_now()) + timedelta(seconds=seconds))
    except OverflowError:
        raise NotATime(f"{text!r} is too far in the future") from None


def future_expiry(text: str, now_iso: str | None = None) -> str:
    """An ISO 8601 time (no zone: UTC) as the stored expiry time; it must be in the future."""
    try:
        expires_at = clock.to_iso(clock.parse_iso(text.strip()))
    except (ValueError, OverflowError):
        raise NotATime(f"not an ISO 8601 time like 2026-12-31T23:59:59Z: {text!r}") from None
    if is_expired(expires_at, now_iso):
        raise InThePast(f"the expiry time {expires_at} is in the past")
    return expires_at


def is_expired(expires_at: str | None, now_iso: str | None = None) -> bool:
    """A stored expiry time (clock's form, so it compares as a string) that has come; empty = never."""
    return bool(expires_at) and expires_at <= (now_iso or clock.now_iso())
