"""Pages of accounts by name (issue 23): what the operator's dashboard lists at 100k accounts, never a scan.

Every account item carries two index attributes (onysoft.accounts writes them at creation and rename;
`onysoft backfill` adds them to items written before):

- `listed` = "all": the partition key of the Accounts table's `by_name` index (KEYS_ONLY), the operator's list;
- `name_key` = "<lower-cased name>#<account_id>": the sort key of `by_name` and of `by_owner_name` (partition key
  `owner`), an owner's list. Sorted by name, unique, and a name prefix is a `begins_with` on it.

One partition for all accounts is enough: these entries are written only when an account is created or renamed
(a billed request updates the balance, never an index key, and KEYS_ONLY projects nothing else), and a page of
100 key-only entries is about 2 read units of the partition's 3,000 a second.

A page is one Query (Limit = the page) and one BatchGetItem of the items (the index holds keys only: models.py
says why). An item that cannot be read as an account (unknown kind, missing or mistyped fields) is skipped,
logged and counted, never an error of the whole list.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from onysoft import telemetry
from onysoft.key_types import ACCOUNT_KINDS
from onysoft.models import Account

LISTED = "all"
ACCOUNT_ID = re.compile(r"acct_[0-9a-f]{16}")
_BATCH = 100  # BatchGetItem's most keys per call

log = logging.getLogger(__name__)


def name_key(name: str | None, account_id: str) -> str:
    return f"{(name or '').strip().lower()}#{account_id}"


def index_attributes(account: Account) -> None:
    """Set the listing attributes on an account about to be written (creation)."""
    account.listed = LISTED
    account.name_key = name_key(account.name, account.account_id)


def rename_actions(account_id: str, name: str) -> list:
    return [Account.listed.set(LISTED), Account.name_key.set(name_key(name, account_id))]


@dataclass
class Page:
    accounts: list[Account]
    last_key: dict | None  # the index's LastEvaluatedKey (None: the end)
    skipped: list[str] = field(default_factory=list)  # ids of items that could not be read as accounts


def page(*, owner: str | None, prefix: str, limit: int, start_key: dict | None) -> Page:
    """One page in name order: every account (owner None) or one owner's, names starting with `prefix`."""
    condition = Account.name_key.startswith(prefix.lower()) if prefix else None
    index, hash_value = (Account.by_name, LISTED) if owner is None else (Account.by_owner_name, owner)
    results = index.query(hash_value, condition, limit=limit, page_size=limit, last_evaluated_key=start_key)
    ids = [entry.account_id for entry in results]
    accounts, skipped = read(ids)
    return Page(accounts, results.last_evaluated_key if len(ids) == limit else None, skipped)


def read(ids: list[str]) -> tuple[list[Account], list[str]]:
    """The accounts of `ids` (consistent reads), in that order; missing ones left out, malformed ones skipped."""
    raw_by_id: dict[str, dict] = {}
    connection = Account._get_connection()
    for start in range(0, len(ids), _BATCH):
        wanted = ids[start:start + _BATCH]
        while wanted:
            answer = connection.batch_get_item([{"account_id": i} for i in wanted], consistent_read=True)
            for raw in answer.get("Responses", {}).get(Account.Meta.table_name, []):
                raw_by_id[raw["account_id"]["S"]] = raw
            unprocessed = answer.get("UnprocessedKeys", {}).get(Account.Meta.table_name, {}).get("Keys", [])
            wanted = [key["account_id"]["S"] for key in unprocessed]
    accounts, skipped = [], []
    for account_id in ids:
        raw = raw_by_id.get(account_id)
        if raw is None:
            continue  # the index lags a write, or the item is gone
        account = well_formed(raw)
        if account is None:
            skipped.append(account_id)
        else:
            accounts.append(account)
    if skipped:
        skipped_items(skipped)
    return accounts, skipped


def well_formed(raw: dict) -> Account | None:
    """The account of a raw item, or None if it cannot be one (unknown kind, fields missing or of the wrong
    type: PynamoDB's deserialisation fails). The caller's view may still find a bad value (skip it too)."""
    try:
        account = Account.from_raw_data(raw)
    except Exception:  # noqa: BLE001 - any bad value: skipped and counted, never the list's 500
        return None
    if account.kind not in ACCOUNT_KINDS or not all(
            isinstance(getattr(account, name), str) for name in ("currency", "created_at")):
        return None
    return account


def skipped_items(account_ids: list[str]) -> None:
    telemetry.logger()  # `onysoft.*` loggers write through Powertools' JSON formatter (ids as keys)
    log.warning("malformed account items skipped", extra={"account_ids": account_ids, "count": len(account_ids)})
    telemetry.malformed_items(len(account_ids), "accounts")
