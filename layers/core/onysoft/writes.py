"""Writing one item, optionally with new items that must land with it: one transaction, or nothing.

The dashboard writes its audit records this way, so an action is never done without its record (nor a
record left for an action that failed), and a response never fails after the action it reports succeeded.
Without companions the write is the plain single-item call the CLI has always made.
"""

import random
import time
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


class GuardRefused(Exception):
    """One of the conditioned updates given to `save(guards=…)` refused (a counter at its ceiling): `index`."""

    def __init__(self, index: int) -> None:
        super().__init__(f"guard {index} refused")
        self.index = index


def is_conflict(exc: Exception) -> bool:
    """A transaction cancelled because another one touched the same item at once (or DynamoDB throttled it):
    "try again", never "no" (onysoft.billing retries the hold on the same reasons)."""
    if not isinstance(exc, TransactWriteError):
        return False
    codes = {r.code for r in (exc.cancellation_reasons or []) if r is not None}
    if "ConditionalCheckFailed" in codes:
        return False
    return bool(codes & {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}) or \
        exc.cause_response_code in ("TransactionConflictException", "TransactionInProgressException")


CONFLICT_ATTEMPTS = 8


def retry_conflicts(write: Callable[[], object]) -> object:
    """`write()`, again (jittered) while DynamoDB cancels it for a conflict: admin writes that touch an account
    item meet the holds' transactions on it."""
    for attempt in range(CONFLICT_ATTEMPTS):
        try:
            return write()
        except TransactWriteError as exc:
            if not is_conflict(exc) or attempt == CONFLICT_ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))  # noqa: S311 - jitter, not a secret
    raise AssertionError("unreachable")


Guard = tuple[Model, list, object]  # an item to update, its actions, its condition (None: none)


def save(item: Model, condition, companions: Companions = None, guards: Sequence[Guard] = ()) -> None:
    """`guards`: updates of other items in the same transaction, each with its own condition (a count kept
    with the item it counts); one that refuses raises GuardRefused and nothing is written."""
    extra = companions(item) if companions else ()
    try:
        if not extra and not guards:
            item.save(condition)
            return
        with TransactWrite(connection=item._get_connection().connection) as tx:
            tx.save(item, condition=condition)
            _put_new(tx, extra)
            for other, actions, other_condition in guards:
                tx.update(other, actions=actions, condition=other_condition)
    except (PutError, TransactWriteError) as exc:
        if _refused(exc, 0):
            raise ConditionFailed from None
        # PynamoDB sends puts before updates: the guards' reasons come after the item's and its companions'.
        refused = [i for i in range(len(guards)) if _refused(exc, 1 + len(extra) + i)]
        if refused:
            raise GuardRefused(refused[0]) from None
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
