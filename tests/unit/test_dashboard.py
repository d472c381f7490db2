"""The dashboard API through its Lambda handler, with REST API proxy events as API Gateway's Cognito
authorizer sends them (claims in requestContext.authorizer.claims), on moto's in-process DynamoDB.

Each principal's allowed actions; for every route, the foreign-tenant (404, the same answer as an id that
does not exist) and no-token (401) cases; the OpenAPI document is valid and names exactly the routes.
"""

import base64
import json
import re
import time
import uuid

import pytest

from onysoft import accounts, api_keys, audit, principals
from onysoft.authorization import Denied, authorize
from onysoft.models import UsageRecord
from onysoft_tools import template as reader
from tests.helpers import load_function_module

dashboard_app = load_function_module("dashboard")

# (method, resource) of every dashboard route but the docs; template.yaml must say the same.
ROUTES = [
    ("GET", "/dashboard/accounts"),
    ("POST", "/dashboard/accounts"),
    ("PATCH", "/dashboard/accounts/{account_id}"),
    ("POST", "/dashboard/accounts/{account_id}/topup"),
    ("GET", "/dashboard/accounts/{account_id}/keys"),
    ("POST", "/dashboard/accounts/{account_id}/keys"),
    ("DELETE", "/dashboard/keys/{key_id}"),
    ("PATCH", "/dashboard/keys/{key_id}"),
    ("POST", "/dashboard/keys/{key_id}/rotate"),
    ("GET", "/dashboard/accounts/{account_id}/usage"),
    ("GET", "/dashboard/audit"),
    ("GET", "/dashboard/reports/margin"),
    ("GET", "/dashboard/accounts/{account_id}/statement"),
]
DOCS = ("GET", "/dashboard/docs")


def make_event(method: str, resource: str, *, path_params: dict | None = None, body=None, query: dict | None = None,
               principal: str | None = None, claims: dict | None = None) -> dict:
    path = resource
    for name, value in (path_params or {}).items():
        path = path.replace("{" + name + "}", value)
    if claims is None and principal is not None:
        claims = {"sub": str(uuid.uuid4()), "custom:principal": principal, "token_use": "id",
                  "cognito:username": "someone"}
    context = {"resourcePath": resource, "httpMethod": method, "path": f"/prod{path}", "stage": "prod",
               "requestId": str(uuid.uuid4()), "identity": {"sourceIp": "127.0.0.1"}}
    if claims is not None:
        context["authorizer"] = {"claims": claims}
    return {
        "resource": resource, "path": path, "httpMethod": method,
        "headers": {"Content-Type": "application/json"}, "multiValueHeaders": {"Content-Type": ["application/json"]},
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": {k: [v] for k, v in (query or {}).items()} or None,
        "pathParameters": path_params or None, "stageVariables": None, "requestContext": context,
        "body": body if body is None or isinstance(body, str) else json.dumps(body), "isBase64Encoded": False,
    }


def call(method: str, resource: str, principal: str | None = None, **kwargs) -> tuple[int, dict]:
    response = dashboard_app.handler(make_event(method, resource, principal=principal, **kwargs), None)
    body = response["body"]
    return response["statusCode"], json.loads(body) if body else {}


def assert_error(status: int, body: dict, expected: int, code: str | None = None) -> None:
    assert status == expected, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}, body
    if code:
        assert body["error"]["code"] == code, body


@pytest.fixture
def world(aws_tables):
    """Tenants: two users, two orgs' projects, two partners' accounts; each with a key."""
    made = {
        "user": accounts.create_account("user", name="Ayşe"),
        "user2": accounts.create_account("user", name="Mehmet"),
        "project": accounts.create_account("project", name="acme web", owner="acme"),
        "project2": accounts.create_account("project", name="other web", owner="other"),
        "pproject": accounts.create_account("partner_project", name="p1 own", owner="p1"),
        "customer": accounts.create_account("partner_customer", name="p1 customer", owner="p1"),
        "customer2": accounts.create_account("partner_customer", name="p2 customer", owner="p2"),
    }
    ids = {name: a.account_id for name, a in made.items()}
    keys = {name: api_keys.create_key(account_id, name=f"{name} key") for name, account_id in ids.items()}
    return {"ids": ids, "keys": keys}


PRINCIPALS = {
    "user": lambda w: f"user:{w['ids']['user']}",
    "org": lambda w: "org:acme",
    "partner": lambda w: "partner:p1",
    "operator": lambda w: "operator",
}
SEES = {
    "user": {"user"},
    "org": {"project"},
    "partner": {"pproject", "customer"},
    "operator": {"user", "user2", "project", "project2", "pproject", "customer", "customer2"},
}
# An account of each principal's own, and one of another tenant's.
OWN = {"user": "user", "org": "project", "partner": "customer", "operator": "customer2"}
FOREIGN = {"user": "user2", "org": "project2", "partner": "customer2"}


# ------------------------------------------------------------------------------------------ principals


@pytest.mark.parametrize("text, kind, ident", [
    ("user:acct_0123456789abcdef", "user", "acct_0123456789abcdef"), ("org:acme", "org", "acme"),
    ("partner:p-1.x", "partner", "p-1.x"), ("operator", "operator", ""),
])
def test_principals_parse(text, kind, ident):
    principal = principals.parse(text)
    assert (principal.kind, principal.id) == (kind, ident)
    assert str(principal) == text


@pytest.mark.parametrize("text", [None, "", "user", "user:", "user:acct_x", "admin:x", "org:", "org:a b",
                                  "operator:x", "partner:" + "x" * 65, 42])
def test_principals_reject_malformed(text):
    with pytest.raises(principals.PrincipalError):
        principals.parse(text)


# ------------------------------------------------------------------------------------------ accounts


@pytest.mark.parametrize("who", sorted(PRINCIPALS))
def test_each_principal_lists_exactly_its_accounts(world, who):
    status, body = call("GET", "/dashboard/accounts", PRINCIPALS[who](world))
    assert status == 200, body
    assert body["principal"] == PRINCIPALS[who](world)
    assert {a["account_id"] for a in body["accounts"]} == {world["ids"][n] for n in SEES[who]}
    account = next(a for a in body["accounts"] if a["account_id"] == world["ids"][OWN[who]])
    assert set(account) >= {"account_id", "kind", "currency", "balance", "balance_micros", "markup_pct", "name"}
    assert account["balance"] == "0.000000" and account["balance_micros"] == 0


def test_partner_creates_a_customer_at_30_percent_and_sets_its_markup_within_bounds(world):
    status, body = call("POST", "/dashboard/accounts", "partner:p1",
                        body={"kind": "partner_customer", "name": "Müşteri A.Ş."})
    assert status == 201, body
    assert body["kind"] == "partner_customer" and body["currency"] == "TRY" and body["markup_pct"] == 30
    assert body["owner"] == "p1" and body["name"] == "Müşteri A.Ş." and body["balance"] == "0.000000"
    customer = body["account_id"]
    status, body = call("PATCH", "/dashboard/accounts/{account_id}", "partner:p1",
                        path_params={"account_id": customer}, body={"markup_pct": 45.5})
    assert status == 200 and body["markup_pct"] == 45.5, body
    assert accounts.get_account(customer).markup_bp == 4550
    status, body = call("PATCH", "/dashboard/accounts/{account_id}", "partner:p1",
                        path_params={"account_id": customer}, body={"markup_pct": 250})
    assert_error(status, body, 400)
    assert "200%" in body["error"]["message"] and body["error"]["param"] == "markup_pct"
    status, body = call("PATCH", "/dashboard/accounts/{account_id}", "partner:p1",
                        path_params={"account_id": customer}, body={"markup_pct": 12.345})
    assert_error(status, body, 400)
    status, body = call("POST", "/dashboard/accounts", "partner:p1",
                        body={"kind": "partner_project", "name": "own", "markup_pct": 80})
    assert status == 201 and body["currency"] == "USD" and body["markup_pct"] == 80, body
    # The new accounts are the partner's: it lists them (the owner index may lag; moto's does not).
    status, body = call("GET", "/dashboard/accounts", "partner:p1")
    assert customer in {a["account_id"] for a in body["accounts"]}


@pytest.mark.parametrize("who, request_body, code", [
    ("user", {"kind": "user", "name": "x"}, 403),
    ("partner", {"kind": "project", "name": "x"}, 403),
    ("partner", {"kind": "partner_customer", "owner": "p2"}, 403),
    ("org", {"kind": "partner_customer"}, 403),
    ("org", {"kind": "project", "markup_pct": 10}, 403),
    ("operator", {"kind": "project"}, 400),  # a project needs its org
    ("operator", {"kind": "user", "owner": "acme"}, 400),
    ("operator", {"kind": "nope"}, 400),
    ("partner", {"kind": "partner_customer", "extra": 1}, 400),
])
def test_account_creation_rules(world, who, request_body, code):
    status, body = call("POST", "/dashboard/accounts", PRINCIPALS[who](world), body=request_body)
    assert_error(status, body, code)


def test_org_creates_projects_and_operator_creates_any(world):
    status, body = call("POST", "/dashboard/accounts", "org:acme", body={"kind": "project", "name": "api"})
    assert status == 201 and body["owner"] == "acme" and body["markup_pct"] == 50, body
    status, body = call("POST", "/dashboard/accounts", "operator",
                        body={"kind": "project", "owner": "acme", "markup_pct": 20})
    assert status == 201 and body["markup_pct"] == 20, body
    status, listed = call("GET", "/dashboard/accounts", "org:acme")
    assert body["account_id"] in {a["account_id"] for a in listed["accounts"]}


def test_markup_changes_are_the_platforms_for_projects_and_users(world):
    ids = world["ids"]
    for who, account in (("org", "project"), ("user", "user")):
        status, body = call("PATCH", "/dashboard/accounts/{account_id}", PRINCIPALS[who](world),
                            path_params={"account_id": ids[account]}, body={"markup_pct": 10})
        assert_error(status, body, 403, "permission_denied")
    status, body = call("PATCH", "/dashboard/accounts/{account_id}", "org:acme",
                        path_params={"account_id": ids["project"]}, body={"name": "renamed"})
    assert status == 200 and body["name"] == "renamed", body
    status, body = call("PATCH", "/dashboard/accounts/{account_id}", "operator",
                        path_params={"account_id": ids["project"]}, body={"markup_pct": 35})
    assert status == 200 and body["markup_pct"] == 35, body
    status, body = call("PATCH", "/dashboard/accounts/{account_id}", "operator",
                        path_params={"account_id": ids["project"]}, body={})
    assert_error(status, body, 400)


def test_only_the_operator_tops_up(world):
    ids = world["ids"]
    status, body = call("POST", "/dashboard/accounts/{account_id}/topup", "operator",
                        path_params={"account_id": ids["customer"]}, body={"amount": "12.5"})
    assert status == 200, body
    assert body["balance"] == "12.500000" and body["balance_micros"] == 12_500_000 and body["currency"] == "TRY"
    status, body = call("POST", "/dashboard/accounts/{account_id}/topup", "operator",
                        path_params={"account_id": ids["customer"]}, body={"amount": 0.25})
    assert status == 200 and body["balance_micros"] == 12_750_000, body
    for bad in ("0", "-1", "1.0000001", "abc"):
        status, body = call("POST", "/dashboard/accounts/{account_id}/topup", "operator",
                            path_params={"account_id": ids["customer"]}, body={"amount": bad})
        assert_error(status, body, 400)
        assert body["error"]["param"] == "amount"
    for who in ("user", "org", "partner"):
        status, body = call("POST", "/dashboard/accounts/{account_id}/topup", PRINCIPALS[who](world),
                            path_params={"account_id": ids[OWN[who]]}, body={"amount": "1"})
        assert_error(status, body, 403, "permission_denied")
    assert accounts.get_account(ids["customer"]).balance_micros == 12_750_000


# ------------------------------------------------------------------------------------------ keys


def test_user_creates_three_keys_lists_them_and_deletes_one(world):
    account = world["ids"]["user"]
    principal = f"user:{account}"
    created = []
    for name in ("laptop", "ci", "notebook"):
        status, body = call("POST", "/dashboard/accounts/{account_id}/keys", principal,
                            path_params={"account_id": account}, body={"name": name, "rpm": 30})
        assert status == 201, body
        assert re.fullmatch(r"sk-ony-[0-9a-f]{48}", body["key"])
        assert body["type"] == "user" and body["account_id"] == account and body["name"] == name
        assert body["display"].startswith("sk-ony-") and body["key"] not in body["display"]
        assert body["rpm"] == 30 and body["status"] == "active" and body["last_used_at"] is None
        created.append(body)
        # It authenticates at /v1 at once.
        assert authorize(f"Bearer {body['key']}").key_id == body["key_id"]
    status, body = call("GET", "/dashboard/accounts/{account_id}/keys", principal, path_params={"account_id": account})
    assert status == 200, body
    listed = {k["key_id"]: k for k in body["keys"]}
    assert {c["key_id"] for c in created} <= set(listed)
    assert len(listed) == 4  # and the fixture's
    for item in body["keys"]:
        assert "key" not in item and "key_hash" not in item
        assert set(item) >= {"key_id", "display", "name", "type", "status", "created_at", "last_used_at",
                             "spend", "spend_micros", "rpm", "tpm", "models", "request_count"}
    assert all(c["key"] not in json.dumps(body) for c in created)

    gone = created[1]
    status, body = call("DELETE", "/dashboard/keys/{key_id}", principal, path_params={"key_id": gone["key_id"]})
    assert status == 200 and body["status"] == "deleted" and body["deleted_at"], body
    with pytest.raises(Denied):
        authorize(f"Bearer {gone['key']}")
    assert authorize(f"Bearer {created[0]['key']}").key_id == created[0]["key_id"]
    status, body = call("GET", "/dashboard/accounts/{account_id}/keys", principal, path_params={"account_id": account})
    assert gone["key_id"] not in {k["key_id"] for k in body["keys"]}
    status, body = call("GET", "/dashboard/accounts/{account_id}/keys", principal, path_params={"account_id": account},
                        query={"include_deleted": "true"})
    assert {k["key_id"]: k["status"] for k in body["keys"]}[gone["key_id"]] == "deleted"
    status, body = call("DELETE", "/dashboard/keys/{key_id}", principal, path_params={"key_id": gone["key_id"]})
    assert_error(status, body, 404, "key_not_found")


@pytest.mark.parametrize("who", ["org", "partner", "operator"])
def test_owners_manage_their_accounts_keys(world, who):
    account = world["ids"][OWN[who]]
    status, body = call("POST", "/dashboard/accounts/{account_id}/keys", PRINCIPALS[who](world),
                        path_params={"account_id": account},
                        body={"name": "k", "models": ["mock/echo"], "expires_at": "2999-01-01T00:00:00Z"})
    assert status == 201, body
    assert body["models"] == ["mock/echo"] and body["expires_at"] == "2999-01-01T00:00:00.000000Z"
    assert authorize(f"Bearer {body['key']}").account_id == account
    status, deleted = call("DELETE", "/dashboard/keys/{key_id}", PRINCIPALS[who](world),
                           path_params={"key_id": body["key_id"]})
    assert status == 200 and deleted["status"] == "deleted"


@pytest.mark.parametrize("request_body", [
    {"name": "x" * 201}, {"rpm": 0}, {"tpm": -1}, {"models": ["no-slash"]}, {"expires_at": "yesterday"},
    {"expires_at": "2001-01-01T00:00:00Z"}, {"key": "sk-ony-" + "0" * 48},
])
def test_key_creation_validates(world, request_body):
    account = world["ids"]["user"]
    status, body = call("POST", "/dashboard/accounts/{account_id}/keys", f"user:{account}",
                        path_params={"account_id": account}, body=request_body)
    assert_error(status, body, 400)


def test_partner_customer_key_charges_the_customer(world):
    status, body = call("POST", "/dashboard/accounts", "partner:p1", body={"kind": "partner_customer"})
    customer = body["account_id"]
    status, body = call("POST", "/dashboard/accounts/{account_id}/keys", "partner:p1",
                        path_params={"account_id": customer}, body={"name": "their app"})
    assert status == 201 and body["type"] == "partner_customer" and body["currency"] == "TRY", body
    caller = authorize(f"Bearer {body['key']}")
    assert (caller.account_id, caller.currency, caller.markup_bp, caller.key_type) == (
        customer, "TRY", 3000, "partner_customer")


# ------------------------------------------------------------------------------------------ tenants


def _route_call(world, method: str, resource: str, account: str | None, key: str | None, principal: str | None):
    params = {}
    if "{account_id}" in resource:
        params["account_id"] = account
    if "{key_id}" in resource:
        params["key_id"] = key
    body = {
        ("POST", "/dashboard/accounts"): {"kind": "partner_customer"},
        ("PATCH", "/dashboard/accounts/{account_id}"): {"name": "mine now"},
        ("POST", "/dashboard/accounts/{account_id}/topup"): {"amount": "1"},
        ("POST", "/dashboard/accounts/{account_id}/keys"): {"name": "sneaky"},
        ("POST", "/dashboard/keys/{key_id}/rotate"): {"grace": "1h"},
        ("PATCH", "/dashboard/keys/{key_id}"): {"rpm": 5},
    }.get((method, resource))
    query = {"account_id": account} if resource == "/dashboard/audit" else None
    if resource.endswith("/statement"):
        query = {"month": time.strftime("%Y-%m", time.gmtime())}
    return call(method, resource, principal, path_params=params or None, body=body, query=query)


TENANT_ROUTES = [r for r in ROUTES if "{" in r[1] or r == ("GET", "/dashboard/audit")]


@pytest.mark.parametrize("who", sorted(FOREIGN))
@pytest.mark.parametrize("method, resource", TENANT_ROUTES)
def test_a_foreign_tenant_gets_what_an_unknown_id_gets(world, who, method, resource):
    principal = PRINCIPALS[who](world)
    foreign = world["ids"][FOREIGN[who]]
    foreign_key = world["keys"][FOREIGN[who]].record.key_id
    unknown, unknown_key = "acct_" + "0" * 16, "key_" + "0" * 16
    status, body = _route_call(world, method, resource, foreign, foreign_key, principal)
    assert_error(status, body, 404)
    status2, body2 = _route_call(world, method, resource, unknown, unknown_key, principal)
    assert status2 == 404
    # The very same answer, but for the id in the message.
    same = json.dumps(body).replace(foreign, "ID").replace(foreign_key, "ID")
    assert same == json.dumps(body2).replace(unknown, "ID").replace(unknown_key, "ID")
    # And nothing happened to the foreign account or its key.
    assert api_keys.find_by_key_id(foreign_key).status == "active"
    assert accounts.get_account(foreign).name != "mine now"
    assert len(api_keys.list_keys(foreign)) == 1
    assert accounts.get_account(foreign).balance_micros == 0


def test_usage_of_a_foreign_key_under_an_own_account_is_not_found(world):
    account = world["ids"]["user"]
    foreign_key = world["keys"]["user2"].record.key_id
    status, body = call("GET", "/dashboard/accounts/{account_id}/usage", f"user:{account}",
                        path_params={"account_id": account}, query={"key_id": foreign_key})
    assert_error(status, body, 404, "key_not_found")


@pytest.mark.parametrize("claims", [
    None, {}, {"sub": "x"}, {"custom:principal": "root"}, {"custom:principal": "user:acct_zz"},
])
@pytest.mark.parametrize("method, resource", ROUTES)
def test_no_token_or_no_principal_is_401_on_every_route(aws_tables, method, resource, claims):
    account = accounts.create_account("user").account_id
    key = api_keys.create_key(account).record.key_id
    params = {"account_id": account, "key_id": key}
    params = {k: v for k, v in params.items() if "{" + k + "}" in resource}
    event = make_event(method, resource, path_params=params or None, claims=claims, body={"name": "x"})
    response = dashboard_app.handler(event, None)
    status, body = response["statusCode"], json.loads(response["body"])
    assert_error(status, body, 401, "invalid_token")
    assert response["headers"]["WWW-Authenticate"] == "Bearer"
    assert api_keys.find_by_key_id(key).status == "active"


# ------------------------------------------------------------------------------------------ usage


def _usage(account: str, key_id: str, at: str, model: str, charge: int, status: str = "settled") -> None:
    request_id = uuid.uuid4().hex
    UsageRecord(account_id=account, sk=f"{at}#{request_id}", request_id=request_id, key_id=key_id, created_at=at,
                status=status, model=model, currency="TRY", prompt_tokens=10, completion_tokens=5,
                charge_micros=charge if status == "settled" else 0, markup_bp=5000, fx_rate="41.5",
                key_hash="0" * 64, key_shard=key_id).save()  # as the hold writes it (onysoft.billing)


def _roll_up() -> None:
    """What the rollup function does in AWS (the Usage table's stream -> UsageRollups), here and now."""
    from onysoft import config
    from onysoft_tools.local.rollup_poller import RollupPoller

    RollupPoller(config.table_name("ONYSOFT_TABLE_USAGE")).drain()


def test_usage_pages_and_totals(world):
    account = world["ids"]["user"]
    key1 = world["keys"]["user"].record.key_id
    key2 = api_keys.create_key(account, name="second").record.key_id
    _usage(account, key1, "2026-11-01T10:00:00.000000Z", "mock/echo", 100)
    _usage(account, key1, "2026-11-01T11:00:00.000000Z", "openai/gpt-4o", 200)
    _usage(account, key2, "2026-11-02T09:00:00.000000Z", "mock/echo", 400)
    _usage(account, key2, "2026-11-02T09:30:00.000000Z", "mock/echo", 0, status="failed")
    _usage(account, key1, "2026-11-03T00:00:00.000000Z", "mock/echo", 800)  # at `to`: excluded
    _usage(world["ids"]["user2"], world["keys"]["user2"].record.key_id, "2026-11-01T10:00:00.000000Z",
           "mock/echo", 999)
    _roll_up()
    principal = f"user:{account}"
    query = {"from": "2026-11-01T00:00:00Z", "to": "2026-11-03T00:00:00Z", "limit": "3"}
    status, body = call("GET", "/dashboard/accounts/{account_id}/usage", principal,
                        path_params={"account_id": account}, query=query)
    assert status == 200, body
    assert [r["created_at"][:13] for r in body["records"]] == ["2026-11-02T09", "2026-11-02T09", "2026-11-01T11"]
    assert body["next"] and body["currency"] == "TRY"
    totals = body["totals"]
    assert totals["total"]["requests"] == 4 and totals["total"]["charge_micros"] == 700
    assert totals["total"]["charge"] == "0.000700" and totals["total"]["failed"] == 1
    assert (totals["from"], totals["to"]) == ("2026-11-01T00:00:00.000000Z", "2026-11-03T00:00:00.000000Z")
    assert totals["items_read"] == 3  # (day, model) rollups of this account: 01 echo, 01 gpt-4o, 02 echo
    assert [(d["day"], d["charge_micros"], d["requests"]) for d in totals["by_day"]] == [
        ("2026-11-01", 300, 2), ("2026-11-02", 400, 2)]
    by_model = [(m["model"], m["charge_micros"]) for m in totals["by_model"]]
    assert by_model == [("mock/echo", 500), ("openai/gpt-4o", 200)]
    record = body["records"][0]
    assert "key_hash" not in record and record["charge"] == "0.000000" and record["status"] == "failed"

    status, page2 = call("GET", "/dashboard/accounts/{account_id}/usage", principal,
                         path_params={"account_id": account}, query={**query, "cursor": body["next"]})
    assert status == 200, page2
    assert [r["created_at"][:13] for r in page2["records"]] == ["2026-11-01T10"]
    assert page2["next"] is None and page2["totals"] is None

    status, by_key = call("GET", "/dashboard/accounts/{account_id}/usage", principal,
                          path_params={"account_id": account}, query={**query, "key_id": key2})
    assert status == 200 and {r["key_id"] for r in by_key["records"]} == {key2}, by_key
    assert by_key["totals"]["total"]["charge_micros"] == 400

    # A cursor only continues the caller's own query.
    cursor = json.loads(base64.urlsafe_b64decode(body["next"] + "=="))
    cursor["account_id"]["S"] = world["ids"]["user2"]
    forged = base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode()
    for bad in (forged, "!!!", "e30"):
        status, err = call("GET", "/dashboard/accounts/{account_id}/usage", principal,
                           path_params={"account_id": account}, query={**query, "cursor": bad})
        assert_error(status, err, 400)
        assert err["error"]["param"] == "cursor"
    for bad_query in ({"from": "yesterday"}, {"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"},
                      {"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, {"limit": "0"}):
        status, err = call("GET", "/dashboard/accounts/{account_id}/usage", principal,
                           path_params={"account_id": account}, query=bad_query)
        assert_error(status, err, 400)


def test_one_keys_usage_pages_newest_first_from_its_index(world, dynamodb_reads):
    """A key's usage is a Query of its by_key_shard entries (issue 23), never the account's records filtered:
    pages stay full, newest first, every record of the key comes exactly once across them, among many of another
    key, and a page of 2 reads at most 3 index entries and 2 records."""
    account = world["ids"]["user"]
    key1 = world["keys"]["user"].record.key_id
    key2 = api_keys.create_key(account, name="sparse").record.key_id
    for hour in range(10):
        for minute in range(0, 60, 10):  # 60 records of key1 ...
            _usage(account, key1, f"2026-11-01T{hour:02d}:{minute:02d}:00.000000Z", "mock/echo", 1)
        if hour % 2:  # ... and 5 of key2 between them
            _usage(account, key2, f"2026-11-01T{hour:02d}:05:00.000000Z", "mock/echo", 10)
    _roll_up()
    query = {"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z", "limit": "2", "key_id": key2}
    seen, cursor = [], None
    for _ in range(5):
        status, page = call("GET", "/dashboard/accounts/{account_id}/usage", f"user:{account}",
                            path_params={"account_id": account}, query={**query, **({"cursor": cursor} if cursor
                                                                                     else {})})
        assert status == 200, page
        assert {r["key_id"] for r in page["records"]} <= {key2}
        usage_reads = [(index, n) for table, index, _, n in dynamodb_reads() if table == UsageRecord.Meta.table_name]
        # (limit + 1) entries of the one shard's by_key_shard partition, then the page's records; never the 60 others
        assert sum(n for _, n in usage_reads) <= 3 + 2 and {i for i, _ in usage_reads} == {"by_key_shard", None}, \
            usage_reads
        seen += [r["created_at"] for r in page["records"]]
        if cursor is None:
            assert page["totals"]["total"]["requests"] == 5 and page["totals"]["total"]["charge_micros"] == 50
        cursor = page["next"]
        if not cursor:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == 5
    assert [t[11:13] for t in seen] == ["09", "07", "05", "03", "01"]


def test_usage_defaults_to_the_last_30_days(world):
    account = world["ids"]["user"]
    status, body = call("GET", "/dashboard/accounts/{account_id}/usage", f"user:{account}",
                        path_params={"account_id": account})
    assert status == 200 and body["records"] == [] and body["next"] is None, body
    assert body["totals"]["total"]["requests"] == 0


# ------------------------------------------------------------------------------------------ audit


def test_audit_records_who_did_what_and_owners_list_theirs(world):
    ids = world["ids"]
    user = f"user:{ids['user']}"
    status, key = call("POST", "/dashboard/accounts/{account_id}/keys", user, path_params={"account_id": ids["user"]},
                       body={"name": "audited"})
    call("DELETE", "/dashboard/keys/{key_id}", user, path_params={"key_id": key["key_id"]})
    status, customer = call("POST", "/dashboard/accounts", "partner:p1", body={"kind": "partner_customer"})
    call("PATCH", "/dashboard/accounts/{account_id}", "partner:p1", path_params={"account_id": customer["account_id"]},
         body={"markup_pct": 40})
    call("POST", "/dashboard/accounts/{account_id}/topup", "operator",
         path_params={"account_id": customer["account_id"]}, body={"amount": "5"})

    status, body = call("GET", "/dashboard/audit", user)
    assert status == 200, body
    assert [(r["action"], r["key_id"]) for r in body["records"]] == [
        ("key.delete", key["key_id"]), ("key.create", key["key_id"])]
    record = body["records"][1]
    assert record["actor"] == user and record["account_id"] == ids["user"] and record["at"].endswith("Z")
    assert record["details"]["name"] == "audited" and key["key"] not in json.dumps(body)

    status, body = call("GET", "/dashboard/audit", "partner:p1")
    actions = [(r["action"], r["actor"]) for r in body["records"]]
    assert actions == [("account.topup", "operator"), ("account.update", "partner:p1"),
                       ("account.create", "partner:p1")]
    assert body["records"][1]["details"] == {"markup_pct": {"from": 30, "to": 40}}

    for other in (f"user:{ids['user2']}", "org:acme", "partner:p2"):
        status, body = call("GET", "/dashboard/audit", other)
        assert status == 200 and body["records"] == [], (other, body)

    status, body = call("GET", "/dashboard/audit", "operator", query={"limit": "2"})
    assert len(body["records"]) == 2 and body["next"]
    status, rest = call("GET", "/dashboard/audit", "operator", query={"limit": "2", "cursor": body["next"]})
    status, last = call("GET", "/dashboard/audit", "operator", query={"limit": "2", "cursor": rest["next"]})
    assert len(body["records"] + rest["records"] + last["records"]) == 5
    status, only = call("GET", "/dashboard/audit", "operator", query={"account_id": ids["user"]})
    assert {r["action"] for r in only["records"]} == {"key.create", "key.delete"}
    # Audit records never show up as usage.
    assert list(UsageRecord.query(ids["user"])) == []
    assert len(list(audit.iter_all(principals.parse(user)))) == 2


@pytest.mark.parametrize("action", ["topup", "create_key", "delete_key", "create_account", "update_account"])
def test_an_action_whose_audit_record_cannot_be_written_does_not_happen(world, monkeypatch, action):
    """The action and its audit record are one transaction: if the record is refused, so is the action."""
    ids = world["ids"]
    user_account = ids["user"]
    key = api_keys.create_key(user_account, name="victim")
    real_entries = audit.entries

    def colliding(*args, **kwargs):
        items = real_entries(*args, **kwargs)
        items[0].save()  # already there: its put in the transaction fails its condition
        return items

    monkeypatch.setattr(audit, "entries", colliding)
    before = {
        "balance": accounts.get_account(user_account).balance_micros,
        "keys": sorted(k.key_id for k in api_keys.list_keys(user_account)),
        "accounts": len(list(principals.parse("partner:p1").accounts())),
    }
    if action == "topup":
        request = ("POST", "/dashboard/accounts/{account_id}/topup", "operator",
                   {"path_params": {"account_id": user_account}, "body": {"amount": "5"}})
    elif action == "create_key":
        request = ("POST", "/dashboard/accounts/{account_id}/keys", f"user:{user_account}",
                   {"path_params": {"account_id": user_account}, "body": {"name": "never"}})
    elif action == "delete_key":
        request = ("DELETE", "/dashboard/keys/{key_id}", f"user:{user_account}",
                   {"path_params": {"key_id": key.record.key_id}})
    elif action == "create_account":
        request = ("POST", "/dashboard/accounts", "partner:p1", {"body": {"kind": "partner_customer"}})
    else:
        request = ("PATCH", "/dashboard/accounts/{account_id}", "operator",
                   {"path_params": {"account_id": user_account}, "body": {"name": "renamed"}})
    method, resource, principal, kwargs = request
    status, body = call(method, resource, principal, **kwargs)
    assert_error(status, body, 500)  # the envelope, no trace; nothing happened, so a retry is safe
    assert accounts.get_account(user_account).balance_micros == before["balance"]
    assert sorted(k.key_id for k in api_keys.list_keys(user_account)) == before["keys"]
    assert api_keys.find_by_key_id(key.record.key_id).status == "active"
    assert len(list(principals.parse("partner:p1").accounts())) == before["accounts"]
    assert accounts.get_account(user_account).name == "Ayşe"


# ------------------------------------------------------------------------------------------ errors, docs


def test_bad_json_and_unknown_routes_answer_in_the_envelope(world):
    status, body = call("POST", "/dashboard/accounts", "operator", body="{not json")
    assert_error(status, body, 400)
    status, body = call("GET", "/dashboard/nope", "operator")
    assert_error(status, body, 404, "unknown_url")
    status, body = call("POST", "/dashboard/accounts", "operator", body={"kind": "user", "markup_pct": "abc"})
    assert_error(status, body, 400)
    assert body["error"]["param"] == "markup_pct"


def _openapi_document() -> dict:
    response = dashboard_app.handler(make_event(*DOCS, query={"format": "json"}), None)
    assert response["statusCode"] == 200
    return json.loads(response["body"])


def test_docs_need_no_token_and_serve_swagger_ui(world):
    response = dashboard_app.handler(make_event(*DOCS), None)
    assert response["statusCode"] == 200
    assert "swagger" in response["body"].lower()


def test_openapi_document_is_valid_and_names_exactly_the_routes(world):
    from openapi_spec_validator import validate

    document = _openapi_document()
    validate(document)
    documented = {(method.upper(), re.sub(r"<(\w+)>", r"{\1}", path))
                  for path, item in document["paths"].items() for method in item}
    assert documented == set(ROUTES)
    assert document["components"]["securitySchemes"]["DashboardCognito"]["scheme"] == "bearer"
    assert document["security"] == [{"DashboardCognito": []}]


def test_routes_equal_the_templates_dashboard_routes():
    tpl = reader.load_template()
    dashboard_routes = [r for r in reader.routes(tpl) if r.path.startswith("/dashboard")]
    public = {DOCS, *(("GET", path) for path in dashboard_app.PUBLIC_RESOURCES)}  # Swagger UI, the web app
    assert {(r.method, r.path) for r in dashboard_routes} == set(ROUTES) | public
    for route in dashboard_routes:
        assert route.function == "DashboardFunction" and not route.streaming
        assert route.authorizer == (None if (route.method, route.path) in public else "DashboardCognito"), route


def test_a_top_up_retried_with_its_idempotency_key_is_added_once(world):
    account_id = world["ids"]["customer"]

    def top_up(amount: str, key: str | None):
        event = make_event("POST", "/dashboard/accounts/{account_id}/topup", path_params={"account_id": account_id},
                           body={"amount": amount}, principal="operator")
        if key is not None:
            event["headers"]["Idempotency-Key"] = key
            event["multiValueHeaders"]["Idempotency-Key"] = [key]
        response = dashboard_app.handler(event, None)
        headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
        headers.update({k.lower(): v[-1] for k, v in (response.get("multiValueHeaders") or {}).items()})
        return response["statusCode"], json.loads(response["body"]), headers

    status, first, headers = top_up("7.5", "payment-4711")
    assert status == 200 and first["balance_micros"] == 7_500_000 and "idempotent-replayed" not in headers
    status, again, headers = top_up("7.5", "payment-4711")  # the client's retry after a lost answer
    assert status == 200 and again["balance_micros"] == 7_500_000 and headers["idempotent-replayed"] == "true"
    status, body, _ = top_up("8", "payment-4711")
    assert_error(status, body, 409, "idempotency_key_reused")
    status, other, _ = top_up("1", "payment-4712")
    assert status == 200 and other["balance_micros"] == 8_500_000
    status, plain, _ = top_up("1", None)  # no key: every request is a new top-up
    status, plain, _ = top_up("1", None)
    assert plain["balance_micros"] == 10_500_000
    assert accounts.get_account(account_id).topped_up_micros == 10_500_000
    topups = [r for r in audit.iter_all(principals.parse("operator")) if r.action == "account.topup"]
    assert len(topups) == 4  # one record per top-up carried out, none for the replay or the refusal
    status, body, _ = top_up("1", "x" * 256)
    assert_error(status, body, 400)


def test_a_key_can_be_created_with_a_spend_limit(world):
    account_id = world["ids"]["user"]
    status, body = call("POST", "/dashboard/accounts/{account_id}/keys", f"user:{account_id}",
                        path_params={"account_id": account_id}, body={"name": "capped", "spend_limit": "12.5"})
    assert status == 201 and body["spend_limit_micros"] == 12_500_000 and body["spend_limit"] == "12.500000", body
    for bad in ("0", "-1", "1.0000001", "lots"):
        status, body = call("POST", "/dashboard/accounts/{account_id}/keys", f"user:{account_id}",
                            path_params={"account_id": account_id}, body={"name": "x", "spend_limit": bad})
        assert_error(status, body, 400)
        assert body["error"]["param"] == "spend_limit"
