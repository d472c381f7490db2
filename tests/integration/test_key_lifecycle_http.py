"""A key's whole life over HTTP, through one `onysoft dev` (issue 24): rotation with a grace (the CLI and the
dashboard API), a leaked key revoked by a signed GitHub secret-scanning report, the headers Anthropic's clients
send (`x-api-key`), count_tokens, expiry events; and the key events each of these writes to
`<state dir>/events.jsonl`, read back with `onysoft events`.

Times are never waited for blindly: the old secret's grace end is what the gateway itself answered, and the test
polls until it has passed."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import openai
import pytest

from onysoft import clock
from tests.integration.conftest import DevGateway
from tests.integration.ledger import Tables, check_envelope

CHAT = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def life(tmp_path_factory):
    dev = DevGateway(tmp_path_factory.mktemp("life") / "state").start()
    try:
        yield dev
    finally:
        code = dev.stop()
        assert code == 0, dev.log()


def funded_key(gw: DevGateway, *key_options: str) -> tuple[dict, dict]:
    account = gw.cli_json("accounts", "create", "--kind", "partner_project", "--owner", "life")
    gw.cli_json("accounts", "topup", account["account_id"], "20")
    key = gw.cli_json("keys", "create", "--account", account["account_id"], *key_options)
    gw.known_keys.add(key["key"])
    return account, key


def chat(gw: DevGateway, secret: str) -> httpx.Response:
    return httpx.post(gw.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                      json={"model": "mock/echo", "messages": CHAT}, timeout=30)


def key_view(gw: DevGateway, secret: str) -> httpx.Response:
    return httpx.get(gw.base_url + "/v1/key", headers={"Authorization": f"Bearer {secret}"}, timeout=30)


def events_of(gw: DevGateway, detail_type: str, key_id: str) -> list[dict]:
    """The key's events of one type, as `onysoft events --json` prints them."""
    return [e for e in gw.cli_json("events")["events"]
            if e["detail-type"] == detail_type and e["detail"].get("key_id") == key_id]


def dashboard_token(gw: DevGateway, principal: str) -> str:
    return gw.cli_json("token", "--principal", principal)["token"]


# ------------------------------------------------------------------------------------------- rotation


def test_a_rotated_key_serves_both_secrets_until_the_grace_ends_then_only_the_new_one(life):
    account, key = funded_key(life, "--rpm", "40", "--models", "mock/echo")
    tables = Tables(life)
    assert chat(life, key["key"]).status_code == 200
    rotated = life.cli_json("keys", "rotate", key["key_id"], "--grace", "3s")
    life.known_keys.add(rotated["key"])
    assert rotated["key_id"] == key["key_id"] and rotated["key"] != key["key"]
    assert rotated["previous_display"] == key["display"]
    # The old secret's grace: what the gateway answered. Before it ends both work (the unit tests check it to
    # the microsecond; a loaded machine could take 3 s to get here, so here only the new one is asked at once).
    assert chat(life, rotated["key"]).status_code == 200
    grace_until = clock.parse_iso(rotated["grace_until"])
    deadline = time.monotonic() + 60
    while True:
        answer = chat(life, key["key"])
        if answer.status_code == 401 or time.monotonic() > deadline:
            break
        assert answer.status_code == 200, answer.text
    check_envelope(answer, 401, "invalid_api_key")  # like any unknown key
    assert clock.utc_now() >= grace_until  # never before the grace end the gateway gave
    assert key_view(life, key["key"]).status_code == 401
    view = key_view(life, rotated["key"]).json()  # the same key: id, limits, and the requests of both secrets
    assert (view["key_id"], view["rpm"], view["models"]) == (key["key_id"], 40, ["mock/echo"])
    assert view["rotated_at"] == rotated["rotated_at"] and view["grace_until"] == rotated["grace_until"]
    totals = tables.key_totals(key["key_id"], requests=view["request_count"])
    assert totals["requests"] >= 3  # one before, one after with the new secret, the old one's until its end
    [event] = events_of(life, "Key Rotated", key["key_id"])
    assert event["detail"]["grace_until"] == rotated["grace_until"] and event["source"] == "onysoft"
    assert key["key"] not in json.dumps(event) and rotated["key"] not in json.dumps(event)


def test_during_the_grace_both_secrets_work_and_a_retried_rotation_makes_one_secret(life):
    account, key = funded_key(life)
    token = dashboard_token(life, "operator")
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"rotate-{uuid.uuid4().hex}"}
    url = f"{life.base_url}/dashboard/keys/{key['key_id']}/rotate"
    first = httpx.post(url, headers=headers, json={"grace": "1h"}, timeout=30)
    assert first.status_code == 200, first.text
    new_secret = first.json()["key"]
    life.known_keys.add(new_secret)
    again = httpx.post(url, headers=headers, json={"grace": "1h"}, timeout=30)  # the client's retry
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["key"] is None and again.json()["display"] == first.json()["display"]
    for secret in (key["key"], new_secret):  # both, with the OpenAI SDK, as the same key
        client = openai.OpenAI(api_key=secret, base_url=life.base_url + "/v1", max_retries=0, timeout=30)
        reply = client.chat.completions.create(model="mock/echo", messages=CHAT)
        assert reply.choices[0].message.content
        assert key_view(life, secret).json()["key_id"] == key["key_id"]
    assert key_view(life, key["key"]).json()["status"] == "rotated"
    listed = httpx.get(f"{life.base_url}/dashboard/accounts/{account['account_id']}/keys",
                       headers={"Authorization": f"Bearer {token}"}, timeout=30).json()["keys"]
    assert [(k["key_id"], k["display"], k["previous_display"]) for k in listed] == [
        (key["key_id"], first.json()["display"], key["display"])]
    items = Tables(life).keys.scan()["Items"]
    assert len([i for i in items if i["key_id"] == key["key_id"]]) == 2  # two secrets, not three
    assert len(events_of(life, "Key Rotated", key["key_id"])) == 1
