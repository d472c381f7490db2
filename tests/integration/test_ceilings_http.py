"""Ceilings per account (issue 23) through `onysoft dev`: the operator sets them (dashboard API and CLI), a
partner's keys cannot pass them (400 `ceiling_exceeded` in OpenAI's envelope), and the number of keys and of
customer accounts holds exactly under concurrent creation (403 `keys_ceiling_reached` /
`accounts_ceiling_reached`) on the gateway's real moto server.

The local gateway runs the dashboard's resolver one call at a time (docs/ARCHITECTURE.md, `lambdas.py`), so
the HTTP bursts show the answers a client gets; the same operations run from many threads straight against
the gateway's moto server show the counts hold where calls really overlap (as Lambda instances do in AWS).
"""

from __future__ import annotations

import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.test_dashboard_http import assert_error, call, token


@pytest.fixture(scope="module")
def partner(gateway):
    """A partner of its own (a fresh id), its token, the operator's token, and one customer account."""
    partner_id = f"ceil-{secrets.token_hex(4)}"
    operator = token(gateway, "operator")
    bearer = token(gateway, f"partner:{partner_id}")
    response = call(gateway, "POST", "/dashboard/accounts", bearer, json={"kind": "partner_customer", "name": "c1"})
    assert response.status_code == 201, response.text
    return partner_id, bearer, operator, response.json()["account_id"]


def set_ceilings(gateway, operator: str, account_id: str, **values) -> dict:
    response = call(gateway, "PATCH", f"/dashboard/accounts/{account_id}", operator,
                    json={f"ceiling_{name}": value for name, value in values.items()})
    assert response.status_code == 200, response.text
    return response.json()["ceilings"]


def test_a_partner_gets_ceiling_exceeded_and_cannot_set_ceilings(gateway, partner):
    _, bearer, operator, customer = partner
    assert_error(call(gateway, "PATCH", f"/dashboard/accounts/{customer}", bearer, json={"ceiling_rpm": 100_000}),
                 403, "permission_denied")
    shown = set_ceilings(gateway, operator, customer, rpm=30, tpm=5000)
    assert shown["rpm"] == 30 and shown["tpm"] == 5000 and not shown["rpm_is_default"]

    body = assert_error(call(gateway, "POST", f"/dashboard/accounts/{customer}/keys", bearer,
                             json={"name": "greedy", "rpm": 31}), 400, "ceiling_exceeded")
    assert body["error"]["param"] == "rpm" and "ceiling of 30" in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"

    response = call(gateway, "POST", f"/dashboard/accounts/{customer}/keys", bearer, json={"name": "plain"})
    assert response.status_code == 201, response.text
    created = response.json()
    gateway.known_keys.add(created["key"])
    assert created["rpm"] == 30  # no rpm given, the type's default (120) above the ceiling: the ceiling
    body = assert_error(call(gateway, "PATCH", f"/dashboard/keys/{created['key_id']}", bearer, json={"tpm": 5001}),
                        400, "ceiling_exceeded")
    assert body["error"]["param"] == "tpm" and "5000" in body["error"]["message"]
    response = call(gateway, "PATCH", f"/dashboard/keys/{created['key_id']}", bearer, json={"tpm": 4000})
    assert response.status_code == 200 and response.json()["tpm"] == 4000, response.text
    # The operator is not bound by the ceiling it sets.
    response = call(gateway, "PATCH", f"/dashboard/keys/{created['key_id']}", operator, json={"rpm": 500})
    assert response.status_code == 200 and response.json()["rpm"] == 500, response.text


def test_concurrent_key_creation_over_http_stops_exactly_at_the_ceiling(gateway, partner):
    _, bearer, operator, _ = partner
    response = call(gateway, "POST", "/dashboard/accounts", bearer, json={"kind": "partner_customer", "name": "c2"})
    assert response.status_code == 201, response.text
    account = response.json()["account_id"]
    set_ceilings(gateway, operator, account, keys=4)

    def create(i: int):
        return call(gateway, "POST", f"/dashboard/accounts/{account}/keys", bearer, json={"name": f"k{i}"})

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(create, range(10)))
    made = [a for a in answers if a.status_code == 201]
    gateway.known_keys.update(a.json()["key"] for a in made)
    assert len(made) == 4, [a.text for a in answers]
    for refused in (a for a in answers if a.status_code != 201):
        body = assert_error(refused, 403, "keys_ceiling_reached")
        assert "4 keys" in body["error"]["message"]
    listed = call(gateway, "GET", f"/dashboard/accounts/{account}/keys", bearer).json()["keys"]
    assert len(listed) == 4
    shown_account = next(a for a in call(gateway, "GET", "/dashboard/accounts", bearer).json()["accounts"]
                         if a["account_id"] == account)
    assert shown_account["ceilings"]["keys"] == 4 and shown_account["ceilings"]["keys_used"] == 4

    # The CLI (the operator) raises the ceiling; `accounts show` has it; the partner gets one more key.
    raised = gateway.cli_json("accounts", "update", account, "--ceiling-keys", "5")
    assert raised["ceilings"]["keys"] == 5
    shown_cli = gateway.cli_json("accounts", "show", account)
    assert shown_cli["ceilings"]["keys"] == 5 and shown_cli["ceilings"]["keys_used"] == 4
    assert create(99).status_code == 201
    assert_error(create(100), 403, "keys_ceiling_reached")
    # Deleting a key frees its place.
    key_id = listed[0]["key_id"]
    assert call(gateway, "DELETE", f"/dashboard/keys/{key_id}", bearer).status_code == 200
    assert create(101).status_code == 201


def test_concurrent_customer_accounts_over_http_stop_exactly_at_the_ceiling(gateway, partner):
    partner_id, bearer, operator, customer = partner
    set_ceilings(gateway, operator, customer, accounts=3)  # this partner's customer accounts: c1, c2, and one more

    def create(i: int):
        return call(gateway, "POST", "/dashboard/accounts", bearer, json={"kind": "partner_customer", "name": f"n{i}"})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(create, range(8)))
    assert sum(a.status_code == 201 for a in answers) == 1, [a.text for a in answers]
    for refused in (a for a in answers if a.status_code != 201):
        assert_error(refused, 403, "accounts_ceiling_reached")
    listed = gateway.cli_json("accounts", "list", "--owner", partner_id, "--kind", "partner_customer")["accounts"]
    assert len(listed) == 3 and {a["ceilings"]["accounts_used"] for a in listed} == {3}


@pytest.fixture
def in_process_tables(gateway, monkeypatch):
    """The onysoft models pointed at the gateway's own moto server (its dev.env)."""
    from onysoft.models import bind_tables

    for name, value in gateway.env.items():
        if name.startswith(("AWS_", "ONYSOFT_TABLE_")):
            monkeypatch.setenv(name, value)
    bind_tables()
    yield
    monkeypatch.undo()
    bind_tables()


def test_counts_hold_when_creations_really_overlap_on_the_moto_server(gateway, in_process_tables):
    from onysoft import audit, principals
    from onysoft.errors import GatewayError
    from onysoft.operations import accounts as account_ops
    from onysoft.operations import keys as key_ops
    from onysoft.operations.access import cli_operator

    partner = audit.Actor(principals.parse(f"partner:ceil-{secrets.token_hex(4)}"), sub=str(uuid.uuid4()))
    account = account_ops.create_account(partner, kind="partner_customer")["account_id"]
    account_ops.update_account(cli_operator(), account, ceiling_values={"keys": 5, "accounts": 4})

    def attempt(make):
        try:
            make()
            return "made"
        except GatewayError as exc:
            return exc.code

    with ThreadPoolExecutor(16) as pool:
        keys = list(pool.map(lambda i: attempt(lambda: key_ops.create_key(partner, account, name=f"t{i}")),
                             range(16)))
        customers = list(pool.map(lambda i: attempt(lambda: account_ops.create_account(
            partner, kind="partner_customer")), range(12)))
    assert keys.count("made") == 5 and set(keys) == {"made", "keys_ceiling_reached"}, keys
    assert customers.count("made") == 3 and set(customers) == {"made", "accounts_ceiling_reached"}, customers
    shown = account_ops.get_account(partner, account)["ceilings"]
    assert shown["keys_used"] == 5 == len(key_ops.list_keys(partner, account)["keys"])
    assert shown["accounts_used"] == 4
