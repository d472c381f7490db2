"""The audit log: who did what to which account or key, and when.

Every key creation, rotation and deletion, account creation, markup change and top-up made through
onysoft.operations (the dashboard, or the onysoft CLI acting as `operator` with its user@host as `actor_sub`)
leaves one record, written three times to the Usage table (no table of its own), in the same transaction as
the action itself (onysoft.writes):

- under `audit#<owner principal>` (`audit#user:acct_…`, `audit#org:<id>`, `audit#partner:<id>`): what
  the owner of the account lists, including what the operator did to its accounts;
- under `audit#all`: the operator's view of everything;
- under `audit#<account_id>` (issue 23): one account's log, whoever reads it, so a page of it is a Query of
  that account's records only, never a page of the whole log filtered (`onysoft backfill` adds this copy to
  records written before).

Sort key `<at>#<audit_id>`, so each log reads newest first with one Query. The partition keys are never
account ids (those are `acct_…`), so an account's usage query never meets an audit record, and the
records carry no `key_id` or `hold_state`, so neither of the Usage table's indexes holds them.
"""

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

from onysoft import clock, money
from onysoft.models import Account, ApiKey, AuditRecord
from onysoft.principals import Principal, scope_of

PREFIX = "audit#"
ALL = "all"

ACCOUNT_CREATE = "account.create"
ACCOUNT_UPDATE = "account.update"
ACCOUNT_TOPUP = "account.topup"
KEY_CREATE = "key.create"
KEY_DELETE = "key.delete"
KEY_ROTATE = "key.rotate"
KEY_LEAKED = "key.leaked"


@dataclass(frozen=True)
class Actor:
    """Who is acting: the principal, the signed-in person (Cognito `sub`, email) and the API request id."""

    principal: Principal
    sub: str | None = None
    request_id: str | None = None
    email: str | None = None  # the signed-in person's (the ID token's `email`): top-up records name them


def partition_of(principal: Principal) -> str:
    """The audit partition a principal lists: its own scope, or everything for the operator."""
    return PREFIX + (ALL if principal.is_operator else str(principal))


def account_partition(account_id: str) -> str:
    return PREFIX + account_id


def entries(actor: Actor, action: str, account: Account, *, key_id: str | None = None,
            details: dict | None = None) -> list[AuditRecord]:
    """The audit record of one action, for the owner's log and the operator's. Not written here: the action
    puts them in its own transaction (onysoft.writes), so both land or neither does."""
    at = clock.now_iso()
    audit_id = "aud_" + secrets.token_hex(8)
    partitions = [PREFIX + ALL, account_partition(account.account_id)]
    scope = scope_of(account)
    if scope:
        partitions.append(PREFIX + scope)
    return [
        AuditRecord(
            account_id=partition, sk=f"{at}#{audit_id}", audit_id=audit_id, at=at, actor=str(actor.principal),
            actor_sub=actor.sub or None, action=action, target_account_id=account.account_id,
            target_key_id=key_id, details=json.dumps(details, sort_keys=True) if details else None,
            request_id=actor.request_id or None,
        )
        for partition in partitions
    ]


# What each action records, as companions for onysoft.writes (the dashboard's and the CLI's actions alike).

def on_account_create(actor: Actor):
    return lambda account: entries(actor, ACCOUNT_CREATE, account, details={
        "kind": account.kind, "name": account.name or "", "owner": account.owner,
        "markup_pct": money.markup_pct(int(account.markup_bp)),
    })


def on_account_update(actor: Actor, account: Account, *, markup_bp: int | None, name: str | None,
                      alert_below_micros: int | None = None, max_parallel: int | None = None,
                      ceilings_before: dict | None = None, ceilings_after: dict | None = None):
    """Only what changes is recorded; a change to nothing records nothing. Ceilings: `ceilings_before` is the
    account's ceilings view, `ceilings_after` the operator's new values by name (0: back to the default)."""
    changes = {}
    for ceiling, value in (ceilings_after or {}).items():
        if ceilings_before is not None and (value or None) != (None if ceilings_before[f"{ceiling}_is_default"]
                                                               else ceilings_before[ceiling]):
            changes[f"ceiling_{ceiling}"] = {"from": ceilings_before[ceiling], "to": value or "default"}
    before = int(account.alert_below_micros) if account.alert_below_micros is not None else 0
    if alert_below_micros is not None and alert_below_micros != before:
        changes["alert_below"] = {"from": money.format_micros(before) if before else None,
                                  "to": money.format_micros(alert_below_micros) if alert_below_micros else None}
    if markup_bp is not None and markup_bp != int(account.markup_bp):
        changes["markup_pct"] = {"from": money.markup_pct(int(account.markup_bp)), "to": money.markup_pct(markup_bp)}
    if name is not None and name != (account.name or ""):
        changes["name"] = {"from": account.name or "", "to": name}
    if max_parallel is not None and max_parallel != int(account.max_parallel or 0):
        changes["max_parallel"] = {"from": int(account.max_parallel or 0) or None, "to": max_parallel or None}
    return lambda item: entries(actor, ACCOUNT_UPDATE, item, details=changes) if changes else ()


def on_topup(actor: Actor, amount_micros: int):
    return lambda account: entries(actor, ACCOUNT_TOPUP, account, details={
        "amount": money.format_micros(amount_micros), "amount_micros": amount_micros, "currency": account.currency,
    })


def _on_key(actor: Actor, action: str, account: Account):
    def companions(record: ApiKey) -> list[AuditRecord]:
        return entries(actor, action, account, key_id=record.key_id, details={
            "name": record.name, "type": record.key_type, "display": record.display,
        })

    return companions


def on_key_create(actor: Actor, account: Account):
    return _on_key(actor, KEY_CREATE, account)


def on_key_delete(actor: Actor, account: Account):
    return _on_key(actor, KEY_DELETE, account)


def on_key_rotate(actor: Actor, account: Account, grace_seconds: int):
    """Companions for the rotation's transaction, given the new secret's item: both display forms, the grace."""
    def companions(new: ApiKey) -> list[AuditRecord]:
        return entries(actor, KEY_ROTATE, account, key_id=new.key_id, details={
            "name": new.name, "type": new.key_type, "display": new.display,
            "previous_display": new.previous_display, "grace_seconds": grace_seconds, "grace_until": new.grace_until,
        })

    return companions


def query(principal: Principal, *, limit: int, last_evaluated_key: dict | None = None,
          account_id: str | None = None) -> tuple[list[AuditRecord], dict | None]:
    """One page of the principal's audit log (or, once the caller checked the principal may see it, of one
    account's), newest first, and the key to continue from (or None). Reads at most `limit` records."""
    partition = account_partition(account_id) if account_id else partition_of(principal)
    results = AuditRecord.query(partition, scan_index_forward=False, limit=limit, page_size=limit,
                                last_evaluated_key=last_evaluated_key)
    items = list(results)
    return items, results.last_evaluated_key


def iter_all(principal: Principal) -> Iterator[AuditRecord]:
    """Every record of a principal's log, newest first (tests and tools)."""
    yield from AuditRecord.query(partition_of(principal), scan_index_forward=False)
