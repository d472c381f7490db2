"""Monthly statements (onysoft.statements, onysoft.operations.statements) over three months of one account with
4 balance shards: top-ups by the CLI and by a signed-in operator (one retried with its idempotency key), settled
requests on every shard (refunding the rest of their holds), released ones, an overrun that puts the account in
debt (netted across its shards) until a top-up, a request made on the last second of a month and settled in the
next: written by the real hold and settle, counted by the real rollup (in-process moto)."""

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from onysoft import balances, billing, clock, money
from onysoft.api_keys import create_key
from onysoft.audit import Actor
from onysoft.caller import CallerContext
from onysoft.errors import GatewayError
from onysoft.hold_sizing import ChargeFactors, HoldPlan
from onysoft.models import Account, UsageRecord
from onysoft.operations import access
from onysoft.operations import accounts as account_ops
from onysoft.operations import statements as statement_ops
from onysoft.principals import Principal
from onysoft.provider_usage import Usage
from onysoft.usage_rollup import apply
from tests.unit.test_margin import BIG, SMALL
from tests.unit.test_usage_rollup import stream_records

JAN, FEB, MAR = "2026-01", "2026-02", "2026-03"
FX = Decimal("41.5")
TRY = money.MICROS_PER_UNIT
PERSON = Actor(Principal("operator"), sub="0b5e…-sub", request_id="apigw-req-1", email="ops@onysoft.example")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace(" ", "T") + "+00:00").astimezone(UTC)


@pytest.fixture(scope="module")
def tables(module_tables):
    """The books are written once for the module; every test sets the clock it reads them at."""
    now = {"at": at("2026-01-20 09:00:00")}
    module_tables.setattr(clock, "utc_now", lambda: now["at"])
    return now


@pytest.fixture(scope="module")
def books(tables):
    now = tables
    cli = access.cli_operator()
    account_id = account_ops.create_account(cli, kind="user", name="Defter", shards=4)["account_id"]
    key = create_key(account_id, name="main").record
    spare = create_key(account_id, name="spare").record
    topped = {JAN: 0, FEB: 0, MAR: 0}
    seq = iter(range(10_000))

    def when(text):
        now["at"] = at(text)

    def top_up(text, amount, actor=cli, idempotency_key=None):
        when(text)
        view, replayed = account_ops.top_up(actor, account_id, amount, idempotency_key)
        if not replayed:
            topped[text[:7]] += amount
        return replayed

    def hold(text, *, on=key, micros=None):
        when(text)
        caller = CallerContext(on.key_id, "user", account_id, "TRY", 5000, shards=4)
        factors = ChargeFactors(BIG, 5000, FX, "")
        plan = HoldPlan(1000, 1000, False, micros if micros is not None else factors.charge_micros(Usage(4000, 4000)))
        return billing.place_hold(request_id=f"req_{next(seq):024x}", key_hash=on.key_hash, caller=caller,
                                  plan=plan, factors=factors, endpoint="chat.completions", stream=False,
                                  model=BIG.model, sending=True)

    def settle(held, usage, text=None):
        if text:
            when(text)
        return billing.settle(held, usage)

    # January: a top-up by the CLI, two requests (each refunds the rest of its hold), one released.
    top_up("2026-01-20 09:00:00", 10 * TRY, idempotency_key="jan-1")
    settle(hold("2026-01-21 10:00:00"), Usage(1000, 500))
    settle(hold("2026-01-22 11:00:00", on=spare), Usage(3000, 1200, cached_tokens=1000))
    billing.release(hold("2026-01-23 12:00:00"), code="upstream_error", message="502")
    # February: a signed-in operator's top-up, retried (added once); requests on every shard; an overrun that
    # leaves the account in debt (netted over its shards); a top-up that pays the debt; a request made on the
    # month's last second and settled in March.
    top_up("2026-02-02 08:00:00", 2 * TRY, PERSON, "feb-1")
    assert top_up("2026-02-02 08:00:05", 2 * TRY, PERSON, "feb-1")  # the retry: a replay, not a top-up
    for day in range(3, 11):
        settle(hold(f"2026-02-{day:02d} 10:00:00", on=(key, spare)[day % 2]), Usage(100 * day, 40 * day))
    billing.release(hold("2026-02-11 10:00:00"), code="upstream_timeout", message="504")
    overrun = settle(hold("2026-02-12 10:00:00", micros=1000), Usage(200_000, 400_000))
    assert overrun > 12 * TRY  # more than the balance: a debt
    assert balances.total(Account.get(account_id)) < 0
    top_up("2026-02-13 08:00:00", 300 * TRY, PERSON, "feb-2")
    settle(hold("2026-02-20 10:00:00"), Usage(5000, 2000))
    late = hold("2026-02-28 23:59:59.900000")
    settle(late, Usage(700, 300), "2026-03-01 00:00:01")
    # March: a request and a top-up; the books are read on the 4th (February closed two days before).
    settle(hold("2026-03-02 10:00:00"), Usage(1500, 900))
    top_up("2026-03-03 08:00:00", 1 * TRY)
    when("2026-03-04 12:00:00")
    assert apply(stream_records()) == []
    return {"account_id": account_id, "topped": topped, "keys": (key.key_id, spare.key_id), "when": when,
            "hold": hold, "settle": settle}


@pytest.fixture
def on_march_4th(books):
    books["when"]("2026-03-04 12:00:00")
    return books


def records_made_in(account_id: str, month: str) -> list[UsageRecord]:
    """The oracle: every usage record of the account (all its shards' partitions) made in the month."""
    found = []
    for shard in range(4):
        found += [r for r in UsageRecord.query(balances.shard_key(account_id, shard)) if r.created_at[:7] == month]
    return found


def statement(books, month, actor=None):
    return statement_ops.statement(actor or access.cli_operator(), books["account_id"], month)


def test_closing_is_opening_plus_topups_minus_charges_every_month_and_chains(on_march_4th):
    books = on_march_4th
    account_id = books["account_id"]
    documents = {month: statement(books, month) for month in (JAN, FEB, MAR)}
    assert documents[JAN]["opening_balance_micros"] == 0
    assert documents[FEB]["opening_balance_micros"] == documents[JAN]["closing_balance_micros"]
    assert documents[MAR]["opening_balance_micros"] == documents[FEB]["closing_balance_micros"]
    for month, document in documents.items():
        made = records_made_in(account_id, month)
        charged = sum(int(r.charge_micros) for r in made if r.status == "settled")
        assert document["currency"] == "TRY"
        assert document["closing_balance_micros"] == (document["opening_balance_micros"] + document["topups_micros"]
                                                      - document["charges_micros"]), month
        assert document["charges_micros"] == charged > 0, month  # the late settle is February's
        assert document["topups_micros"] == books["topped"][month], month
        assert document["debts_micros"] == sum(int(r.overrun_micros or 0) for r in made), month
        assert sum(line["amount_micros"] for line in document["lines"][:-1]) == document["closing_balance_micros"]
        assert document["lines"][-1]["amount_micros"] == document["closing_balance_micros"]
        assert sum(k["charge_micros"] for k in document["charges_by_key"]) == document["charges_micros"]
        assert document["requests"] == len(made)
        assert document["failed_requests"] == sum(r.status == "failed" for r in made)
        for name in ("opening_balance", "topups", "charges", "closing_balance", "debts"):
            assert document[name] == money.format_micros(document[f"{name}_micros"])
    # The books agree with the balance itself (the sum of the 4 shards), no hold being open now.
    assert documents[MAR]["closing_balance_micros"] == balances.total(Account.get(account_id, consistent_read=True))
    assert documents[FEB]["debts_micros"] > 0 and documents[JAN]["failed_requests"] == 1
    assert [documents[m]["status"] for m in (JAN, FEB, MAR)] == ["closed", "closed", "open"]


def test_the_ledger_opens_each_month_where_the_previous_statement_closed(on_march_4th):
    """Without the previous month's statement (none issued yet), the opening is computed from the ledger: the
    top-ups before the month, minus the rollups' charges of every request made before it."""
    from onysoft import statements

    account = Account.get(on_march_4th["account_id"], consistent_read=True)
    for month, previous in ((FEB, JAN), (MAR, FEB)):
        opening, pre_ledger = statements.ledger_opening(account, month)
        assert (opening, pre_ledger) == (statement(on_march_4th, previous)["closing_balance_micros"], 0), month


def test_topups_from_before_the_ledger_count_in_the_opening(books):
    """An account topped up before top-ups had records (issue 26): those top-ups are its balance's, older than
    its first record; statements count them in the opening balance and say how much they were."""
    when, cli = books["when"], access.cli_operator()
    when("2026-01-05 09:00:00")
    account_id = account_ops.create_account(cli, kind="user", name="Older")["account_id"]
    Account(account_id=account_id).update(actions=[Account.balance_micros.add(7 * TRY),
                                                   Account.topped_up_micros.add(7 * TRY)])
    when("2026-02-10 10:00:00")
    account_ops.top_up(cli, account_id, 1 * TRY, "feb")
    when("2026-03-04 12:00:00")
    february = statement_ops.statement(cli, account_id, FEB)
    assert (february["opening_balance_micros"], february["pre_ledger_topups_micros"]) == (7 * TRY, 7 * TRY)
    assert february["closing_balance_micros"] == 8 * TRY == balances.total(Account.get(account_id))


def test_each_topup_says_who_made_it_and_its_idempotency_key(on_march_4th):
    books = on_march_4th
    february = statement(books, FEB)
    topups = [line for line in february["lines"] if line["type"] == "topup"]
    assert [(t["amount_micros"], t["idempotency_key"], t["made_by"], t["made_by_person"]) for t in topups] == [
        (2 * TRY, "feb-1", "operator", "ops@onysoft.example"), (300 * TRY, "feb-2", "operator", "ops@onysoft.example")]
    assert [t["date"][:10] for t in topups] == ["2026-02-02", "2026-02-13"]
    [january] = [line for line in statement(books, JAN)["lines"] if line["type"] == "topup"]
    assert january["idempotency_key"] == "jan-1" and january["made_by_person"].startswith("cli:")
    # The account's owner sees who (the principal), not the platform's person.
    own = statement(books, FEB, Actor(Principal("user", books["account_id"])))
    assert {line["made_by_person"] for line in own["lines"] if line["type"] == "topup"} == {None}
    assert own["closing_balance_micros"] == february["closing_balance_micros"]


def test_a_closed_months_statement_never_changes(books):
    """An account of its own (the books' are read by the other tests): January and February issued on March 4th,
    then a record of February counted late and a top-up: the two statements stay as issued."""
    when, cli = books["when"], access.cli_operator()
    when("2026-01-05 09:00:00")
    account_id = account_ops.create_account(cli, kind="user", name="Frozen")["account_id"]
    key = create_key(account_id).record
    account_ops.top_up(cli, account_id, 3 * TRY, "jan")
    when("2026-02-10 10:00:00")
    caller = CallerContext(key.key_id, "user", account_id, "TRY", 5000)
    factors = ChargeFactors(SMALL, 5000, FX, "")
    held = billing.place_hold(request_id="req_" + "f" * 24, key_hash=key.key_hash, caller=caller,
                              plan=HoldPlan(100, 100, False, factors.charge_micros(Usage(2000, 2000))), factors=factors,
                              endpoint="chat.completions", stream=False, model=SMALL.model, sending=True)
    billing.settle(held, Usage(1000, 500))
    assert apply(stream_records()) == []
    when("2026-03-04 12:00:00")
    issued = {month: statement_ops.statement(cli, account_id, month) for month in (JAN, FEB)}
    assert [issued[m]["status"] for m in (JAN, FEB)] == ["closed", "closed"]
    assert issued[FEB]["charges_micros"] > 0
    UsageRecord(account_id=account_id, sk="2026-02-15T10:00:00.000000Z#req_late", request_id="req_late",
                key_id=key.key_id, created_at="2026-02-15T10:00:00.000000Z", status="settled",
                model=BIG.model, currency="TRY", charge_micros=123_456, fx_rate="41.5",
                provider_cost_usd="0.001").save()
    assert apply(stream_records()) == []
    when("2026-03-05 09:00:00")
    account_ops.top_up(cli, account_id, 5 * TRY)
    for month, document in issued.items():
        assert statement_ops.statement(cli, account_id, month) == document, month
    march = statement_ops.statement(cli, account_id, MAR)
    assert march["opening_balance_micros"] == issued[FEB]["closing_balance_micros"]
    assert march["topups_micros"] == 5 * TRY


def test_a_month_is_open_until_two_days_after_it_ended(books):
    when, cli = books["when"], access.cli_operator()
    when("2026-01-05 09:00:00")
    account_id = account_ops.create_account(cli, kind="user", name="Open")["account_id"]
    when("2026-03-02 23:59:59")
    assert statement_ops.statement(cli, account_id, FEB)["status"] == "open"
    when("2026-03-03 00:00:00")
    assert statement_ops.statement(cli, account_id, FEB)["status"] == "closed"


@pytest.mark.parametrize("month", ["2026-13", "march", "2025-12", "2026-04", "2026-3"])
def test_a_month_outside_the_accounts_life_or_malformed_is_400(on_march_4th, month):
    books = on_march_4th
    with pytest.raises(GatewayError) as refused:
        statement(books, month)
    assert (refused.value.status, refused.value.param) == (400, "month")


def test_someone_elses_account_is_404(on_march_4th):
    books = on_march_4th
    with pytest.raises(GatewayError) as refused:
        statement(books, FEB, Actor(Principal("partner", "p1")))
    assert refused.value.status == 404


def test_onysoft_statement_prints_json_and_csv(on_march_4th, monkeypatch, tmp_path, capsys):
    books = on_march_4th
    import csv

    from onysoft.config import TABLE_ENV_DEFAULTS
    from onysoft_tools.cli import main

    for name in ("AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL", "ONYSOFT_STATE_DIR", *TABLE_ENV_DEFAULTS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    february = statement(books, FEB)

    def run(*args):
        capsys.readouterr()
        code = main(["statement", books["account_id"], "--month", FEB, *args, "--state-dir", str(tmp_path / "s")])
        return code, *capsys.readouterr()

    code, out, err = run("--json")
    assert code == 0, err
    assert json.loads(out) == february
    code, out, err = run("--csv")
    assert code == 0, err
    rows = list(csv.DictReader(out.splitlines()))
    ledger = [r for r in rows if r["type"] != "key_charges"]
    assert [r["type"] for r in ledger][0] == "opening_balance" and ledger[-1]["type"] == "closing_balance"
    assert sum(int(r["amount_micros"]) for r in ledger[:-1]) == int(ledger[-1]["amount_micros"])
    assert {r["idempotency_key"] for r in ledger if r["type"] == "topup"} == {"feb-1", "feb-2"}
    assert -sum(int(r["amount_micros"]) for r in rows if r["type"] == "key_charges") == february["charges_micros"]
    code, out, err = run()
    assert code == 0 and "Closing balance" in out and february["closing_balance"] in out
    code, out, err = run("--json", "--csv")
    assert code == 2 and out == "" and err.startswith("onysoft: error:")


def test_the_dashboard_serves_the_statement_as_json_and_csv(on_march_4th):
    from tests.unit.test_dashboard import call, dashboard_app, make_event

    account_id = on_march_4th["account_id"]
    route = "/dashboard/accounts/{account_id}/statement"
    status, body = call("GET", route, f"user:{account_id}", path_params={"account_id": account_id},
                        query={"month": FEB})
    assert status == 200 and body == statement(on_march_4th, FEB, Actor(Principal("user", account_id)))
    event = make_event("GET", route, path_params={"account_id": account_id}, query={"month": FEB, "format": "csv"},
                       principal="operator")
    response = dashboard_app.handler(event, None)
    assert response["statusCode"] == 200
    response["headers"] = response.get("headers") or {k: v[0] for k, v in response["multiValueHeaders"].items()}
    assert response["headers"]["Content-Type"].startswith("text/csv")
    assert f'filename="statement-{account_id}-{FEB}.csv"' in response["headers"]["Content-Disposition"]
    assert response["body"] == statement_ops.to_csv(statement(on_march_4th, FEB))
    status, body = call("GET", route, "partner:p1", path_params={"account_id": account_id}, query={"month": FEB})
    assert status == 404
    status, body = call("GET", route, "operator", path_params={"account_id": account_id}, query={"month": "2026"})
    assert status == 400 and body["error"]["param"] == "month"
