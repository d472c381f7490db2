"""The margin report (onysoft.margin, onysoft.operations.reports) against a ledger computed by hand: four key
types, two currencies, five markups, two FX rates, a fallback, an overrun, a release, a duplicate, a late
settle and a pending hold, written by the real hold and settle (onysoft.billing) and counted by the real
rollup from the Usage table's stream (in-process moto)."""

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from onysoft import billing, clock, money
from onysoft.accounts import create_account, top_up
from onysoft.api_keys import create_key
from onysoft.audit import Actor
from onysoft.caller import CallerContext
from onysoft.catalog import ModelPrice
from onysoft.errors import GatewayError
from onysoft.hold_sizing import ChargeFactors, HoldPlan
from onysoft.models import UsageRecord
from onysoft.operations import reports
from onysoft.principals import Principal
from onysoft.provider_usage import Usage
from tests.unit.test_usage_rollup import stream_records

BIG = ModelPrice("ony/big", "ony", "big", Decimal("2.5"), Decimal("10"), True, "",
                 cached_input_usd_per_mtok=Decimal("0.25"))
SMALL = ModelPrice("ony/small", "ony", "small", Decimal("0.15"), Decimal("0.6"), True, "")
FLAKY = ModelPrice("ony/flaky", "ony", "flaky", Decimal("3"), Decimal("15"), True, "")
D1, D2, D3 = "2026-03-10", "2026-03-11", "2026-03-12"
FX = {D1: Decimal("41.5"), D2: Decimal("43.2")}
OPERATOR = Actor(Principal("operator"))

# The ledger, by hand (USD micro-units; the charge in its account's micro-units). Per settled record:
# cost µUSD = ceil(provider cost × 10^6); charge = ceil(cost × (1 + markup) × fx × 10^6);
# charged µUSD = floor(charge / fx); margin = charged µUSD − cost µUSD.
#   1 user        D1 ony/big   fx 41.5  800 + 200 cached in, 500 out: cost 0.00705    -> 7050, charge 438863, usd 10575
#   2 user        D2 ony/small fx 43.2  12345 in, 6789 out:            cost 0.00592515 -> 5926, charge 383950, usd 8887
#   3 project 20% D1 ony/big   fx 41.5  300 in, 40 out, settled on D2: cost 0.00115    -> 1150, charge 57270,  usd 1380
#   4 p.project   D1 ony/flaky → answered by ony/small, USD, 2000/1000: cost 0.0009     -> 900,  charge 1350,   usd 1350
#   5 p.project   D2 ony/big   USD, overrun (hold 100), 100/2000:      cost 0.02025    -> 20250, charge 30375, usd 30375
#   6 customer    D1 ony/big   released: a failed request, no money
#   7 customer    D2 ony/small fx 43.2  777 in, 333 out:               cost 0.00031635 -> 317,  charge 17767,  usd 411
#   8 customer B  D2 ony/big   fx 43.2  1000 in, 100 out, 100% markup: cost 0.0035     -> 3500, charge 302400, usd 7000
#   9 customer B  D2 ony/small pending (its hold still open): a request, no money
#  10 user        D3: outside the report's days
EXPECTED = {  # account -> (requests, settled, failed, pending, charged, charged µUSD, cost µUSD, margin µUSD)
    "user": (2, 2, 0, 0, 438863 + 383950, 10575 + 8887, 7050 + 5926, 3525 + 2961),
    "project": (1, 1, 0, 0, 57270, 1380, 1150, 230),
    "partner_project": (2, 2, 0, 0, 1350 + 30375, 1350 + 30375, 900 + 20250, 450 + 10125),
    "partner_customer": (2, 1, 1, 0, 17767, 411, 317, 94),
    "partner_customer_b": (2, 1, 0, 1, 302400, 7000, 3500, 3500),
}
TOTAL_USD, TOTAL_COST, TOTAL_MARGIN = 59978, 39093, 20885
CHARGED = {"TRY": 438863 + 383950 + 57270 + 17767 + 302400, "USD": 1350 + 30375}


def at(day: str, time: str) -> datetime:
    return datetime.fromisoformat(f"{day}T{time}+00:00").astimezone(UTC)


@pytest.fixture(scope="module")
def ledger(module_tables):
    """Written once for the module (the tests read it; the one that changes an item puts it back)."""
    now = {"at": at(D1, "00:00:00")}
    module_tables.setattr(clock, "utc_now", lambda: now["at"])
    accounts = {
        "user": create_account("user", name="Ayşe"),
        "project": create_account("project", owner="org-1", markup_bp=2000),
        "partner_project": create_account("partner_project", owner="partner-a"),
        "partner_customer": create_account("partner_customer", owner="partner-a", name="Acme"),
        "partner_customer_b": create_account("partner_customer", owner="partner-b", markup_bp=10000),
    }
    callers = {}
    for name, account in accounts.items():
        top_up(account.account_id, 1_000 * money.MICROS_PER_UNIT)
        key = create_key(account.account_id, name=name).record
        callers[name] = (key, CallerContext(key.key_id, key.key_type, account.account_id, account.currency,
                                            int(account.markup_bp)))
    seq = iter(range(1000))

    def hold(name, day, time, price, *, hold_micros=None):
        key, caller = callers[name]
        now["at"] = at(day, time)
        fx = FX.get(day, Decimal("40")) if caller.currency == "TRY" else Decimal(1)
        factors = ChargeFactors(price, caller.markup_bp, fx, "")
        micros = hold_micros if hold_micros is not None else factors.charge_micros(Usage(100_000, 100_000))
        plan = HoldPlan(1000, 1000, False, micros)  # tokens: what the rate window counts
        return billing.place_hold(request_id=f"req_{next(seq):024x}", key_hash=key.key_hash, caller=caller,
                                  plan=plan, factors=factors, endpoint="chat.completions", stream=False,
                                  model=price.model, sending=True)

    def settle(held, usage, day=None, time=None):
        if day:
            now["at"] = at(day, time)
        return billing.settle(held, usage)

    settle(hold("user", D1, "10:00:00", BIG), Usage(1000, 500, cached_tokens=200))
    settle(hold("user", D2, "09:00:00", SMALL), Usage(12345, 6789))
    late = hold("project", D1, "23:59:59.500000", BIG)
    flaky = hold("partner_project", D1, "12:00:00", FLAKY)
    answered = dataclasses.replace(flaky, factors=ChargeFactors(SMALL, flaky.factors.markup_bp, Decimal(1), ""),
                                   answered_model=SMALL.model, requested_model=FLAKY.model,
                                   attempts=("ony/flaky: 500",))
    settle(answered, Usage(2000, 1000))
    assert settle(hold("partner_project", D2, "12:00:00", BIG, hold_micros=100), Usage(100, 2000)) == 30375
    billing.release(hold("partner_customer", D1, "08:00:00", BIG), code="upstream_error", message="500")
    settle(hold("partner_customer", D2, "08:00:00", SMALL), Usage(777, 333))
    settle(hold("partner_customer_b", D2, "15:00:00", BIG), Usage(1000, 100))
    hold("partner_customer_b", D2, "16:00:00", SMALL)
    settle(hold("user", D3, "10:00:00", BIG), Usage(1000, 1000))
    settle(late, Usage(300, 40), D2, "00:00:03")  # settled the next day: counted on the day of its request

    from onysoft.usage_rollup import apply

    records = stream_records()
    duplicates = [r for r in records if accounts["partner_customer_b"].account_id in str(r["dynamodb"]["Keys"])]
    late_ones = [r for r in records if late.request_id in str(r["dynamodb"]["Keys"])]
    fallback_hold = next(r for r in records if flaky.request_id in str(r["dynamodb"]["Keys"]))
    # The fallback's hold is counted alone first (pending, for the model it was held for: its totals item then
    # holds nothing once the settle moves it to the model that answered); the late record's settle arrives
    # before its hold; partner B's records come twice.
    assert apply([fallback_hold]) == []
    assert apply([r for r in records if r not in late_ones]) == []
    assert apply(late_ones[::-1] + duplicates) == []
    assert apply(records) == []  # the whole stream again: nothing counts twice
    return {name: account.account_id for name, account in accounts.items()}


def margin(by="account", actor=OPERATOR, start=D1, end=D2):
    return reports.margin_report(actor, start=start, end=end, by=by)


def figures(row) -> tuple:
    return (row["requests"], row["settled"], row["failed"], row["pending"], row["charged_micros"],
            row["charged_usd_micros"], row["provider_cost_usd_micros"], row["margin_usd_micros"])


def test_margin_rows_are_the_hand_computed_ledger(ledger):
    report = margin("account")
    rows = {row["account_id"]: row for row in report["rows"]}
    assert {name: figures(rows[account_id]) for name, account_id in ledger.items()} == EXPECTED
    user = rows[ledger["user"]]
    assert (user["currency"], user["charged"], user["margin_usd"], user["margin_pct"]) == (
        "TRY", "0.822813", "0.006486", 33.33)  # 6486 / 19462
    assert rows[ledger["partner_project"]]["currency"] == "USD"
    assert rows[ledger["partner_customer"]]["partner"] == "partner-a"
    assert rows[ledger["project"]]["partner"] is None
    totals = report["totals"]
    assert (totals["charged_usd_micros"], totals["provider_cost_usd_micros"], totals["margin_usd_micros"]) == (
        TOTAL_USD, TOTAL_COST, TOTAL_MARGIN)
    assert totals["margin_pct"] == 34.82 and totals["requests"] == 9 and totals["uncosted_requests"] == 0
    assert {c["currency"]: c["charged_micros"] for c in totals["charged_by_currency"]} == CHARGED
    assert all(isinstance(row[name], int) for row in report["rows"] for name in row if name.endswith("_micros"))


@pytest.mark.parametrize("by", ["partner", "model", "day"])
def test_every_grouping_adds_up_to_the_same_totals(ledger, by):
    report = margin(by)
    assert report["totals"] == margin("account")["totals"]
    for name in ("requests", "charged_usd_micros", "provider_cost_usd_micros", "margin_usd_micros"):
        assert sum(row[name] for row in report["rows"]) == report["totals"][name], name
    for currency, charged in CHARGED.items():
        assert sum(r["charged_micros"] for r in report["rows"] if r["currency"] == currency) == charged
    rows = {(row[by], row["currency"]): figures(row) for row in report["rows"]}
    if by == "partner":
        e = EXPECTED
        assert rows == {
            ("partner-a", "USD"): e["partner_project"],
            ("partner-a", "TRY"): e["partner_customer"],
            ("partner-b", "TRY"): e["partner_customer_b"],
            (None, "TRY"): tuple(a + b for a, b in zip(e["user"], e["project"], strict=True)),
        }
    if by == "model":  # the fallback counts for the model that answered
        assert rows[("ony/small", "USD")] == (1, 1, 0, 0, 1350, 1350, 900, 450)
        assert rows[("ony/small", "TRY")] == (3, 2, 0, 1, 383950 + 17767, 8887 + 411, 5926 + 317,
                                              2961 + 94)
        assert ("ony/flaky", "USD") not in rows
    if by == "day":  # the late settle counts on its request's day; D3 is outside
        assert sorted(rows) == [(D1, "TRY"), (D1, "USD"), (D2, "TRY"), (D2, "USD")]
        assert rows[(D1, "TRY")] == (3, 2, 1, 0, 438863 + 57270, 10575 + 1380, 7050 + 1150, 3525 + 230)


def test_the_report_reconciles_with_the_records_to_the_micro_unit(ledger):
    """Every figure is the sum of its records' own (the oracle reads every record, which the report never does)."""
    expected = {"requests": 0, "charged_usd_micros": 0, "provider_cost_usd_micros": 0}
    charged: dict[str, int] = {}
    for account_id in ledger.values():
        for record in UsageRecord.query(account_id):
            if not D1 <= record.created_at[:10] <= D2:
                continue
            expected["requests"] += 1
            if record.status != "settled":
                continue
            fx = Decimal(record.fx_rate)
            charged[record.currency] = charged.get(record.currency, 0) + int(record.charge_micros)
            expected["charged_usd_micros"] += money.usd_micros_of_charge(int(record.charge_micros), fx)
            expected["provider_cost_usd_micros"] += money.usd_micros_up(Decimal(record.provider_cost_usd))
    totals = margin()["totals"]
    assert {name: totals[name] for name in expected} == expected
    assert totals["margin_usd_micros"] == expected["charged_usd_micros"] - expected["provider_cost_usd_micros"]
    assert {c["currency"]: c["charged_micros"] for c in totals["charged_by_currency"]} == charged


def test_a_partner_sees_its_own_revenue_and_never_the_platforms_cost(ledger):
    report = margin("account", Actor(Principal("partner", "partner-a")))
    assert {row["account_id"] for row in report["rows"]} == {ledger["partner_project"], ledger["partner_customer"]}
    for row in report["rows"]:
        assert row["provider_cost_usd_micros"] is None and row["provider_cost_usd"] is None
        assert row["margin_usd_micros"] is None and row["margin_pct"] is None
    customer = next(r for r in report["rows"] if r["account_id"] == ledger["partner_customer"])
    assert (customer["charged_micros"], customer["charged_usd_micros"]) == (17767, 411)
    assert report["totals"]["provider_cost_usd_micros"] is None
    assert report["totals"]["charged_usd_micros"] == 1350 + 30375 + 411
    assert report["scope"] == "partner:partner-a"
    by_partner = margin("partner", Actor(Principal("partner", "partner-a")))
    assert {row["partner"] for row in by_partner["rows"]} == {"partner-a"}


@pytest.mark.parametrize("principal", [Principal("user", "acct_0123456789abcdef"), Principal("org", "org-1")])
def test_users_and_org_admins_have_no_margin_report(ledger, principal):
    with pytest.raises(GatewayError) as refused:
        margin("account", Actor(principal))
    assert refused.value.status == 403


@pytest.mark.parametrize(("start", "end", "by", "param"), [
    ("2026-03-10", "2026-03-09", "account", "from"), ("yesterday", "2026-03-09", "account", "from"),
    ("2026-03-10", "2026-03-11T00:00:00Z", "account", "to"), ("2025-01-01", "2026-03-11", "account", "from"),
    ("2026-03-10", "2026-03-11", "key", "by"),
])
def test_bad_ranges_and_groupings_are_400(ledger, start, end, by, param):
    with pytest.raises(GatewayError) as refused:
        margin(by, start=start, end=end)
    assert (refused.value.status, refused.value.param) == (400, param)


def test_totals_counted_before_the_usd_figures_say_how_many_requests_they_miss(ledger):
    """Totals items written before issue 26 have counts and charges but no USD figures: the report says how many
    settled requests its USD figures miss, instead of showing a margin it cannot know."""
    from onysoft.models import UsageRollup

    item = next(UsageRollup.query(f"acct#{ledger['project']}"))
    kept = (item.charge_usd_micros, item.provider_cost_usd_micros, item.costed)
    item.update(actions=[UsageRollup.charge_usd_micros.remove(), UsageRollup.provider_cost_usd_micros.remove(),
                         UsageRollup.costed.remove()])
    try:
        row = next(r for r in margin()["rows"] if r["account_id"] == ledger["project"])
        assert (row["settled"], row["charged_micros"], row["uncosted_requests"]) == (1, 57270, 1)
        assert (row["charged_usd_micros"], row["provider_cost_usd_micros"]) == (0, 0)
        assert margin()["totals"]["uncosted_requests"] == 1
    finally:  # the module's books, as they were
        item.update(actions=[UsageRollup.charge_usd_micros.set(kept[0]),
                             UsageRollup.provider_cost_usd_micros.set(kept[1]), UsageRollup.costed.set(kept[2])])


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    """`onysoft ARGS --state-dir <empty dir>` in-process against the ledger's tables: (exit code, stdout, stderr)."""
    from onysoft.config import TABLE_ENV_DEFAULTS
    from onysoft_tools.cli import main

    for name in ("AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL", "ONYSOFT_STATE_DIR", *TABLE_ENV_DEFAULTS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([*args, "--state-dir", str(tmp_path / "state")])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_onysoft_report_margin_prints_the_same_report(ledger, cli):
    import json

    code, out, err = cli("report", "margin", "--from", D1, "--to", D2, "--by", "partner", "--json")
    assert code == 0, err
    assert json.loads(out) == margin("partner")
    code, out, _ = cli("report", "margin", "--from", D1, "--to", D2)
    assert code == 0
    assert "Margin by account, 2026-03-10 to 2026-03-11" in out
    assert "0.020885" in out and "34.82%" in out  # the total margin, USD, and its share of the charges
    code, out, err = cli("report", "margin", "--from", D2, "--to", D1)
    assert (code, out) == (2, "") and err.startswith("onysoft: error:") and "from" in err


def test_the_dashboard_answers_the_same_report_and_a_partner_its_own(ledger):
    import json

    from tests.unit.test_dashboard import call

    status, body = call("GET", "/dashboard/reports/margin", "operator", query={"from": D1, "to": D2, "by": "model"})
    assert status == 200 and body == json.loads(json.dumps(margin("model")))
    status, body = call("GET", "/dashboard/reports/margin", "partner:partner-a", query={"from": D1, "to": D2})
    assert status == 200 and {r["account_id"] for r in body["rows"]} == {ledger["partner_project"],
                                                                        ledger["partner_customer"]}
    assert body["totals"]["margin_usd_micros"] is None
    status, body = call("GET", "/dashboard/reports/margin", f"user:{ledger['user']}", query={"from": D1, "to": D2})
    assert status == 403 and body["error"]["code"] == "permission_denied"
    status, body = call("GET", "/dashboard/reports/margin", "operator", query={"from": D1, "to": D2, "by": "key"})
    assert status == 400 and body["error"]["param"] == "by"
