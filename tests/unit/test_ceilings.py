"""Ceilings per account (onysoft.ceilings, issue 23): set by the operator only, never exceeded by a partner's or
org admin's keys, defaults from the key-type registry, and the key and account counts the ceilings bound.

mock_aws, one thread: the counts under concurrency are tests/integration/test_ceilings_http.py's (moto server).
"""

import json
import uuid

import pytest

from onysoft import accounts, api_keys, audit, ceilings, principals
from onysoft.errors import GatewayError
from onysoft.key_types import KEY_TYPES
from onysoft.models import Account
from onysoft.operations import access
from onysoft.operations import accounts as account_ops
from onysoft.operations import keys as key_ops
from onysoft.operations.audit_log import audit_log
from onysoft_tools.cli import main

OPERATOR = access.cli_operator()


def actor(principal: str) -> audit.Actor:
    return audit.Actor(principals.parse(principal), sub=str(uuid.uuid4()))


PARTNER = actor("partner:p1")
ORG = actor("org:acme")


def refused(call, status: int, code: str) -> dict:
    with pytest.raises(GatewayError) as caught:
        call()
    error = caught.value.envelope()["error"]
    assert caught.value.status == status and error["code"] == code, error
    return error


def test_every_key_type_has_default_ceilings_at_or_above_its_default_limits():
    for kt in KEY_TYPES.values():
        assert kt.ceiling_rpm >= kt.default_rpm and kt.ceiling_tpm >= kt.default_tpm, kt.name
        assert kt.ceiling_keys >= 1 and kt.ceiling_max_parallel >= 1, kt.name
    # Owners create projects (orgs), partner projects and customers (partners); a user account is nobody's.
    assert KEY_TYPES["user"].ceiling_accounts is None
    assert all(KEY_TYPES[k].ceiling_accounts for k in ("project", "partner_project", "partner_customer"))


def test_a_partner_cannot_give_a_key_more_than_the_ceiling_the_operator_sets(aws_tables):
    customer = account_ops.create_account(PARTNER, kind="partner_customer")["account_id"]
    default = KEY_TYPES["partner_customer"].ceiling_rpm
    # The key type's default ceiling holds before the operator sets any.
    error = refused(lambda: key_ops.create_key(PARTNER, customer, rpm=default + 1), 400, "ceiling_exceeded")
    assert error["param"] == "rpm" and str(default) in error["message"]
    assert key_ops.create_key(PARTNER, customer, rpm=default)["rpm"] == default

    view = account_ops.update_account(OPERATOR, customer, ceiling_values={"rpm": 50, "tpm": 10_000})
    assert view["ceilings"]["rpm"] == 50 and not view["ceilings"]["rpm_is_default"]
    assert view["ceilings"]["tpm"] == 10_000 and view["ceilings"]["keys_is_default"]
    error = refused(lambda: key_ops.create_key(PARTNER, customer, rpm=51), 400, "ceiling_exceeded")
    assert error["param"] == "rpm" and "ceiling of 50" in error["message"]
    error = refused(lambda: key_ops.create_key(PARTNER, customer, tpm=10_001), 400, "ceiling_exceeded")
    assert error["param"] == "tpm" and "10000" in error["message"]
    key = key_ops.create_key(PARTNER, customer, rpm=50, tpm=10_000)
    # Updating too: the same check, on the fields changed.
    error = refused(lambda: key_ops.update_key(PARTNER, key["key_id"], tpm=20_000), 400, "ceiling_exceeded")
    assert error["param"] == "tpm"
    assert key_ops.update_key(PARTNER, key["key_id"], rpm=40)["rpm"] == 40


def test_a_key_without_its_own_limits_gets_the_ceiling_where_the_default_is_above_it(aws_tables):
    customer = account_ops.create_account(PARTNER, kind="partner_customer")["account_id"]
    kt = KEY_TYPES["partner_customer"]
    plain = key_ops.create_key(PARTNER, customer)
    assert plain["rpm"] is None and plain["tpm"] is None  # the type's default, under the default ceiling
    account_ops.update_account(OPERATOR, customer, ceiling_values={"rpm": kt.default_rpm // 2})
    capped = key_ops.create_key(PARTNER, customer)
    assert capped["rpm"] == kt.default_rpm // 2 and capped["tpm"] is None  # min(default, ceiling)
    # Back to the default (null) under the ceiling: the ceiling again, never the larger default.
    key_ops.update_key(PARTNER, capped["key_id"], rpm=10)
    assert key_ops.update_key(PARTNER, capped["key_id"], rpm=None)["rpm"] == kt.default_rpm // 2


def test_max_parallel_is_checked_in_the_same_path_as_rpm_and_tpm(aws_tables):
    account = accounts.create_account("partner_customer", owner="p1")
    account_ops.update_account(OPERATOR, account.account_id, ceiling_values={"max_parallel": 4})
    account = accounts.get_account(account.account_id)
    ceilings.check_key_limits(account, {"max_parallel": 4, "rpm": None})
    with pytest.raises(ceilings.CeilingExceeded) as caught:
        ceilings.check_key_limits(account, {"max_parallel": 5})
    assert caught.value.field == "max_parallel" and caught.value.ceiling == 4
    assert access.ceiling_error(caught.value).envelope()["error"]["param"] == "max_parallel"


def test_only_the_operator_sets_ceilings_and_it_is_not_bound_by_them(aws_tables):
    customer = account_ops.create_account(PARTNER, kind="partner_customer")["account_id"]
    refused(lambda: account_ops.update_account(PARTNER, customer, ceiling_values={"rpm": 10_000}), 403,
            "permission_denied")
    refused(lambda: account_ops.update_account(PARTNER, customer, ceiling_values={"keys": 0}), 403,
            "permission_denied")
    with pytest.raises(GatewayError) as caught:
        account_ops.update_account(OPERATOR, customer, ceiling_values={"rpm": -1})
    assert caught.value.status == 400 and caught.value.param == "ceiling_rpm"
    account_ops.update_account(OPERATOR, customer, ceiling_values={"rpm": 10, "keys": 1})
    # The operator's own keys on a tenant's account are not refused (a deliberate exception), but they count.
    big = key_ops.create_key(OPERATOR, customer, rpm=1000)
    assert big["rpm"] == 1000
    refused(lambda: key_ops.create_key(PARTNER, customer), 403, "keys_ceiling_reached")
    assert key_ops.create_key(OPERATOR, customer)["key_id"]
    assert account_ops.get_account(PARTNER, customer)["ceilings"]["keys_used"] == 2
    # 0: back to the key type's default.
    view = account_ops.update_account(OPERATOR, customer, ceiling_values={"rpm": 0})
    assert view["ceilings"]["rpm"] == KEY_TYPES["partner_customer"].ceiling_rpm and view["ceilings"]["rpm_is_default"]
    changes = [r["details"] for r in audit_log(OPERATOR, account_id=customer)["records"]
               if r["action"] == "account.update"]
    assert {"from": 10, "to": "default"} in [c.get("ceiling_rpm") for c in changes]


def test_the_key_count_is_the_keys_not_deleted_and_a_deletion_frees_a_place(aws_tables):
    customer = account_ops.create_account(PARTNER, kind="partner_customer")["account_id"]
    shown = account_ops.update_account(OPERATOR, customer, ceiling_values={"keys": 2})["ceilings"]
    assert shown["keys"] == 2 and shown["keys_used"] == 0  # a new account is counted from the start
    first = key_ops.create_key(PARTNER, customer)
    key_ops.create_key(PARTNER, customer)
    error = refused(lambda: key_ops.create_key(PARTNER, customer), 403, "keys_ceiling_reached")
    assert "2 keys" in error["message"]
    key_ops.rotate_key(PARTNER, first["key_id"], grace_seconds=0)  # the same key: no new place taken
    refused(lambda: key_ops.create_key(PARTNER, customer), 403, "keys_ceiling_reached")
    key_ops.delete_key(PARTNER, first["key_id"])
    assert account_ops.get_account(PARTNER, customer)["ceilings"]["keys_used"] == 1
    assert key_ops.create_key(PARTNER, customer)["key_id"]
    refused(lambda: key_ops.create_key(PARTNER, customer), 403, "keys_ceiling_reached")


def test_an_account_from_before_the_counter_is_counted_from_its_keys_once(aws_tables):
    account = accounts.create_account("user")
    made = [api_keys.create_key(account.account_id) for _ in range(3)]
    Account(account_id=account.account_id).update(actions=[Account.keys_count.remove()])  # as before the counter
    api_keys.delete_key(made[0].record.key_id)  # no count to free yet: the first count reads the table
    assert accounts.get_account(account.account_id).keys_count is None
    person = actor(f"user:{account.account_id}")
    account_ops.update_account(OPERATOR, account.account_id, ceiling_values={"keys": 3})
    assert key_ops.create_key(person, account.account_id)["key_id"]
    assert accounts.get_account(account.account_id).keys_count == 3  # the two left, and this one
    refused(lambda: key_ops.create_key(person, account.account_id), 403, "keys_ceiling_reached")


def test_a_partner_cannot_own_more_accounts_of_a_kind_than_its_ceiling(aws_tables):
    first = account_ops.create_account(PARTNER, kind="partner_customer")["account_id"]
    view = account_ops.get_account(PARTNER, first)
    assert view["ceilings"]["accounts"] == KEY_TYPES["partner_customer"].ceiling_accounts
    assert view["ceilings"]["accounts_used"] == 1
    account_ops.update_account(OPERATOR, first, ceiling_values={"accounts": 2})
    account_ops.create_account(PARTNER, kind="partner_customer")
    error = refused(lambda: account_ops.create_account(PARTNER, kind="partner_customer"), 403,
                    "accounts_ceiling_reached")
    assert "2 partner_customer accounts" in error["message"]
    # Another kind of the same partner, and another partner, have counts of their own.
    assert account_ops.create_account(PARTNER, kind="partner_project")["ceilings"]["accounts_used"] == 1
    assert account_ops.create_account(actor("partner:p2"), kind="partner_customer")["ceilings"]["accounts_used"] == 1
    # The operator is not bound, and its accounts count; every view of the partner's customers shows it.
    account_ops.create_account(OPERATOR, kind="partner_customer", owner="p1")
    listed = account_ops.list_accounts(PARTNER, kind="partner_customer")["accounts"]
    assert len(listed) == 3 and {a["ceilings"]["accounts_used"] for a in listed} == {3}
    assert {a["ceilings"]["accounts"] for a in listed} == {2}
    # An org's projects likewise.
    account_ops.create_account(ORG, kind="project")
    with pytest.raises(GatewayError) as caught:  # a user account has no owner to bound
        account_ops.update_account(OPERATOR, account_ops.create_account(OPERATOR, kind="user")["account_id"],
                                   ceiling_values={"accounts": 5})
    assert caught.value.status == 400


def test_the_cli_sets_and_shows_ceilings(aws_tables, capsys):
    account = accounts.create_account("partner_customer", owner="p1")
    assert main(["accounts", "update", account.account_id, "--ceiling-rpm", "90", "--ceiling-tpm", "5000",
                 "--ceiling-max-parallel", "3", "--ceiling-keys", "7", "--ceiling-accounts", "11", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["ceilings"]
    assert {k: shown[k] for k in ceilings.NAMES} == {"rpm": 90, "tpm": 5000, "max_parallel": 3, "keys": 7,
                                                      "accounts": 11}
    assert main(["accounts", "show", account.account_id]) == 0
    text = capsys.readouterr().out
    assert "rpm 90" in text and "keys 7" in text and "accounts 11" in text
    assert main(["accounts", "list", "--owner", "p1"]) == 0
    assert "90/5000/3/7/11" in capsys.readouterr().out
    assert main(["accounts", "update", account.account_id, "--ceiling-rpm", "-1"]) == 2
