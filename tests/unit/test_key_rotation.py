"""Key rotation (onysoft.api_keys.rotate_key, onysoft.operations.keys.rotate_key) on moto's in-process DynamoDB:
a new secret for the same key id, the old one until its grace ends (to the microsecond, in the proxy's re-read
and in the authorizer), everything else of the key carried over, idempotent with an Idempotency-Key, audited,
and a `Key Rotated` event. The time is moved with the clock, never waited for."""

import json
from datetime import timedelta

import pytest

from onysoft import api_keys, audit, clock, events, expiry, keys, usage_rollup
from onysoft.authorization import Denied, authorize
from onysoft.caller import REQUEST_CONTEXT_HEADER
from onysoft.models import ApiKey
from onysoft.operations import keys as key_ops
from onysoft.operations.access import cli_operator
from onysoft_tools.cli import main
from tests.helpers import key_totals, load_function_module
from tests.unit.conftest import new_key
from tests.unit.test_dashboard import call

CHAT = {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def events_file(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(events.FILE_ENV, str(path))
    return path


def headers_for(secret: str) -> dict:
    """What the adapter hands the proxy for this secret: its Authorization and the authorizer's context."""
    context = authorize(f"Bearer {secret}")
    return {"authorization": f"Bearer {secret}",
            REQUEST_CONTEXT_HEADER: json.dumps({"authorizer": context.to_authorizer_context()})}


def at(monkeypatch, moment: str, shift_us: int = 0) -> None:
    """Move the clock to `moment` (+ microseconds) for the code under test."""
    target = clock.parse_iso(moment) + timedelta(microseconds=shift_us)
    monkeypatch.setattr(clock, "utc_now", lambda: target)


def test_a_rotated_key_keeps_its_id_settings_and_usage_and_both_secrets_work_until_the_grace_ends(
        gateway, monkeypatch, events_file):
    account, record, old_headers = new_key("user", rpm=50, tpm=90_000, models=["mock/echo"],
                                           spend_limit_micros=9_000_000, limit_reset="monthly",
                                           fallbacks=["mock/echo"], expires_at=expiry.expires_in("30d"))
    old_secret = old_headers["authorization"].removeprefix("Bearer ")
    assert gateway.post("/v1/chat/completions", headers=old_headers, json=CHAT).status_code == 200
    before = key_totals(record.key_id)
    assert before.requests == 1

    view, replayed = key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=3600)
    new_secret = view["key"]
    assert not replayed and keys.is_well_formed(new_secret) and new_secret != old_secret
    assert view["key_id"] == record.key_id and view["display"] == keys.display_form(new_secret)
    assert view["previous_display"] == record.display
    assert clock.parse_iso(view["grace_until"]) - clock.parse_iso(view["rotated_at"]) == timedelta(hours=1)
    for field in ("name", "type", "account_id", "currency", "created_at", "rpm", "tpm", "models", "fallbacks",
                  "spend_limit_micros", "limit_reset", "expires_at", "request_count", "spend_micros"):
        assert view[field] == key_ops._view(record)[field], field
    assert view["status"] == "active" and view["last_used_at"] is not None  # its history, as it was

    # Both secrets authenticate, as the same key, charging the same account; the count goes on.
    new_headers = headers_for(new_secret)
    for headers in (old_headers, headers_for(old_secret), new_headers):
        response = gateway.post("/v1/chat/completions", headers=headers, json=CHAT)
        assert response.status_code == 200, response.text
    assert authorize(f"Bearer {old_secret}").key_id == authorize(f"Bearer {new_secret}").key_id == record.key_id
    assert key_totals(record.key_id).requests == 4
    old_view = gateway.get("/v1/key", headers=old_headers).json()
    assert (old_view["key_id"], old_view["status"], old_view["grace_until"]) == (
        record.key_id, "rotated", view["grace_until"])
    assert gateway.get("/v1/key", headers=new_headers).json()["grace_until"] == view["grace_until"]

    # One microsecond before the grace ends the old secret still works; at its end it is refused, in the proxy
    # (whatever the authorizer's cache says: old_headers carry an answer computed before) and the authorizer.
    at(monkeypatch, view["grace_until"], -1)
    assert gateway.get("/v1/key", headers=old_headers).status_code == 200
    at(monkeypatch, view["grace_until"])
    refused = gateway.post("/v1/chat/completions", headers=old_headers, json=CHAT)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert gateway.get("/v1/key", headers=old_headers).status_code == 401
    with pytest.raises(Denied) as denied:
        authorize(f"Bearer {old_secret}")
    assert denied.value.reason == "rotated"
    assert gateway.post("/v1/chat/completions", headers=new_headers, json=CHAT).status_code == 200

    # One key in every list, showing its rotation; the old item is purged by DynamoDB's TTL after the grace.
    [listed] = key_ops.list_keys(cli_operator(), account.account_id, include_deleted=True)["keys"]
    assert (listed["key_id"], listed["display"], listed["rotated_at"]) == (record.key_id, view["display"],
                                                                           view["rotated_at"])
    old_item = ApiKey.get(keys.hash_key(old_secret), consistent_read=True)
    assert old_item.status == "rotated"
    assert old_item.purge_at == int(clock.parse_iso(view["grace_until"]).timestamp()) + 1

    # Audited, and one event, which names the key and both display forms and holds no secret.
    [entry] = [e for e in audit.iter_all(cli_operator().principal) if e.action == "key.rotate"]
    assert entry.target_key_id == record.key_id
    assert json.loads(entry.details)["previous_display"] == record.display
    [event] = [e for e in events.read_file(events_file) if e["detail-type"] == "Key Rotated"]
    assert event["detail"]["key_id"] == record.key_id and event["detail"]["display"] == view["display"]
    assert event["detail"]["previous_display"] == record.display
    assert event["detail"]["grace_until"] == view["grace_until"]
    assert old_secret not in events_file.read_text() and new_secret not in events_file.read_text()


def test_grace_now_stops_the_old_secret_at_once(gateway, events_file):
    _, record, old_headers = new_key("user")
    view, _ = key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=0)
    assert view["grace_until"] == view["rotated_at"]
    assert gateway.post("/v1/chat/completions", headers=old_headers, json=CHAT).status_code == 401
    assert gateway.post("/v1/chat/completions", headers=headers_for(view["key"]), json=CHAT).status_code == 200


def test_a_rotation_with_grace_now_also_stops_an_older_secret_still_in_its_grace(gateway, events_file):
    _, record, first_headers = new_key("user")
    second, _ = key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=3600)
    third, _ = key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=0)
    # The first secret had its own grace (1 hour, from the second rotation's point of view: none left to give);
    # "now" ends it too, in the proxy (its cached authorizer answer notwithstanding) and in the authorizer.
    assert gateway.post("/v1/chat/completions", headers=first_headers, json=CHAT).status_code == 401
    with pytest.raises(Denied):
        authorize(f"Bearer {second['key']}")
    assert gateway.post("/v1/chat/completions", headers=headers_for(third["key"]), json=CHAT).status_code == 200
    graces = sorted(r.grace_until for r in api_keys.records_of_key(record.key_id) if r.status == "rotated")
    assert graces == [third["rotated_at"], third["rotated_at"]]


def test_a_retried_rotation_with_the_same_idempotency_key_makes_one_secret(aws_tables, events_file):
    _, record, _ = new_key("user")
    first, replayed = key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=600, idempotency_key="r-1")
    again, replayed_again = key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=600,
                                               idempotency_key="r-1")
    assert (replayed, replayed_again) == (False, True)
    assert again["key"] is None and again["display"] == first["display"]  # the secret is never shown twice
    assert len(api_keys.records_of_key(record.key_id)) == 2  # the first secret and one new one: not three
    assert [e["detail-type"] for e in events.read_file(events_file)] == ["Key Rotated"]
    with pytest.raises(Exception) as reused:
        key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=60, idempotency_key="r-1")
    assert (reused.value.status, reused.value.code) == (409, "idempotency_key_reused")
    third, _ = key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=600, idempotency_key="r-2")
    assert third["key"] and third["previous_display"] == first["display"]
    assert len(api_keys.records_of_key(record.key_id)) == 3


def test_deleting_a_key_ends_its_old_secrets_grace(gateway, events_file):
    _, record, old_headers = new_key("user")
    view, _ = key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=3600)
    new_headers = headers_for(view["key"])
    key_ops.delete_key(cli_operator(), record.key_id)
    for headers in (old_headers, new_headers):
        assert gateway.post("/v1/chat/completions", headers=headers, json=CHAT).status_code == 401
    with pytest.raises(Denied):
        authorize(old_headers["authorization"])
    assert api_keys.find_by_key_id(record.key_id).status == "deleted"  # the current item, not the old one


def test_a_limit_changed_during_the_grace_applies_to_the_old_secret_too(aws_tables, events_file):
    _, record, old_headers = new_key("user")
    view, _ = key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=3600)
    key_ops.update_key(cli_operator(), record.key_id, rpm=3, models=["mock/other"])
    for secret in (old_headers["authorization"].removeprefix("Bearer "), view["key"]):
        caller = authorize(f"Bearer {secret}")
        assert (caller.rpm, caller.models) == (3, ("mock/other",))


@pytest.mark.parametrize("grace", [-1, 30 * 86400 + 1])
def test_a_grace_outside_0_to_30_days_is_refused(aws_tables, grace):
    _, record, _ = new_key("user")
    with pytest.raises(Exception) as refused:
        key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=grace)
    assert (refused.value.status, refused.value.param) == (400, "grace")
    assert len(api_keys.records_of_key(record.key_id)) == 1


def test_a_deleted_key_cannot_be_rotated_and_a_concurrent_change_is_a_conflict(aws_tables, monkeypatch):
    _, record, _ = new_key("user")
    _, other, _ = new_key("user")
    key_ops.delete_key(cli_operator(), record.key_id)
    with pytest.raises(Exception) as gone:
        key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=60)
    assert gone.value.status == 404
    stale = api_keys.records_of_key(other.key_id)
    key_ops.rotate_key(cli_operator(), other.key_id, grace_seconds=60)  # someone else rotates it first
    monkeypatch.setattr(api_keys, "records_of_key", lambda key_id: stale)
    with pytest.raises(Exception) as conflict:
        key_ops.rotate_key(cli_operator(), other.key_id, grace_seconds=60)
    assert (conflict.value.status, conflict.value.code) == (409, "key_changed")
    monkeypatch.undo()
    assert len(api_keys.records_of_key(other.key_id)) == 2  # the first rotation's two secrets: nothing more


def test_an_expired_key_is_not_rotated(aws_tables, monkeypatch):
    _, record, _ = new_key("user", expires_at=expiry.expires_in("1h"))
    at(monkeypatch, clock.to_iso(clock.utc_now() + timedelta(hours=2)))
    with pytest.raises(Exception) as refused:
        key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=60)
    assert refused.value.status == 400 and "expired" in refused.value.message


def test_the_dashboard_rotates_a_key_its_principal_sees_with_an_idempotency_key(aws_tables, events_file):
    _, record, _ = new_key("user")
    account_id = record.account_id
    event_headers = {"Content-Type": "application/json", "Idempotency-Key": "click-1"}
    dashboard = load_function_module("dashboard")
    from tests.unit.test_dashboard import make_event

    def rotate(principal: str, body=None, headers=event_headers):
        event = make_event("POST", "/dashboard/keys/{key_id}/rotate", path_params={"key_id": record.key_id},
                           body=body, principal=principal)
        event["headers"] = dict(headers)
        event["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
        response = dashboard.handler(event, None)
        answered = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
        answered.update({k.lower(): v[-1] for k, v in (response.get("multiValueHeaders") or {}).items()})
        return response["statusCode"], json.loads(response["body"]), answered

    status, body, _ = rotate("user:acct_" + "0" * 16, {"grace": "1h"})
    assert status == 404  # another tenant's key: as if it did not exist
    status, body, headers = rotate(f"user:{account_id}", {"grace": "1h"})
    assert status == 200 and keys.is_well_formed(body["key"]) and "idempotent-replayed" not in headers
    assert clock.parse_iso(body["grace_until"]) - clock.parse_iso(body["rotated_at"]) == timedelta(hours=1)
    status, again, headers = rotate(f"user:{account_id}", {"grace": "1h"})
    assert status == 200 and again["key"] is None and headers.get("idempotent-replayed") == "true"
    status, bad, _ = rotate(f"user:{account_id}", {"grace": "soon"}, {"Content-Type": "application/json"})
    assert status == 400 and bad["error"]["param"] == "grace"
    status, now, _ = rotate(f"user:{account_id}", None, {"Content-Type": "application/json"})  # default: 24h
    assert status == 200 and clock.parse_iso(now["grace_until"]) - clock.parse_iso(now["rotated_at"]) == timedelta(
        hours=24)
    assert len(api_keys.records_of_key(record.key_id)) == 3
    status, listing = call("GET", "/dashboard/accounts/{account_id}/keys", f"user:{account_id}",
                           path_params={"account_id": account_id})
    [shown] = listing["keys"]
    assert shown["display"] == now["display"] and shown["previous_display"] == body["display"]


def test_the_cli_rotates_and_prints_the_new_key_once(aws_tables, capsys, tmp_path, monkeypatch, events_file):
    monkeypatch.chdir(tmp_path)
    _, record, _ = new_key("user")
    capsys.readouterr()
    assert main(["keys", "rotate", record.key_id, "--grace", "90s", "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert keys.is_well_formed(view["key"]) and view["key_id"] == record.key_id
    assert clock.parse_iso(view["grace_until"]) - clock.parse_iso(view["rotated_at"]) == timedelta(seconds=90)
    assert main(["keys", "rotate", record.key_id, "--grace", "now"]) == 0
    out = capsys.readouterr().out
    assert "stopped working now" in out and len(set(keys._KEY_PATTERN.findall(out))) == 1
    assert main(["keys", "rotate", record.key_id, "--grace", "forever"]) == 2
    assert "--grace" in capsys.readouterr().err
    assert main(["keys", "rotate", record.key_id, "--grace", "31d"]) == 2
    assert main(["keys", "rotate", "key_" + "0" * 16]) == 2
    assert main(["keys", "rotate", record.key_id, "--idempotency-key", "k1", "--json"]) == 0
    capsys.readouterr()
    assert main(["keys", "rotate", record.key_id, "--idempotency-key", "k1", "--json"]) == 0
    replay = capsys.readouterr()
    assert json.loads(replay.out)["key"] is None and "already rotated" in replay.err


def test_rotation_leaves_usage_totals_with_the_key(gateway, events_file):
    _, record, old_headers = new_key("user")
    gateway.post("/v1/chat/completions", headers=old_headers, json=CHAT)
    view, _ = key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=0)
    gateway.post("/v1/chat/completions", headers=headers_for(view["key"]), json=CHAT)
    totals = key_totals(record.key_id)
    assert totals.requests == 2 and totals.spend_micros > 0
    assert usage_rollup.key_totals([record.key_id])[record.key_id] == totals
