"""Account operations: list, show, create, update (markup, name) and top up."""

from pynamodb.exceptions import TransactWriteError

from onysoft import account_index, accounts, audit, ceilings, idempotency, topups, writes
from onysoft.audit import Actor
from onysoft.errors import GatewayError, bad_request
from onysoft.key_types import ACCOUNT_KINDS
from onysoft.models import Account
from onysoft.operations import access
from onysoft.operations.paging import decode_cursor, encode_cursor, page_size
from onysoft.operations.views import account_view
from onysoft.principals import OPERATOR, ORG, OWNED_KINDS, PARTNER, USER


def list_accounts(actor: Actor, *, owner: str | None = None, kind: str | None = None, search: str | None = None,
                  cursor: str | None = None, limit: int | None = None) -> dict:
    """One page of the accounts the actor sees, by name (onysoft.account_index: a Query of an index and a
    BatchGetItem of the page, never a scan); optionally one owner's, one kind's (narrows the page: it may hold
    fewer than `limit`, `next` still goes on), names starting with `search`, or the account whose id `search` is.
    `skipped`: items on this page that could not be read as accounts (logged and counted, never a 500)."""
    principal = actor.principal
    size = page_size(limit)
    search = (search or "").strip()
    if principal.kind != OPERATOR:
        if owner is not None and owner != principal.id:
            return {"accounts": [], "next": None, "skipped": 0}
        owner = principal.id if principal.kind != USER else None
    if principal.kind == USER or account_index.ACCOUNT_ID.fullmatch(search):
        ids = [principal.id] if principal.kind == USER else [search]
        found, skipped = account_index.read(ids)
        if search and principal.kind == USER:
            found = [a for a in found if a.account_id == search or (a.name or "").lower().startswith(search.lower())]
        last_key = None
    else:
        fixed, keys = ({"listed": account_index.LISTED}, {"listed", "name_key", "account_id"}) if owner is None \
            else ({"owner": owner}, {"owner", "name_key", "account_id"})
        start_key = decode_cursor(cursor, fixed=fixed, keys=keys)
        if start_key and not start_key["name_key"]["S"].startswith(search.lower()):
            raise bad_request("Invalid cursor: pass the `next` value of the previous page (same search).", "cursor")
        found_page = account_index.page(owner=owner, prefix=search, limit=size, start_key=start_key)
        found, skipped, last_key = found_page.accounts, found_page.skipped, found_page.last_key
    views, unreadable = [], []
    owned = ceilings.owned_items(list(found))  # each owner's count of accounts, one batch read for the page
    for account in found:
        if not principal.sees(account) or (owner and account.owner != owner) or (kind and account.kind != kind):
            continue
        try:
            views.append(account_view(account, owned.get(ceilings.owned_id(account.owner, account.kind))))
        except Exception:  # noqa: BLE001 - a value the view cannot read: skipped and counted, never a 500
            unreadable.append(account.account_id)
    if unreadable:
        account_index.skipped_items(unreadable)
    return {"accounts": views, "next": encode_cursor(last_key), "skipped": len(skipped) + len(unreadable)}


def get_account(actor: Actor, account_id: str) -> dict:
    return account_view(access.account(actor, account_id))


def create_account(actor: Actor, *, kind: str, name: str = "", markup_bp: int | None = None,
                   owner: str | None = None, shards: int | None = None) -> dict:
    principal = actor.principal
    if kind not in ACCOUNT_KINDS:
        raise bad_request(f"kind must be one of: {', '.join(ACCOUNT_KINDS)}", "kind")
    if principal.kind == USER:
        raise access.forbidden("A user account cannot create accounts.")
    if principal.kind in (ORG, PARTNER):
        allowed = OWNED_KINDS[principal.kind]
        if kind not in allowed:
            raise access.forbidden(f"A {principal.kind} may create {' or '.join(allowed)} accounts only.")
        if owner is not None and owner != principal.id:
            raise access.forbidden(f"Accounts you create are owned by {principal.kind} {principal.id!r}.")
        if principal.kind == ORG and markup_bp is not None:
            raise access.forbidden("A project's markup is set by the platform.")
        owner = principal.id
    elif not access.is_cli(actor):
        # The dashboard's operator names an owner exactly for owned kinds; the CLI's --owner is free
        # (DESIGN.md's CLI contract: an optional label, any kind).
        if kind == "user" and owner:
            raise bad_request("user accounts have no owner", "owner")
        if kind != "user" and not owner:
            raise bad_request(f"{kind} accounts need an owner (the org or partner id)", "owner")
    try:
        account = accounts.create_account(kind, name=name, owner=owner, markup_bp=markup_bp,
                                          companions=audit.on_account_create(actor), shards=shards,
                                          enforce_ceilings=access.enforces_ceilings(actor))
    except ceilings.CeilingReached as exc:
        raise access.ceiling_error(exc) from None
    except accounts.AccountError as exc:
        raise bad_request(str(exc), "shards" if "shards" in str(exc) else "markup_pct") from None
    return account_view(account)


def update_account(actor: Actor, account_id: str, *, markup_bp: int | None = None,
                   name: str | None = None, shards: int | None = None, alert_below_micros: int | None = None,
                   max_parallel: int | None = None, ceiling_values: dict | None = None) -> dict:
    """Markup (operator, partner), name, balance shards and max_parallel (operator), the Balance Low threshold
    (anyone who sees the account: partners for their customers, people for their own accounts; 0 removes it) and
    the ceilings (operator: `ceiling_values` by name, onysoft.ceilings.NAMES; 0 puts one back to its default)."""
    account = access.account(actor, account_id)
    principal = actor.principal
    given = {name_: value for name_, value in (ceiling_values or {}).items() if value is not None}
    if markup_bp is None and name is None and shards is None and alert_below_micros is None and max_parallel is None \
            and not given:
        raise bad_request("nothing to change: give markup_pct, name, shards, alert_below, max_parallel and/or "
                          "ceilings")
    if given:
        access.require_operator(actor, "Only the platform sets an account's ceilings.")
    try:
        change = ceilings.Change.of(**given)
    except ceilings.CeilingError as exc:
        raise bad_request(str(exc), f"ceiling_{next(iter(given))}" if len(given) == 1 else "ceilings") from None
    if shards is not None:
        access.require_operator(actor, "Only the platform sets an account's balance shards.")
    if max_parallel is not None:  # a tenant limit the platform sets (issue 23)
        access.require_operator(actor, "Only the platform sets an account's max_parallel.")
    if markup_bp is not None and principal.kind not in (OPERATOR, PARTNER):
        raise access.forbidden("Only the platform sets this account's markup." if principal.kind == ORG
                               else "A user account's markup is the platform's standard markup.")
    audited = audit.on_account_update(actor, account, markup_bp=markup_bp, name=name,
                                      alert_below_micros=alert_below_micros, max_parallel=max_parallel,
                                      ceilings_before=ceilings.view(
                                          account, ceilings.owned_item(account)) if change else None,
                                      ceilings_after=change.values)
    try:
        updated = accounts.update_account(account_id, markup_bp=markup_bp, name=name, companions=audited,
                                          shards=shards, alert_below_micros=alert_below_micros,
                                          max_parallel=max_parallel, ceiling_change=change)
    except accounts.AccountError as exc:
        message = str(exc)
        param = ("shards" if "shards" in message else "alert_below" if "alert" in message
                 else "max_parallel" if "max_parallel" in message
                 else "ceiling_accounts" if "ceiling" in message else "markup_pct")
        raise bad_request(message, param) from None
    return account_view(updated)


def top_up(actor: Actor, account_id: str, amount_micros: int,
           idempotency_key: str | None = None) -> tuple[dict, bool]:
    """(the account, whether this was a replay of an earlier top-up with the same idempotency key)."""
    account = access.account(actor, account_id)
    access.require_operator(actor, "Only the platform tops up balances.")
    request = {"amount_micros": amount_micros}
    companions = audit.on_topup(actor, amount_micros)
    if idempotency_key is not None:
        companions = writes.together(
            companions, idempotency.client_marker(account.account_id, "topup", idempotency_key, request))
    made_by = topups.MadeBy(actor=str(actor.principal), sub=actor.sub, email=actor.email,
                            request_id=actor.request_id, idempotency_key=idempotency_key)
    try:
        updated = accounts.top_up(account.account_id, amount_micros, companions=companions, made_by=made_by)
    except accounts.AccountError as exc:
        raise bad_request(str(exc), "amount") from None
    except TransactWriteError:
        if not _is_replay(account, idempotency_key, request):
            raise
        return account_view(accounts.get_account(account.account_id)), True
    return account_view(updated), False


def _is_replay(account: Account, idempotency_key: str | None, request: dict) -> bool:
    try:
        return idempotency_key is not None and idempotency.is_replay(
            account.account_id, "topup", idempotency_key, request)
    except idempotency.KeyReused as exc:
        raise GatewayError(409, str(exc), "invalid_request_error", "idempotency_key_reused",
                           "Idempotency-Key") from None
