"""Idempotency keys for requests that move money (top-ups), as Stripe's and OpenAI's APIs take them.

The first request with a key is carried out, and a marker for the key is put in the same transaction
(onysoft.writes). A retry with the same key and the same request is not carried out again: the caller is told
it is a replay. The same key with a different request is refused. Keys are per account and operation.
"""

import json

from pynamodb.models import Model

from onysoft import clock, errors
from onysoft.models import IdempotencyRecord

PREFIX = "idem#"
MAX_KEY_LENGTH = 255


class KeyReused(ValueError):
    """The idempotency key was used before for a different request."""


def check_key(key: str) -> None:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise ValueError(f"an idempotency key is 1 to {MAX_KEY_LENGTH} printable characters")


def _where(account_id: str, operation: str, key: str) -> tuple[str, str]:
    return PREFIX + account_id, f"{operation}#{key}"


def client_marker(account_id: str, operation: str, key: str, request: dict):
    """The marker for a key a client sent (the Idempotency-Key header): 400 naming the header when malformed."""
    try:
        check_key(key)
    except ValueError as exc:
        raise errors.bad_request(str(exc), "Idempotency-Key") from None
    return marker(account_id, operation, key, request)


def marker(account_id: str, operation: str, key: str, request: dict):
    """Companions for the request's write: the key's marker, put only if the key is new."""
    partition, sk = _where(account_id, operation, key)

    def companions(_item: Model) -> list[IdempotencyRecord]:
        return [IdempotencyRecord(account_id=partition, sk=sk, request=json.dumps(request, sort_keys=True),
                                  at=clock.now_iso())]

    return companions


def is_replay(account_id: str, operation: str, key: str, request: dict) -> bool:
    """After a write with a marker failed: True if the key was already used for this very request (a retry);
    KeyReused if for another; False if the key is unknown (the failure had another cause)."""
    partition, sk = _where(account_id, operation, key)
    try:
        earlier = IdempotencyRecord.get(partition, sk, consistent_read=True)
    except IdempotencyRecord.DoesNotExist:
        return False
    if json.loads(earlier.request) != request:
        raise KeyReused(f"this idempotency key was used for a different {operation} request")
    return True
