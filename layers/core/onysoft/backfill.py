"""`onysoft backfill`: what issue 23's indexes need on items written before them. Idempotent, paged, re-runnable.

- Account items get `listed` and `name_key` (onysoft.account_index), so they appear in the dashboard's pages by
  name. The Accounts table is read page by page (a Scan: this one-off job is the only reader that may; balance
  shards have no `kind` and are left alone). An item already right is not written again.
- Audit records get their per-account copy (`audit#<account_id>`, onysoft.audit), read page by page from
  `audit#all`; a copy that exists is not written again (conditional put).

Not backfilled: usage records' `key_shard` (a key's by_key_shard entries). Updating an old record would reach the
usage rollup through the stream, and a record older than its rollup marker's 7 days would be counted again;
a key's totals (the rollups) cover those records, its list of records starts at the deploy.
"""

from __future__ import annotations

from pynamodb.exceptions import PutError, UpdateError

from onysoft import account_index, audit
from onysoft.models import Account, AuditRecord

PAGE = 100


def _conditional_failed(exc: Exception) -> bool:
    return getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException"


def accounts() -> dict:
    seen = updated = 0
    for item in Account.scan(Account.kind.exists(), page_size=PAGE):
        seen += 1
        wanted = account_index.name_key(item.name, item.account_id)
        if item.listed == account_index.LISTED and item.name_key == wanted:
            continue
        try:
            item.update(actions=account_index.rename_actions(item.account_id, item.name or ""),
                        condition=Account.account_id.exists())
            updated += 1
        except UpdateError as exc:
            if not _conditional_failed(exc):
                raise
    return {"accounts_seen": seen, "accounts_updated": updated}


def audit_copies() -> dict:
    seen = copied = 0
    for record in AuditRecord.query(audit.PREFIX + audit.ALL, page_size=PAGE):
        seen += 1
        if not record.target_account_id:
            continue
        copy = AuditRecord.from_raw_data(record.serialize())
        copy.account_id = audit.account_partition(record.target_account_id)
        try:
            copy.save(condition=AuditRecord.sk.does_not_exist())
            copied += 1
        except PutError as exc:
            if not _conditional_failed(exc):
                raise
    return {"audit_records_seen": seen, "audit_copies_written": copied}


def run() -> dict:
    return {**accounts(), **audit_copies()}
