"""Accounts: the balances keys charge. Created with their kind's currency and default markup."""

import secrets

from onysoft import account_index, balances, ceilings, clock, topups, usage_rollup, writes
from onysoft.key_types import ACCOUNT_KINDS, key_type_for_account_kind
from onysoft.models import Account


class AccountError(ValueError):
    """A request about accounts that cannot be honoured (unknown account, bad kind or markup)."""


def new_account_id() -> str:
    return "acct_" + secrets.token_hex(8)


def create_account(kind: str, *, name: str = "", owner: str | None = None,
                   markup_bp: int | None = None, companions: writes.Companions = None,
                   shards: int | None = None, enforce_ceilings: bool = False) -> Account:
    """A new account; one owned by an org or partner is counted for its owner in the same transaction, and with
    `enforce_ceilings` (a tenant creating it) refused when the owner has as many as its ceiling
    (ceilings.CeilingReached)."""
    if kind not in ACCOUNT_KINDS:
        raise AccountError(f"unknown account kind {kind!r}; one of: {', '.join(ACCOUNT_KINDS)}")
    key_type = key_type_for_account_kind(kind)
    if markup_bp is None:
        markup_bp = key_type.default_markup_bp
    check_markup(kind, markup_bp)
    if shards is not None:
        _check_shards(shards)
    account = Account(
        account_id=new_account_id(), kind=kind, currency=key_type.currency, name=name,
        owner=owner or None, balance_micros=0, topped_up_micros=0, markup_bp=markup_bp,
        created_at=clock.now_iso(), keys_count=0,  # no keys yet: counted from the start (onysoft.ceilings)
    )
    if shards and shards > 1:  # one shard: no attribute, today's layout
        account.shards = account.shards_max = shards
    account_index.index_attributes(account)  # in the dashboard's pages by name
    # Its all-time usage totals open with it (onysoft.usage_rollup): its ledger is complete from the start.
    opened = lambda item: [usage_rollup.opened_account_total(item.account_id, item.currency, item.created_at)]  # noqa: E731
    ceilings.counted(
        lambda: ceilings.account_guard(kind, owner, enforce=enforce_ceilings) if owner else None,
        lambda guard: writes.save(account, Account.account_id.does_not_exist(), writes.together(companions, opened),
                                  guards=[guard] if guard else ()))
    return account


def check_markup(kind: str, markup_bp: int) -> None:
    key_type = key_type_for_account_kind(kind)
    if not key_type.markup_min_bp <= markup_bp <= key_type.markup_max_bp:
        raise AccountError(
            f"markup for {kind} accounts must be between {key_type.markup_min_bp / 100:g}% "
            f"and {key_type.markup_max_bp / 100:g}%"
        )


def get_account(account_id: str) -> Account:
    try:
        return Account.get(account_id, consistent_read=True)
    except Account.DoesNotExist:
        raise AccountError(f"no account {account_id!r}") from None


def _check_shards(shards: int) -> None:
    try:
        balances.check_count(shards)
    except balances.ShardError as exc:
        raise AccountError(str(exc)) from None


def top_up(account_id: str, amount_micros: int, companions: writes.Companions = None,
           made_by: topups.MadeBy | None = None) -> Account:
    """Add to the balance and to the top-up total in one transaction with the top-up's ledger record
    (onysoft.topups: what statements list; `made_by` says who, default "system"); a sharded account: over its
    shards, debts paid first, the rest spread evenly."""
    if amount_micros <= 0:
        raise AccountError("a top-up must be a positive amount")
    account = get_account(account_id)
    companions = writes.together(companions, topups.record_of(amount_micros, made_by))
    totals = [Account.topped_up_micros.add(amount_micros), *_rearmed(account, amount_micros)]
    if balances.max_of(account) > 1:
        parts = balances.spread(amount_micros, balances.read(account), balances.count_of(account))
        try:
            writes.update(
                account, [Account.balance_micros.add(parts.pop(0, 0)), *totals],
                Account.account_id.exists(), companions,
                also=[(balances.item(account_id, k), balances.add_actions(account_id, k, part))
                      for k, part in sorted(parts.items())],
            )
        except writes.ConditionFailed:
            raise AccountError(f"no account {account_id!r}") from None
        return account
    try:
        writes.update(
            account, [Account.balance_micros.add(amount_micros), *totals], Account.account_id.exists(), companions,
        )
    except writes.ConditionFailed:
        raise AccountError(f"no account {account_id!r}") from None
    return account  # as written: the update's new values, or re-read after a transaction (writes.update)


def _rearmed(account: Account, amount_micros: int) -> list:
    """A top-up re-arms the balance alerts it lifts the balance out of (onysoft.balance_alerts), in its own
    write; an account with no alert fired needs no read for it."""
    if not account.alert_low_at and not account.alert_exhausted_at:
        return []
    from onysoft import balance_alerts

    return balance_alerts.rearmed(account, balance_alerts.standing_of(account).balance_micros + amount_micros)


def _alert_actions(account: Account, alert_below_micros: int) -> list:
    """Set (or, with 0, remove) the Balance Low threshold. Armed if the balance is at or above it; already
    fired (no event: nothing crossed) if it is below, so a top-up to it re-arms it as after a crossing."""
    if alert_below_micros < 0:
        raise AccountError("the alert threshold is an amount of 0 (no alert) or more")
    if alert_below_micros == 0:
        return [Account.alert_below_micros.remove(), Account.alert_low_at.remove()]
    from onysoft import balance_alerts

    below = balance_alerts.standing_of(account).balance_micros < alert_below_micros
    return [Account.alert_below_micros.set(alert_below_micros),
            Account.alert_low_at.set(clock.now_iso()) if below else Account.alert_low_at.remove()]


def update_account(account_id: str, *, markup_bp: int | None = None, name: str | None = None,
                   companions: writes.Companions = None, shards: int | None = None,
                   alert_below_micros: int | None = None, max_parallel: int | None = None,
                   ceiling_change: ceilings.Change | None = None) -> Account:
    """Set an account's markup (within its kind's bounds), name, balance shards and/or Balance Low threshold
    (0: none). Keys see a new markup or shard count once the authorizer's cached answer for them expires
    (ReauthorizeEvery)."""
    account = get_account(account_id)
    actions = _alert_actions(account, alert_below_micros) if alert_below_micros is not None else []
    if shards is not None:
        _check_shards(shards)
        actions.append(Account.shards.set(shards))
        if shards > balances.max_of(account):
            actions.append(Account.shards_max.set(shards))
    if markup_bp is not None:
        check_markup(account.kind, markup_bp)
        actions.append(Account.markup_bp.set(markup_bp))
    if name is not None:
        actions.extend([Account.name.set(name), *account_index.rename_actions(account_id, name)])
    if max_parallel is not None:  # requests in flight at once over all its keys (onysoft.parallel); 0: no limit
        if max_parallel < 0:
            raise AccountError("max_parallel must be 0 (no limit) or a positive number")
        actions.append(Account.max_parallel.set(max_parallel) if max_parallel else Account.max_parallel.remove())
    also = []
    if ceiling_change:  # the operator's ceilings (onysoft.ceilings): `accounts` is on the owner's item
        try:
            also = ceiling_change.owner_update(account)
        except ceilings.CeilingError as exc:
            raise AccountError(str(exc)) from None
        actions.extend(ceiling_change.account_actions() or [Account.markup_bp.set(int(account.markup_bp))])  # no-op
    if actions:
        try:
            writes.update(account, actions, Account.account_id.exists(), companions, also=also)
        except writes.ConditionFailed:
            raise AccountError(f"no account {account_id!r}") from None
    return account
