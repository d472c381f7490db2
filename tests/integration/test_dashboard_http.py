"""The dashboard API over HTTP through `onysoft dev`, as a new user would try it: a token from the local
user pool's InitiateAuth (`onysoft token`), curl-like requests, keys that work (and stop working) at /v1 at
once, the OpenAI SDK.

Every route: each principal's allowed actions, the foreign-tenant case (404, exactly as for an id that was
never issued) and the no-token case (401); the OpenAPI document is valid and names the template's routes.
"""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal

import httpx
import openai
import pytest

from onysoft_tools import template
from onysoft_tools.local import cognito
from tests.helpers import expired_copy
from tests.integration.conftest import DevGateway

ENVELOPE_FIELDS = {"message", "type", "code", "param"}


def token(gateway: DevGateway, principal: str) -> str:
    """A dashboard ID token for `principal`, printed by `onysoft token` as a user would get one."""
    document = gateway.cli_json("token", "--principal", principal)
    assert document["principal"] == principal
    return document["token"]


def call(gateway: DevGateway, method: str, path: str, bearer: str | None = None, **kwargs) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return httpx.request(method, gateway.base_url + path, headers=headers, timeout=15, **kwargs)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) <= {"error", "type"} and set(body["error"]) == ENVELOPE_FIELDS, body  # + gateway responses' type
    if code:
        assert body["error"]["code"] == code, body
    return body


def demo_account(gateway: DevGateway, key_type: str) -> str:
    return next(entry["account_id"] for entry in gateway.demo if entry["type"] == key_type)


def chat(gateway: DevGateway, key: str, text: str = "hello") -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(api_key=key, base_url=gateway.base_url + "/v1", max_retries=0, timeout=15)
    return client.chat.completions.create(model="mock/echo", messages=[{"role": "user", "content": text}])


def keys_of(gateway: DevGateway, bearer: str, account_id: str) -> dict[str, dict]:
    response = call(gateway, "GET", f"/dashboard/accounts/{account_id}/keys", bearer)
    assert response.status_code == 200, response.text
    return {k["key_id"]: k for k in response.json()["keys"]}


def rolled_up_usage(gateway: DevGateway, bearer: str, account_id: str, *, settled: int, **params) -> dict:
    """The usage page once its totals (rolled up from the Usage table's stream, about a second behind the
    records) count `settled` settled requests."""
    deadline = time.monotonic() + 15
    while True:
        response = call(gateway, "GET", f"/dashboard/accounts/{account_id}/usage", bearer, params=params)
        assert response.status_code == 200, response.text
        usage = response.json()
        if usage["totals"]["total"]["settled"] >= settled or time.monotonic() > deadline:
            return usage
        time.sleep(0.1)


@pytest.fixture(scope="module")
def user(gateway):
    """A fresh user account (made by the operator through the dashboard) and its person's token."""
    operator = token(gateway, "operator")
    response = call(gateway, "POST", "/dashboard/accounts", operator, json={"kind": "user", "name": "Ayşe"})
    assert response.status_code == 201, response.text
    account = response.json()
    response = call(gateway, "POST", f"/dashboard/accounts/{account['account_id']}/topup", operator,
                    json={"amount": "50"})
    assert response.status_code == 200 and response.json()["balance"] == "50.000000", response.text
    return account["account_id"], token(gateway, f"user:{account['account_id']}")


def test_user_creates_three_keys_uses_one_deletes_another(gateway, user):
    account, bearer = user
    created = []
    for name in ("laptop", "ci", "notebook"):
        response = call(gateway, "POST", f"/dashboard/accounts/{account}/keys", bearer, json={"name": name})
        assert response.status_code == 201, response.text
        body = response.json()
        assert re.fullmatch(r"sk-ony-[0-9a-f]{48}", body["key"]) and body["type"] == "user"
        gateway.known_keys.add(body["key"])
        created.append(body)
    listed = keys_of(gateway, bearer, account)
    assert {c["key_id"] for c in created} == set(listed)
    assert all(listed[c["key_id"]]["last_used_at"] is None for c in created)
    assert all(c["key"] not in json.dumps(listed) for c in created)

    # A new key works at /v1 at once; a billed call moves its last_used_at (and only its).
    used, gone, other = created
    assert call(gateway, "GET", "/v1/key", used["key"]).json()["key_id"] == used["key_id"]
    before = time.time()
    completion = chat(gateway, used["key"])
    assert completion.usage.total_tokens > 0
    listed = keys_of(gateway, bearer, account)
    last_used = listed[used["key_id"]]["last_used_at"]
    assert last_used and last_used.endswith("Z")
    assert abs(time.mktime(time.strptime(last_used[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone - before) < 60
    # The request count and spend are the usage rollup's: current within its lag. It may count the hold's pending
    # record in one poll (count 1, spend 0) and the settle in the next: wait for both.
    deadline = time.monotonic() + 20
    while (listed[used["key_id"]]["request_count"] == 0 or listed[used["key_id"]]["spend_micros"] == 0) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
        listed = keys_of(gateway, bearer, account)
    assert listed[used["key_id"]]["request_count"] == 1 and listed[used["key_id"]]["spend_micros"] > 0
    assert listed[gone["key_id"]]["last_used_at"] is None and listed[other["key_id"]]["last_used_at"] is None

    # Deleted: 401 at /v1 at once, even right after a successful (cached) authorization.
    assert call(gateway, "GET", "/v1/key", gone["key"]).status_code == 200
    response = call(gateway, "DELETE", f"/dashboard/keys/{gone['key_id']}", bearer)
    assert response.status_code == 200 and response.json()["status"] == "deleted", response.text
    with pytest.raises(openai.AuthenticationError):
        chat(gateway, gone["key"])
    assert call(gateway, "GET", "/v1/key", gone["key"]).status_code == 401
    assert gone["key_id"] not in keys_of(gateway, bearer, account)
    assert chat(gateway, other["key"]).choices[0].message.content

    # The usage and the audit log say what happened.
    usage = rolled_up_usage(gateway, bearer, account, settled=2)
    assert len(usage["records"]) == 2, usage
    assert usage["totals"]["total"]["requests"] == 2 and usage["totals"]["by_model"][0]["model"] == "mock/echo"
    response = call(gateway, "GET", f"/dashboard/accounts/{account}/usage", bearer,
                    params={"key_id": used["key_id"]})
    assert [r["key_id"] for r in response.json()["records"]] == [used["key_id"]]
    actions = [(r["action"], r["key_id"]) for r in call(gateway, "GET", "/dashboard/audit", bearer).json()["records"]]
    assert ("key.delete", gone["key_id"]) in actions and ("key.create", used["key_id"]) in actions


def test_partner_customer_key_charges_the_customers_try_balance_at_its_markup(gateway):
    partner = token(gateway, "partner:acme-partner")
    response = call(gateway, "POST", "/dashboard/accounts", partner,
                    json={"kind": "partner_customer", "name": "Müşteri"})
    assert response.status_code == 201, response.text
    customer = response.json()
    assert (customer["markup_pct"], customer["currency"], customer["owner"]) == (30, "TRY", "acme-partner")
    account = customer["account_id"]
    response = call(gateway, "POST", f"/dashboard/accounts/{account}/keys", partner, json={"name": "their app"})
    assert response.status_code == 201, response.text
    key = response.json()["key"]
    gateway.known_keys.add(key)
    assert_error(call(gateway, "POST", f"/dashboard/accounts/{account}/topup", partner, json={"amount": "10"}),
                 403, "permission_denied")
    response = call(gateway, "POST", f"/dashboard/accounts/{account}/topup", token(gateway, "operator"),
                    json={"amount": "10"})
    assert response.status_code == 200 and response.json()["balance_micros"] == 10_000_000, response.text

    chat(gateway, key, "how much?")
    (record,) = call(gateway, "GET", f"/dashboard/accounts/{account}/usage", partner).json()["records"]
    assert record["status"] == "settled" and record["currency"] == "TRY" and record["markup_pct"] == 30
    cost = Decimal(record["provider_cost_usd"]) * Decimal("1.30") * Decimal(record["fx_rate"]) * 1_000_000
    assert record["charge_micros"] == int(cost.to_integral_value(rounding="ROUND_CEILING")) > 0
    (listed,) = [a for a in call(gateway, "GET", "/dashboard/accounts", partner).json()["accounts"]
                 if a["account_id"] == account]
    assert listed["balance_micros"] == 10_000_000 - record["charge_micros"]

    # Its markup, within the platform's bounds.
    response = call(gateway, "PATCH", f"/dashboard/accounts/{account}", partner, json={"markup_pct": 45})
    assert response.status_code == 200 and response.json()["markup_pct"] == 45, response.text
    assert_error(call(gateway, "PATCH", f"/dashboard/accounts/{account}", partner, json={"markup_pct": 500}), 400)


def test_a_retried_top_up_with_its_idempotency_key_is_added_once(gateway):
    operator = token(gateway, "operator")
    account = call(gateway, "POST", "/dashboard/accounts", operator, json={"kind": "user"}).json()["account_id"]
    path = f"/dashboard/accounts/{account}/topup"
    key = {"Idempotency-Key": f"invoice-{account}"}
    first = call(gateway, "POST", path, operator, json={"amount": "20"}, headers=dict(key))
    again = call(gateway, "POST", path, operator, json={"amount": "20"}, headers=dict(key))
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert "idempotent-replayed" not in first.headers and again.headers["idempotent-replayed"] == "true"
    assert again.json()["balance_micros"] == 20_000_000
    assert_error(call(gateway, "POST", path, operator, json={"amount": "21"}, headers=dict(key)), 409,
                 "idempotency_key_reused")
    assert gateway.cli_json("accounts", "show", account)["balance_micros"] == 20_000_000


def _routes() -> list[template.Route]:
    return [r for r in template.routes(template.load_template()) if r.path.startswith("/dashboard/")]


def _request(route: template.Route, account: str, key_id: str) -> tuple[str, dict]:
    path = route.path.replace("{account_id}", account).replace("{key_id}", key_id)
    body = {"POST /dashboard/accounts": {"kind": "partner_customer"},
            "PATCH /dashboard/accounts/{account_id}": {"name": "taken"},
            "POST /dashboard/accounts/{account_id}/topup": {"amount": "1"},
            "POST /dashboard/accounts/{account_id}/keys": {"name": "sneaky"},
            "POST /dashboard/keys/{key_id}/rotate": {"grace": "now"},
            "PATCH /dashboard/keys/{key_id}": {"rpm": 5}}.get(f"{route.method} {route.path}")
    params = {"account_id": account} if route.path == "/dashboard/audit" else {}
    if route.path.endswith("/statement"):
        params = {"month": time.strftime("%Y-%m", time.gmtime())}
    if route.path == "/dashboard/reports/margin":
        params = {"from": time.strftime("%Y-%m-%d", time.gmtime()), "to": time.strftime("%Y-%m-%d", time.gmtime())}
    return path, {"json": body, "params": params} if body is not None else {"params": params}


def test_every_route_needs_a_token_and_hides_other_tenants(gateway, user):
    account, _ = user
    victim_key = call(gateway, "POST", f"/dashboard/accounts/{account}/keys", user[1], json={"name": "v"}).json()
    gateway.known_keys.add(victim_key["key"])
    stranger = token(gateway, f"user:{demo_account(gateway, 'user')}")
    partner = token(gateway, "partner:someone-else")
    expired = expired_copy(user[1])  # the user's own token, one minute past its expiry
    routes = _routes()
    assert len(routes) == 16  # 13 API routes behind the authorizer; docs, the app's files and config.json
    for route in routes:
        if route.authorizer is None:
            continue
        path, kwargs = _request(route, account, victim_key["key_id"])
        for bad in (None, "not-a-token", expired):
            response = call(gateway, route.method, path, bad, **kwargs)
            assert response.status_code == 401, (route, bad, response.text)
            assert set(response.json()["error"]) == ENVELOPE_FIELDS
        if "{" not in route.path and route.path != "/dashboard/audit":
            continue
        unknown_path, unknown_kwargs = _request(route, "acct_" + "0" * 16, "key_" + "0" * 16)
        for bearer in (stranger, partner):
            foreign = call(gateway, route.method, path, bearer, **kwargs)
            never_issued = call(gateway, route.method, unknown_path, bearer, **unknown_kwargs)
            assert_error(foreign, 404)
            assert foreign.status_code == never_issued.status_code == 404, route
            assert (foreign.text.replace(account, "ID").replace(victim_key["key_id"], "ID")
                    == never_issued.text.replace("acct_" + "0" * 16, "ID").replace("key_" + "0" * 16, "ID"))
    # Nothing happened to the victim.
    assert call(gateway, "GET", "/v1/key", victim_key["key"]).status_code == 200
    keys = keys_of(gateway, user[1], account)
    assert keys[victim_key["key_id"]]["status"] == "active" and len(keys) >= 1
    (mine,) = call(gateway, "GET", "/dashboard/accounts", user[1]).json()["accounts"]
    assert mine["name"] == "Ayşe" and mine["balance_micros"] <= 50_000_000


def test_docs_and_openapi_document(gateway):
    from openapi_spec_validator import validate

    response = call(gateway, "GET", "/dashboard/docs")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    document = call(gateway, "GET", "/dashboard/docs", params={"format": "json"}).json()
    validate(document)
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    expected = {(r.method, r.path) for r in _routes() if r.authorizer is not None}
    assert documented == expected


def test_token_command_validates_its_input(gateway):
    result = gateway.cli("token", "--principal", "root", check=False)
    assert result.returncode == 2 and "principal" in result.stderr
    result = gateway.cli("token", check=False)
    assert result.returncode == 2 and "--email" in result.stderr
    result = gateway.cli("token", "--email", "nobody@example.com", "--password", "Wrong-password-1", check=False)
    assert result.returncode == 2 and "Incorrect email or password" in result.stderr
    document = gateway.cli_json("token", "--principal", "org:acme")
    claims = cognito.verify(cognito.Pool.from_env(gateway.env), document["token"])
    assert claims["custom:principal"] == "org:acme" and claims["token_use"] == "id"
    assert claims["exp"] - claims["iat"] == 3600  # template.yaml's IdTokenValidity: 60 minutes


def test_users_create_makes_a_sign_in_that_lists_exactly_its_own_accounts(gateway):
    """Issue 13's test: a pool user signed in with InitiateAuth against dev.env's endpoint (boto3, as any
    client would) lists exactly their own accounts at /dashboard/accounts."""
    import boto3

    mine = gateway.cli_json("accounts", "create", "--kind", "user", "--name", "Deniz")["account_id"]
    other = gateway.cli_json("accounts", "create", "--kind", "user", "--name", "Someone else")["account_id"]
    email = f"deniz-{mine}@example.com"
    created = gateway.cli_json("users", "create", "--principal", f"user:{mine}", "--email", email,
                               "--password", "Deniz-password-1")
    assert created["principal"] == f"user:{mine}" and created["user_pool_id"] == gateway.env["ONYSOFT_USER_POOL_ID"]
    idp = boto3.client("cognito-idp", endpoint_url=gateway.env["AWS_ENDPOINT_URL_COGNITO_IDP"],
                       region_name=gateway.env["AWS_REGION"], aws_access_key_id="x", aws_secret_access_key="x")
    result = idp.initiate_auth(ClientId=gateway.env["ONYSOFT_USER_POOL_CLIENT_ID"], AuthFlow="USER_PASSWORD_AUTH",
                               AuthParameters={"USERNAME": email, "PASSWORD": "Deniz-password-1"})
    id_token = result["AuthenticationResult"]["IdToken"]
    listed = call(gateway, "GET", "/dashboard/accounts", id_token)
    assert listed.status_code == 200, listed.text
    assert listed.json()["principal"] == f"user:{mine}"
    assert [a["account_id"] for a in listed.json()["accounts"]] == [mine]
    assert other not in listed.text
    # API Gateway's Cognito authorizer takes ID tokens only, of this pool's app client, unexpired.
    access = result["AuthenticationResult"]["AccessToken"]
    for bad in (access, expired_copy(id_token), expired_copy(id_token, seconds_ago=-600, aud="another-client"),
                expired_copy(id_token, seconds_ago=-600, iss="https://cognito-idp.us-east-1.amazonaws.com/other")):
        assert_error(call(gateway, "GET", "/dashboard/accounts", bad), 401)
    assert call(gateway, "GET", "/dashboard/accounts", expired_copy(id_token, seconds_ago=-600)).status_code == 200
    # The same email twice, or a password the pool's policy refuses: exit 2, in words.
    again = gateway.cli("users", "create", "--principal", f"user:{mine}", "--email", email, "--password",
                        "Deniz-password-2", check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    weak = gateway.cli("users", "create", "--principal", "operator", "--email", "w@example.com", "--password", "short",
                       check=False)
    assert weak.returncode == 2 and weak.stderr.startswith("onysoft: error:")


def test_sign_ins_survive_a_restart(new_gateway, tmp_path):
    """moto keeps users in memory: the pool and client ids are the same after a restart, the demo sign-ins
    and those made with `onysoft users create` work again, and a token from before the restart still does."""
    first = new_gateway(tmp_path / "state").start()
    account = first.demo[0]["account_id"]
    first.cli_json("users", "create", "--principal", f"user:{account}", "--email", "kept@example.com",
                   "--password", "Kept-password-1")
    before = first.cli_json("token", "--email", "kept@example.com", "--password", "Kept-password-1")["token"]
    ids = {k: first.env[k] for k in (cognito.POOL_ENV, cognito.CLIENT_ENV)}
    first.stop()
    second = new_gateway(tmp_path / "state").start()
    assert {k: second.env[k] for k in ids} == ids
    for email, password, status in (("kept@example.com", "Kept-password-1", 200),
                                    # the operator's sign-in works; the API wants its TOTP set up first
                                    (cognito.demo_email("operator"), cognito.DEMO_PASSWORD, 403)):
        document = second.cli_json("token", "--email", email, "--password", password)
        assert call(second, "GET", "/dashboard/accounts", document["token"]).status_code == status
    assert call(second, "GET", "/dashboard/accounts", before).json()["principal"] == f"user:{account}"


def test_concurrent_requests_of_two_people_each_get_their_own_answer(gateway):
    """A Lambda instance serves one request at a time, and Powertools' resolver keeps the request it serves in
    the instance (app.current_event, app.context). `onysoft dev` once called one instance from many threads: a
    page that loads its tables at once got a 500 (KeyError '_route_args': another request had cleared the
    context) one sign-in in ten, and a request could be answered with another person's event. Each call now
    gets an instance of its own, as in Lambda."""
    from concurrent.futures import ThreadPoolExecutor

    operator = token(gateway, "operator")
    people = []
    for name in ("Concurrent A", "Concurrent B"):
        account = call(gateway, "POST", "/dashboard/accounts", operator, json={"kind": "user", "name": name}).json()
        people.append((account["account_id"], token(gateway, f"user:{account['account_id']}")))

    def ask(i: int) -> tuple[str, int, list[str]]:
        account, bearer = people[i % 2]
        if i % 4 < 2:
            response = call(gateway, "GET", "/dashboard/accounts", bearer)
            seen = [a["account_id"] for a in response.json().get("accounts", [])] if response.is_success else []
        else:
            response = call(gateway, "GET", f"/dashboard/accounts/{account}/usage", bearer,
                            params={"from": "2026-01-01T00:00:00Z", "limit": 1})
            seen = [account] if response.is_success else []
        return account, response.status_code, seen if response.is_success else [response.text[:300]]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(160)))
    assert [status for _, status, _ in answers] == [200] * len(answers), [a for a in answers if a[1] != 200]
    assert all(seen == [account] for account, _, seen in answers), answers
