"""Usage stream records the rollup cannot count, set aside whole (issue 23: poison cannot stick).

A record that cannot be read (`"1.5"` where a whole number belongs) or whose own write DynamoDB refuses for what
it holds (a key too long…) would fail its batch on every retry: Lambda would bisect it down to that record and
send the failure queue only its metadata, and once the stream's 24 h had passed its counts would be lost. So
onysoft.usage_rollup counts the rest of the batch and puts the stream record here instead, whole (its keys, both
images, its sequence number), as an item of UsageRollups (pk `quarantine#rollup`, which PITR and Retain keep like
the totals): no expiry, listed by `onysoft rollups quarantined`, and counted again by `onysoft rollups replay` once
the cause is fixed (a fixed rollup deployed; or a record corrected in Usage, whose new image the stream brings and
the rollup counts by itself, the replay then adding nothing). The replay goes through the same fold as the
stream, with the record's marker (onysoft.usage_rollup), so a record counts exactly once however often it is
quarantined or replayed. For that the marker must outlive the quarantine: setting a record aside removes its
marker's expiry, and a replay's write gives it one again.

Transient errors (throttling, conflicts that outlast the retries, a DynamoDB outage, a missing permission) are not
poison: the batch is reported failed from there and retried in order, as before. Writing the quarantine item is
itself a write: if it fails, the record is reported failed too, never dropped.
"""

from __future__ import annotations

import json
import logging

from botocore import exceptions as bexc
from pynamodb.exceptions import PynamoDBException, TransactWriteError

from onysoft import clock
from onysoft.models import UsageRollup

logger = logging.getLogger("onysoft.rollup_quarantine")

PK = "quarantine#rollup"
# DynamoDB's answer to a request that can never succeed as it is (a key too long, an item too large…): the
# record's fault, like a value our code cannot read. Any other DynamoDB or network error says nothing about it.
RECORD_ERRORS = frozenset({"ValidationException", "ValidationError", "ItemCollectionSizeLimitExceededException"})


def is_transient(exc: BaseException) -> bool:
    """An error that says nothing about the record (throttling, a conflict past the retries, an outage, a role or a
    table gone wrong): the same write may succeed later, so the batch is retried, never set aside. Poison is the
    rest: our code could not read the record, or DynamoDB refused the write for what it holds."""
    from onysoft.usage_rollup import RollupConflict

    if isinstance(exc, RollupConflict):
        return True
    if isinstance(exc, TransactWriteError):
        codes = {r.code for r in (exc.cancellation_reasons or []) if r is not None and r.code != "None"}
        if codes & RECORD_ERRORS:
            return False
    if isinstance(exc, PynamoDBException):
        return exc.cause_response_code not in RECORD_ERRORS
    if isinstance(exc, bexc.ClientError):
        return exc.response.get("Error", {}).get("Code") not in RECORD_ERRORS
    return isinstance(exc, bexc.BotoCoreError)  # connection, timeout, credentials: not the record's


def _client():
    return UsageRollup._get_connection().connection.client


def _table() -> str:
    return UsageRollup.Meta.table_name


def record_id_of(record: dict) -> str:
    """`<account_id>#<sk>` of the usage item the stream record is about ("?" where its keys cannot be read)."""
    try:
        keys = record["dynamodb"]["Keys"]
        return f"{keys['account_id']['S']}#{keys['sk']['S']}"
    except (KeyError, TypeError):
        return "?"


def sequence_of(record: dict) -> str:
    return str((record.get("dynamodb") or {}).get("SequenceNumber", ""))


def quarantine(record: dict, exc: BaseException) -> None:
    """Set one stream record aside, whole. Raises if it could not be written (the caller reports it failed)."""
    from onysoft.usage_rollup import MARKER_PREFIX, MARKER_SK

    record_id, sequence = record_id_of(record), sequence_of(record)
    reason = f"{type(exc).__name__}: {exc}"[:500]
    if record_id != "?":  # keep what is counted of it for as long as it is aside (module doc)
        try:
            _client().update_item(
                TableName=_table(), Key={"pk": {"S": MARKER_PREFIX + record_id}, "sk": {"S": MARKER_SK}},
                UpdateExpression="REMOVE expires_at", ConditionExpression="attribute_exists(pk)")
        except bexc.ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
    _client().put_item(TableName=_table(), Item={
        "pk": {"S": PK}, "sk": {"S": f"{record_id}#{sequence}"}, "record_id": {"S": record_id},
        "sequence": {"S": sequence}, "record": {"S": json.dumps(record, default=str, sort_keys=True)},
        "reason": {"S": reason}, "quarantined_at": {"S": clock.now_iso()}, "attempts": {"N": "1"}})
    logger.error("usage stream record set aside (not counted until `onysoft rollups replay`): %s", reason,
                 extra={"record_id": record_id, "sequence": sequence})


def quarantined(limit: int | None = None) -> list[dict]:
    """The records set aside, as {id, record_id, sequence, reason, quarantined_at, attempts, record}."""
    found, start = [], None
    while True:
        page = _client().query(TableName=_table(), KeyConditionExpression="pk = :pk",
                               ExpressionAttributeValues={":pk": {"S": PK}}, ConsistentRead=True,
                               **({"ExclusiveStartKey": start} if start else {}))
        for item in page.get("Items") or []:
            found.append({"id": item["sk"]["S"], "record_id": item.get("record_id", {}).get("S", ""),
                          "sequence": item.get("sequence", {}).get("S", ""),
                          "reason": item.get("reason", {}).get("S", ""),
                          "quarantined_at": item.get("quarantined_at", {}).get("S", ""),
                          "attempts": int(item.get("attempts", {}).get("N", "1")),
                          "record": json.loads(item["record"]["S"])})
            if limit and len(found) >= limit:
                return found
        start = page.get("LastEvaluatedKey")
        if not start:
            return found


def replay(ids: list[str] | None = None) -> dict:
    """Count the records set aside (all, or those `ids`) through the rollup's fold; each one counted leaves the
    quarantine, each that still fails stays, its reason and attempts updated."""
    from onysoft import usage_rollup

    result = {"replayed": 0, "still_quarantined": 0, "failures": []}
    for entry in quarantined():
        if ids and entry["id"] not in ids:
            continue
        try:
            usage_rollup.count_strictly([entry["record"]])
        except Exception as exc:  # noqa: BLE001 - stays aside, with what went wrong this time
            result["still_quarantined"] += 1
            reason = f"{type(exc).__name__}: {exc}"[:500]
            result["failures"].append({"id": entry["id"], "reason": reason})
            _client().update_item(TableName=_table(), Key={"pk": {"S": PK}, "sk": {"S": entry["id"]}},
                                  UpdateExpression="SET reason = :r ADD attempts :one",
                                  ExpressionAttributeValues={":r": {"S": reason}, ":one": {"N": "1"}})
            continue
        _expire_marker(entry["record_id"], usage_rollup)
        _client().delete_item(TableName=_table(), Key={"pk": {"S": PK}, "sk": {"S": entry["id"]}})
        result["replayed"] += 1
    return result


def _expire_marker(record_id: str, usage_rollup) -> None:
    """Out of the quarantine, the record's marker expires again like every other (a replay that changed nothing
    wrote none)."""
    if record_id == "?":
        return
    import time

    try:
        _client().update_item(
            TableName=_table(), Key={"pk": {"S": usage_rollup.MARKER_PREFIX + record_id},
                                     "sk": {"S": usage_rollup.MARKER_SK}},
            UpdateExpression="SET expires_at = :t", ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={":t": {"N": str(int(time.time()) + usage_rollup.MARKER_TTL_SECONDS)}})
    except bexc.ClientError as error:
        if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
