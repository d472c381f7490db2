"""The authorizer's decision: a key (Bearer, or x-api-key on Anthropic's routes) → the caller's context, or a
denial with a reason.

Reads the key record (by the key's SHA-256) and then its account: the account cannot be addressed
before the key record names it, so this is two GetItems on an authorizer cache miss (DESIGN.md's
single BatchGetItem is impossible without a key that encodes its account).
"""

from onysoft import clock, keys, leaks
from onysoft.api_keys import LEAKED, find_by_hash, refusal
from onysoft.caller import CallerContext
from onysoft.models import Account


class Denied(Exception):
    """The request must get 401. `reason` is for logs: it never holds the key. A leaked key's denial carries the
    message its 401 shows (where the key was found): the authorizer answers it with a Deny policy whose context
    the gateway response (ACCESS_DENIED) renders."""

    def __init__(self, reason: str, key_id: str | None = None, message: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.key_id = key_id
        self.message = message


def authorize(authorization_header: str | None, x_api_key: str | None = None, *,
              anthropic: bool = False) -> CallerContext:
    """The caller of a request: its key from `Authorization: Bearer`, or (`anthropic`: the route serves Anthropic's
    API) from `x-api-key` when there is no Authorization header (keys.request_key)."""
    key = keys.request_key(authorization_header, x_api_key, anthropic=anthropic)
    if key is None:
        raise Denied("malformed")  # decided before any DynamoDB call
    record = find_by_hash(keys.hash_key(key))
    if record is None:
        raise Denied("unknown")
    why = refusal(record, clock.now_iso())  # an old secret of a rotated key passes until its grace ends
    if why == LEAKED:
        raise Denied(why, record.key_id, leaks.revoked_message(record))
    if why is not None:
        raise Denied(why, record.key_id)
    try:
        account = Account.get(record.account_id, consistent_read=True)
    except Account.DoesNotExist:
        raise Denied("account_missing", record.key_id) from None
    return CallerContext(
        key_id=record.key_id, key_type=record.key_type, account_id=account.account_id,
        currency=account.currency, markup_bp=int(account.markup_bp),
        rpm=int(record.rpm or 0), tpm=int(record.tpm or 0), models=tuple(record.models or ()),
        expires_at=record.expires_at or "", spend_limit_micros=int(record.spend_limit_micros or 0),
        limit_reset=record.limit_reset or "", fallbacks=tuple(record.fallbacks or ()),
        shards=int(account.shards or 1), max_parallel=int(record.max_parallel or 0),
        account_max_parallel=int(account.max_parallel or 0),
    )
