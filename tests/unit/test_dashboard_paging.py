"""Issue 23, the operator's dashboard at 100k accounts: accounts in pages by name (a Query of an index, never a
scan), searchable by name prefix and id; one account's audit log from its own partition; a malformed account item
skipped, logged and counted, never a 500; the security headers on every dashboard answer, the API document too.
Items read are counted with a botocore recorder (tests.helpers.ItemsRead)."""

from __future__ import annotations

import base64
import hashlib
import logging
import re

import pytest

from onysoft import accounts, audit, backfill
from onysoft.audit import Actor
from onysoft.models import Account, AuditRecord
from onysoft.operations import accounts as account_ops
from onysoft.principals import parse
from tests.unit.test_dashboard import call, dashboard_app, make_event

OPERATOR = "operator"


@pytest.fixture
def many(aws_tables):
    """40 user accounts (names in a known order, two with a shared prefix) and 6 of partner p1."""
    made = [accounts.create_account("user", name=f"Customer {n:02d}") for n in range(38)]
    made += [accounts.create_account("user", name="Zeta Labs"), accounts.create_account("user", name="zeta two")]
    made += [accounts.create_account("partner_customer", name=f"P1 customer {n}", owner="p1") for n in range(6)]
    return made


def _reads(take, table) -> int:
    return sum(n for name, _, _, n in take() if name == table)


def test_operator_pages_every_account_once_by_name_reading_one_page_each(many, dynamodb_reads):
    table = Account.Meta.table_name
    dynamodb_reads()
    seen, cursor, pages = [], None, 0
    while True:
        status, body = call("GET", "/dashboard/accounts", OPERATOR,
                            query={"limit": "7", **({"cursor": cursor} if cursor else {})})
        assert status == 200, body
        assert len(body["accounts"]) <= 7 and body["skipped"] == 0
        # the page's index entries, its items and their owners' account counts (ceilings), whatever the table holds
        assert _reads(dynamodb_reads, table) <= 7 + 7 + 7
        seen += [a["name"] for a in body["accounts"]]
        pages += 1
        cursor = body["next"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == len(many) and pages == 7  # 46 accounts: 6 full pages and one of 4
    assert seen == sorted(seen, key=str.lower)


def test_search_by_name_prefix_any_case_and_by_id(many):
    status, body = call("GET", "/dashboard/accounts", OPERATOR, query={"search": "ZETA"})
    assert status == 200 and [a["name"] for a in body["accounts"]] == ["Zeta Labs", "zeta two"], body
    target = many[5].account_id
    status, body = call("GET", "/dashboard/accounts", OPERATOR, query={"search": target})
    assert status == 200 and [a["account_id"] for a in body["accounts"]] == [target] and body["next"] is None
    # A partner searches its own only: another's account by id is not found (the same as no such account).
    status, body = call("GET", "/dashboard/accounts", "partner:p1", query={"search": target})
    assert status == 200 and body["accounts"] == []
    status, body = call("GET", "/dashboard/accounts", "partner:p1", query={"search": "p1 customer", "limit": "4"})
    assert status == 200 and len(body["accounts"]) == 4 and body["next"], body
    status, rest = call("GET", "/dashboard/accounts", "partner:p1",
                        query={"search": "p1 customer", "limit": "4", "cursor": body["next"]})
    assert status == 200 and len(rest["accounts"]) == 2 and rest["next"] is None, rest
    # A cursor continues only its own search (and its own list: not the operator's).
    status, err = call("GET", "/dashboard/accounts", "partner:p1", query={"search": "zzz", "cursor": body["next"]})
    assert status == 400 and err["error"]["param"] == "cursor"
    status, err = call("GET", "/dashboard/accounts", OPERATOR, query={"cursor": body["next"]})
    assert status == 400 and err["error"]["param"] == "cursor"


def test_a_renamed_account_moves_in_the_name_order(many):
    account_ops.update_account(Actor(parse(OPERATOR)), many[0].account_id, name="Aardvark")
    status, body = call("GET", "/dashboard/accounts", OPERATOR, query={"limit": "1"})
    assert status == 200 and body["accounts"][0]["name"] == "Aardvark"


@pytest.mark.parametrize("bad", [
    {"kind": {"S": "bogus"}},  # an unknown kind
    {"currency": None},  # a field missing
    {"markup_bp": {"S": "thirty"}},  # a field of the wrong type
    {"balance_micros": {"S": "12"}},
])
def test_a_malformed_account_item_is_skipped_and_counted_never_a_500(many, bad):
    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append  # the module's own logger: whatever routes `onysoft.*` (Powertools) elsewhere
    logging.getLogger("onysoft.account_index").addHandler(handler)
    client = Account._get_connection().connection.client
    raw = client.get_item(TableName=Account.Meta.table_name, Key={"account_id": {"S": many[3].account_id}})["Item"]
    for name, value in bad.items():
        if value is None:
            raw.pop(name)
        else:
            raw[name] = value
    client.put_item(TableName=Account.Meta.table_name, Item=raw)
    status, body = call("GET", "/dashboard/accounts", OPERATOR, query={"limit": "10"})
    assert status == 200, body
    assert body["skipped"] == 1 and len(body["accounts"]) == 9
    assert many[3].account_id not in {a["account_id"] for a in body["accounts"]}
    logging.getLogger("onysoft.account_index").removeHandler(handler)
    skipped = [r for r in logged if r.getMessage() == "malformed account items skipped"]
    assert [r.account_ids for r in skipped] == [[many[3].account_id]]  # which item, for the operator to mend


def test_one_accounts_audit_reads_only_its_own_records(many, dynamodb_reads):
    operator = Actor(parse(OPERATOR))
    target = many[1].account_id
    for n in range(30):  # 30 actions on other accounts, 3 on the target
        account_ops.update_account(operator, many[2 + n % 5].account_id, name=f"renamed {n}")
    for n in range(3):
        account_ops.update_account(operator, target, name=f"target {n}")
    dynamodb_reads()
    status, body = call("GET", "/dashboard/audit", OPERATOR, query={"account_id": target, "limit": "2"})
    assert status == 200 and len(body["records"]) == 2 and body["next"], body
    audit_reads = [(index, op, n) for name, index, op, n in dynamodb_reads() if name == AuditRecord.Meta.table_name]
    assert sum(n for _, op, n in audit_reads if op == "Query") <= 2, audit_reads
    status, rest = call("GET", "/dashboard/audit", OPERATOR, query={"account_id": target, "cursor": body["next"]})
    records = body["records"] + rest["records"]
    assert status == 200 and rest["next"] is None
    # Its three renames; nothing of the others.
    assert {r["account_id"] for r in records} == {target} and len(records) == 3


def test_backfill_gives_old_items_their_listing_keys_and_audit_copies(many):
    old = many[4]
    account_ops.update_account(Actor(parse(OPERATOR)), old.account_id, name="Customer 04 renamed")  # audited
    Account(account_id=old.account_id).update(actions=[Account.listed.remove(), Account.name_key.remove()])
    copy = next(AuditRecord.query(audit.account_partition(old.account_id)))
    copy.delete()  # as if written before the per-account partition
    status, body = call("GET", "/dashboard/accounts", OPERATOR, query={"search": old.account_id})
    assert body["accounts"] == [a for a in body["accounts"] if a["account_id"] == old.account_id]  # by id: read anyway
    status, body = call("GET", "/dashboard/accounts", OPERATOR, query={"limit": "1000"})
    assert old.account_id not in {a["account_id"] for a in body["accounts"]}
    first = backfill.run()
    assert first["accounts_updated"] == 1 and first["audit_copies_written"] == 1, first
    status, body = call("GET", "/dashboard/accounts", OPERATOR, query={"limit": "1000"})
    assert old.account_id in {a["account_id"] for a in body["accounts"]}
    assert [r.sk for r in AuditRecord.query(audit.account_partition(old.account_id))] == [copy.sk]
    again = backfill.run()
    assert again["accounts_updated"] == 0 and again["audit_copies_written"] == 0, again


def test_every_dashboard_answer_carries_the_security_headers_docs_and_errors_too(many):
    def headers(response):
        multi = response.get("multiValueHeaders") or {}
        return {**{k: v[-1] for k, v in multi.items()}, **(response.get("headers") or {})}

    answers = {
        "docs": dashboard_app.handler(make_event("GET", "/dashboard/docs"), None),
        "document": dashboard_app.handler(make_event("GET", "/dashboard/docs", query={"format": "json"}), None),
        "list": dashboard_app.handler(make_event("GET", "/dashboard/accounts", principal=OPERATOR), None),
        "400": dashboard_app.handler(make_event("GET", "/dashboard/accounts", principal=OPERATOR,
                                                query={"limit": "0"}), None),
        "401": dashboard_app.handler(make_event("GET", "/dashboard/accounts"), None),
    }
    for name, response in answers.items():
        found = headers(response)
        assert found.get("X-Content-Type-Options") == "nosniff", name
        assert found.get("X-Frame-Options") == "DENY" and found.get("Referrer-Policy") == "no-referrer", name
        assert "frame-ancestors 'none'" in found.get("Content-Security-Policy", ""), name
    # The document's page runs only its own inline scripts, named by hash: no 'unsafe-inline', no other origin.
    csp = headers(answers["docs"])["Content-Security-Policy"]
    scripts = re.search(r"script-src ([^;]+)", csp).group(1).split()
    assert scripts and all(s.startswith("'sha256-") for s in scripts), csp
    page = answers["docs"]["body"]
    bootstrap = page[page.rindex("<script>") + len("<script>"):page.rindex("</script>")]  # the page's own script
    digest = base64.b64encode(hashlib.sha256(bootstrap.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in scripts and len(scripts) == 2  # and Swagger UI's bundle
