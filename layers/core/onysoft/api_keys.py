"""API key records: create (plaintext returned once), list, find, delete."""

from dataclasses import dataclass

from onysoft import clock, expiry, keys, spend_limits, writes
from onysoft.accounts import AccountError, get_account
from onysoft.key_types import key_type_for_account_kind
from onysoft.models import ApiKey

ACTIVE = "active"
DELETED = "deleted"


class KeyNotFound(LookupError):
    """No such key (or not visible to the caller)."""


@dataclass(frozen=True)
class CreatedKey:
    plaintext: str  # shown once, never stored
    record: ApiKey


def _check_limits(rpm: int | None, tpm: int | None, spend_limit_micros: int | None, limit_reset: str | None,
                  expires_at: str | None) -> str | None:
    """Refuse limits that cannot be; the expiry time as stored (clock's form), or None."""
    for label, value in (("rpm", rpm), ("tpm", tpm), ("spend limit", spend_limit_micros)):
        if value is not None and value < 1:
            raise AccountError(f"{label} must be a positive number")
    if limit_reset is not None and limit_reset not in spend_limits.RESETS:
        raise AccountError(f"limit reset must be one of {', '.join(spend_limits.RESETS)}")
    if limit_reset and not spend_limit_micros:
        raise AccountError("a limit reset needs a spend limit")
    if expires_at is None:
        return None
    try:
        return expiry.future_expiry(expires_at)
    except ValueError as exc:
        raise AccountError(str(exc)) from None


def create_key(account_id: str, *, name: str = "", rpm: int | None = None, tpm: int | None = None,
               models: list[str] | None = None, expires_at: str | None = None,
               spend_limit_micros: int | None = None, limit_reset: str | None = None,
               companions: writes.Companions = None, fallbacks: list[str] | None = None) -> CreatedKey:
    account = get_account(account_id)
    key_type = key_type_for_account_kind(account.kind)
    expires_at = _check_limits(rpm, tpm, spend_limit_micros, limit_reset, expires_at)
    plaintext = keys.generate_key()
    record = ApiKey(
        key_hash=keys.hash_key(plaintext), key_id=keys.new_key_id(), display=keys.display_form(plaintext),
        name=name, key_type=key_type.name, account_id=account.account_id, currency=account.currency,
        status=ACTIVE, created_at=clock.now_iso(),
        rpm=rpm, tpm=tpm, models=list(models) if models else None, expires_at=expires_at,
        spend_limit_micros=spend_limit_micros, limit_reset=limit_reset,
        fallbacks=list(fallbacks) if fallbacks else None,
    )
    writes.save(record, ApiKey.key_hash.does_not_exist(), companions)
    return CreatedKey(plaintext, record)


def list_keys(account_id: str, *, include_deleted: bool = False) -> list[ApiKey]:
    # The index holds keys only (models.py says why): read the items, oldest first as the index orders them.
    hashes = [entry.key_hash for entry in ApiKey.by_account.query(account_id)]
    records = sorted(ApiKey.batch_get(hashes, consistent_read=True), key=lambda r: (r.created_at, r.key_id))
    return [r for r in records if include_deleted or r.status == ACTIVE]


def find_by_key_id(key_id: str) -> ApiKey:
    for record in ApiKey.by_key_id.query(key_id):
        # The index holds keys only and is eventually consistent: read the item itself.
        return ApiKey.get(record.key_hash, consistent_read=True)
    raise KeyNotFound(f"no key {key_id!r}")


def find_by_hash(key_hash: str) -> ApiKey | None:
    try:
        return ApiKey.get(key_hash, consistent_read=True)
    except ApiKey.DoesNotExist:
        return None


def delete_key(key_id: str, companions: writes.Companions = None) -> ApiKey:
    """Mark the key deleted. The record stays (usage history names it); it can never authenticate again."""
    record = find_by_key_id(key_id)
    try:
        writes.update(record, [ApiKey.status.set(DELETED), ApiKey.deleted_at.set(clock.now_iso())],
                      ApiKey.status == ACTIVE, companions)
    except writes.ConditionFailed:
        raise KeyNotFound(f"key {key_id!r} is already deleted") from None
    return record


UNSET = object()  # "leave as it is" for update_key_settings; None means "remove"


def update_key_settings(key_id: str, *, rpm=UNSET, tpm=UNSET, models=UNSET, expires_at=UNSET,
                        spend_limit_micros=UNSET, limit_reset=UNSET) -> ApiKey:
    """Change an existing key's limits. A new value reaches requests when the authorizer's cached
    answer for the key expires (ReauthorizeEvery); removal is None."""
    record = find_by_key_id(key_id)
    if record.status != ACTIVE:
        raise KeyNotFound(f"key {key_id!r} is deleted")
    changes = {name: value for name, value in dict(
        rpm=rpm, tpm=tpm, models=models, expires_at=expires_at, spend_limit_micros=spend_limit_micros,
        limit_reset=limit_reset).items() if value is not UNSET}
    merged = {field: changes.get(field, getattr(record, field)) for field in
              ("rpm", "tpm", "spend_limit_micros", "limit_reset", "expires_at")}
    expires_at = _check_limits(merged["rpm"], merged["tpm"], merged["spend_limit_micros"], merged["limit_reset"],
                               changes.get("expires_at"))
    if changes.get("expires_at") is not None:
        changes["expires_at"] = expires_at
    actions = []
    for field, value in changes.items():
        attribute = getattr(ApiKey, field)
        if field == "models":
            value = list(value) if value else None
        actions.append(attribute.remove() if value is None else attribute.set(value))
    if actions:
        record.update(actions=actions, condition=ApiKey.status == ACTIVE)
    return record


def is_usable(record: ApiKey, now_iso: str | None = None) -> bool:
    """Active and not expired: the one rule the authorizer and the proxy both apply."""
    if record.status != ACTIVE:
        return False
    return not expiry.is_expired(record.expires_at, now_iso)
