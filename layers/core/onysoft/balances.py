"""An account's balance in N shards, so one busy account is not one hot DynamoDB item (docs/BILLING.md).

Shard 0 is the account item's own `balance_micros` (an account with 1 shard is exactly today's layout);
shard k ≥ 1 is a BalanceShard item `<account_id>#<k>` in the same table. The balance is their sum.

- A hold takes from ONE shard (chosen by the request id), in the hold's own transaction (onysoft.billing).
- A shard that refuses (its balance does not cover the hold) is retried on another; when no shard covers the
  hold but the sum does, `consolidate` moves every other shard's balance into one, in a transaction.
- Settle and release refund (or charge an overrun to) the shard the hold took from: a shard may go below 0.
- Top-ups first pay off shards in debt, then spread the rest evenly (`top_up_actions`).
- After an overrun leaves a shard below 0, `net_debts` pays it from the other shards, or, when the sum is
  0 or below, gathers everything in one shard: every other shard is then 0, so every hold is refused until a
  top-up (the 402 rule holds over the sum).
Every move is ADDs inside one transaction, so the sum never changes except by holds, settles and top-ups.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Collection

from pynamodb.exceptions import TransactWriteError
from pynamodb.transactions import TransactWrite

from onysoft import transact_items
from onysoft.models import Account, BalanceShard

MAX_SHARDS = 64
CONSOLIDATE_ATTEMPTS = 4


class ShardError(ValueError):
    """A shard count outside 1 … 64."""


def check_count(shards: int) -> int:
    if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= MAX_SHARDS:
        raise ShardError(f"shards must be a whole number from 1 to {MAX_SHARDS}")
    return shards


def shard_key(account_id: str, shard: int) -> str:
    return account_id if shard == 0 else f"{account_id}#{shard}"


def item(account_id: str, shard: int) -> Account | BalanceShard:
    """The item that holds `shard`, for an update (keys only)."""
    return Account(account_id=account_id) if shard == 0 else BalanceShard(account_id=shard_key(account_id, shard))


BALANCE, IN_FLIGHT = "balance_micros", "in_flight"  # named alike on the account and its shard items


def update(account_id: str, shard: int) -> transact_items.Update:
    """An Update of the item that holds `shard`, in a transaction's wire form (onysoft.transact_items)."""
    if shard == 0:
        return transact_items.Update(Account, {"account_id": account_id})
    return transact_items.Update(BalanceShard, {"account_id": shard_key(account_id, shard)})


def add_to(shard_update: transact_items.Update, account_id: str, shard: int, amount: int) -> None:
    """add_actions' wire form: `amount` onto the shard (a new shard item says whose it is)."""
    shard_update.add(BALANCE, amount)
    if shard:
        shard_update.set("shard_of", account_id)


def balance_attribute(shard: int):
    return Account.balance_micros if shard == 0 else BalanceShard.balance_micros


def add_actions(account_id: str, shard: int, amount: int) -> list:
    """Update actions that add `amount` to a shard (a new shard item says whose it is)."""
    actions = [balance_attribute(shard).add(amount)]
    if shard:
        actions.append(BalanceShard.shard_of.set(account_id))
    return actions


def count_of(account: Account) -> int:
    return int(account.shards or 1)


def max_of(account: Account) -> int:
    return max(int(account.shards_max or 1), count_of(account))


def first_shard(request_id: str, shards: int) -> int:
    return zlib.crc32(request_id.encode()) % shards if shards > 1 else 0


def next_shard(request_id: str, shards: int, tried: set[int]) -> int | None:
    """Another shard to try after `tried` refused: the next one round from the first (deterministic)."""
    start = first_shard(request_id, shards)
    for step in range(1, shards):
        shard = (start + step) % shards
        if shard not in tried:
            return shard
    return None


def read(account: Account) -> dict[int, int]:
    """Every shard's balance (strongly consistent): {shard: micros}, shard 0 from the account item given."""
    balances = {0: int(account.balance_micros or 0)}
    count = max_of(account)
    if count > 1:
        keys = [shard_key(account.account_id, k) for k in range(1, count)]
        for shard_item in BalanceShard.batch_get(keys, consistent_read=True):
            balances[int(shard_item.account_id.rsplit("#", 1)[1])] = int(shard_item.balance_micros or 0)
        for k in range(1, count):
            balances.setdefault(k, 0)
    return balances


def total(account: Account) -> int:
    """The account's balance: the sum of its shards (no extra read for a 1-shard account)."""
    if max_of(account) == 1:
        return int(account.balance_micros or 0)
    return sum(read(account).values())


def _moves(balances: dict[int, int], target: int) -> dict[int, int]:
    """Deltas that gather every shard into `target`."""
    deltas = {k: -b for k, b in balances.items() if k != target and b}
    if deltas:
        deltas[target] = -sum(deltas.values())
    return deltas


def _apply(account_id: str, deltas: dict[int, int]) -> None:
    """One transaction: each delta added to its shard. A shard that gives money must still have it (its
    balance may have moved since it was read); a shard that receives money needs no condition."""
    with TransactWrite(connection=Account._get_connection().connection,
                       client_request_token=uuid.uuid4().hex) as tx:
        for shard, delta in deltas.items():
            condition = balance_attribute(shard) >= -delta if delta < 0 else None
            tx.update(item(account_id, shard), actions=add_actions(account_id, shard, delta), condition=condition)


def _gather(balances: dict[int, int], target: int, need: int) -> dict[int, int]:
    """Deltas that bring `target` up to `need`, taking from the fullest other shards first (whole or in part),
    so the rest of the balance stays spread."""
    short = need - balances.get(target, 0)
    deltas: dict[int, int] = {}
    for k, b in sorted(balances.items(), key=lambda kv: (-kv[1], kv[0])):
        if short <= 0 or b <= 0:
            break
        if k == target:
            continue
        take = min(b, short)
        deltas[k] = -take
        short -= take
    if deltas:
        deltas[target] = -sum(deltas.values())
    return deltas


def consolidate(account_id: str, need: int, avoid: Collection[int] = frozenset()) -> tuple[int, int | None]:
    """Make one shard cover `need` if the sum of the shards does (debts netted in the sum). Returns (sum,
    the shard that now covers it), or (sum, None) when the sum does not (nothing moved). Funds move in one
    transaction; re-read and retried when a concurrent hold moved a shard in between. The target is never a
    shard in `avoid` (the caller's key cannot use it now: its rate counter there is full) while another is left."""
    balance_sum = 0
    for _ in range(CONSOLIDATE_ATTEMPTS):
        account = Account.get(account_id, consistent_read=True)
        balances = read(account)
        balance_sum = sum(balances.values())
        if balance_sum < need:
            return balance_sum, None
        if min(balances.values()) < 0:  # a debt counts against the sum: settle it first, then gather
            deltas = _cover_debts(balances)
            balances = {k: b + deltas.get(k, 0) for k, b in balances.items()}
        else:
            deltas = {}
        usable = [k for k in range(count_of(account)) if k not in avoid] or list(range(count_of(account)))
        target = max(usable, key=lambda k: (balances.get(k, 0), -k))
        for k, d in _gather(balances, target, need).items():
            deltas[k] = deltas.get(k, 0) + d
        deltas = {k: d for k, d in deltas.items() if d}
        if not deltas:
            return balance_sum, target
        try:
            _apply(account_id, deltas)
            return balance_sum, target
        except TransactWriteError:
            continue  # a shard moved under us: read again
    return balance_sum, None


def net_debts(account_id: str) -> None:
    """After an overrun: pay every shard in debt from the others; if the sum is 0 or below, gather it all in
    one shard, so no other shard can fund a hold while the account as a whole is in debt."""
    for _ in range(CONSOLIDATE_ATTEMPTS):
        account = Account.get(account_id, consistent_read=True)
        balances = read(account)
        if min(balances.values()) >= 0:
            return
        balance_sum = sum(balances.values())
        if balance_sum <= 0:
            deltas = _moves(balances, min(balances, key=lambda k: (balances[k], k)))
        else:
            deltas = _cover_debts(balances)
        try:
            _apply(account_id, deltas)
            return
        except TransactWriteError:
            continue


def _cover_debts(balances: dict[int, int]) -> dict[int, int]:
    deltas: dict[int, int] = {}
    owed = sum(-b for b in balances.values() if b < 0)
    for k, b in sorted(balances.items(), key=lambda kv: -kv[1]):
        if owed <= 0 or b <= 0:
            break
        take = min(b, owed)
        deltas[k] = -take
        owed -= take
    for k, b in balances.items():
        if b < 0:
            deltas[k] = -b
    return deltas


def spread(amount: int, balances: dict[int, int], shards: int) -> dict[int, int]:
    """A top-up's part for each shard 0 … shards-1: first what brings shards in debt (any shard up to the
    high-water mark) back to 0, then the rest evenly (the remainder to the lowest shards). Sums to `amount`."""
    parts: dict[int, int] = {}
    left = amount
    for k, b in sorted(balances.items()):
        if b < 0 and left > 0:
            pay = min(-b, left)
            parts[k] = pay
            left -= pay
    each, remainder = divmod(left, shards)
    for k in range(shards):
        part = each + (1 if k < remainder else 0)
        if part:
            parts[k] = parts.get(k, 0) + part
    return parts
