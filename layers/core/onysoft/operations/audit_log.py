"""The audit log as its actor may read it: its own scope's records (the operator's: everything)."""

from onysoft import audit
from onysoft.audit import Actor
from onysoft.operations import access
from onysoft.operations.paging import decode_cursor, encode_cursor, page_size
from onysoft.operations.views import audit_view


def audit_log(actor: Actor, *, account_id: str | None = None, cursor: str | None = None,
              limit: int | None = None) -> dict:
    """The principal's audit log, newest first: what was done to its accounts and keys (the operator's:
    everything), optionally for one of its accounts."""
    page = page_size(limit)
    if account_id is not None:
        access.account(actor, account_id)
    partition = audit.account_partition(account_id) if account_id is not None else audit.partition_of(actor.principal)
    start_key = decode_cursor(cursor, fixed={"account_id": partition}, keys={"account_id", "sk"})
    items, last_key = audit.query(actor.principal, limit=page, last_evaluated_key=start_key, account_id=account_id)
    return {
        "records": [audit_view(item, reader_is_operator=actor.principal.is_operator) for item in items],
        "next": encode_cursor(last_key) if len(items) == page else None,
    }
