"""Key operations: list, create (the plaintext returned once), change limits, delete; and a key's state."""

from pynamodb.exceptions import TransactWriteError

from onysoft import (
    accounts,
    api_keys,
    audit,
    balances,
    ceilings,
    events,
    expiry,
    idempotency,
    parallel,
    rate_limits,
    spend_limits,
    usage_rollup,
    writes,
)
from onysoft.audit import Actor
from onysoft.errors import GatewayError, bad_request
from onysoft.models import ApiKey
from onysoft.operations import access
from onysoft.operations.views import KeyState, key_view
from onysoft.usage_rollup import KeyTotals

UNSET = api_keys.UNSET  # "leave as it is" for update_key; None means "remove"


def key_state(record: ApiKey, shards: int) -> KeyState:
    """The key's use of its limits now: this minute's rate-limit window (over the account's `shards`
    counters), this spend period's total."""
    window = rate_limits.current_window()
    spent = (spend_limits.read_spent(record.key_id, spend_limits.period_start(record.limit_reset))
             if record.spend_limit_micros else 0)
    in_flight = parallel.key_in_flight(record.key_id) if record.max_parallel else None
    return KeyState(rate_limits.read_usage(record.key_id, window, shards), window, spent, in_flight)


def _view(record: ApiKey, previous: ApiKey | None = None, secrets: list[ApiKey] | tuple = ()) -> dict:
    """One key's view, with its totals (one read)."""
    return key_view(record, totals=usage_rollup.key_totals([record.key_id]).get(record.key_id, KeyTotals()),
                    previous=previous, secrets=secrets)


def list_keys(actor: Actor, account_id: str, *, include_deleted: bool = False, with_state: bool = False) -> dict:
    """An account's keys, oldest first; `with_state` adds each key's limits and their use now (a read each)."""
    account = access.account(actor, account_id)
    every = api_keys.list_records(account.account_id)
    records = sorted((r for r in every if r.status != api_keys.ROTATED
                      and (include_deleted or r.status in api_keys.LISTED)), key=lambda r: (r.created_at, r.key_id))
    totals = usage_rollup.key_totals(r.key_id for r in records)
    shards = balances.count_of(account)
    views = []
    for r in records:
        secrets = [o for o in every if o.key_id == r.key_id]
        views.append(key_view(r, totals=totals.get(r.key_id, KeyTotals()),
                              state=key_state(r, shards) if with_state else None,
                              previous=api_keys.previous_of(secrets), secrets=secrets))
    return {"keys": views}


def _future_iso(expires_at: str | None) -> str | None:
    if expires_at is None:
        return None
    try:
        return expiry.future_expiry(expires_at)
    except expiry.InThePast:
        raise bad_request("expires_at must be in the future", "expires_at") from None
    except ValueError:
        raise bad_request("expires_at must be an ISO 8601 time", "expires_at") from None


def create_key(actor: Actor, account_id: str, *, name: str = "", rpm: int | None = None, tpm: int | None = None,
               models: list[str] | None = None, expires_at: str | None = None,
               spend_limit_micros: int | None = None, limit_reset: str | None = None,
               fallbacks: list[str] | None = None, max_parallel: int | None = None) -> dict:
    """`max_parallel`: requests in flight at once (onysoft.parallel); None or 0: no limit."""
    account = access.account(actor, account_id)
    try:
        created = api_keys.create_key(account.account_id, name=name, rpm=rpm, tpm=tpm, models=models,
                                      expires_at=_future_iso(expires_at), spend_limit_micros=spend_limit_micros,
                                      limit_reset=limit_reset, companions=audit.on_key_create(actor, account),
                                      fallbacks=fallbacks, max_parallel=max_parallel or None,
                                      enforce_ceilings=access.enforces_ceilings(actor))
    except (ceilings.CeilingExceeded, ceilings.CeilingReached) as exc:
        raise access.ceiling_error(exc) from None
    except accounts.AccountError as exc:
        raise bad_request(str(exc)) from None
    # The plaintext key is in this answer and nowhere else, ever.
    return {"key": created.plaintext, **key_view(created.record, totals=KeyTotals())}


def update_key(actor: Actor, key_id: str, *, rpm=UNSET, tpm=UNSET, models=UNSET, expires_at=UNSET,
               spend_limit_micros=UNSET, limit_reset=UNSET, max_parallel=UNSET) -> dict:
    """Change an active key's limits (None removes one; max_parallel 0 too), a tenant's within its account's
    ceilings. Requests see it once the authorizer's cached answer for the key expires (ReauthorizeEvery)."""
    access.key(actor, key_id)
    if expires_at is not UNSET:
        expires_at = _future_iso(expires_at)
    if max_parallel is not UNSET:
        max_parallel = max_parallel or None
    try:
        record = api_keys.update_key_settings(key_id, rpm=rpm, tpm=tpm, models=models, expires_at=expires_at,
                                              spend_limit_micros=spend_limit_micros, limit_reset=limit_reset,
                                              max_parallel=max_parallel,
                                              enforce_ceilings=access.enforces_ceilings(actor))
    except ceilings.CeilingExceeded as exc:
        raise access.ceiling_error(exc) from None
    except api_keys.KeyNotFound:
        raise access.key_not_found(key_id) from None
    except accounts.AccountError as exc:
        raise bad_request(str(exc)) from None
    return _view(record)


def delete_key(actor: Actor, key_id: str) -> dict:
    record, account = access.key(actor, key_id, active_only=False)
    if record.status not in api_keys.LISTED:  # already deleted
        raise access.key_not_found(key_id)
    try:
        deleted = api_keys.delete_key(key_id, companions=audit.on_key_delete(actor, account))
    except api_keys.KeyNotFound:
        raise access.key_not_found(key_id) from None
    return _view(deleted)


ROTATE = "rotate"  # the idempotency keys' operation name


def rotate_key(actor: Actor, key_id: str, *, grace_seconds: int,
               idempotency_key: str | None = None) -> tuple[dict, bool]:
    """Give the key a new secret, shown once (`key` in the view); the old one works `grace_seconds` more.
    (the view, whether this was a replay: a rotation retried with the same idempotency key makes no second
    secret; its answer is the key as it is, `key` null, since a secret is never stored to be shown again)."""
    record, account = access.key(actor, key_id)
    request = {"key_id": key_id, "grace_seconds": grace_seconds}
    companions = audit.on_key_rotate(actor, account, grace_seconds)
    if idempotency_key is not None:
        companions = writes.together(
            companions, idempotency.client_marker(account.account_id, ROTATE, idempotency_key, request))
    try:
        rotated = api_keys.rotate_key(key_id, grace_seconds, companions=companions)
    except accounts.AccountError as exc:
        raise bad_request(str(exc), "grace") from None
    except (api_keys.KeyNotFound, api_keys.RotationConflict, TransactWriteError) as exc:
        if idempotency_key is not None and _is_replay(account.account_id, idempotency_key, request):
            records = api_keys.records_of_key(key_id)
            return {"key": None, **_view(api_keys.current_of(records), api_keys.previous_of(records), records)}, True
        if isinstance(exc, api_keys.KeyNotFound):
            raise access.key_not_found(key_id) from None
        if isinstance(exc, api_keys.RotationConflict):
            raise GatewayError(409, f"Key {key_id} changed while it was being rotated (another rotation, a deletion "
                                    "or a leak report): look at it and try again.", "invalid_request_error",
                               "key_changed", "key_id") from None
        raise
    events.emit(events.KEY_ROTATED, events.about_key(
        rotated.record, previous_display=rotated.record.previous_display, rotated_at=rotated.record.rotated_at,
        grace_until=rotated.record.grace_until, grace_seconds=grace_seconds))
    # The plaintext key is in this answer and nowhere else, ever.
    return {"key": rotated.plaintext, **_view(rotated.record, previous=None if grace_seconds == 0 else record)}, False


def _is_replay(account_id: str, idempotency_key: str, request: dict) -> bool:
    try:
        return idempotency.is_replay(account_id, ROTATE, idempotency_key, request)
    except idempotency.KeyReused as exc:
        raise GatewayError(409, str(exc), "invalid_request_error", "idempotency_key_reused",
                           "Idempotency-Key") from None
