"""Balance alerts (onysoft.balance_alerts): Balance Low once per crossing of the threshold, Balance Exhausted at
zero or a debt, Spend Limit Reached when a key reaches its limit; a top-up above the threshold re-arms. Through
the proxy app in-process (moto mock_aws) and the real rollup handler (functions/rollup, fed by the Usage table's
stream); events land in an events file (onysoft.events)."""

import json
import re
from decimal import Decimal

import pytest

from onysoft import balance_alerts, billing, events, money
from onysoft.accounts import get_account
from onysoft.caller import CallerContext
from onysoft.hold_sizing import ChargeFactors, HoldPlan
from onysoft.models import UsageRollup
from onysoft.operations import access
from onysoft.operations import accounts as account_ops
from onysoft.provider_usage import Usage
from tests.helpers import roll_up
from tests.unit.conftest import new_key
from tests.unit.test_margin import BIG

TRY = money.MICROS_PER_UNIT
CHAT = {"model": "mock/echo", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 20}


@pytest.fixture
def events_file(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(events.FILE_ENV, str(path))
    monkeypatch.delenv(events.BUS_ENV, raising=False)
    return path


def fired(path, detail_type: str | None = None, account_id: str | None = None) -> list[dict]:
    found = events.read_file(path)
    return [e for e in found if (detail_type is None or e["detail-type"] == detail_type)
            and (account_id is None or e["detail"].get("account_id") == account_id)]


def ledger(account_id: str) -> int:
    return balance_alerts.standing_of(get_account(account_id)).balance_micros


def set_alert(account_id: str, amount_micros: int) -> dict:
    return account_ops.update_account(access.cli_operator(), account_id, alert_below_micros=amount_micros)


def top_up(account_id: str, amount_micros: int) -> dict:
    return account_ops.top_up(access.cli_operator(), account_id, amount_micros)[0]


def spend_until_below(gateway, headers, account_id: str, threshold: int) -> int:
    """Requests until the ledger is below `threshold`; how many it took."""
    sent = 0
    while True:
        assert gateway.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
        sent += 1
        roll_up()
        if ledger(account_id) < threshold:
            return sent


def test_crossing_below_the_threshold_fires_one_balance_low(gateway, events_file):
    account, _, headers = new_key("user", amount="0.05")
    set_alert(account.account_id, 40_000)  # 0.04 TRY: a few requests away
    assert not events_file.exists() or not fired(events_file)
    spend_until_below(gateway, headers, account.account_id, 40_000)
    for _ in range(3):  # more requests below the threshold: no more events
        gateway.post("/v1/chat/completions", json=CHAT, headers=headers)
    roll_up()
    [low] = fired(events_file, "Balance Low")
    detail = low["detail"]
    assert (detail["account_id"], detail["currency"], detail["alert_below_micros"]) == (
        account.account_id, "TRY", 40_000)
    assert detail["balance_micros"] < 40_000 and detail["balance_basis"] == "ledger"
    assert detail["balance"] == money.format_micros(detail["balance_micros"])
    view = account_ops.get_account(access.cli_operator(), account.account_id)
    assert (view["balance_alert"], view["alert_below"]) == ("low", "0.040000")
    # The whole stream again (a replay, a retried batch): still one.
    from onysoft import config
    from onysoft_tools.local.rollup_poller import RollupPoller

    assert RollupPoller(config.table_name("ONYSOFT_TABLE_USAGE")).drain() > 0
    assert len(fired(events_file, "Balance Low")) == 1
    assert fired(events_file, "Balance Exhausted") == []


def test_a_top_up_above_the_threshold_rearms_and_one_below_does_not(gateway, events_file):
    account, _, headers = new_key("user", amount="0.05")
    account_id = account.account_id
    set_alert(account_id, 40_000)
    spend_until_below(gateway, headers, account_id, 40_000)
    short = 40_000 - ledger(account_id) - 1
    assert top_up(account_id, short)["balance_alert"] == "low"  # one micro-unit short of the threshold
    top_up(account_id, 1)  # now at it: re-armed
    assert account_ops.get_account(access.cli_operator(), account_id)["balance_alert"] is None
    spend_until_below(gateway, headers, account_id, 40_000)
    assert len(fired(events_file, "Balance Low", account_id)) == 2


def test_holds_in_flight_never_fire_an_alert_only_charges_do(gateway, events_file, aws_tables):
    """A hold takes the balance down while its request runs; the ledger (top-ups − charges) does not move until
    the charge: an alert on the balance would fire for a burst of large holds that cost cents."""
    account, record, _ = new_key("user", amount="10")
    set_alert(account.account_id, 5 * TRY)
    caller = CallerContext(record.key_id, "user", account.account_id, "TRY", 5000)
    factors = ChargeFactors(BIG, 5000, Decimal("41.5"), "")
    held = billing.place_hold(request_id="req_" + "a" * 24, key_hash=record.key_hash, caller=caller,
                              plan=HoldPlan(1000, 1000, False, 8 * TRY), factors=factors,
                              endpoint="chat.completions", stream=False, model=BIG.model, sending=True)
    assert get_account(account.account_id).balance_micros == 2 * TRY  # the balance is below the threshold…
    roll_up()
    assert fired(events_file) == []  # …the ledger is not
    billing.settle(held, Usage(1000, 500))
    roll_up()
    assert fired(events_file) == []


def test_zero_or_a_debt_fires_balance_exhausted_once_and_a_top_up_above_zero_rearms(aws_tables, events_file):
    account, record, _ = new_key("partner_project", amount="1")
    set_alert(account.account_id, TRY // 2)
    caller = CallerContext(record.key_id, "partner_project", account.account_id, "USD", 5000)
    factors = ChargeFactors(BIG, 5000, Decimal(1), "")

    def overrun(n: int) -> None:
        held = billing.place_hold(request_id=f"req_{n:024x}", key_hash=record.key_hash, caller=caller,
                                  plan=HoldPlan(10, 10, False, 100), factors=factors, endpoint="chat.completions",
                                  stream=False, model=BIG.model, sending=True)
        billing.settle(held, Usage(100_000, 100_000))  # 1.25 USD × 1.5: far past the balance

    overrun(1)
    roll_up()
    assert ledger(account.account_id) < 0
    assert [e["detail-type"] for e in fired(events_file, account_id=account.account_id)] == [
        "Balance Low", "Balance Exhausted"]  # crossed both at once: both, in that order
    top_up(account.account_id, 10 * TRY)
    view = account_ops.get_account(access.cli_operator(), account.account_id)
    assert view["balance_alert"] is None and view["balance_micros"] > 0
    for n in range(2, 8):  # 1.875 USD each: into debt again by the sixth
        overrun(n)
        roll_up()
        if ledger(account.account_id) < 0:
            break
    assert ledger(account.account_id) < 0
    assert [e["detail-type"] for e in fired(events_file, account_id=account.account_id)] == [
        "Balance Low", "Balance Exhausted", "Balance Low", "Balance Exhausted"]


def test_a_threshold_set_above_the_balance_is_already_low_without_an_event(gateway, events_file):
    account, _, headers = new_key("user", amount="1")
    view = set_alert(account.account_id, 2 * TRY)
    assert view["balance_alert"] == "low" and view["alert_below_micros"] == 2 * TRY
    gateway.post("/v1/chat/completions", json=CHAT, headers=headers)
    roll_up()
    assert fired(events_file) == []  # nothing crossed
    assert top_up(account.account_id, 2 * TRY)["balance_alert"] is None  # re-armed: 3 TRY ≥ 2
    assert set_alert(account.account_id, 0)["alert_below"] is None  # 0: no alert


def test_an_account_older_than_its_ledger_totals_is_judged_on_its_balance(gateway, events_file):
    account, _, headers = new_key("user", amount="0.05")
    UsageRollup(pk=f"acct#{account.account_id}", sk="total").update(actions=[UsageRollup.opened.remove()])
    set_alert(account.account_id, 40_000)
    spend_until_below(gateway, headers, account.account_id, 40_000)
    [low] = fired(events_file, "Balance Low")
    assert low["detail"]["balance_basis"] == "balance"
    assert low["detail"]["balance_micros"] == get_account(account.account_id).balance_micros


def test_a_key_refused_by_its_spend_limit_fires_spend_limit_reached_once(gateway, events_file):
    account, record, headers = new_key("user", amount="10", spend_limit_micros=50_000, limit_reset="monthly")
    answers = []
    while len([a for a in answers if a.status_code == 402]) < 3:  # to the limit, then refused three times
        answers.append(gateway.post("/v1/chat/completions", json=CHAT, headers=headers))
        assert len(answers) < 50
    refused = [a for a in answers if a.status_code == 402]
    assert all(a.json()["error"]["code"] == "key_spend_limit_reached" for a in refused)
    [reached] = fired(events_file, "Spend Limit Reached")
    detail = reached["detail"]
    assert (detail["key_id"], detail["display"], detail["account_id"]) == (
        record.key_id, record.display, account.account_id)
    assert detail["spend_limit_micros"] == 50_000 and detail["period"] == reached["time"][:7]
    assert not re.search(r"sk-ony-[0-9a-f]{48}|[0-9a-f]{64}", json.dumps(detail))  # never a key nor its hash


def test_a_spend_pushed_past_the_limit_by_an_overrun_fires_it_from_the_rollup(aws_tables, events_file):
    account, record, _ = new_key("user", amount="100", spend_limit_micros=TRY, limit_reset="daily")
    caller = CallerContext(record.key_id, "user", account.account_id, "TRY", 5000, spend_limit_micros=TRY,
                           limit_reset="daily")
    factors = ChargeFactors(BIG, 5000, Decimal("41.5"), "")
    held = billing.place_hold(request_id="req_" + "b" * 24, key_hash=record.key_hash, caller=caller,
                              plan=HoldPlan(10, 10, False, 1000), factors=factors, endpoint="chat.completions",
                              stream=False, model=BIG.model, sending=True)
    billing.settle(held, Usage(1000, 10_000))  # 6.3 TRY: past the 1 TRY limit
    roll_up()
    [reached] = fired(events_file, "Spend Limit Reached")
    assert reached["detail"]["spent_micros"] > TRY and reached["detail"]["key_id"] == record.key_id


def test_a_request_that_crosses_nothing_makes_the_same_dynamodb_calls_with_alerts_set(gateway, events_file):
    """Alerts add nothing to the request path: the same calls, in the same order, with a threshold set."""
    from onysoft.models import ApiKey

    calls: list[str] = []

    def record(model, **_):  # botocore's first event of a call; the lean transport emits it too
        calls.append(model.name)

    with_alert, _, alert_headers = new_key("user", amount="100")
    set_alert(with_alert.account_id, TRY)
    without, _, plain_headers = new_key("user", amount="100")
    made = {}
    for name, headers in (("with", alert_headers), ("without", plain_headers)):
        gateway.post("/v1/chat/completions", json=CHAT, headers=headers)  # warm: the catalog cache, last use
        calls.clear()
        events = ApiKey._get_connection().connection.client.meta.events
        events.register("before-parameter-build.dynamodb", record)
        try:
            assert gateway.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
        finally:
            events.unregister("before-parameter-build.dynamodb", record)
        made[name] = list(calls)
    assert made["with"] == made["without"] and "TransactWriteItems" in made["with"]


def test_a_failing_alert_check_never_fails_the_rollup(gateway, events_file, monkeypatch):
    from tests.helpers import load_function_module

    account, _, headers = new_key("user", amount="1")
    gateway.post("/v1/chat/completions", json=CHAT, headers=headers)

    def broken(ids):
        raise RuntimeError("DynamoDB is down")

    monkeypatch.setattr(balance_alerts, "check_accounts", broken)
    from tests.unit.test_usage_rollup import stream_records

    rollup = load_function_module("rollup")
    assert rollup.handler({"Records": stream_records()}, None) == {"batchItemFailures": []}


def test_detail_never_holds_a_secret_and_names_the_account(gateway, events_file):
    account, _, headers = new_key("partner_customer", amount="0.05")
    set_alert(account.account_id, 40_000)
    spend_until_below(gateway, headers, account.account_id, 40_000)
    [low] = fired(events_file, "Balance Low")
    assert set(low["detail"]) >= {"account_id", "name", "kind", "owner", "currency", "balance", "balance_micros",
                                  "alert_below", "alert_below_micros"}


def test_in_aws_the_alerts_go_to_the_event_bus(gateway, monkeypatch):
    """With ONYSOFT_EVENT_BUS (AWS), from the functions that emit them: the rollup (Balance Low) and the proxy
    (Spend Limit Reached); a rule on the bus routes them (moto's EventBridge and SQS, in-process)."""
    import boto3

    monkeypatch.delenv(events.FILE_ENV, raising=False)
    bus = boto3.client("events", region_name="us-east-1")
    sqs = boto3.client("sqs", region_name="us-east-1")
    bus.create_event_bus(Name="onysoft-alerts")
    queue = sqs.create_queue(QueueName="balance-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    bus.put_rule(Name="balances", EventBusName="onysoft-alerts", EventPattern=json.dumps(
        {"source": ["onysoft"], "detail-type": ["Balance Low", "Spend Limit Reached"]}))
    bus.put_targets(Rule="balances", EventBusName="onysoft-alerts", Targets=[{"Id": "q", "Arn": queue_arn}])
    monkeypatch.setenv(events.BUS_ENV, "onysoft-alerts")
    events._clients.clear()
    try:
        account, _, headers = new_key("user", amount="0.05")
        set_alert(account.account_id, 40_000)
        spend_until_below(gateway, headers, account.account_id, 40_000)
        _, limited, limited_headers = new_key("user", amount="1", spend_limit_micros=5_000)
        assert gateway.post("/v1/chat/completions", json=CHAT, headers=limited_headers).status_code == 402
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    finally:
        events._clients.clear()
    received = sorted((json.loads(m["Body"])["detail-type"], json.loads(m["Body"])["detail"].get("key_id"))
                      for m in messages)
    assert received == [("Balance Low", None), ("Spend Limit Reached", limited.key_id)]


def test_partners_set_alerts_for_their_customers_and_people_for_their_own_accounts(aws_tables):
    from onysoft import accounts, audit
    from onysoft.principals import Principal
    from tests.unit.test_dashboard import call

    customer = accounts.create_account("partner_customer", owner="p1", name="Kahve")
    other = accounts.create_account("partner_customer", owner="p2")
    own = accounts.create_account("user")
    route = "/dashboard/accounts/{account_id}"
    status, body = call("PATCH", route, "partner:p1", path_params={"account_id": customer.account_id},
                        body={"alert_below": "12.5"})
    assert status == 200 and (body["alert_below"], body["alert_below_micros"]) == ("12.500000", 12_500_000)
    assert body["balance_alert"] == "low"  # its balance (0) is below already: the banner says so, no event
    status, _ = call("PATCH", route, "partner:p1", path_params={"account_id": other.account_id},
                     body={"alert_below": "1"})
    assert status == 404
    status, body = call("PATCH", route, f"user:{own.account_id}", path_params={"account_id": own.account_id},
                        body={"alert_below": "5"})
    assert status == 200 and body["alert_below_micros"] == 5 * TRY
    status, body = call("PATCH", route, f"user:{own.account_id}", path_params={"account_id": own.account_id},
                        body={"alert_below": "-1"})
    assert status == 400 and body["error"]["param"] == "alert_below"
    status, body = call("PATCH", route, f"user:{own.account_id}", path_params={"account_id": own.account_id},
                        body={"alert_below": "0"})
    assert status == 200 and body["alert_below"] is None and body["balance_alert"] is None
    changes = [json.loads(r.details) for r in audit.iter_all(Principal("operator"))
               if r.target_account_id == customer.account_id and r.action == "account.update"]
    assert changes == [{"alert_below": {"from": None, "to": "12.500000"}}]
