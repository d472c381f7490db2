"""onysoft.transact_items: the hold's and settle's items in DynamoDB's wire form, checked against what PynamoDB would
write and against what DynamoDB (moto) does with each condition and action."""

import pytest
from pynamodb.exceptions import TransactWriteError

from onysoft import transact_items
from onysoft.models import Account, RateLimitCounter, UsageRecord

RECORD = dict(account_id="acct_1#3", sk="2026-12-03T00:00:00.000000Z#req_1", request_id="req_1", key_id="key_1",
              key_hash="ab" * 32, created_at="2026-12-03T00:00:00.000000Z", status="pending", hold_state="open#7",
              endpoint="chat.completions", stream="false", model="openai/gpt-4o-mini", provider="openai",
              upstream_model="gpt-4o-mini", currency="TRY", hold_micros=123_456, hold_prompt_tokens=10,
              hold_output_tokens=20, markup_bp=3000, input_usd_per_mtok="0.15", output_usd_per_mtok="0.6",
              cached_input_usd_per_mtok="0.075", cache_write_usd_per_mtok="0.15", media_parts=None,
              hold_audio_tokens=None, tier_above_tokens=200_000, tier_input_usd_per_mtok="0.3", fx_rate="41.5",
              fx_rate_at="2026-12-01", rate_window=1_796_000_000, rate_tokens=30, spend_period=None,
              sent_at="2026-12-03T00:00:00.000000Z", spend_limit_micros=None, parallel="key", balance_shard=3,
              key_shard="key_1#3")


def _connection():
    return Account._get_connection().connection


def test_the_usage_record_is_the_item_pynamodb_would_write(aws_tables):
    """Every attribute, its type and the model's defaults (charge_micros, prompt_tokens … 0): the same dict."""
    put = transact_items.put_new(UsageRecord, RECORD)
    assert put["Item"] == UsageRecord(**RECORD).serialize(null_check=True)
    assert put["Item"]["charge_micros"] == {"N": "0"} and "media_parts" not in put["Item"]
    assert put["TableName"] == UsageRecord.Meta.table_name


def test_what_the_model_does_not_define_or_type_is_refused(aws_tables):
    with pytest.raises(KeyError):
        transact_items.put_new(UsageRecord, {**RECORD, "chargee_micros": 1})
    with pytest.raises(ValueError, match="request_id"):
        transact_items.put_new(UsageRecord, {**RECORD, "request_id": None})
    with pytest.raises(TypeError):  # money is integer micro-units, never a float
        transact_items.Update(Account, {"account_id": "a"}).add("balance_micros", 1.5)
    with pytest.raises(TypeError):
        transact_items.Update(Account, {"account_id": "a"}).set("currency", 5)
    with pytest.raises(KeyError):
        transact_items.Update(Account, {"account_id": "a"}).add("balanse_micros", 1)


def test_a_new_item_is_refused_when_its_key_exists(aws_tables):
    put = transact_items.put_new(UsageRecord, RECORD)
    transact_items.transact(_connection(), puts=[put], token="t1")
    with pytest.raises(TransactWriteError) as refused:
        transact_items.transact(_connection(), puts=[transact_items.put_new(UsageRecord, RECORD)], token="t2")
    assert refused.value.cancellation_reasons[0].code == "ConditionalCheckFailed"
    assert UsageRecord.get(RECORD["account_id"], RECORD["sk"]).hold_micros == 123_456


def _counter(counter_id: str) -> RateLimitCounter | None:
    try:
        return RateLimitCounter.get(counter_id, consistent_read=True)
    except RateLimitCounter.DoesNotExist:
        return None


def _try(update: transact_items.Update) -> TransactWriteError | None:
    try:
        transact_items.transact(_connection(), updates=[update], token=None)
    except TransactWriteError as exc:
        return exc
    return None


def _below(limit: int) -> transact_items.Update:
    return transact_items.Update(RateLimitCounter, {"counter_id": "c"}).add("requests", 1) \
        .set_if_absent("expires_at", 100).where_absent_or_below("requests", limit).old_item_on_failure()


def test_absent_or_below_counts_up_to_the_limit_and_says_what_it_found(aws_tables):
    assert _try(_below(2)) is None  # absent: counted
    assert _try(_below(2)) is None  # 1 < 2
    refused = _try(_below(2))  # 2 is not below 2
    assert refused is not None
    [reason] = refused.cancellation_reasons
    assert reason.code == "ConditionalCheckFailed" and reason.raw_item["requests"] == {"N": "2"}
    assert _counter("c").requests == 2


def test_a_limit_of_zero_takes_nothing_not_even_a_first_one(aws_tables):
    assert _try(_below(0)) is not None
    assert _counter("c") is None


def test_set_if_absent_keeps_what_is_there(aws_tables):
    assert _try(_below(5)) is None
    assert _try(transact_items.Update(RateLimitCounter, {"counter_id": "c"}).add("requests", 1)
                .set_if_absent("expires_at", 999)) is None
    assert _counter("c").expires_at == 100 and _counter("c").requests == 2


def test_at_least_at_most_equals_exists_and_remove(aws_tables):
    Account(account_id="a", kind="user", currency="TRY", markup_bp=0, created_at="x", balance_micros=10,
            owner="o").save()

    def take(amount: int) -> TransactWriteError | None:
        return _try(transact_items.Update(Account, {"account_id": "a"}).add("balance_micros", -amount)
                    .where_at_least("balance_micros", amount))

    assert take(11) is not None and take(10) is None
    assert Account.get("a").balance_micros == 0
    pending = transact_items.Update(Account, {"account_id": "a"}).set("name", "closed").remove("owner") \
        .where_equals("currency", "TRY").where_exists("owner")
    assert _try(pending) is None
    account = Account.get("a")
    assert account.name == "closed" and account.owner is None
    again = transact_items.Update(Account, {"account_id": "a"}).set("name", "again").where_exists("owner")
    assert _try(again) is not None and Account.get("a").name == "closed"
    spend = transact_items.Update(RateLimitCounter, {"counter_id": "s"}).add("spend_micros", 5) \
        .set_if_absent("expires_at", 1).where_absent_or_at_most("spend_micros", 5)
    assert _try(spend) is None and _try(spend) is None  # 0 ≤ 5, then 5 ≤ 5
    assert _try(spend) is not None and _counter("s").spend_micros == 10


def test_the_updates_reasons_come_in_the_order_given_after_the_puts(aws_tables):
    """billing reads a refusal by position: [usage put, balance, rate counter, …]."""
    Account(account_id="a", kind="user", currency="TRY", markup_bp=0, created_at="x", balance_micros=1).save()
    balance = transact_items.Update(Account, {"account_id": "a"}).add("balance_micros", -5) \
        .where_at_least("balance_micros", 5).old_item_on_failure()
    with pytest.raises(TransactWriteError) as refused:
        transact_items.transact(_connection(), puts=[transact_items.put_new(UsageRecord, RECORD)],
                                updates=[_below(3), balance], token=None)
    codes = [r.code if r else None for r in refused.value.cancellation_reasons]
    assert codes == [None, None, "ConditionalCheckFailed"]
    assert refused.value.cancellation_reasons[2].raw_item["balance_micros"] == {"N": "1"}
