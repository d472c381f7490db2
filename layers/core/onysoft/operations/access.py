"""Who may reach what: the actor's view of accounts and keys, and the answers when it may not.

An account or key the actor does not see answers exactly as an id that was never issued (404); an action
on something it sees but may not do answers 403.
"""

import getpass
import re
import socket

from onysoft import api_keys, ceilings
from onysoft.audit import Actor
from onysoft.errors import GatewayError, not_found
from onysoft.models import Account, ApiKey
from onysoft.principals import OPERATOR, Principal, visible_account

CLI_SUB_PREFIX = "cli:"
_KEY_ID = re.compile(r"key_[0-9a-f]{16}")
_ACCOUNT_ID = re.compile(r"acct_[0-9a-f]{16}")


def cli_operator() -> Actor:
    """The onysoft CLI acts as the platform; who ran it (user@host) goes where a person's Cognito sub would."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = "unknown"
    return Actor(Principal(OPERATOR), sub=f"{CLI_SUB_PREFIX}{user}@{socket.gethostname()}")


def is_cli(actor: Actor) -> bool:
    return actor.principal.is_operator and (actor.sub or "").startswith(CLI_SUB_PREFIX)


def forbidden(message: str) -> GatewayError:
    return GatewayError(403, message, "invalid_request_error", "permission_denied")


def enforces_ceilings(actor: Actor) -> bool:
    """The operator sets the ceilings and is not bound by them (onysoft.ceilings); every tenant is."""
    return not actor.principal.is_operator


def ceiling_error(exc: ceilings.CeilingExceeded | ceilings.CeilingReached) -> GatewayError:
    """400 `ceiling_exceeded` naming the field, or 403 `keys_ceiling_reached` / `accounts_ceiling_reached`."""
    if isinstance(exc, ceilings.CeilingExceeded):
        return GatewayError(400, str(exc), "invalid_request_error", "ceiling_exceeded", exc.field)
    return GatewayError(403, str(exc), "invalid_request_error", exc.code, None)


def account_not_found(account_id: str) -> GatewayError:
    return not_found(f"No account {account_id!r}.", code="account_not_found", param="account_id")


def key_not_found(key_id: str) -> GatewayError:
    return not_found(f"No key {key_id!r}.", code="key_not_found", param="key_id")


def require_operator(actor: Actor, message: str) -> None:
    if not actor.principal.is_operator:
        raise forbidden(message)


def account(actor: Actor, account_id: str) -> Account:
    """The account, if the actor sees it; else 404."""
    found = visible_account(actor.principal, account_id) if _ACCOUNT_ID.fullmatch(account_id) else None
    if found is None:
        raise account_not_found(account_id)
    return found


def key(actor: Actor, key_id: str, *, active_only: bool = True) -> tuple[ApiKey, Account]:
    """The key record and its account, if the actor sees the account (and the key is active); else 404."""
    if not _KEY_ID.fullmatch(key_id):
        raise key_not_found(key_id)
    try:
        record = api_keys.find_by_key_id(key_id)
    except api_keys.KeyNotFound:
        raise key_not_found(key_id) from None
    owner = visible_account(actor.principal, record.account_id)
    if owner is None or (active_only and record.status != api_keys.ACTIVE):
        raise key_not_found(key_id)
    return record, owner


def key_of_account(key_id: str, account_id: str) -> ApiKey:
    """A key of this (already visible) account, active or not; else 404."""
    try:
        record = api_keys.find_by_key_id(key_id) if _KEY_ID.fullmatch(key_id) else None
    except api_keys.KeyNotFound:
        record = None
    if record is None or record.account_id != account_id:
        raise key_not_found(key_id)
    return record
