"""Dashboard principals: who a signed-in person acts as, and which accounts that lets them see.

The Cognito user pool gives each person an immutable custom attribute `principal` (the ID token's
`custom:principal` claim), one of:

| principal | who | the accounts it sees |
|---|---|---|
| `user:<account_id>` | a person | that user account |
| `org:<org_id>` | an org admin | the `project` accounts whose owner is the org |
| `partner:<partner_id>` | a partner | its `partner_project` and `partner_customer` accounts (owner = partner) |
| `operator` | the platform | every account |

An account a principal does not see does not exist for it: every lookup answers "not found", the same
answer as for an account id that was never issued (see `visible_account`).
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass

from onysoft.models import Account

USER = "user"
ORG = "org"
PARTNER = "partner"
OPERATOR = "operator"

CLAIM = "custom:principal"

# The account kinds each owner-scoped principal sees (owner == its id).
OWNED_KINDS: dict[str, tuple[str, ...]] = {
    ORG: ("project",),
    PARTNER: ("partner_project", "partner_customer"),
}

_ACCOUNT_ID = re.compile(r"acct_[0-9a-f]{16}")
_OWNER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class PrincipalError(ValueError):
    """A principal claim that is missing or not one of the four forms."""


@dataclass(frozen=True)
class Principal:
    kind: str  # user | org | partner | operator
    id: str = ""  # the account id (user), org id or partner id; empty for the operator

    def __str__(self) -> str:
        return self.kind if self.kind == OPERATOR else f"{self.kind}:{self.id}"

    @property
    def is_operator(self) -> bool:
        return self.kind == OPERATOR

    def sees(self, account: Account) -> bool:
        """True when this principal may see (and so act on) the account."""
        if self.kind == OPERATOR:
            return True
        if self.kind == USER:
            return account.kind == "user" and account.account_id == self.id
        return account.owner == self.id and account.kind in OWNED_KINDS[self.kind]

    def accounts(self) -> Iterator[Account]:
        """Every account this principal sees (a user's own, an owner's by the by_owner index, all for the
        operator). The index is eventually consistent: an account created a moment ago may lag."""
        if self.kind == OPERATOR:
            yield from Account.scan(Account.kind.exists())  # not the balance shards in the same table
        elif self.kind == USER:
            try:
                account = Account.get(self.id, consistent_read=True)
            except Account.DoesNotExist:
                return
            if self.sees(account):
                yield account
        else:
            yield from (account for account in accounts_of_owner(self.id) if self.sees(account))


def parse(value: object) -> Principal:
    """`user:acct_…`, `org:<id>`, `partner:<id>` or `operator` → Principal; anything else → PrincipalError."""
    if not isinstance(value, str) or not value:
        raise PrincipalError("no principal")
    if value == OPERATOR:
        return Principal(OPERATOR)
    kind, sep, ident = value.partition(":")
    if not sep:
        raise PrincipalError(f"malformed principal {value!r}")
    if kind == USER and _ACCOUNT_ID.fullmatch(ident):
        return Principal(USER, ident)
    if kind in (ORG, PARTNER) and _OWNER_ID.fullmatch(ident):
        return Principal(kind, ident)
    raise PrincipalError(f"malformed principal {value!r}")


def from_claims(claims: dict | None) -> Principal:
    """The principal of a Cognito ID token's claims (as API Gateway's Cognito authorizer passes them)."""
    return parse((claims or {}).get(CLAIM))


def visible_account(principal: Principal, account_id: str) -> Account | None:
    """The account if it exists and the principal sees it; None otherwise (the two are indistinguishable)."""
    if principal.kind == USER and account_id != principal.id:
        return None  # no read: a user sees only its own account
    try:
        account = Account.get(account_id, consistent_read=True)
    except Account.DoesNotExist:
        return None
    return account if principal.sees(account) else None


def scope_of(account: Account) -> str | None:
    """The principal that owns an account (whose audit log records what happens to it), if any."""
    if account.kind == "user":
        return f"{USER}:{account.account_id}"
    for kind, kinds in OWNED_KINDS.items():
        if account.kind in kinds and account.owner:
            return f"{kind}:{account.owner}"
    return None


def accounts_of_owner(owner: str) -> list[Account]:
    """The accounts an org or partner owns, in account_id order. The by_owner index holds keys only (models.py
    says why), so the items are read from the table."""
    ids = [entry.account_id for entry in Account.by_owner.query(owner)]
    return sorted(Account.batch_get(ids, consistent_read=True), key=lambda account: account.account_id)
