"""Poison cannot stick (issue 23): a record a consumer cannot handle is isolated, counted and kept whole, the others
go on, and the operator can put it back once fixed. One poison record in each consumer: the sweeper (a stale hold it
cannot close), the usage rollup (a stream record with "1.5" where a whole number belongs), key expiry (a watched key
whose expiry is not a time) and key mail (an event that is not what the bus sends). moto in-process, one thread."""

from __future__ import annotations

import json
from datetime import timedelta

import boto3
import pytest
from botocore import exceptions as bexc
from pynamodb.exceptions import PutError

from onysoft import clock, config, events, key_expiry, rollup_quarantine, sweeper, usage_rollup
from onysoft.models import Account, RollupMarker, UsageRecord
from tests.helpers import load_function_module
from tests.unit import test_cli as _cli_fixtures
from tests.unit.conftest import new_key
from tests.unit.test_money_integrity import _stale_hold
from tests.unit.test_usage_rollup import _record, _settle, all_time, stream_records

cli, cli_json = _cli_fixtures.cli, _cli_fixtures.cli_json  # the CLI's fixtures: `onysoft …` in-process


def _later(minutes: int = 21) -> str:
    return clock.to_iso(clock.utc_now() + timedelta(minutes=minutes))


def _dynamodb():
    return boto3.client("dynamodb", region_name="us-east-1")


def _poison(record_pk: str, sk: str, **raw) -> None:
    """Write attributes as a broken writer (or a hand edit) would: raw, past the model's types."""
    names = {f"#a{i}": name for i, name in enumerate(raw)}
    _dynamodb().update_item(
        TableName=config.table_name("ONYSOFT_TABLE_USAGE"), Key={"account_id": {"S": record_pk}, "sk": {"S": sk}},
        UpdateExpression="SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(raw))),
        ExpressionAttributeNames=names, ExpressionAttributeValues={f":v{i}": v for i, v in enumerate(raw.values())})


def _usage(account_id: str) -> dict[str, UsageRecord]:
    return {r.request_id: r for r in UsageRecord.query(account_id, consistent_read=True)}


# ---------------------------------------------------------------------------------------------- the sweeper


@pytest.mark.parametrize("poison", [
    {"fx_rate": {"S": "forty-one"}},  # the model reads it; the close cannot price it
    {"hold_micros": {"S": "1.5"}},  # the model cannot even read the item
])
def test_a_stale_hold_the_sweeper_cannot_close_is_quarantined_after_5_runs_and_retried_once_fixed(gateway, poison):
    account, key, _ = new_key("user")
    holds = {n: _stale_hold(account, key, f"req_{n}", sent=True) for n in range(3)}
    bad = holds[1]
    _poison(bad.record_pk, bad.sk, **poison)
    before = Account.get(account.account_id, consistent_read=True).balance_micros

    outcomes = [sweeper.close_stale_holds(now_iso=_later()) for _ in range(sweeper.MAX_SWEEP_ATTEMPTS + 2)]
    assert (outcomes[0]["settled"], outcomes[0]["close_failures"]) == (2, 1)  # the others closed on the first run
    assert [o["close_failures"] for o in outcomes[1:4]] == [1, 1, 1]
    assert outcomes[4]["quarantined"] == 1 and outcomes[4]["close_failures"] == 0  # the 5th failure
    assert outcomes[5] == outcomes[6] == dict.fromkeys(outcomes[5], 0)  # later runs no longer see it

    raw = _dynamodb().get_item(TableName=config.table_name("ONYSOFT_TABLE_USAGE"),
                               Key={"account_id": {"S": bad.record_pk}, "sk": {"S": bad.sk}})["Item"]
    assert raw["status"]["S"] == "pending" and raw["hold_state"]["S"] == sweeper.QUARANTINED
    assert raw["sweep_attempts"]["N"] == "5" and raw["quarantined_at"]["S"] and raw["sweep_error"]["S"]
    # Still visible to the operator, counted for the alarm, its money still held (nothing moved since run 1).
    assert [item["sk"]["S"] for item in sweeper.quarantined_holds()] == [bad.sk]
    assert sweeper.count_quarantined() == 1
    assert Account.get(account.account_id, consistent_read=True).balance_micros == before  # no refund
    statuses = {item["request_id"]["S"]: item["status"]["S"] for item in _dynamodb().query(
        TableName=config.table_name("ONYSOFT_TABLE_USAGE"), KeyConditionExpression="account_id = :a",
        ExpressionAttributeValues={":a": {"S": account.account_id}})["Items"]}
    assert statuses == {"req_0": "settled", "req_1": "pending", "req_2": "settled"}

    assert sweeper.retry_quarantined()["still_quarantined"] == 1  # not fixed yet: stays, one more try counted
    assert sweeper.count_quarantined() == 1
    _poison(bad.record_pk, bad.sk, **{name: ({"S": "41.5"} if name == "fx_rate" else {"N": str(bad.micros)})
                                       for name in poison})  # the operator fixes the record
    assert sweeper.retry_quarantined()["settled"] == 1
    assert sweeper.retry_quarantined() == {"settled": 0, "released": 0, "already_closed": 0, "still_quarantined": 0}
    closed = _usage(account.account_id)["req_1"]
    assert closed.status == "settled" and closed.hold_state is None and closed.charge_micros == bad.micros
    # The ledger adds up: every hold charged once (the holds' amounts were taken at the hold; a charge of the
    # whole hold moves nothing back).
    assert Account.get(account.account_id, consistent_read=True).balance_micros == before
    assert sweeper.count_quarantined() == 0


def test_the_sweeper_handler_reports_quarantined_holds_as_a_metric(gateway, monkeypatch, capsys):
    account, key, _ = new_key("user")
    bad = _stale_hold(account, key, "req_q", sent=False)
    _poison(bad.record_pk, bad.sk, fx_rate={"S": "x"})
    for _ in range(sweeper.MAX_SWEEP_ATTEMPTS):
        sweeper.close_stale_holds(now_iso=_later())
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "sweeper")  # metrics are written in Lambda only
    app = load_function_module("sweeper")
    capsys.readouterr()
    app.handler({}, None)
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    [metrics] = [e for e in emitted if "QuarantinedHolds" in e]
    assert metrics["QuarantinedHolds"] in (1, 1.0, [1.0])


# ---------------------------------------------------------------------------------------------- the rollup


def _fixed_number(image: dict, name: str) -> int:
    """What a fixed rollup would do with "1.5" (the fix the replay waits for): round it down."""
    text = usage_rollup._value(image, name)
    return int(float(text)) if text else 0


def test_a_rollup_record_that_cannot_be_read_is_set_aside_whole_and_the_batch_counts_the_rest(tables, monkeypatch):
    good = [_record("acct_p", "key_p", f"2026-11-05T10:00:0{n}.000000Z", "mock/echo") for n in range(3)]
    for record in good:
        _settle(record, 10, 5, 100)
    bad = _record("acct_p", "key_p", "2026-11-05T11:00:00.000000Z", "mock/echo")
    assert usage_rollup.apply(stream_records()) == []  # the poison's pending image counts (marker kept)
    marker_id = f"rec#acct_p#{bad.sk}"
    assert RollupMarker.get(marker_id, "counted").expires_at
    _poison("acct_p", bad.sk, status={"S": "settled"}, prompt_tokens={"N": "10"}, completion_tokens={"N": "1.5"},
            charge_micros={"N": "100"})  # its settle, written by a broken writer
    records = stream_records()
    [poison] = [r for r in records if r["eventName"] == "MODIFY" and r["dynamodb"]["Keys"]["sk"]["S"] == bad.sk
                and r["dynamodb"]["NewImage"]["completion_tokens"]["N"] == "1.5"]
    late = _record("acct_p", "key_p", "2026-11-05T12:00:00.000000Z", "mock/echo")  # after it in the stream
    records = stream_records()

    assert usage_rollup.apply(records) == []  # no batch failure: nothing for Lambda to retry or drop
    totals = all_time("key_p")
    assert (totals["requests"], totals["settled"], totals["pending"]) == (5, 3, 2)  # the late one counted too
    [aside] = rollup_quarantine.quarantined()
    assert aside["record"] == json.loads(json.dumps(poison, default=str))  # whole: keys, both images, sequence
    assert "ValueError" in aside["reason"] and aside["record_id"] == f"acct_p#{bad.sk}"
    assert "expires_at" not in _dynamodb().get_item(  # its marker outlives the quarantine
        TableName=config.table_name("ONYSOFT_TABLE_USAGE_ROLLUPS"),
        Key={"pk": {"S": marker_id}, "sk": {"S": "counted"}})["Item"]

    assert rollup_quarantine.replay() == {"replayed": 0, "still_quarantined": 1, "failures": [
        {"id": aside["id"], "reason": aside["reason"]}]}  # not fixed: stays, tried once more
    assert rollup_quarantine.quarantined()[0]["attempts"] == 2

    monkeypatch.setattr(usage_rollup, "_number", _fixed_number)  # the fix is deployed
    assert rollup_quarantine.replay()["replayed"] == 1
    assert rollup_quarantine.quarantined() == []
    after = all_time("key_p")
    assert (after["requests"], after["settled"], after["pending"], after["completion_tokens"]) == (5, 4, 1, 3 * 5 + 1)
    assert RollupMarker.get(marker_id, "counted").expires_at  # expires again, like every other marker
    # Exactly once: the same stream records again (a retried batch) and another replay change nothing.
    assert usage_rollup.apply(stream_records()) == [] and rollup_quarantine.replay()["replayed"] == 0
    assert all_time("key_p") == after
    assert late.status == "pending"


def test_a_transient_error_fails_the_batch_from_there_and_sets_nothing_aside(tables, monkeypatch):
    record = _record("acct_t", "key_t", "2026-11-06T10:00:00.000000Z", "mock/echo")
    _settle(record, 1, 1, 1)
    records = stream_records()

    def throttled(chunk):
        raise PutError("throttled", cause=_throttling())

    monkeypatch.setattr(usage_rollup, "_apply_chunk", throttled)
    assert usage_rollup.apply(records) == [records[0]["dynamodb"]["SequenceNumber"]]
    assert rollup_quarantine.quarantined() == []


def test_a_record_that_cannot_even_be_set_aside_is_reported_failed_never_dropped(tables, monkeypatch):
    good = _record("acct_u", "key_u", "2026-11-07T10:00:00.000000Z", "mock/echo")
    _poison("acct_u", good.sk, prompt_tokens={"N": "2.5"})
    records = stream_records()

    def down(record, exc):
        raise PutError("DynamoDB is down", cause=_throttling())

    monkeypatch.setattr(rollup_quarantine, "quarantine", down)
    assert usage_rollup.apply(records) == [records[-1]["dynamodb"]["SequenceNumber"]]


def test_a_write_dynamodb_refuses_for_what_the_record_holds_is_set_aside_and_the_chunk_counts_the_rest(tables):
    ok = _record("acct_v", "key_v", "2026-11-08T10:00:00.000000Z", "mock/echo")
    _record("acct_v", "key_v", "2026-11-08T10:00:01.000000Z", "m" * 1100)  # its totals' sort key is too long
    assert usage_rollup.apply(stream_records()) == []
    [aside] = rollup_quarantine.quarantined()
    assert aside["record_id"] != f"acct_v#{ok.sk}"
    assert all_time("key_v")["requests"] == 1


def test_the_rollup_handler_counts_what_it_set_aside_in_a_metric(tables, monkeypatch, capsys):
    record = _record("acct_w", "key_w", "2026-11-09T10:00:00.000000Z", "mock/echo")
    _poison("acct_w", record.sk, prompt_tokens={"N": "0.5"})
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "rollup")
    app = load_function_module("rollup")
    capsys.readouterr()
    assert app.handler({"Records": stream_records()}, None) == {"batchItemFailures": []}
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    [metrics] = [e for e in emitted if "RollupRecordsQuarantined" in e]
    assert metrics["RollupRecordsQuarantined"] in (1, 1.0, [1.0])


def _throttling():
    return bexc.ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
                       "TransactWriteItems")


@pytest.fixture
def tables(aws_tables):
    return aws_tables


# ---------------------------------------------------------------------------------------------- key expiry and mail


def test_a_watched_key_that_cannot_be_handled_does_not_stop_the_others_notices(aws_tables, tmp_path, monkeypatch):
    monkeypatch.setenv(events.FILE_ENV, str(tmp_path / "events.jsonl"))
    now = clock.utc_now()
    _, good, _ = new_key("user", expires_at=clock.to_iso(now + timedelta(hours=20)))
    _, bad, _ = new_key("user", expires_at=clock.to_iso(now + timedelta(hours=10)))
    _dynamodb().update_item(TableName=config.table_name("ONYSOFT_TABLE_API_KEYS"),
                            Key={"key_hash": {"S": bad.key_hash}}, UpdateExpression="SET expires_at = :e",
                            ExpressionAttributeValues={":e": {"S": "2000-01-01T00:00:00Z-not-a-time"}})
    result = key_expiry.run(now)
    assert (result["1d"], result["failures"]) == (1, 1)
    told = [e["detail"]["key_id"] for e in events.read_file(tmp_path / "events.jsonl")]
    assert told == [good.key_id]
    assert key_expiry.run(now)["failures"] == 1  # kept as it is, tried again (and counted) each run


def test_a_watched_key_item_the_model_cannot_read_is_skipped_alone(aws_tables, tmp_path, monkeypatch):
    monkeypatch.setenv(events.FILE_ENV, str(tmp_path / "events.jsonl"))
    now = clock.utc_now()
    _, good, _ = new_key("user", expires_at=clock.to_iso(now + timedelta(hours=20)))
    _, bad, _ = new_key("user", expires_at=clock.to_iso(now + timedelta(hours=10)))
    _dynamodb().update_item(TableName=config.table_name("ONYSOFT_TABLE_API_KEYS"),
                            Key={"key_hash": {"S": bad.key_hash}}, UpdateExpression="SET rpm = :n",
                            ExpressionAttributeValues={":n": {"S": "60"}})  # a number stored as text
    monkeypatch.setattr(clock, "utc_now", lambda: now)
    result = load_function_module("key_expiry").handler({"source": "aws.scheduler"}, None)  # as KeyExpiryFunction
    assert (result["1d"], result["failures"]) == (1, 1)


@pytest.mark.parametrize("event", [{"detail-type": "Key Leaked", "detail": "not an object"},
                                   {"detail-type": "Key Leaked", "detail": ["acct_x"]}, "not an event"])
def test_key_mail_answers_a_malformed_event_without_failing(aws_tables, monkeypatch, event):
    from onysoft import key_mail

    monkeypatch.setenv(key_mail.SENDER_ENV, "noreply@example.com")
    assert key_mail.deliver(event) == {"sent": 0}


# ---------------------------------------------------------------------------------------------- the operator's CLI


def test_the_operator_lists_and_retries_quarantined_holds_and_replays_set_aside_records(gateway, cli, cli_json,
                                                                                       monkeypatch):
    account, key, _ = new_key("user")
    bad = _stale_hold(account, key, "req_cli", sent=True)
    _poison(bad.record_pk, bad.sk, fx_rate={"S": "?"})
    moment = clock.parse_iso(_later())
    with monkeypatch.context() as later:  # the holds are 21 minutes old for the sweeps
        later.setattr(clock, "utc_now", lambda: moment)
        for run in range(sweeper.MAX_SWEEP_ATTEMPTS):
            assert cli_json("sweep")["quarantined"] == (1 if run == sweeper.MAX_SWEEP_ATTEMPTS - 1 else 0)
    [hold] = cli_json("sweep", "quarantined")["holds"]
    assert (hold["request_id"], hold["account_id"], hold["hold_micros"], hold["sent"], hold["sweep_attempts"]) == (
        "req_cli", account.account_id, bad.micros, True, 5)
    assert "InvalidOperation" in hold["sweep_error"] and hold["quarantined_at"]
    code, out, _ = cli("sweep", "quarantined")
    assert code == 0 and "req_cli" in out
    _poison(bad.record_pk, bad.sk, fx_rate={"S": "41.5"})
    assert cli_json("sweep", "quarantined", "--retry")["settled"] == 1
    assert cli_json("sweep", "quarantined") == {"holds": []}

    record = _record("acct_cli", "key_cli", "2026-11-10T10:00:00.000000Z", "mock/echo")
    _poison("acct_cli", record.sk, prompt_tokens={"N": "1.5"})
    assert usage_rollup.apply(stream_records()) == []
    [aside] = cli_json("rollups", "quarantined")["records"]
    assert aside["record_id"] == f"acct_cli#{record.sk}" and "record" not in aside
    assert cli_json("rollups", "quarantined", "--full")["records"][0]["record"]["eventName"] == "MODIFY"
    assert cli_json("rollups", "replay")["still_quarantined"] == 1
    monkeypatch.setattr(usage_rollup, "_number", _fixed_number)
    assert cli_json("rollups", "replay", "--id", aside["id"]) == {"replayed": 1, "still_quarantined": 0,
                                                                  "failures": []}
    assert all_time("key_cli")["requests"] == 1 and cli_json("rollups", "quarantined") == {"records": []}


@pytest.mark.parametrize("exc, transient", [
    (PutError("throttled", cause=_throttling()), True),
    (PutError("denied", cause=bexc.ClientError(
        {"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "PutItem")), True),  # a role gone wrong
    (bexc.EndpointConnectionError(endpoint_url="http://x"), True),
    (usage_rollup.RollupConflict(), True),
    (PutError("too long", cause=bexc.ClientError(
        {"Error": {"Code": "ValidationException", "Message": "key too long"}}, "PutItem")), False),
    (ValueError("invalid literal for int() with base 10: '1.5'"), False),
])
def test_only_what_the_record_holds_sets_it_aside(exc, transient):
    """A throttle, an outage or a wrong permission would set every record aside: those retry the batch instead."""
    assert rollup_quarantine.is_transient(exc) is transient


def test_a_record_set_aside_does_not_stop_the_batchs_balance_alerts(monkeypatch):
    from onysoft import balance_alerts

    checked = []
    monkeypatch.setattr(balance_alerts, "check_accounts", lambda accounts: checked.extend(accounts) or 0)
    monkeypatch.setattr(balance_alerts, "check_spend_limits", lambda spends: 0)
    image = {"account_id": {"S": "acct_bad"}, "status": {"S": "settled"}, "spend_period": {"S": "2026-11"},
             "spend_limit_micros": {"N": "1.5"}, "key_hash": {"S": "h"}}
    good = {"account_id": {"S": "acct_good"}, "status": {"S": "settled"}}
    balance_alerts.after_rollup([{"dynamodb": {"NewImage": image}}, {"dynamodb": {"NewImage": good}}])
    assert checked == ["acct_bad", "acct_good"]
