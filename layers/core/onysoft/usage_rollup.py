"""Usage totals by day and model, kept off the request path from the Usage table's stream.

The rollup function (functions/rollup) gets the Usage table's DynamoDB Stream records (NEW_AND_OLD_IMAGES) and
keeps, in the UsageRollups table, one item per (account, UTC day, currency, model) and one per (key, day,
currency, model) with the counts the dashboard's usage totals show: requests, pending / settled / failed,
prompt and completion tokens, and settled charges in micro-units. The dashboard then reads O(days x models)
items for a year instead of every record (onysoft.operations.usage).

Idempotent, because stream records arrive at least once (a retried batch, a bisected batch, the local poller
after a restart) and one usage record changes several times (the hold writes it pending, `sent_at` touches
it, the settle or release closes it): each usage record has a marker item in UsageRollups saying what of it
is counted now (its status, day, model, tokens, charge) and a version. A batch reads the markers, folds its
changes over them in stream order (never back from a final status to pending), and writes, in one
transaction, every changed marker (conditioned on the version it read) with the ADDs to the totals. So a
record seen twice counts once; a hold then settle counts one request that moved from pending to settled; a
record whose pending image was never seen (a lost record) counts from its final image alone. A conflict
(another invocation got there first) re-reads and folds again.

A refused hold writes no usage record (its transaction was cancelled), so it counts nowhere, as before; a
released hold (upstream failed) counts as a failed request with no charge, as the usage page always did.

Money beside the counts (issue 26: margin reports and statements read these, never the records): per settled
record its charge in USD at the rate pinned on it (`charge_usd_micros`, rounded down), the provider's cost in USD
(`provider_cost_usd_micros`, rounded up: onysoft.money's margin rules), `costed` (1: the record had both factors;
records counted before issue 26 added nothing to these, so `settled - costed` says how many are missing), and its
debt (`overrun_micros`, the part of the charge beyond its hold). Each is an integer fixed per record and kept on
its marker, so a total is exactly the sum of its records' figures and a marker can take back what it added.

More rides on the same fold (issue 16: they used to be writes on the request path):
- a key's all-time totals (`key#<key_id>`, "total"): its request count (every request that got a hold) and
  its spend (settled charges), what every key view shows (`key_totals`);
- an account's all-time totals (`acct#<account_id>`, "total", issue 26): its settled charges, which with its
  top-ups make its ledger balance, what balance alerts compare with their threshold (onysoft.balance_alerts);
(The rate-limit window's unused tokens used to ride here too; since issue 23 the settle transaction gives them
back itself: onysoft.rate_limits.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation

from pynamodb.exceptions import TransactWriteError
from pynamodb.transactions import TransactWrite

from onysoft import money, rollup_quarantine, telemetry
from onysoft.models import RollupMarker, UsageRollup

logger = logging.getLogger("onysoft.usage_rollup")

STATUSES = ("pending", "settled", "failed")
RANK = {"pending": 0, "settled": 1, "failed": 1}  # a record only moves forward
FIELDS = ("requests", "pending", "settled", "failed", "prompt_tokens", "completion_tokens", "charge_micros")
# Settled records only (issue 26): the margin's USD figures and the statements' debts (module doc).
MONEY_FIELDS = ("charge_usd_micros", "provider_cost_usd_micros", "costed", "overrun_micros")
ALL_FIELDS = FIELDS + MONEY_FIELDS
# Usage records per transaction: 14 markers + at most 6 totals each (account and key day items, old and new,
# the key's and the account's all-time items) = 98, under TransactWriteItems' 100.
CHUNK = 14
KEY_TOTAL_SK = "total"  # a key's all-time item's sort key; an account's too (issue 26)
ATTEMPTS = 5
MARKER_TTL_SECONDS = 7 * 24 * 3600  # a stream keeps records 24 h: no duplicate can come later than that
# The Usage table's other items (onysoft.audit, onysoft.idempotency, onysoft.topups, onysoft.statements)
_NOT_USAGE = ("audit#", "idem#", "topup#", "stmt#")
MARKER_PREFIX, MARKER_SK = "rec#", "counted"  # a marker's key: rec#<account_id>#<usage sk>, "counted"


@dataclass(frozen=True)
class Counted:
    """What one usage record adds to the totals, and where."""

    status: str
    day: str
    currency: str
    model: str
    key_id: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    charge_micros: int = 0
    charge_usd_micros: int = 0
    provider_cost_usd_micros: int = 0
    costed: int = 0  # 1: a settled record whose USD figures are counted
    overrun_micros: int = 0

    def amounts(self) -> dict[str, int]:
        settled = self.status == "settled"
        return {"requests": 1, self.status: 1, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                **{name: getattr(self, name) if settled else 0 for name in ("charge_micros", *MONEY_FIELDS)}}


def _value(image: dict, name: str) -> str | None:
    attribute = image.get(name)
    if not attribute:
        return None
    (_kind, raw), = attribute.items()
    return raw if isinstance(raw, str) else None


def _number(image: dict, name: str) -> int:
    text = _value(image, name)
    return int(text) if text else 0


def _decimal(image: dict, name: str) -> Decimal | None:
    try:
        value = Decimal(_value(image, name) or "")
    except InvalidOperation:
        return None
    return value if value.is_finite() and value >= 0 else None


def usd_figures(image: dict) -> dict[str, int]:
    """A settled record's USD figures by onysoft.money's margin rules, from the factors it stores; nothing (not
    costed) when a factor is missing or not a number."""
    fx_rate, cost = _decimal(image, "fx_rate"), _decimal(image, "provider_cost_usd")
    if fx_rate is None or cost is None or not fx_rate:
        return {}
    return {"charge_usd_micros": money.usd_micros_of_charge(_number(image, "charge_micros"), fx_rate),
            "provider_cost_usd_micros": money.usd_micros_up(cost), "costed": 1}


def counted_from_image(image: dict | None) -> Counted | None:
    """A usage record's contribution from its stream image (DynamoDB JSON); None for anything else."""
    if not image:
        return None
    account_id, status = (_value(image, "account_id") or "").partition("#")[0], _value(image, "status")
    created_at, key_id = _value(image, "created_at") or "", _value(image, "key_id")
    if not account_id.startswith("acct_") or status not in RANK or not key_id or len(created_at) < 10:
        return None
    settled = status == "settled"
    return Counted(status=status, day=created_at[:10], currency=_value(image, "currency") or "",
                   model=_value(image, "model") or "", key_id=key_id,
                   prompt_tokens=_number(image, "prompt_tokens"),
                   completion_tokens=_number(image, "completion_tokens"),
                   charge_micros=_number(image, "charge_micros"),
                   overrun_micros=_number(image, "overrun_micros") if settled else 0,
                   **(usd_figures(image) if settled else {}))


@dataclass(frozen=True)
class Change:
    sequence: str
    record: str  # "<account_id>#<sk>": the usage record's id
    account_id: str
    counted: Counted | None
    source: dict | None = field(default=None, compare=False, repr=False)  # the stream record, whole


def change_of(record: dict) -> Change | None:
    """One stream record as a change to a usage record (None: not a usage record). Raises on a record it
    cannot read (a number that is not a whole number…): poison, which apply() sets aside."""
    body = record.get("dynamodb") or {}
    keys = body.get("Keys") or {}
    partition, sk = _value(keys, "account_id") or "", _value(keys, "sk") or ""
    if not partition or partition.startswith(_NOT_USAGE):
        return None
    # A sharded account's records are in partitions `<account_id>#<k>` (issue 16): its totals are the account's.
    account_id = partition.partition("#")[0]
    counted = counted_from_image(body.get("NewImage"))  # a REMOVE (no new image) changes no total
    return Change(str(body.get("SequenceNumber", "")), f"{partition}#{sk}", account_id, counted, record)


def changes_of(records: Iterable[dict]) -> list[Change]:
    """Stream records (Lambda's event["Records"] or GetRecords' Records) as changes to usage records."""
    return [change for change in map(change_of, records) if change is not None]


def totals_keys(account_id: str, counted: Counted) -> list[tuple[str, str]]:
    """The totals items one record counts in: its account's and its key's, for its day, currency and model;
    and its key's and its account's all-time totals (the account's: its ledger, onysoft.balance_alerts)."""
    sk = f"{counted.day}#{counted.currency}#{counted.model}"
    return [(f"acct#{account_id}", sk), (f"key#{counted.key_id}", sk), (f"key#{counted.key_id}", KEY_TOTAL_SK),
            (f"acct#{account_id}", KEY_TOTAL_SK)]


def opened_account_total(account_id: str, currency: str, at: str) -> UsageRollup:
    """An account's all-time item as it is created with the account (onysoft.accounts): `opened` says its
    totals count every request the account ever made."""
    return UsageRollup(pk=f"acct#{account_id}", sk=KEY_TOTAL_SK, account_id=account_id, currency=currency,
                       opened=at)


class RollupConflict(Exception):
    """Another invocation changed a marker this batch read: read again."""


def apply(records: list[dict]) -> list[str]:
    """Count a batch of stream records. Returns the sequence numbers that could not be counted (the first
    of the first chunk that failed: Lambda's ReportBatchItemFailures retries from there, in order).

    Poison cannot stick (onysoft.rollup_quarantine): a record that cannot be read, or whose own write DynamoDB
    refuses, is set aside whole and the rest of the batch is counted; only a transient error fails the batch."""
    changes: list[Change] = []
    stop_at: str | None = None  # a record that could be neither read nor set aside: the batch ends there
    set_aside = 0
    for record in records:
        try:
            change = change_of(record)
        except Exception as exc:  # noqa: BLE001 - a record that cannot be read: aside, whole
            if not _set_aside(record, exc):
                stop_at = rollup_quarantine.sequence_of(record)
                break
            set_aside += 1
            continue
        if change is not None:
            changes.append(change)
    chunks: list[list[Change]] = []
    for change in changes:
        ids = {c.record for c in chunks[-1]} if chunks else set()
        if not chunks or (change.record not in ids and len(ids) >= CHUNK):
            chunks.append([])
        chunks[-1].append(change)
    try:
        for chunk in chunks:
            try:
                _apply_with_retries(chunk)
            except Exception as exc:  # noqa: BLE001 - transient: retried from here; else one record at a time
                if rollup_quarantine.is_transient(exc):
                    logger.warning("usage rollup chunk not counted, retried: %s", exc)
                    return [chunk[0].sequence]
                for position, change in enumerate(chunk):
                    try:
                        _apply_with_retries([change])
                    except Exception as one:  # noqa: BLE001
                        if rollup_quarantine.is_transient(one) or not _set_aside(change.source or {}, one):
                            return [chunk[position].sequence]
                        set_aside += 1
        return [stop_at] if stop_at else []
    finally:
        if set_aside:
            telemetry.rollup_quarantined(set_aside)


def count_strictly(records: list[dict]) -> None:
    """Count these records or raise (`onysoft rollups replay`): nothing is set aside."""
    changes = changes_of(records)
    if changes:
        _apply_with_retries(changes)


def _apply_with_retries(chunk: list[Change]) -> None:
    for attempt in range(ATTEMPTS):
        try:
            _apply_chunk(chunk)
            return
        except RollupConflict:
            if attempt + 1 == ATTEMPTS:
                raise
            time.sleep(0.01 * 2 ** attempt)


def _set_aside(record: dict, exc: BaseException) -> bool:
    try:
        rollup_quarantine.quarantine(record, exc)
        return True
    except Exception:  # noqa: BLE001 - not aside, so not dropped: reported failed
        logger.exception("could not set a usage stream record aside")
        return False


def _apply_chunk(chunk: list[Change]) -> None:
    ids = list(dict.fromkeys(c.record for c in chunk))
    markers = {m.record.removeprefix(MARKER_PREFIX): m for m in RollupMarker.batch_get(
        [(MARKER_PREFIX + i, MARKER_SK) for i in ids], consistent_read=True)}
    counted: dict[str, Counted | None] = {i: _counted_of(markers.get(i)) for i in ids}
    initial = dict(counted)
    account_of = {c.record: c.account_id for c in chunk}
    deltas: dict[tuple[str, str], dict] = {}

    def add(account_id: str, what: Counted, sign: int) -> None:
        for key in totals_keys(account_id, what):
            total = deltas.setdefault(key, {"what": what, "account_id": account_id,
                                            **dict.fromkeys(ALL_FIELDS, 0)})
            for name, amount in what.amounts().items():
                total[name] += sign * amount

    for change in chunk:
        now, new = counted[change.record], change.counted
        if new is None or new == now or (now is not None and RANK[new.status] < RANK[now.status]):
            continue
        if now is not None:
            add(change.account_id, now, -1)
        add(change.account_id, new, +1)
        counted[change.record] = new
    changed = [i for i in ids if counted[i] != initial[i]]
    if not changed:
        return
    expires = int(time.time()) + MARKER_TTL_SECONDS

    def write(tx: TransactWrite) -> None:
        for record_id in changed:
            marker = markers.get(record_id)
            version = int(marker.version) if marker is not None else 0
            now = counted[record_id]
            fields = asdict(now)
            tx.save(RollupMarker(record=MARKER_PREFIX + record_id, sk=MARKER_SK, version=version + 1,
                                 expires_at=expires, account_id=account_of[record_id], **fields),
                    condition=RollupMarker.version == version if marker is not None
                    else RollupMarker.record.does_not_exist())
        for (pk, sk), total in deltas.items():
            amounts = {name: total[name] for name in ALL_FIELDS if total[name]}
            if not amounts:
                continue
            what = total["what"]
            actions = [getattr(UsageRollup, name).add(amount) for name, amount in amounts.items()]
            actions += [UsageRollup.currency.set(what.currency), UsageRollup.account_id.set(total["account_id"])]
            if sk != KEY_TOTAL_SK:
                actions += [UsageRollup.day.set(what.day), UsageRollup.model.set(what.model)]
            tx.update(UsageRollup(pk=pk, sk=sk), actions=actions)

    from onysoft.billing import _connection  # PynamoDB's shared connection

    try:
        with TransactWrite(connection=_connection()) as tx:
            write(tx)
    except TransactWriteError as exc:
        codes = {r.code for r in (exc.cancellation_reasons or []) if r is not None}
        if codes & {"ConditionalCheckFailed", "TransactionConflict"} or \
                exc.cause_response_code in ("TransactionConflictException", "TransactionInProgressException"):
            raise RollupConflict from None
        raise


def _counted_of(marker: RollupMarker | None) -> Counted | None:
    if marker is None or marker.status not in RANK:
        return None
    return Counted(status=marker.status, day=marker.day, currency=marker.currency or "", model=marker.model or "",
                   key_id=marker.key_id, prompt_tokens=int(marker.prompt_tokens or 0),
                   completion_tokens=int(marker.completion_tokens or 0),
                   charge_micros=int(marker.charge_micros or 0),
                   # A marker written before issue 26 has none of these: 0, what the totals counted then.
                   **{name: int(getattr(marker, name) or 0) for name in MONEY_FIELDS})


# ---------------------------------------------------------------------------------------------- reading


def read_totals(account_id: str, key_id: str | None, currency: str, first_day: str, last_day: str
                ) -> tuple[list[UsageRollup], int]:
    """The totals items of an account (or one of its keys) for the days first_day..last_day (UTC, inclusive)
    in the account's currency, and how many items were read: days x models, never records."""
    pk = f"key#{key_id}" if key_id else f"acct#{account_id}"
    items = list(UsageRollup.query(pk, UsageRollup.sk.between(first_day, last_day + "#\uffff")))
    return [i for i in items if (i.currency or "") == currency and (not key_id or i.account_id == account_id)], \
        len(items)


def read_days(pk: str, first_day: str, last_day: str) -> list[UsageRollup]:
    """Every totals item of `acct#<account_id>` or `key#<key_id>` for the days first_day..last_day (UTC,
    inclusive), in every currency: one Query, days x models items."""
    return list(UsageRollup.query(pk, UsageRollup.sk.between(first_day, last_day + "#\uffff")))


@dataclass(frozen=True)
class KeyTotals:
    """A key's all-time request count and spend, as the rollup has counted them."""

    requests: int = 0
    spend_micros: int = 0


def key_totals(key_ids: Iterable[str]) -> dict[str, KeyTotals]:
    """The all-time totals of up to 100 keys per call, in one BatchGetItem each; a key never used has none."""
    from onysoft.dynamo import batch_get_raw

    ids = list(dict.fromkeys(key_ids))
    found: dict[str, KeyTotals] = {}
    for start in range(0, len(ids), 100):
        keys = [{"pk": {"S": f"key#{k}"}, "sk": {"S": KEY_TOTAL_SK}} for k in ids[start:start + 100]]
        for item in batch_get_raw(UsageRollup.Meta.table_name, keys):
            found[item["pk"]["S"].removeprefix("key#")] = totals_from_item(item)
    return found


def totals_from_item(item: dict | None) -> KeyTotals:
    item = item or {}
    return KeyTotals(int(item.get("requests", {}).get("N", 0)), int(item.get("charge_micros", {}).get("N", 0)))
