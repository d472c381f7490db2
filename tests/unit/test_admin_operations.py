"""onysoft.operations, the one door for admin operations: who may reach what, and one view per item.

Authorization: an owner-scoped actor reaches none of another tenant's accounts or keys through any
operation (404, the very answer an unknown id gets), nor the platform's catalog and FX rates (403); the
operator, from the dashboard or the CLI, reaches them all. Views: the same key rendered by the dashboard API,
the CLI's `--json` and `GET /v1/key` has the same value in every field they share.
"""

import json
import uuid

import pytest

from onysoft import accounts, api_keys, audit, keys, principals, proxy_app
from onysoft.authorization import authorize
from onysoft.errors import GatewayError
from onysoft.models import UsageRecord
from onysoft.operations import access, catalog, views
from onysoft.operations import accounts as account_ops
from onysoft.operations import keys as key_ops
from onysoft.operations import usage as usage_ops
from onysoft.operations.audit_log import audit_log
from onysoft_tools.cli import main
from tests.helpers import load_function_module

dashboard_app = load_function_module("dashboard")


def actor(principal: str) -> audit.Actor:
    return audit.Actor(principals.parse(principal), sub=str(uuid.uuid4()))


@pytest.fixture
def tenants(aws_tables):
    """Two tenants of each owner-scoped kind, each with an account and a key."""
    made = {
        "user:a": accounts.create_account("user", name="a"),
        "user:b": accounts.create_account("user", name="b"),
        "org:acme": accounts.create_account("project", owner="acme"),
        "org:other": accounts.create_account("project", owner="other"),
        "partner:p1": accounts.create_account("partner_customer", owner="p1"),
        "partner:p2": accounts.create_account("partner_customer", owner="p2"),
    }
    accounts_by_principal = {}
    for name, account in made.items():
        principal = f"user:{account.account_id}" if name.startswith("user:") else name
        key = api_keys.create_key(account.account_id, name=f"{name} key")
        accounts_by_principal[principal] = (account.account_id, key.record.key_id)
    return accounts_by_principal


def reach(who: audit.Actor, account_id: str, key_id: str) -> dict:
    """Every operation that names an account or a key: the GatewayError status each answers (or 200)."""
    attempts = {
        "get_account": lambda: account_ops.get_account(who, account_id),
        "update_account": lambda: account_ops.update_account(who, account_id, name="renamed"),
        "list_keys": lambda: key_ops.list_keys(who, account_id),
        "create_key": lambda: key_ops.create_key(who, account_id, name="new"),
        "usage": lambda: usage_ops.usage(who, account_id),
        "usage_key": lambda: usage_ops.usage(who, account_id, key_id=key_id),
        "all_records": lambda: usage_ops.all_records(who, account_id),
        "audit_log": lambda: audit_log(who, account_id=account_id),
        "update_key": lambda: key_ops.update_key(who, key_id, rpm=5),
        "delete_key": lambda: key_ops.delete_key(who, key_id),
    }
    answers = {}
    for name, attempt in attempts.items():
        try:
            attempt()
            answers[name] = 200
        except GatewayError as exc:
            answers[name] = (exc.status, exc.code, exc.message.replace(account_id, "ID").replace(key_id, "ID"))
    return answers


@pytest.mark.parametrize("principal", ["user", "org:acme", "partner:p1"])
def test_an_actor_reaches_no_other_tenants_account_or_key(tenants, principal):
    own = next(p for p in tenants if p.startswith(principal))
    who = actor(own)
    unknown = reach(who, "acct_" + "0" * 16, "key_" + "0" * 16)
    assert {status for status, _, _ in unknown.values()} == {404}
    for other, (account_id, key_id) in tenants.items():
        if other == own:
            continue
        # Exactly what an id that was never issued answers: no tenant can tell the two apart.
        assert reach(who, account_id, key_id) == unknown, other
    assert api_keys.find_by_key_id(tenants[next(p for p in tenants if p != own)][1]).status == "active"


@pytest.mark.parametrize("principal", ["user", "org:acme", "partner:p1"])
def test_an_actor_reaches_its_own(tenants, principal):
    own = next(p for p in tenants if p.startswith(principal))
    account_id, key_id = tenants[own]
    answers = reach(actor(own), account_id, key_id)
    assert all(answer == 200 for answer in answers.values()), answers
    with pytest.raises(GatewayError) as refused:
        account_ops.top_up(actor(own), account_id, 1_000_000)
    assert refused.value.status == 403  # seen, but only the platform tops up


@pytest.mark.parametrize("who", [actor("operator"), access.cli_operator()], ids=["dashboard", "cli"])
def test_the_operator_reaches_every_account_and_key(tenants, who):
    for account_id, key_id in tenants.values():
        view, replayed = account_ops.top_up(who, account_id, 2_500_000)
        assert view["balance_micros"] == 2_500_000 and not replayed
        assert all(answer == 200 for answer in reach(who, account_id, key_id).values())
    listed = {view["account_id"] for view in account_ops.list_accounts(who)["accounts"]}
    assert listed == {account_id for account_id, _ in tenants.values()}


def test_the_cli_operator_is_audited_as_cli(tenants):
    who = access.cli_operator()
    assert who.principal.is_operator and who.sub.startswith("cli:") and "@" in who.sub
    account_id, _ = tenants["org:acme"]
    account_ops.top_up(who, account_id, 1)
    # The operator's log names the CLI's user and host; a tenant's says `operator`, no more (issue 23: the
    # platform's machine is not the tenant's business).
    latest = audit_log(actor("operator"), account_id=account_id, limit=1)["records"][0]
    assert (latest["action"], latest["actor"], latest["actor_sub"]) == ("account.topup", "operator", who.sub)
    latest = audit_log(actor("org:acme"), account_id=account_id, limit=1)["records"][0]
    assert (latest["action"], latest["actor"], latest["actor_sub"]) == ("account.topup", "operator", None)
    key_ops.create_key(actor("org:acme"), account_id, name="ci")
    latest = audit_log(actor("org:acme"), account_id=account_id, limit=1)["records"][0]
    assert (latest["action"], latest["actor"]) == ("key.create", "org:acme") and latest["actor_sub"]  # its own


def test_catalog_and_fx_are_the_platforms(tenants):
    for principal in ("org:acme", "partner:p1", next(p for p in tenants if p.startswith("user:"))):
        for attempt in (lambda w: catalog.set_fx(w, "USDTRY", "41.5"), lambda w: catalog.get_fx(w),
                        lambda w: catalog.list_models(w),
                        lambda w: catalog.set_model(w, "openai/x", input_usd_per_mtok="1", output_usd_per_mtok="2")):
            with pytest.raises(GatewayError) as refused:
                attempt(actor(principal))
            assert refused.value.status == 403
    assert catalog.get_fx(actor("operator"))["rate"] is None
    assert catalog.set_fx(access.cli_operator(), "usdtry", "41.5")["rate"] == "41.5"
    assert catalog.get_fx(actor("operator"))["rate"] == "41.5"


def test_owner_rules_dashboard_operator_strict_cli_free(aws_tables):
    with pytest.raises(GatewayError) as refused:
        account_ops.create_account(actor("operator"), kind="user", owner="acme")
    assert refused.value.status == 400 and refused.value.param == "owner"
    # The CLI contract's --owner is an optional label on any kind.
    assert account_ops.create_account(access.cli_operator(), kind="user", owner="acme")["owner"] == "acme"
    assert account_ops.create_account(access.cli_operator(), kind="project")["owner"] is None


# ---------------------------------------------------------------------------------------------- views


def _dashboard_keys(account_id: str) -> list[dict]:
    resource = "/dashboard/accounts/{account_id}/keys"
    event = {
        "resource": resource, "path": f"/dashboard/accounts/{account_id}/keys", "httpMethod": "GET",
        "headers": {}, "multiValueHeaders": {}, "queryStringParameters": None,
        "multiValueQueryStringParameters": None, "pathParameters": {"account_id": account_id},
        "stageVariables": None, "body": None, "isBase64Encoded": False,
        "requestContext": {"resourcePath": resource, "httpMethod": "GET", "path": f"/prod{resource}",
                           "stage": "prod", "requestId": str(uuid.uuid4()), "identity": {"sourceIp": "127.0.0.1"},
                           "authorizer": {"claims": {"sub": "s", "custom:principal": "operator"}}},
    }
    response = dashboard_app.handler(event, None)
    assert response["statusCode"] == 200, response
    return json.loads(response["body"])["keys"]


def _cli(capsys, tmp_path, *args: str) -> dict:
    capsys.readouterr()
    assert main([*args, "--json", "--state-dir", str(tmp_path / "state")]) == 0
    return json.loads(capsys.readouterr().out)


def test_one_key_one_view_on_the_dashboard_the_cli_and_v1_key(aws_tables, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    account = accounts.create_account("partner_customer", owner="p1")
    created = api_keys.create_key(account.account_id, name="ci", rpm=7, models=["openai/gpt-4o-mini"],
                                  spend_limit_micros=5_000_000, limit_reset="monthly")
    dashboard_view = _dashboard_keys(account.account_id)[0]
    cli_view = _cli(capsys, tmp_path, "keys", "list", "--account", account.account_id)["keys"][0]
    v1_view = proxy_app.load_key_view(keys.hash_key(created.plaintext), authorize(f"Bearer {created.plaintext}"))

    shared = set(dashboard_view) & set(cli_view) & set(v1_view)
    assert {"key_id", "display", "name", "type", "status", "account_id", "currency", "created_at", "last_used_at",
            "expires_at", "request_count", "spend", "spend_micros", "rpm", "tpm", "models", "spend_limit",
            "spend_limit_micros", "limit_reset"} <= shared
    for field in shared:
        assert dashboard_view[field] == cli_view[field] == v1_view[field], field
    # The CLI's list and /v1/key both carry the live limits: the same ones.
    assert cli_view["limits"] == v1_view["limits"]
    assert cli_view["limits"]["rpm"] == 7 and cli_view["limits"]["spend_limit_micros"] == 5_000_000
    assert cli_view["usage"]["spend_this_period_micros"] == v1_view["usage"]["spend_this_period_micros"] == 0
    assert "key" not in dashboard_view and created.plaintext not in json.dumps([dashboard_view, cli_view, v1_view])


def test_one_account_view_on_the_dashboard_and_the_cli(aws_tables, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    account = accounts.create_account("project", name="acme web", owner="acme")
    accounts.top_up(account.account_id, 12_500_000)
    dashboard_view = account_ops.get_account(actor("org:acme"), account.account_id)
    cli_view = _cli(capsys, tmp_path, "accounts", "show", account.account_id)
    assert dashboard_view == cli_view
    assert cli_view["key_type"] == "project" and cli_view["markup_bp"] == 5000 and cli_view["markup_pct"] == 50


def test_usage_view_is_honest_about_stream_and_uncharged(aws_tables):
    account = accounts.create_account("user")
    record = UsageRecord(account_id=account.account_id, sk="2026-11-30T00:00:00.000000Z#req_1", request_id="req_1",
                         key_id="key_" + "1" * 16, model="mock/echo", status="settled", charge_micros=3,
                         created_at="2026-11-30T00:00:00.000000Z", currency="TRY")
    view = views.usage_view(record)  # a record with no stream flag and nothing uncharged
    assert view["stream"] is False and view["uncharged_micros"] == 0 and view["charge"] == "0.000003"
    record.stream = "true"
    assert views.usage_view(record)["stream"] is True


def test_a_partner_customers_key_never_shows_the_partners_markup(aws_tables):
    from tests.unit.conftest import new_key

    catalog.set_model(access.cli_operator(), "mock/echo", input_usd_per_mtok="1", output_usd_per_mtok="2")
    _, _, customer_headers = new_key("partner_customer")
    _, _, project_headers = new_key("partner_project")
    from starlette.testclient import TestClient

    with TestClient(proxy_app.app) as client:
        customer = client.get("/v1/key", headers=customer_headers).json()
        project = client.get("/v1/key", headers=project_headers).json()
    assert customer["type"] == "partner_customer" and customer["markup_pct"] is None
    assert "30" not in json.dumps({k: v for k, v in customer.items() if "markup" in k})
    assert project["markup_pct"] == 50  # a partner's own project key: its own terms
