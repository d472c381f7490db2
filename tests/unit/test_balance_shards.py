"""Balance shards (onysoft.balances), single-threaded in moto mock_aws: shard choice, retry on another shard,
consolidation, top-up spreading, debts netted, and the views' total. Concurrency: tests/integration/
test_shards_concurrency.py (moto server)."""

import pytest

from onysoft import balances, billing, catalog, hold_sizing, money
from onysoft.accounts import AccountError, create_account, get_account, top_up, update_account
from onysoft.api_keys import create_key
from onysoft.caller import CallerContext
from onysoft.models import BalanceShard, UsageRecord
from onysoft.provider_usage import Usage
from tests.unit.conftest import FX


def shard_balances(account_id: str) -> dict[int, int]:
    return balances.read(get_account(account_id))


def sharded(shards: int, amount: str = "80"):
    account = create_account("user", name="sharded", shards=shards)
    if amount:
        top_up(account.account_id, money.parse_amount(amount))
    created = create_key(account.account_id, name="k")
    caller = CallerContext(key_id=created.record.key_id, key_type="user", account_id=account.account_id,
                           currency="TRY", markup_bp=5000, rpm=100_000, tpm=100_000_000, shards=shards)
    return account, created.record, caller


def hold(caller, key_hash, request_id, micros=None, max_tokens=100):
    factors = hold_sizing.ChargeFactors(catalog.get_model("mock/echo"), caller.markup_bp, FX, "")
    plan = hold_sizing.plan_hold("chat.completions", {"max_tokens": max_tokens}, 200, factors)
    if micros is not None:
        plan = hold_sizing.HoldPlan(plan.prompt_tokens, plan.output_tokens, True, micros)
    return billing.place_hold(request_id=request_id, key_hash=key_hash, caller=caller, plan=plan, factors=factors,
                              endpoint="chat.completions", stream=False, model="mock/echo")


def test_one_shard_keeps_todays_layout(gateway):
    account, record, caller = sharded(1)
    item = get_account(account.account_id)
    assert item.shards is None and item.shards_max is None  # no new attribute, no shard item
    assert list(BalanceShard.scan(BalanceShard.shard_of.exists())) == []
    placed = hold(caller, record.key_hash, "req_plain")
    assert placed.shard == 0 and get_account(account.account_id).balance_micros == 80_000_000 - placed.micros


@pytest.mark.parametrize("count", [0, 65, -1])
def test_shard_count_is_1_to_64(gateway, count):
    with pytest.raises(AccountError):
        create_account("user", shards=count)


def test_top_up_spreads_evenly_and_the_views_show_the_sum(gateway):
    account, _, _ = sharded(8, amount="")
    top_up(account.account_id, 80_000_003)
    parts = shard_balances(account.account_id)
    assert parts == {0: 10_000_001, 1: 10_000_001, 2: 10_000_001, **{k: 10_000_000 for k in range(3, 8)}}
    assert get_account(account.account_id).topped_up_micros == 80_000_003
    assert balances.total(get_account(account.account_id)) == 80_000_003
    from onysoft.operations.views import account_view

    view = account_view(get_account(account.account_id))
    assert view["balance_micros"] == 80_000_003 and view["shards"] == 8


def test_top_up_pays_a_shard_in_debt_first():
    # 37 pays the debts; the 63 left: 16, 16, 16, 15
    assert balances.spread(100, {0: 10, 1: -30, 2: 5, 3: -7}, 4) == {1: 30 + 16, 3: 7 + 15, 0: 16, 2: 16}
    assert sum(balances.spread(5, {0: -30, 1: 0}, 2).values()) == 5


def test_a_hold_takes_from_the_shard_its_request_id_picks_and_settles_there(gateway):
    account, record, caller = sharded(8)
    placed = {}
    for n in range(16):
        request_id = f"req_pick_{n}"
        placed[request_id] = hold(caller, record.key_hash, request_id)
        assert placed[request_id].shard == balances.first_shard(request_id, 8)
    assert len({h.shard for h in placed.values()}) > 3  # spread, not one hot item
    before = shard_balances(account.account_id)
    one = placed["req_pick_0"]
    charge = billing.settle(one, Usage(10, 5))
    after = shard_balances(account.account_id)
    assert after[one.shard] == before[one.shard] + one.micros - charge
    assert {k: v for k, v in after.items() if k != one.shard} == {k: v for k, v in before.items() if k != one.shard}
    [stored] = [r for r in UsageRecord.query(one.record_pk) if r.request_id == "req_pick_0"]  # its shard's partition
    assert int(stored.balance_shard or 0) == one.shard


def test_a_refused_shard_is_retried_on_another(gateway):
    account, record, caller = sharded(4, amount="40")
    request_id = "req_retry"
    first = balances.first_shard(request_id, 4)
    # Empty the shard the request picks (move its money to the next one: the sum is unchanged).
    second = balances.next_shard(request_id, 4, {first})
    balances._apply(account.account_id, {first: -10_000_000, second: 10_000_000})
    placed = hold(caller, record.key_hash, request_id)
    assert placed.shard == second
    assert shard_balances(account.account_id)[second] == 20_000_000 - placed.micros


def test_a_hold_bigger_than_every_shard_but_within_the_sum_consolidates_then_holds(gateway):
    account, record, caller = sharded(8, amount="80")  # 10 TRY a shard
    placed = hold(caller, record.key_hash, "req_big", micros=35_000_000)
    parts = shard_balances(account.account_id)
    assert sum(parts.values()) == 80_000_000 - 35_000_000  # nothing created or lost
    assert parts[placed.shard] >= 0 and all(v >= 0 for v in parts.values())
    assert sum(1 for v in parts.values() if v == 10_000_000) >= 4  # only what was needed moved
    billing.release(placed, code="test", message="released")
    assert balances.total(get_account(account.account_id)) == 80_000_000


def test_a_hold_bigger_than_the_sum_is_refused_with_the_sum(gateway):
    account, record, caller = sharded(8, amount="80")
    with pytest.raises(billing.HoldRefused) as refused:
        hold(caller, record.key_hash, "req_too_big", micros=80_000_001)
    assert refused.value.balance_micros == 80_000_000
    assert shard_balances(account.account_id) == {k: 10_000_000 for k in range(8)}  # nothing moved


def test_an_overrun_debt_is_netted_and_the_sum_rules_refusal(gateway):
    account, record, caller = sharded(4, amount="4")  # 1 TRY a shard
    placed = hold(caller, record.key_hash, "req_over", max_tokens=10)
    charge = billing.settle(placed, Usage(100_000, 100_000))  # far beyond the hold and the whole balance
    assert charge > 4_000_000
    parts = shard_balances(account.account_id)
    assert sum(parts.values()) == 4_000_000 - charge < 0
    assert sorted(parts.values())[1:] == [0, 0, 0]  # the debt gathered everything: no shard can fund a hold
    with pytest.raises(billing.HoldRefused) as refused:
        hold(caller, record.key_hash, "req_after_debt", max_tokens=1)
    assert refused.value.balance_micros == 4_000_000 - charge
    assert "in debt" in billing.refusal_error(caller, 1, refused.value).message


def test_a_debt_smaller_than_the_rest_is_paid_from_the_other_shards(gateway):
    account, record, caller = sharded(4, amount="400")  # 100 TRY a shard
    placed = hold(caller, record.key_hash, "req_small_over", max_tokens=10)
    shard_before = shard_balances(account.account_id)[placed.shard] + placed.micros
    charge = billing.settle(placed, Usage(500_000, 500_000))
    assert shard_before - charge < 0  # that shard alone went into debt
    parts = shard_balances(account.account_id)
    assert sum(parts.values()) == 400_000_000 - charge and min(parts.values()) >= 0


def test_fewer_shards_later_keeps_the_money_in_view(gateway):
    account, record, caller = sharded(8, amount="80")
    update_account(account.account_id, shards=2)
    item = get_account(account.account_id)
    assert (item.shards, item.shards_max) == (2, 8)
    assert balances.total(item) == 80_000_000  # shards 2..7 still counted
    fewer = CallerContext(**{**caller.__dict__, "shards": 2})
    placed = hold(fewer, record.key_hash, "req_fewer", micros=30_000_000)  # gathers from the retired shards too
    assert placed.shard in (0, 1) and balances.total(get_account(account.account_id)) == 50_000_000


def test_usage_records_spread_over_the_shards_partitions_and_list_newest_first(gateway):
    from onysoft import config, usage_shards
    from onysoft.operations.access import cli_operator
    from onysoft.operations.usage import usage
    from onysoft_tools.local.rollup_poller import RollupPoller

    account, record, caller = sharded(8)
    held = [hold(caller, record.key_hash, f"req_usage_{n:02d}") for n in range(12)]
    for placed in held:
        billing.settle(placed, Usage(10, 5))
    partitions = {r.account_id for p in usage_shards.partitions(get_account(account.account_id))
                  for r in UsageRecord.query(p)}
    assert len(partitions) > 3 and {usage_shards.account_of(p) for p in partitions} == {account.account_id}
    assert all(h.record_pk == balances.shard_key(account.account_id, h.shard) for h in held)
    RollupPoller(config.table_name("ONYSOFT_TABLE_USAGE")).drain()  # the totals are the rollups'
    actor = cli_operator()
    seen, cursor = [], None
    for _ in range(5):
        page = usage(actor, account.account_id, limit=5, cursor=cursor)
        seen += [r["request_id"] for r in page["records"]]
        if cursor is None:
            assert page["totals"]["total"]["requests"] == 12 and page["totals"]["total"]["settled"] == 12
        cursor = page["next"]
        if not cursor:
            break
    created = {h.request_id: h.sk for h in held}
    assert sorted(seen) == sorted(created) and len(seen) == 12  # every record once, over the pages
    assert seen == sorted(seen, key=lambda rid: created[rid], reverse=True)  # newest first across partitions
    newest = usage_shards.newest_first(get_account(account.account_id), limit=3)
    assert [r.request_id for r in newest] == seen[:3]


@pytest.mark.parametrize(("rpm", "tpm"), [(3, 0), (0, 3)])
def test_a_limit_smaller_than_the_shard_count_is_never_passed(gateway, rpm, tpm):
    """8 shards, a limit of 3: five counters have a share of 0 and take nothing, not even a first request (an
    absent counter passes `attribute_not_exists`): holds move to the three that have room, then 429."""
    from onysoft import rate_limits

    account, record, caller = sharded(8)
    caller = CallerContext(**{**caller.__dict__, "rpm": rpm or 100_000, "tpm": tpm or 100_000_000})
    window = rate_limits.current_window()
    placed = []
    for n in range(40):  # request ids that pick every shard first
        try:
            placed.append(hold(caller, record.key_hash, f"req_{n:024x}"))
        except Exception as exc:  # noqa: BLE001
            assert getattr(exc, "status", None) == 429, exc
    assert len(placed) == 3
    assert {h.shard for h in placed} == {0, 1, 2}  # the shards whose share is 1
    used = rate_limits.read_usage(record.key_id, window, 8)
    assert used.requests == 3 if rpm else used.tokens >= 3


@pytest.mark.parametrize("first", [0, 1])
def test_funds_are_never_gathered_where_the_keys_rate_counter_is_full(gateway, first):
    """2 shards, rpm 2 (a share of 1 each), shard 0's used. A hold bigger than either shard but within the sum
    must gather on shard 1: gathered on the fuller shard 0 it could not be held there (402 with money in the
    account), and retrying shard 0 for room it lacks ended in a 429 with room on shard 1."""
    from onysoft import rate_limits

    account, record, caller = sharded(2, amount="80")
    caller = CallerContext(**{**caller.__dict__, "rpm": 2})

    def request_id(shard: int, name: str) -> str:  # one whose hold tries `shard` first
        return next(f"{name}_{n}" for n in range(100) if balances.first_shard(f"{name}_{n}", 2) == shard)

    small = hold(caller, record.key_hash, request_id(0, "req_small"))  # shard 0's share of the window, used
    assert small.shard == 0
    billing.release(small, code="test", message="released")
    balances._apply(account.account_id, {0: 10_000_000, 1: -10_000_000})  # 50 and 30 TRY: the fuller is 0
    big = hold(caller, record.key_hash, request_id(first, "req_big"), micros=70_000_000)
    assert big.shard == 1
    assert shard_balances(account.account_id) == {0: 10_000_000, 1: 0}  # 40 moved to 1, 70 held there
    assert rate_limits.read_usage(record.key_id, rate_limits.current_window(), 2).requests == 2
