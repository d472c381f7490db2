"""Pages of DynamoDB queries: page sizes and opaque cursors that can only continue the caller's own query."""

import base64
import binascii
import json

from onysoft.errors import bad_request

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def encode_cursor(last_evaluated_key: dict | None) -> str | None:
    if not last_evaluated_key:
        return None
    raw = json.dumps(last_evaluated_key, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, *, fixed: dict[str, str], keys: set[str]) -> dict | None:
    """A cursor back into DynamoDB's ExclusiveStartKey, checked: exactly `keys`, string values only, and
    the partition values of `fixed` unchanged, so a cursor can only continue the caller's own query."""
    if not cursor:
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise bad_request("Invalid cursor: pass the `next` value of the previous page.", "cursor") from None
    valid = (
        isinstance(decoded, dict) and set(decoded) == keys
        and all(isinstance(v, dict) and set(v) == {"S"} and isinstance(v["S"], str) for v in decoded.values())
        and all(decoded[name]["S"] == value for name, value in fixed.items())
    )
    if not valid:
        raise bad_request("Invalid cursor: pass the `next` value of the previous page.", "cursor")
    return decoded


def page_size(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise bad_request(f"limit must be between 1 and {MAX_PAGE}", "limit")
    return limit
