"""Key operations: list, create (the plaintext returned once), change limits, delete; and a key's state."""

from onysoft import accounts, api_keys, audit, balances, expiry, rate_limits, spend_limits, usage_rollup
from onysoft.audit import Actor
from onysoft.errors import bad_request
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
    return KeyState(rate_limits.read_usage(record.key_id, window, shards), window, spent)


def _view(record: ApiKey) -> dict:
    """One key's view, with its totals (one read)."""
    return key_view(record, totals=usage_rollup.key_totals([record.key_id]).get(record.key_id, KeyTotals()))


def list_keys(actor: Actor, account_id: str, *, include_deleted: bool = False, with_state: bool = False) -> dict:
    """An account's keys, oldest first; `with_state` adds each key's limits and their use now (a read each)."""
    account = access.account(actor, account_id)
    records = sorted(api_keys.list_keys(account.account_id, include_deleted=include_deleted),
                     key=lambda r: (r.created_at, r.key_id))
    totals = usage_rollup.key_totals(r.key_id for r in records)
    shards = balances.count_of(account)
    return {"keys": [key_view(r, totals=totals.get(r.key_id, KeyTotals()),
                              state=key_state(r, shards) if with_state else None) for r in records]}


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
               fallbacks: list[str] | None = None) -> dict:
    account = access.account(actor, account_id)
    try:
        created = api_keys.create_key(account.account_id, name=name, rpm=rpm, tpm=tpm, models=models,
                                      expires_at=_future_iso(expires_at), spend_limit_micros=spend_limit_micros,
                                      limit_reset=limit_reset, companions=audit.on_key_create(actor, account),
                                      fallbacks=fallbacks)
    except accounts.AccountError as exc:
        raise bad_request(str(exc)) from None
    # The plaintext key is in this answer and nowhere else, ever.
    return {"key": created.plaintext, **key_view(created.record, totals=KeyTotals())}


def update_key(actor: Actor, key_id: str, *, rpm=UNSET, tpm=UNSET, models=UNSET, expires_at=UNSET,
               spend_limit_micros=UNSET, limit_reset=UNSET) -> dict:
    """Change an active key's limits (None removes one). Requests see it once the authorizer's cached
    answer for the key expires (ReauthorizeEvery)."""
    access.key(actor, key_id)
    if expires_at is not UNSET:
        expires_at = _future_iso(expires_at)
    try:
        record = api_keys.update_key_settings(key_id, rpm=rpm, tpm=tpm, models=models, expires_at=expires_at,
                                              spend_limit_micros=spend_limit_micros, limit_reset=limit_reset)
    except api_keys.KeyNotFound:
        raise access.key_not_found(key_id) from None
    except accounts.AccountError as exc:
        raise bad_request(str(exc)) from None
    return _view(record)


def delete_key(actor: Actor, key_id: str) -> dict:
    _, account = access.key(actor, key_id)
    try:
        deleted = api_keys.delete_key(key_id, companions=audit.on_key_delete(actor, account))
    except api_keys.KeyNotFound:
        raise access.key_not_found(key_id) from None
    return _view(deleted)
