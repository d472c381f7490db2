"""The guards a mutation run found untested (issue 22: 28 small changes to the money and key code, 7 survived
the unit suite). Each test here fails on its mutant; expected amounts are literals worked out by hand in the
comments, never computed with the code under test (moto mock_aws, single-threaded)."""

from decimal import Decimal

import pytest
from pynamodb.exceptions import TransactWriteError

from onysoft import api_keys, balances, catalog, hold_sizing, money, provider_usage
from onysoft.accounts import create_account, get_account, top_up
from onysoft.caller import REQUEST_CONTEXT_HEADER
from onysoft.models import UsageRecord
from onysoft.provider_usage import Usage
from tests.unit.conftest import new_key
from tests.unit.test_balance_shards import hold, shard_balances, sharded


def test_a_shard_that_gives_money_must_still_have_it_when_the_move_lands(gateway):
    """Mutant: the condition in balances._apply dropped. A consolidation reads the shards, then moves money; a
    hold that took from a shard in between must make the move fail, not take the money twice."""
    account, record, caller = sharded(2, amount="80")  # 40 TRY on each shard
    read_before = shard_balances(account.account_id)
    assert read_before == {0: 40_000_000, 1: 40_000_000}
    taken = hold(caller, record.key_hash, "req_between", micros=30_000_000)  # a hold lands on one shard
    giver = taken.shard
    with pytest.raises(TransactWriteError):  # the move planned on the stale read: 40 TRY out of the giver
        balances._apply(account.account_id, {giver: -40_000_000, 1 - giver: 40_000_000})
    assert shard_balances(account.account_id) == {giver: 10_000_000, 1 - giver: 40_000_000}


def test_the_shrunk_hold_prices_every_answer(gateway):
    """Mutant: the shrink search pricing one answer when `n` asks for several. 1 USD per million output tokens
    (1 µUSD a token), no markup: with 1,000 µUSD and n = 4, each answer gets 249 tokens: 4 × 249 = 996 tokens,
    plus 1 prompt token at 1 µUSD = 997 µUSD ≤ 1,000 (250 each would cost 1,001)."""
    price = catalog.set_model("acme/one", input_usd_per_mtok="1", output_usd_per_mtok="1")
    factors = hold_sizing.ChargeFactors(price, 0, Decimal(1), "")
    plan = hold_sizing.HoldPlan(prompt_tokens=1, output_tokens=4 * 16_384, client_set_output_limit=False,
                                micros=65_537, choices=4)
    shrunk = hold_sizing.shrink_to_balance(plan, 1000, factors)
    assert (shrunk.output_tokens, shrunk.output_limit, shrunk.micros) == (996, 249, 997)


def test_cache_writes_count_against_the_prompt_they_are_part_of():
    """Mutant: cache writes left out of the cached-above-prompt check. 60 cached + 60 written out of a 100-token
    prompt is nonsense: trusted, the uncached part would be −20 tokens, a credit."""
    raw = {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
           "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 60}}
    assert provider_usage.read(raw) is None
    fine = {**raw, "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 40}}
    assert provider_usage.read(fine) == Usage(100, 5, 60, 40)


def test_a_client_set_output_limit_is_never_shrunk_to_fit_the_balance(gateway):
    """Mutant: the shrink ignoring that the client set the limit. A client that asked for 1,000 tokens gets a 402,
    never an answer silently cut to what its balance affords."""
    account, _, headers = new_key("user", amount="0.01")
    response = gateway.post("/v1/chat/completions", headers=headers, json={
        "model": "mock/echo", "max_tokens": 100_000, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 402, response.text
    assert list(UsageRecord.query(account.account_id)) == []
    unlimited = gateway.post("/v1/chat/completions", headers=headers, json={
        "model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]})
    assert unlimited.status_code == 200  # with no limit of its own, the same balance is served a shorter hold


def test_a_key_presented_for_another_account_is_refused(gateway):
    """Mutant: the key/account check in key_use.check dropped. An authorizer context naming another account
    (a forged or stale context) must never make a key charge an account that is not its own."""
    import json

    _, _, headers = new_key("user")
    other = create_account("user", name="someone else")
    top_up(other.account_id, money.parse_amount("100"))
    context = json.loads(headers[REQUEST_CONTEXT_HEADER])
    context["authorizer"]["account_id"] = other.account_id
    forged = {**headers, REQUEST_CONTEXT_HEADER: json.dumps(context)}
    response = gateway.post("/v1/chat/completions", headers=forged, json={
        "model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 401
    assert get_account(other.account_id).balance_micros == 100_000_000
    assert list(UsageRecord.query(other.account_id)) == []


def test_a_deleted_key_cannot_be_deleted_again(gateway):
    """Mutant: the ACTIVE condition on key deletion dropped. A second delete (a retry, a race with another admin)
    is refused and leaves the first deletion's record as it was."""
    _, record, _ = new_key("user")
    first = api_keys.delete_key(record.key_id)
    deleted_at = api_keys.find_by_key_id(record.key_id).deleted_at
    assert deleted_at
    with pytest.raises(api_keys.KeyNotFound):
        api_keys.delete_key(record.key_id)
    assert api_keys.find_by_key_id(record.key_id).deleted_at == deleted_at
    assert first.key_id == record.key_id
