"""API key records: create (plaintext returned once), list, find, rotate, delete; and when a record may
authenticate.

A key is its `key_id`; its secret is an item keyed by the secret's SHA-256. Rotation gives the key a new secret
(a new item with every setting of the key) and keeps the old secret's item, status `rotated`, until its grace
ends (`grace_until`; DynamoDB deletes it after, by TTL). So a key id has one current item (active, deleted or
leaked) and, while a grace lasts, older ones: lists and lookups by id show the current one.
"""

from dataclasses import dataclass
from datetime import timedelta

from onysoft import ceilings, clock, expiry, keys, spend_limits, writes
from onysoft.accounts import AccountError, get_account
from onysoft.key_types import key_type_for_account_kind
from onysoft.models import ApiKey

ACTIVE = "active"
DELETED = "deleted"
ROTATED = "rotated"  # an old secret of a rotated key: works until its grace_until, then 401
LEAKED = "leaked"  # revoked by a leak report (onysoft.leaks): 401 key_leaked
MAX_GRACE_SECONDS = 30 * 86400  # a longer grace would defeat the rotation
WATCH = "watch"  # expiry_watch: the key is in the by_expiry index until it is told it expired (onysoft.key_expiry)


class KeyNotFound(LookupError):
    """No such key (or not visible to the caller)."""


@dataclass(frozen=True)
class CreatedKey:
    plaintext: str  # shown once, never stored
    record: ApiKey


def _check_limits(rpm: int | None, tpm: int | None, spend_limit_micros: int | None, limit_reset: str | None,
                  expires_at: str | None, max_parallel: int | None = None) -> str | None:
    """Refuse limits that cannot be; the expiry time as stored (clock's form), or None."""
    for label, value in (("rpm", rpm), ("tpm", tpm), ("spend limit", spend_limit_micros),
                         ("max_parallel", max_parallel)):
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
               companions: writes.Companions = None, fallbacks: list[str] | None = None,
               max_parallel: int | None = None, enforce_ceilings: bool = False) -> CreatedKey:
    """A new key, counted on its account in the same transaction (onysoft.ceilings). With `enforce_ceilings` (a
    tenant creating it), a limit above the account's ceiling is refused (ceilings.CeilingExceeded) and so is a
    key past the account's key ceiling (ceilings.CeilingReached). A limit not given is the type's default, or the
    account's ceiling where that is lower (a tenant's key without max_parallel: the ceiling)."""
    account = get_account(account_id)
    key_type = key_type_for_account_kind(account.kind)
    expires_at = _check_limits(rpm, tpm, spend_limit_micros, limit_reset, expires_at, max_parallel)
    plaintext = keys.generate_key()
    record = ApiKey(
        key_hash=keys.hash_key(plaintext), key_id=keys.new_key_id(), display=keys.display_form(plaintext),
        name=name, key_type=key_type.name, account_id=account.account_id, currency=account.currency,
        status=ACTIVE, created_at=clock.now_iso(),
        rpm=rpm, tpm=tpm, models=list(models) if models else None, expires_at=expires_at,
        spend_limit_micros=spend_limit_micros, limit_reset=limit_reset, max_parallel=max_parallel,
        fallbacks=list(fallbacks) if fallbacks else None,
        expiry_watch=WATCH if expires_at else None,
    )
    if enforce_ceilings:  # every limit the record has (rpm, tpm, and max_parallel where keys have it)
        ceilings.check_key_limits(account, {name: getattr(record, name, None) for name in ceilings.KEY_LIMITS})
    ceilings.fill_defaults(record, account, tenant=enforce_ceilings)

    reads = iter([account])  # the account as read above; a retry reads its count again

    def guard() -> writes.Guard:
        return ceilings.key_guard(next(reads, None) or get_account(account_id), enforce=enforce_ceilings)

    ceilings.counted(guard, lambda g: writes.save(record, ApiKey.key_hash.does_not_exist(), companions, guards=[g]))
    return CreatedKey(plaintext, record)


LISTED = (ACTIVE, LEAKED)  # what a key list shows unless asked for deleted keys too: a leaked key needs attention


def list_keys(account_id: str, *, include_deleted: bool = False) -> list[ApiKey]:
    """The account's keys (their current items), oldest first: active and leaked ones; `include_deleted` adds
    deleted ones."""
    return [r for r in list_records(account_id) if r.status != ROTATED and (include_deleted or r.status in LISTED)]


def list_records(account_id: str) -> list[ApiKey]:
    """Every item of the account's keys, old secrets in their grace included, oldest first."""
    # The index holds keys only (models.py says why): read the items, oldest first as the index orders them.
    hashes = [entry.key_hash for entry in ApiKey.by_account.query(account_id)]
    return sorted(ApiKey.batch_get(hashes, consistent_read=True), key=lambda r: (r.created_at, r.key_id))


def records_of_key(key_id: str) -> list[ApiKey]:
    """Every item of one key: its current secret's and its old secrets' (strongly consistent reads)."""
    # The index holds keys only and is eventually consistent: read the items themselves.
    hashes = [entry.key_hash for entry in ApiKey.by_key_id.query(key_id)]
    return list(ApiKey.batch_get(hashes, consistent_read=True)) if hashes else []


def current_of(records: list[ApiKey]) -> ApiKey | None:
    """The key's current item among its items (the one that is not an old secret)."""
    return next((r for r in records if r.status != ROTATED), None)


def previous_of(records: list[ApiKey], now_iso: str | None = None) -> ApiKey | None:
    """The old secret whose grace ends last and has not ended yet, if any."""
    now_iso = now_iso or clock.now_iso()
    waiting = [r for r in records if r.status == ROTATED and (r.grace_until or "") > now_iso]
    return max(waiting, key=lambda r: r.grace_until or "", default=None)


def find_by_key_id(key_id: str) -> ApiKey:
    current = current_of(records_of_key(key_id))
    if current is None:
        raise KeyNotFound(f"no key {key_id!r}")
    return current


def find_by_hash(key_hash: str) -> ApiKey | None:
    try:
        return ApiKey.get(key_hash, consistent_read=True)
    except ApiKey.DoesNotExist:
        return None


def delete_key(key_id: str, companions: writes.Companions = None) -> ApiKey:
    """Mark the key deleted (an active key, or a leaked one: put away). The record stays (usage history names it);
    it can never authenticate again, nor can an old secret of it whose grace has not ended (same transaction)."""
    records = records_of_key(key_id)
    record = current_of(records)
    if record is None:
        raise KeyNotFound(f"no key {key_id!r}")
    now = clock.now_iso()
    released = ceilings.key_released(get_account(record.account_id))  # its place on the account is free again
    try:
        writes.retry_conflicts(lambda: writes.update(
            record, [ApiKey.status.set(DELETED), ApiKey.deleted_at.set(now)], ApiKey.status.is_in(ACTIVE, LEAKED),
            companions, also=[*end_graces(records, now), *released]))
    except writes.ConditionFailed:
        raise KeyNotFound(f"key {key_id!r} is already deleted") from None
    return record


def end_graces(records: list[ApiKey], now: str) -> list[tuple[ApiKey, list]]:
    """Updates that end every grace still running among a key's items (for `writes.update(also=…)`): its old
    secrets stop now. They stay `rotated` (so `current_of` still tells them apart) and are purged by TTL."""
    purge = int(clock.parse_iso(now).timestamp()) + 1
    return [(old, [ApiKey.grace_until.set(now), ApiKey.purge_at.set(purge)]) for old in records
            if old.status == ROTATED and (old.grace_until or "") > now]


class RotationConflict(Exception):
    """The key changed (another rotation, a deletion, a leak report) while it was being rotated."""


def rotate_key(key_id: str, grace_seconds: int, companions: writes.Companions = None) -> CreatedKey:
    """Give the key a new secret, returned once; the old one keeps working for `grace_seconds` (0: it stops now),
    and an older one still in its grace no longer than that.

    One transaction: the new secret's item (a copy of the key: id, name, type, account, limits, fallbacks,
    expiry, created_at, last use) and the old item turned `rotated` with its grace end, only if it is still the
    active current item; plus `companions(new item)` (the audit record, an idempotency marker). The key's usage,
    spend, rate-limit and spend-limit counters are all by key_id: they carry on.
    """
    if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
        raise AccountError(f"the grace must be between 0 and {MAX_GRACE_SECONDS // 86400} days")
    records = records_of_key(key_id)
    record = current_of(records)
    if record is None:
        raise KeyNotFound(f"no key {key_id!r}")
    if record.status != ACTIVE:
        raise KeyNotFound(f"key {key_id!r} is {record.status}")
    if expiry.is_expired(record.expires_at):
        raise AccountError(f"key {key_id} expired at {record.expires_at}: give it a new expiry before rotating it")
    now = clock.utc_now()
    rotated_at = clock.to_iso(now)
    grace_end = now + timedelta(seconds=grace_seconds)
    grace_until = clock.to_iso(grace_end)
    plaintext = keys.generate_key()
    new = ApiKey(key_hash=keys.hash_key(plaintext), display=keys.display_form(plaintext),
                 rotated_at=rotated_at, grace_until=grace_until, previous_display=record.display)
    for name in _CARRIED_OVER:
        setattr(new, name, getattr(record, name))
    retire = [ApiKey.status.set(ROTATED), ApiKey.rotated_at.set(rotated_at), ApiKey.grace_until.set(grace_until),
              ApiKey.purge_at.set(int(grace_end.timestamp()) + 1), ApiKey.previous_display.remove(),
              ApiKey.expiry_watch.remove()]  # the key's expiry notices follow its current secret
    # An older secret still in its grace ends no later than this one: a rotation with grace "now" stops them all.
    capped = [(old, [ApiKey.grace_until.set(grace_until), ApiKey.purge_at.set(int(grace_end.timestamp()) + 1)])
              for old in records if old.status == ROTATED and (old.grace_until or "") > grace_until]
    try:
        writes.update(record, retire, (ApiKey.status == ACTIVE) & (ApiKey.key_id == key_id),
                      writes.together(lambda _old: [new], (lambda _old: companions(new)) if companions else None),
                      also=capped)
    except writes.ConditionFailed:
        raise RotationConflict(f"key {key_id} changed while it was being rotated") from None
    return CreatedKey(plaintext, new)


# What a new secret's item takes from the key's current item: everything but the secret and the rotation.
_CARRIED_OVER = ("key_id", "name", "key_type", "account_id", "currency", "status", "created_at", "last_used_at",
                 "expires_at", "spend_limit_micros", "limit_reset", "request_count", "spend_micros", "rpm", "tpm",
                 "max_parallel", "models", "fallbacks", "expiry_watch", "expiry_notified")


UNSET = object()  # "leave as it is" for update_key_settings; None means "remove"


def update_key_settings(key_id: str, *, rpm=UNSET, tpm=UNSET, models=UNSET, expires_at=UNSET,
                        spend_limit_micros=UNSET, limit_reset=UNSET, max_parallel=UNSET,
                        enforce_ceilings: bool = False) -> ApiKey:
    """Change an existing key's limits (on an old secret in its grace too: it is the same key). A new value
    reaches requests when the authorizer's cached answer for the key expires (ReauthorizeEvery); removal is
    None, which is the type's default or the account's ceiling where that is lower. With `enforce_ceilings` (a
    tenant changing it), a limit above the account's ceiling is refused (ceilings.CeilingExceeded): every limit
    of ceilings.KEY_LIMITS that is among the changes."""
    records = records_of_key(key_id)
    record = current_of(records)
    if record is None:
        raise KeyNotFound(f"no key {key_id!r}")
    if record.status != ACTIVE:
        raise KeyNotFound(f"key {key_id!r} is deleted")
    changes = {name: value for name, value in dict(
        rpm=rpm, tpm=tpm, models=models, expires_at=expires_at, spend_limit_micros=spend_limit_micros,
        limit_reset=limit_reset, max_parallel=max_parallel).items() if value is not UNSET}
    limits = {name: changes[name] for name in ceilings.KEY_LIMITS if name in changes}
    if limits:
        account = get_account(record.account_id)
        if enforce_ceilings:
            ceilings.check_key_limits(account, limits)
        key_type = key_type_for_account_kind(account.kind)
        for name, value in limits.items():  # back to the default: the ceiling where the default is above it
            if value is None:
                changes[name] = ceilings.default_under_ceiling(account, key_type, name, tenant=enforce_ceilings)
    merged = {field: changes.get(field, getattr(record, field)) for field in
              ("rpm", "tpm", "spend_limit_micros", "limit_reset", "expires_at", "max_parallel")}
    expires_at = _check_limits(merged["rpm"], merged["tpm"], merged["spend_limit_micros"], merged["limit_reset"],
                               changes.get("expires_at"), merged["max_parallel"])
    if changes.get("expires_at") is not None:
        changes["expires_at"] = expires_at
    actions = []
    for field, value in changes.items():
        attribute = getattr(ApiKey, field)
        if field == "models":
            value = list(value) if value else None
        actions.append(attribute.remove() if value is None else attribute.set(value))
    notices = []
    if "expires_at" in changes:  # a new expiry gets its notices anew (the current secret's item only); none, none
        notices = [ApiKey.expiry_notified.remove(),
                   ApiKey.expiry_watch.set(WATCH) if changes["expires_at"] else ApiKey.expiry_watch.remove()]
    if actions:
        now = clock.now_iso()
        in_grace = [(old, actions) for old in records if old.status == ROTATED and (old.grace_until or "") > now]
        try:
            writes.update(record, actions + notices, ApiKey.status == ACTIVE, also=in_grace)
        except writes.ConditionFailed:
            raise KeyNotFound(f"key {key_id!r} is no longer active") from None
    return record


def refusal(record: ApiKey, now_iso: str | None = None) -> str | None:
    """Why this secret may not authenticate now (`deleted`, `leaked`, `expired`, `rotated`: its grace ended), or
    None: the one rule the authorizer and the proxy both apply. An old secret works until its grace ends, and not
    past the key's expiry."""
    now_iso = now_iso or clock.now_iso()
    if record.leaked_at:  # the key, or this old secret of it, was reported leaked
        return LEAKED
    if record.status == ROTATED:
        if not record.grace_until or record.grace_until <= now_iso:
            return ROTATED
    elif record.status != ACTIVE:
        return record.status
    return "expired" if expiry.is_expired(record.expires_at, now_iso) else None


def is_usable(record: ApiKey, now_iso: str | None = None) -> bool:
    return refusal(record, now_iso) is None
