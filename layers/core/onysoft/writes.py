"""Writing one item, optionally with new items that must land with it: one transaction, or nothing.

The dashboard writes its audit records this way, so an action is never done without its record (nor a
record left for an action that failed), and a response never fails after the action it reports succeeded.
Without companions the write is the plain single-item call the CLI has always made.
"""

from collections.abc import Callable, Sequence

from pynamodb.exceptions import PutError, TransactWriteError, UpdateError
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

Companions = Callable[[Model], Sequence[Model]] | None  # given the item written, the new items to put with it


def together(*companions: Companions) -> Companions:
    """Several companions as one (None entries skipped)."""
    given = [c for c in companions if c]
    return (lambda item: [extra for c in given for extra in c(item)]) if given else None


class ConditionFailed(Exception):
    """The item's own condition refused the write (a companion's refusal is not this: it raises as it is)."""


def _refused(exc: PutError | UpdateError | TransactWriteError, position: int) -> bool:
    if isinstance(exc, TransactWriteError):
        reasons = exc.cancellation_reasons or []
        return len(reasons) > position and reasons[position] is not None \
            and reasons[position].code == "ConditionalCheckFailed"
    return exc.cause_response_code == "ConditionalCheckFailedException"


def _put_new(tx: TransactWrite, items: Sequence[Model]) -> None:
    for item in items:
        tx.save(item, condition=type(item)._hash_key_attribute().does_not_exist())


def save(item: Model, condition, companions: Companions = None) -> None:
    extra = companions(item) if companions else ()
    try:
        if not extra:
            item.save(condition)
            return
        with TransactWrite(connection=item._get_connection().connection) as tx:
            tx.save(item, condition=condition)
            _put_new(tx, extra)
    except (PutError, TransactWriteError) as exc:
        if _refused(exc, 0):
            raise ConditionFailed from None
        raise


def update(item: Model, actions: list, condition, companions: Companions = None,
           also: Sequence[tuple[Model, list]] = ()) -> None:
    """`also`: more items to update (unconditionally) in the same transaction (a sharded balance's shards)."""
    extra = companions(item) if companions else ()
    try:
        if not extra and not also:
            item.update(actions=actions, condition=condition)
            return
        with TransactWrite(connection=item._get_connection().connection) as tx:
            tx.update(item, actions=actions, condition=condition)
            for other, other_actions in also:
                tx.update(other, actions=other_actions)
            _put_new(tx, extra)
    except (UpdateError, TransactWriteError) as exc:
        # PynamoDB sends a transaction's puts before its updates: this item's reason comes after the companions'.
        if _refused(exc, len(extra)):
            raise ConditionFailed from None
        raise
    item.refresh(consistent_read=True)  # a transaction returns no new values
