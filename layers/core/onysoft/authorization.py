"""The authorizer's decision: a Bearer header → the caller's context, or a denial with a reason.

Reads the key record (by the key's SHA-256) and then its account: the account cannot be addressed
before the key record names it, so this is two GetItems on an authorizer cache miss (DESIGN.md's
single BatchGetItem is impossible without a key that encodes its account).
"""

from onysoft import clock, keys
from onysoft.api_keys import find_by_hash, refusal
from onysoft.caller import CallerContext
from onysoft.models import Account


class Denied(Exception):
    """The request must get 401. `reason` is for logs: it never holds the key."""

    def __init__(self, reason: str, key_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.key_id = key_id


def authorize(authorization_header: str | None) -> CallerContext:
    key = keys.bearer_key(authorization_header)
    if key is None:
        raise Denied("malformed")  # decided before any DynamoDB call
    record = find_by_hash(keys.hash_key(key))
    if record is None:
        raise Denied("unknown")
    why = refusal(record, clock.now_iso())  # an old secret of a rotated key passes until its grace ends
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
        shards=int(account.shards or 1),
    )
