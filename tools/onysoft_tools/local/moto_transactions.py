"""TransactWriteItems in O(items touched) for moto's DynamoDB backend: `install()` patches it, once.

Stock moto (5.x) deep-copies every table a transaction names before it starts, so that it can restore the
copies if the transaction is cancelled: each transaction costs O(items stored), and the local gateway slowed
from 34 ms to seconds per request as usage records piled up. moto server runs one request at a time under
`onysoft_tools.serial_moto`, so nothing else can change an item during a transaction: a rollback only needs
the before-images of the items the transaction itself touches. This module keeps those (and the length of
the table's stream, if it has one) and puts them back on a cancel.

The body of `transact_write_items` below is moto's own (Apache-2.0), unchanged except for the two marked
lines, so conditions, ReturnValuesOnConditionCheckFailure and cancellation reasons stay exactly moto's.
It reaches into moto's internals (`Table.items`), hence the version check: on a moto version this was not
written for it refuses to load, with a message, rather than guess.
"""

from __future__ import annotations

import copy
from typing import Any

# The moto releases this patch was written for and tested with (pyproject.toml pins the same range).
SUPPORTED_MOTO = ((5, 2, 5), (5, 3))  # >= 5.2.5, < 5.3

_installed = False


class UnsupportedMotoVersion(RuntimeError):
    """moto is outside SUPPORTED_MOTO: its DynamoDB internals may differ from what the patch relies on."""


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) if not piece.isdigit() else piece
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():  # 5.2.0rc1 → (5, 2, 0): stop at the first pre-release mark
            break
    return tuple(parts)


def check_version(version: str) -> None:
    low, high = SUPPORTED_MOTO
    if not (low <= _version_tuple(version) < high):
        raise UnsupportedMotoVersion(
            f"onysoft dev: moto {version} is installed, but the local gateway's DynamoDB transaction patch "
            f"(onysoft_tools.local.moto_transactions) was written for moto >={'.'.join(map(str, low))},"
            f"<{'.'.join(map(str, high))}. Reinstall the project's pinned dependencies (`make venv`, or "
            f"pip install -e .) or update the patch for this moto version and widen SUPPORTED_MOTO."
        )


class _BeforeImages:
    """The items a transaction touches, as they were before it touched them."""

    def __init__(self, backend: Any):
        self.backend = backend
        self.items: dict[tuple[str, Any, Any], tuple[bool, Any]] = {}  # key -> (hash bucket existed, item copy)
        self.streams: dict[str, tuple[Any, int]] = {}
        self.whole_tables: dict[str, Any] = {}  # fallback for a key moto itself cannot resolve

    def remember(self, table_name: str, key: dict[str, Any]) -> None:
        from moto.dynamodb.models.dynamo_type import DynamoType

        table = self.backend.tables.get(table_name)
        if table is None or table_name in self.whole_tables:
            return  # no table: the operation fails before it writes anything
        if table.stream_shard is not None and table_name not in self.streams:
            self.streams[table_name] = (table.stream_shard, len(table.stream_shard.items))
        try:
            hash_value = DynamoType(key[table.hash_key_attr])
            range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
        except (KeyError, TypeError, AttributeError):
            # A malformed key: rare, and moto's own handling of it is not ours to guess. Keep the whole table,
            # as stock moto does.
            self.whole_tables[table_name] = copy.deepcopy(table)
            return
        slot = (table_name, hash_value, range_value)
        if slot in self.items:
            return
        if range_value is None:
            current = table.items.get(hash_value)
            self.items[slot] = (current is not None, copy.deepcopy(current))
        else:
            bucket = table.items.get(hash_value)
            current = bucket.get(range_value) if bucket is not None else None
            self.items[slot] = (bucket is not None, copy.deepcopy(current))

    def restore(self) -> None:
        # Whole-table copies first (taken after the items imaged before them were written), then the items.
        for table_name, table in self.whole_tables.items():
            self.backend.tables[table_name] = table
        for (table_name, hash_value, range_value), (existed, before) in reversed(self.items.items()):
            table = self.backend.tables.get(table_name)
            if table is None:
                continue
            if range_value is None:
                if before is None:
                    table.items.pop(hash_value, None)
                else:
                    table.items[hash_value] = before
                continue
            bucket = table.items.get(hash_value)
            if before is None:
                if bucket is not None:
                    bucket.pop(range_value, None)
                    if not existed and not bucket:
                        table.items.pop(hash_value, None)
            else:
                if bucket is None:
                    bucket = table.items[hash_value]  # a defaultdict(dict)
                bucket[range_value] = before
        for table_name, (_shard, length) in self.streams.items():
            table = self.backend.tables.get(table_name)
            if table is not None and table.stream_shard is not None:
                del table.stream_shard.items[length:]


def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
    # moto's DynamoDBBackend.transact_write_items (5.2.x); changed lines are marked "onysoft".
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MockValidationException,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )

    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    before = _BeforeImages(self)  # onysoft: instead of a deep copy of every table named

    target_items: set[tuple[str, str]] = set()

    def check_unicity(table_name: str, key: dict[str, Any]) -> None:
        item = (str(table_name), str(dict(sorted(key.items()))))
        if item in target_items:
            raise MultipleTransactionsException()
        target_items.add(item)

    errors: list[tuple[str, str, dict[str, Any]] | tuple[None, None, None]] = []
    for item in transact_items:
        original_item: dict[str, Any] | None = None
        if len(list(item.keys())) > 1:
            raise TransactWriteSingleOpException

        try:
            op_type, op = next(iter(item.items()))
            if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                raise ValueError("Unsupported transaction operation")

            table_name = op["TableName"]
            condition_expression = op.get("ConditionExpression")
            expression_attribute_names = op.get("ExpressionAttributeNames")
            expression_attribute_values = op.get("ExpressionAttributeValues")
            return_values_on_condition_check_failure = op.get("ReturnValuesOnConditionCheckFailure")

            if op_type == "Put":
                attrs = op["Item"]
                table = self.get_table(table_name)
                key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attrs[table.range_key_attr]
            else:
                key = op["Key"]

            check_unicity(table_name, key)

            current = self.get_item(table_name, key)
            if condition_expression is not None:
                condition_op = get_filter_expression(
                    condition_expression, expression_attribute_names, expression_attribute_values
                )
                if not condition_op.expr(current):
                    if return_values_on_condition_check_failure == "ALL_OLD" and current:
                        original_item = current.to_json()["Attributes"]
                    raise ConditionalCheckFailed(item=original_item)

            if op_type != "ConditionCheck":
                before.remember(table_name, key)  # onysoft: the item's before-image, before it is written
            conditions = {"condition_expression": condition_expression,
                          "expression_attribute_names": expression_attribute_names,
                          "expression_attribute_values": expression_attribute_values}
            if op_type == "Put":
                self.put_item(table_name, op["Item"], **conditions)
            elif op_type == "Delete":
                self.delete_item(table_name, key, **conditions)
            elif op_type == "Update":
                self.update_item(table_name, key, update_expression=op["UpdateExpression"], **conditions)
            errors.append((None, None, None))
        except (MultipleTransactionsException, MockValidationException):
            before.restore()  # onysoft
            raise
        except ConditionalCheckFailed as e:
            errors.append(("ConditionalCheckFailed", str(e.message), original_item))  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - moto's own: any other failure cancels the transaction
            errors.append((type(e).__name__, str(e), original_item))  # type: ignore[arg-type]

    if any(code is not None for code, _, _ in errors):
        before.restore()  # onysoft
        raise TransactionCanceledException(errors)


STOCK: dict[str, Any] = {}  # moto's own method, kept by install() (the tests compare the two)


def install() -> None:
    """Patch moto's DynamoDB backend (idempotent). Raises UnsupportedMotoVersion on an untested moto."""
    global _installed
    if _installed:
        return
    import moto
    from moto.dynamodb.models import DynamoDBBackend

    check_version(moto.__version__)
    STOCK.setdefault("transact_write_items", DynamoDBBackend.transact_write_items)
    DynamoDBBackend.transact_write_items = transact_write_items
    _installed = True
