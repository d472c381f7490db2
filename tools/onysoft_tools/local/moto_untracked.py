"""Objects moto creates on every DynamoDB request, no longer kept for life (`install()`).

Every moto model class (a `moto.core.common_models.BaseModel`) appends each instance it ever creates to a
class-wide list, `instances_tracked`, which only moto's dashboard (`/moto-api/data.json`) and a full reset read.
For DynamoDB that includes every `Item` moto creates, not only the ones the tables hold: a put makes one, an
update deep-copies the item (for the stream's old image, for the expression validator, for our transaction
patch's before-image), so ~11 Item copies per chat request; plus every `StreamRecord` (a usage record's old and
new images, as JSON dicts) and every stream `ShardIterator` (a 632-character id each, one per GetRecords). None
is ever dropped: what moto_streams trims from the stream and what the tables overwrite stayed in memory anyway.

Measured (tools/bench/moto_memory.py, `onysoft dev`, sequential mock/echo chats): moto's resident memory grew
~60 KB per request while the items the tables gained were ~1.8 KB per request as DynamoDB JSON; the lists held
10.9 Items, 2 StreamRecords and ~0.06 ShardIterators per request. These three classes are created here without
being tracked (their `__new__` skips the append); what the tables and the stream hold is unchanged, and a copy
nobody refers to any more is freed. The dashboard no longer lists DynamoDB items (it listed every copy ever made).

Installed by onysoft_tools.serial_moto, on the moto range moto_transactions checks.
"""

from __future__ import annotations

from typing import Any


def _untracked_new(cls: type, *args: Any, **kwargs: Any) -> Any:
    return object.__new__(cls)


_untracked_new.onysoft_untracked = True  # type: ignore[attr-defined]


def classes() -> tuple[type, ...]:
    from moto.dynamodb.models.dynamo_type import Item
    from moto.dynamodb.models.table import StreamRecord
    from moto.dynamodbstreams.models import ShardIterator

    return Item, StreamRecord, ShardIterator


def install() -> None:
    """Idempotent. Also empties the lists of what was created before it (nothing else refers to them there)."""
    import moto

    from onysoft_tools.local import moto_transactions

    moto_transactions.check_version(moto.__version__)
    for cls in classes():
        if getattr(cls.__dict__.get("__new__"), "__func__", None) is not _untracked_new:
            cls.__new__ = staticmethod(_untracked_new)
        cls.instances_tracked = []  # type: ignore[attr-defined]


def uninstall() -> None:
    """moto's own behaviour back (tests)."""
    for cls in classes():
        if "__new__" in cls.__dict__:
            del cls.__new__
