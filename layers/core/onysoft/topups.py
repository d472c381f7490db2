"""The top-up ledger: one record per top-up, written in the top-up's own transaction (onysoft.accounts.top_up),
so a statement (onysoft.statements) can list a month's top-ups, each with who made it and its idempotency key,
with one Query. A top-up that fails writes no record; a replayed one (its idempotency key seen before) is not
carried out, so it writes none either.

Records live in the Usage table under `topup#<account_id>` (sort key `<at>#<topup_id>`), like the audit log:
never an account id, so no usage query or index meets them. Accounts topped up before issue 26 have top-ups
with no record: `topped_up_micros` on the account minus the sum of its records is their total (statements
count it as before the first record).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from onysoft import clock, writes
from onysoft.models import Account, TopUpRecord

PREFIX = "topup#"
SYSTEM = "system"  # a top-up made by code, not by a person (the local gateway's demo seed, tests)


@dataclass(frozen=True)
class MadeBy:
    """Who made a top-up: the principal (`operator`), the person (Cognito `sub`, or cli:<user>@<host>) and
    their email, the API request, and the idempotency key it was sent with."""

    actor: str = SYSTEM
    sub: str | None = None
    email: str | None = None
    request_id: str | None = None
    idempotency_key: str | None = None


def partition(account_id: str) -> str:
    return PREFIX + account_id


def record_of(amount_micros: int, made_by: MadeBy | None) -> writes.Companions:
    """Companions for a top-up's write: its ledger record (the account item written gives the currency)."""
    made_by = made_by or MadeBy()

    def companions(account: Account) -> list[TopUpRecord]:
        at = clock.now_iso()
        topup_id = "top_" + secrets.token_hex(8)
        return [TopUpRecord(account_id=partition(account.account_id), sk=f"{at}#{topup_id}", topup_id=topup_id,
                            at=at, amount_micros=amount_micros, currency=account.currency, actor=made_by.actor,
                            actor_sub=made_by.sub or None, actor_email=made_by.email or None,
                            idempotency_key=made_by.idempotency_key or None,
                            request_id=made_by.request_id or None)]

    return companions


def between(account_id: str, start: str | None = None, end: str | None = None) -> list[TopUpRecord]:
    """The account's top-ups at or after `start` and before `end` (ISO times; None: no bound), oldest first."""
    condition = None
    if start and end:
        condition = TopUpRecord.sk.between(start, end)
    elif start:
        condition = TopUpRecord.sk >= start
    elif end:
        condition = TopUpRecord.sk < end
    found = TopUpRecord.query(partition(account_id), condition, consistent_read=True)
    return [record for record in found if not end or record.at < end]  # `between` includes its upper bound
