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

from onysoft import clock, keys
from tests.helpers import GitHubSigner
from tests.integration.conftest import DevGateway
from tests.integration.ledger import Tables, check_envelope

CHAT = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def signer(tmp_path_factory) -> GitHubSigner:
    """GitHub's signing key, stood in for: its public key in the file the gateway reads them from."""
    return GitHubSigner(tmp_path_factory.mktemp("github") / "secret-scanning-keys.json")


@pytest.fixture(scope="module")
def life(tmp_path_factory, signer):
    dev = DevGateway(tmp_path_factory.mktemp("life") / "state", extra_env={
        "ONYSOFT_GITHUB_SECRET_SCANNING_KEYS": str(signer.keys_file),
        "ONYSOFT_DEV_KEY_EXPIRY_SECONDS": "1",  # KeyExpiryFunction's schedule, locally (15 minutes in AWS)
    }).start()
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
        time.sleep(0.3)  # paced: ~10 requests in the 3 s grace, well under the key's 40 a minute
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


def wait_for_events(gw: DevGateway, detail_type: str, key_id: str, count: int = 1, timeout: float = 30.0) -> list:
    """The key's events of a type once there are `count` of them (a scheduled run or a report writes them)."""
    deadline = time.monotonic() + timeout
    while True:
        found = events_of(gw, detail_type, key_id)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------- leaked keys


def report(gw: DevGateway, raw: bytes, headers: dict) -> httpx.Response:
    return httpx.post(gw.base_url + "/secret-scanning/github", content=raw,
                      headers={"Content-Type": "application/json", **headers}, timeout=30)


def match(token: str, url: str = "https://github.com/octocat/hello/blob/0a1b2c3/settings.py") -> dict:
    return {"token": token, "type": "onysoft_api_key", "url": url, "source": "content"}


def test_a_signed_github_report_revokes_a_live_key_at_once(life, signer):
    account, key = funded_key(life)
    assert chat(life, key["key"]).status_code == 200  # the authorizer's Allow is now cached for this header
    url = f"https://github.com/octocat/hello/blob/{uuid.uuid4().hex[:7]}/settings.py"
    answer = report(life, *signer.report(match(key["key"], url)))
    assert answer.status_code == 200, answer.text
    assert answer.json() == [{"token_hash": keys.hash_key(key["key"]), "token_type": "onysoft_api_key",
                              "label": "true_positive"}]
    # The very next request: its cached Allow notwithstanding, the proxy's re-read refuses it.
    error = check_envelope(chat(life, key["key"]), 401, "key_leaked")
    assert url in error["message"]
    # Where no answer is cached (Anthropic's routes, every request authorized; here with x-api-key), the
    # authorizer itself denies, and API Gateway's ACCESS_DENIED response carries its code and message.
    denied = httpx.post(life.base_url + "/v1/messages", headers={"x-api-key": key["key"]},
                        json={"model": "mock/echo", "max_tokens": 5, "messages": CHAT}, timeout=30)
    assert denied.status_code == 401 and denied.headers["x-amzn-errortype"] == "AccessDeniedException"
    assert denied.json()["error"]["code"] == "key_leaked" and url in denied.json()["error"]["message"]
    [event] = wait_for_events(life, "Key Leaked", key["key_id"])
    assert event["detail"]["url"] == url and event["detail"]["account_id"] == account["account_id"]
    assert key["key"] not in json.dumps(event)
    listed = life.cli_json("keys", "list", "--account", account["account_id"])["keys"]
    assert [(k["key_id"], k["status"], k["leak_url"]) for k in listed] == [(key["key_id"], "leaked", url)]
    # Delivered again (GitHub retries): the same answer, nothing more revoked or told.
    again = report(life, *signer.report(match(key["key"], url)))
    assert again.json() == answer.json()
    assert len(events_of(life, "Key Leaked", key["key_id"])) == 1


def test_a_bad_signature_or_an_unknown_key_id_revokes_nothing_and_unknown_tokens_are_false_positives(life, signer):
    _, key = funded_key(life)
    raw, headers = signer.report(match(key["key"]))
    forged = GitHubSigner(signer.keys_file.with_name("forger.json"), key_identifier=signer.key_identifier)
    for bad in ({**headers, "Github-Public-Key-Signature": forged.sign(raw)},
                {**headers, "Github-Public-Key-Identifier": "not-one-of-githubs"}, {}):
        refused = report(life, raw, bad)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_signature"
    assert chat(life, key["key"]).status_code == 200  # still live
    unknown = keys.generate_key()
    answer = report(life, *signer.report(match(unknown), match("AKIAIOSFODNN7EXAMPLE")))
    assert [f["label"] for f in answer.json()] == ["false_positive", "false_positive"]
    assert events_of(life, "Key Leaked", key["key_id"]) == []


# ------------------------------------------------------------------------------------------- expiry notices


def test_an_expiring_key_is_told_once_and_an_expired_key_that_it_expired(life):
    """Key Expiring for a key an hour from its expiry (the 1-day notice, the 7-day one skipped), and Key Expired for
    one made to expire at once. Nothing here hangs on how fast the machine is: the expired key's event comes from a
    run after the one that told the first key, and that later run told the first key nothing again."""
    _, soon = funded_key(life, "--expires-in", "1h")
    [expiring] = wait_for_events(life, "Key Expiring", soon["key_id"])
    assert expiring["detail"]["notice"] == "1d" and expiring["detail"]["expires_at"] == soon["expires_at"]
    assert 0 < expiring["detail"]["seconds_left"] <= 3600
    _, gone = funded_key(life, "--expires-in", "1s")
    [expired] = wait_for_events(life, "Key Expired", gone["key_id"])
    assert clock.parse_iso(expired["time"]) >= clock.parse_iso(gone["expires_at"])
    assert expired["detail"]["expires_at"] == gone["expires_at"] and gone["key"] not in json.dumps(expired)
    check_envelope(chat(life, gone["key"]), 401, "invalid_api_key")
    assert len(events_of(life, "Key Expiring", soon["key_id"])) == 1  # once, across every run since
    assert len(events_of(life, "Key Expired", gone["key_id"])) == 1
