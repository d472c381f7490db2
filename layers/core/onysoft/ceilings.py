"""Ceilings: what the platform lets a tenant give itself (issue 23). Per account, set by the operator only:
the most a partner or org admin may give one key (`rpm`, `tpm`, `max_parallel`), how many keys the account may
have (`keys`), and how many accounts of its kind the account's owner may have (`accounts`). Unset: the key
type's default (onysoft.key_types).

The two counts are kept exact under concurrency by the transaction that creates what they count: a key's item
is written with `ADD keys_count 1` on its account item, an account's with `ADD accounts_count 1` on its owner's
`OwnedAccounts` item, each on the condition that the count is under the ceiling. What counts: keys that are not
deleted (active and leaked ones: what the key list shows; deleting one frees its place) and accounts (never
deleted). A count that does not exist yet (an account or owner from before the counters) is counted from the
table once, in the transaction of the next creation.
"""

from collections.abc import Callable
from dataclasses import dataclass

from onysoft import writes
from onysoft.key_types import KeyType, key_type_for_account_kind
from onysoft.models import Account, ApiKey, OwnedAccounts

KEY_LIMITS = ("rpm", "tpm", "max_parallel")  # a key's own limits: each at most the account's ceiling
NAMES = (*KEY_LIMITS, "keys", "accounts")
MAX_VALUE = {"rpm": 1_000_000, "tpm": 1_000_000_000, "max_parallel": 100_000, "keys": 100_000,
             "accounts": 1_000_000}  # sanity bounds, the key routes' own bounds for rpm and tpm
COUNTED = ("active", "leaked")  # the key statuses `keys_count` counts (onysoft.api_keys.LISTED)
ATTEMPTS = 8  # a creation whose count moved under it, or that met another transaction, tries again


class CeilingExceeded(ValueError):
    """A key limit above the account's ceiling (400 `ceiling_exceeded`, param = the field)."""

    def __init__(self, field: str, value: int, ceiling: int) -> None:
        super().__init__(f"{field} {value} is above this account's ceiling of {ceiling}: the platform sets the "
                         f"ceiling; ask it to raise it, or give {field} {ceiling} or less.")
        self.field, self.value, self.ceiling = field, value, ceiling


class CeilingReached(ValueError):
    """The account has as many keys (or its owner as many accounts of its kind) as its ceiling allows (403)."""

    def __init__(self, what: str, ceiling: int, message: str) -> None:
        super().__init__(message)
        self.what, self.ceiling = what, ceiling

    @property
    def code(self) -> str:
        return f"{self.what}_ceiling_reached"


class CeilingError(ValueError):
    """A ceiling that cannot be (not a positive whole number in range, `accounts` on an account with no owner)."""


def _set_value(account: Account, name: str, owned: OwnedAccounts | None) -> int | None:
    if name == "accounts":
        return int(owned.ceiling_accounts) if owned is not None and owned.ceiling_accounts is not None else None
    value = getattr(account, f"ceiling_{name}")
    return None if value is None else int(value)


def ceiling(account: Account, name: str, owned: OwnedAccounts | None = None) -> int | None:
    """The ceiling in force: the operator's, or the key type's default (`accounts`: None where no owner counts)."""
    if name == "accounts" and not counts_accounts(account.kind, account.owner):
        return None
    set_value = _set_value(account, name, owned)
    return set_value if set_value is not None else getattr(key_type_for_account_kind(account.kind), f"ceiling_{name}")


def counts_accounts(kind: str, owner: str | None) -> bool:
    """Whether accounts of this kind are counted for their owner (an org's projects, a partner's accounts)."""
    return bool(owner) and key_type_for_account_kind(kind).ceiling_accounts is not None


def owned_id(owner: str, kind: str) -> str:
    return f"owner#{owner}#{kind}"


def owned_item(account: Account) -> OwnedAccounts | None:
    """The owner's count and ceiling of accounts of this account's kind, if it has an item (one read)."""
    if not counts_accounts(account.kind, account.owner):
        return None
    try:
        return OwnedAccounts.get(owned_id(account.owner, account.kind), consistent_read=True)
    except OwnedAccounts.DoesNotExist:
        return None


def owned_items(accounts: list[Account]) -> dict[str, OwnedAccounts]:
    """The owner items of many accounts, by their id (one batch read)."""
    ids = sorted({owned_id(a.owner, a.kind) for a in accounts if counts_accounts(a.kind, a.owner)})
    return {item.account_id: item for item in OwnedAccounts.batch_get(ids, consistent_read=True)} if ids else {}


def view(account: Account, owned: OwnedAccounts | None = None) -> dict:
    """The ceilings in force, whether each is the key type's default, and the counts (null: not counted yet)."""
    shown: dict = {}
    for name in NAMES:
        shown[name] = ceiling(account, name, owned)
        shown[f"{name}_is_default"] = _set_value(account, name, owned) is None
    shown["keys_used"] = None if account.keys_count is None else int(account.keys_count)
    shown["accounts_used"] = (int(owned.accounts_count) if owned is not None and owned.accounts_count is not None
                              else None)
    return shown


# ------------------------------------------------------------------------------------------------ key limits


def check_key_limits(account: Account, limits: dict) -> None:
    """Refuse a key limit above the account's ceiling (only the limits given: `None` means the default)."""
    for name in KEY_LIMITS:
        value = limits.get(name)
        if value is None:
            continue
        top = ceiling(account, name)
        if int(value) > top:
            raise CeilingExceeded(name, int(value), top)


def default_under_ceiling(account: Account, key_type: KeyType, name: str, *, tenant: bool = False) -> int | None:
    """What a key that sets no `name` is given: nothing (its type's default) unless the account's ceiling is
    below that default, then the ceiling: min(default, ceiling), written on the key so every reader agrees. A
    limit with no default (max_parallel: none means no limit) is above every ceiling: a tenant's key gets the
    ceiling, the operator's stays unlimited (the operator is not bound by ceilings)."""
    default = getattr(key_type, f"default_{name}", None)
    top = ceiling(account, name)
    if not default:
        return top if tenant else None
    return top if top < default else None


def fill_defaults(record: ApiKey, account: Account, *, tenant: bool = False) -> None:
    """Give a new key the ceiling where it sets no limit and its type's default is above the ceiling (a tenant's
    key: where it has no default either)."""
    key_type = key_type_for_account_kind(account.kind)
    for name in KEY_LIMITS:
        if name in ApiKey.get_attributes() and getattr(record, name, None) is None:
            value = default_under_ceiling(account, key_type, name, tenant=tenant)
            if value is not None:
                setattr(record, name, value)


# ------------------------------------------------------------------------------------------------ counts


def _counted_keys(account_id: str) -> int:
    hashes = [entry.key_hash for entry in ApiKey.by_account.query(account_id)]
    items = ApiKey.batch_get(hashes, consistent_read=True) if hashes else []
    return len({r.key_id for r in items if r.status in COUNTED})


def key_guard(account: Account, *, enforce: bool) -> writes.Guard:
    """The update that counts one more key on its account, in the key's own transaction: on the condition that
    the count is under the ceiling (`enforce`), or always (the operator, the platform's own tools). Raises
    CeilingReached when the account is already full as read."""
    top = ceiling(account, "keys")
    if account.keys_count is None:  # never counted: count it now, once (only one creation can start it)
        count = _counted_keys(account.account_id)
        if enforce and count >= top:
            raise keys_reached(top)
        return account, [Account.keys_count.set(count + 1)], Account.keys_count.does_not_exist()
    if enforce and int(account.keys_count) >= top:
        raise keys_reached(top)
    condition = Account.keys_count < top if enforce else Account.keys_count.exists()
    return account, [Account.keys_count.add(1)], condition


def key_released(account: Account) -> list[tuple[Account, list]]:
    """The update that frees a deleted key's place (for `writes.update(also=…)`); none on an account never
    counted (its first count reads the table)."""
    return [] if account.keys_count is None else [(account, [Account.keys_count.add(-1)])]


def keys_reached(top: int) -> CeilingReached:
    return CeilingReached("keys", top, f"This account has {top} keys, its ceiling: delete one, or ask the platform "
                                       "to raise the ceiling.")


def account_guard(kind: str, owner: str, *, enforce: bool) -> writes.Guard | None:
    """The update that counts one more account of `kind` for its owner, in the account's own transaction (None:
    not counted). Raises CeilingReached when the owner is already full as read."""
    if not counts_accounts(kind, owner):
        return None
    item_id = owned_id(owner, kind)
    try:
        owned = OwnedAccounts.get(item_id, consistent_read=True)
    except OwnedAccounts.DoesNotExist:
        owned = OwnedAccounts(account_id=item_id)
    top = int(owned.ceiling_accounts) if owned.ceiling_accounts is not None \
        else key_type_for_account_kind(kind).ceiling_accounts
    if owned.accounts_count is None:
        count = len(_kind_ids(owner, kind))
        if enforce and count >= top:
            raise accounts_reached(kind, top)
        return owned, [OwnedAccounts.accounts_count.set(count + 1)], OwnedAccounts.accounts_count.does_not_exist()
    if enforce and int(owned.accounts_count) >= top:
        raise accounts_reached(kind, top)
    condition = OwnedAccounts.accounts_count < top if enforce else OwnedAccounts.accounts_count.exists()
    return owned, [OwnedAccounts.accounts_count.add(1)], condition


def _kind_ids(owner: str, kind: str) -> set[str]:
    ids = [entry.account_id for entry in Account.by_owner.query(owner)]
    return {a.account_id for a in Account.batch_get(ids, consistent_read=True) if a.kind == kind} if ids else set()


def accounts_reached(kind: str, top: int) -> CeilingReached:
    return CeilingReached("accounts", top, f"You have {top} {kind} accounts, your ceiling: ask the platform to "
                                           "raise it.")


def counted(make_guard: Callable[[], writes.Guard | None], write: Callable[[writes.Guard | None], object]):
    """`write(guard)` with a fresh guard each attempt: again when the guard refused although the count read
    had room (another creation counted first, or started the count), or when DynamoDB cancelled the transaction
    for a conflict (a hold on the same account item); `make_guard` raises CeilingReached once it is full."""
    for attempt in range(ATTEMPTS):
        guard = make_guard()
        try:
            return writes.retry_conflicts(lambda: write(guard))  # noqa: B023 - called at once, in this iteration
        except writes.GuardRefused:
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------------ setting them


@dataclass(frozen=True)
class Change:
    """The operator's new ceilings: a number sets one, 0 puts it back to the key type's default."""

    values: dict

    @classmethod
    def of(cls, **given: int | None) -> "Change":
        values = {name: value for name, value in given.items() if value is not None}
        for name, value in values.items():
            if name not in NAMES:
                raise CeilingError(f"unknown ceiling {name!r}")
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VALUE[name]:
                raise CeilingError(f"ceiling_{name} must be a whole number from 1 to {MAX_VALUE[name]} "
                                   "(0: the key type's default)")
        return cls(values)

    def __bool__(self) -> bool:
        return bool(self.values)

    def account_actions(self) -> list:
        actions = []
        for name, value in self.values.items():
            if name == "accounts":
                continue
            attribute = getattr(Account, f"ceiling_{name}")
            actions.append(attribute.remove() if value == 0 else attribute.set(value))
        return actions

    def owner_update(self, account: Account) -> list[tuple[OwnedAccounts, list]]:
        """The owner item's update for `accounts` (for `writes.update(also=…)`): an upsert."""
        if "accounts" not in self.values:
            return []
        if not counts_accounts(account.kind, account.owner):
            raise CeilingError(f"a {account.kind} account without an owner has no accounts ceiling: it applies to "
                               "the org or partner that owns the account")
        value = self.values["accounts"]
        item = OwnedAccounts(account_id=owned_id(account.owner, account.kind))
        return [(item, [OwnedAccounts.ceiling_accounts.remove() if value == 0
                        else OwnedAccounts.ceiling_accounts.set(value)])]
