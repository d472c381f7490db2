"""GitHub's secret-scanning reports through the function's handler (functions/secret_scanning), on moto's
in-process DynamoDB, signed by a test key GitHub's way: a signed report revokes a live key at once (its next
request: 401 `key_leaked`, saying where it was found), a bad or missing signature or an unknown key identifier is
refused before any key is read, unknown tokens are `false_positive`, reports are idempotent, audited with the URL,
and each revocation is one `Key Leaked` event."""

import base64
import hashlib
import json

import pytest

from onysoft import api_keys, audit, events, github_signatures, keys
from onysoft.authorization import Denied, authorize
from onysoft.errors import GatewayError
from onysoft.models import ApiKey
from onysoft.operations import keys as key_ops
from onysoft.operations.access import cli_operator
from tests.helpers import GitHubSigner, load_function_module
from tests.unit.conftest import new_key

URL = "https://github.com/octocat/hello/blob/0a1b2c3/config.py"
CHAT = {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def signer(tmp_path, monkeypatch):
    signer = GitHubSigner(tmp_path / "github-keys.json")
    monkeypatch.setenv(github_signatures.KEYS_FILE_ENV, str(signer.keys_file))
    monkeypatch.setattr(github_signatures, "public_keys", github_signatures.PublicKeys())  # no keys cached
    return signer


@pytest.fixture
def events_file(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(events.FILE_ENV, str(path))
    return path


handler = load_function_module("secret_scanning").handler


def post(raw: bytes, headers: dict) -> tuple[int, object]:
    event = {"resource": "/secret-scanning/github", "path": "/secret-scanning/github", "httpMethod": "POST",
             "headers": {"Content-Type": "application/json", **headers}, "body": raw.decode(),
             "isBase64Encoded": False, "requestContext": {"requestId": "r-1"}}
    answer = handler(event, None)
    return answer["statusCode"], json.loads(answer["body"])


def match(token: str, url: str = URL, source: str = "content") -> dict:
    return {"token": token, "type": "onysoft_api_key", "url": url, "source": source}


def secret_of(headers: dict) -> str:
    return headers["authorization"].removeprefix("Bearer ")


def test_a_signed_report_revokes_a_live_key_at_once(gateway, signer, events_file):
    account, record, headers = new_key("user")
    secret = secret_of(headers)
    assert gateway.post("/v1/chat/completions", headers=headers, json=CHAT).status_code == 200
    status, feedback = post(*signer.report(match(secret)))
    assert status == 200
    assert feedback == [{"token_hash": hashlib.sha256(secret.encode()).hexdigest(), "token_type": "onysoft_api_key",
                         "label": "true_positive"}]
    # The next request (its authorizer answer cached before the report: the proxy's re-read decides) is 401
    # key_leaked, saying where the key was found.
    refused = gateway.post("/v1/chat/completions", headers=headers, json=CHAT)
    assert refused.status_code == 401
    error = refused.json()["error"]
    assert error["code"] == "key_leaked" and URL in error["message"] and "revoked" in error["message"]
    for path in ("/v1/key", "/v1/models"):
        assert gateway.get(path, headers=headers).json()["error"]["code"] == "key_leaked"
    # An authorizer run after it (a cache miss) denies with the same code and message, for the gateway response.
    policy = load_function_module("authorizer").handler(_authorizer_event(secret), None)
    assert policy["policyDocument"]["Statement"][0]["Effect"] == "Deny"
    assert policy["context"] == {"error_code": "key_leaked", "error_message": error["message"]}
    item = ApiKey.get(keys.hash_key(secret), consistent_read=True)
    assert (item.status, item.leak_url, item.leak_source) == ("leaked", URL, "content")
    [entry] = [e for e in audit.iter_all(cli_operator().principal) if e.action == "key.leaked"]
    assert entry.actor_sub == "github-secret-scanning" and entry.target_key_id == record.key_id
    assert json.loads(entry.details)["url"] == URL
    assert [e for e in audit.iter_all(audit.Principal("user", account.account_id)) if e.action == "key.leaked"]
    [event] = events.read_file(events_file)
    assert event["detail-type"] == "Key Leaked"
    assert event["detail"] == {"account_id": account.account_id, "key_id": record.key_id, "display": record.display,
                               "name": "k", "leaked_at": item.leaked_at, "url": URL, "source": "content",
                               "secret": "current"}
    # The key is listed (a banner in the dashboard), with where it was found; it can be deleted, not rotated.
    [listed] = key_ops.list_keys(cli_operator(), account.account_id)["keys"]
    assert (listed["status"], listed["leak_url"]) == ("leaked", URL)
    with pytest.raises(GatewayError) as not_rotated:
        key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=0)
    assert not_rotated.value.status == 404
    assert key_ops.delete_key(cli_operator(), record.key_id)["status"] == "deleted"


def _authorizer_event(secret: str) -> dict:
    from tests.helpers import load_event

    event = load_event("authorizer-valid-key.json")
    event["headers"] = {"Authorization": f"Bearer {secret}"}
    event["multiValueHeaders"] = {"Authorization": [f"Bearer {secret}"]}
    return event


def test_a_report_delivered_twice_revokes_once(aws_tables, signer, events_file):
    _, record, headers = new_key("user")
    report = signer.report(match(secret_of(headers)))
    first, second = post(*report), post(*report)
    assert first == second and first[1][0]["label"] == "true_positive"
    assert len([e for e in audit.iter_all(cli_operator().principal) if e.action == "key.leaked"]) == 1
    assert [e["detail-type"] for e in events.read_file(events_file)] == ["Key Leaked"]


@pytest.mark.parametrize("tamper", ["no headers", "no signature", "another key's signature", "another body",
                                    "unknown key identifier", "not base64", "empty body"])
def test_an_unsigned_or_wrongly_signed_report_revokes_nothing_and_reads_no_key(aws_tables, signer, monkeypatch,
                                                                               tamper):
    from cryptography.hazmat.primitives.asymmetric import ec

    _, record, headers = new_key("user")
    raw, signed = signer.report(match(secret_of(headers)))
    if tamper == "no headers":
        signed = {}
    elif tamper == "no signature":
        signed.pop("Github-Public-Key-Signature")
    elif tamper == "another key's signature":
        signed["Github-Public-Key-Signature"] = signer.sign(raw, ec.generate_private_key(ec.SECP256R1()))
    elif tamper == "another body":
        raw = raw.replace(b"content", b"commit!")
    elif tamper == "unknown key identifier":
        signed["Github-Public-Key-Identifier"] = "not-a-github-key"
    elif tamper == "not base64":
        signed["Github-Public-Key-Signature"] = "%%%"
    else:
        raw = b""

    def no_reads(*args, **kwargs):
        raise AssertionError("a key was read for a report that is not GitHub's")

    monkeypatch.setattr(ApiKey, "batch_get", no_reads)
    monkeypatch.setattr(ApiKey, "get", no_reads)
    status, body = post(raw, signed)
    assert status == 401 and body["error"]["code"] == "invalid_signature"
    monkeypatch.undo()
    assert api_keys.find_by_key_id(record.key_id).status == "active"


def test_unknown_tokens_are_false_positives_and_nothing_else_is_touched(aws_tables, signer, events_file):
    _, record, headers = new_key("user")
    deleted_account, deleted, deleted_headers = new_key("user")
    key_ops.delete_key(cli_operator(), deleted.key_id)
    unknown = keys.generate_key()
    status, feedback = post(*signer.report(match(unknown), match("ghp_notours1234567890"),
                                           match(secret_of(deleted_headers)), match(unknown)))
    assert status == 200
    assert [(f["token_hash"], f["label"]) for f in feedback] == [
        (hashlib.sha256(unknown.encode()).hexdigest(), "false_positive"),
        (hashlib.sha256(b"ghp_notours1234567890").hexdigest(), "false_positive"),
        (keys.hash_key(secret_of(deleted_headers)), "true_positive"),  # ours, already dead: nothing to do
    ]
    assert api_keys.find_by_key_id(record.key_id).status == "active"
    assert api_keys.find_by_key_id(deleted.key_id).status == "deleted"
    assert not events_file.exists()


def test_an_old_secret_reported_in_its_grace_is_revoked_alone(gateway, signer, events_file):
    _, record, old_headers = new_key("user")
    rotated, _ = key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=3600)
    new_headers = {**old_headers, "authorization": f"Bearer {rotated['key']}"}
    new_headers["x-amzn-request-context"] = json.dumps(
        {"authorizer": authorize(f"Bearer {rotated['key']}").to_authorizer_context()})
    status, feedback = post(*signer.report(match(secret_of(old_headers), url="")))
    assert status == 200 and feedback[0]["label"] == "true_positive"
    refused = gateway.post("/v1/chat/completions", headers=old_headers, json=CHAT)
    assert refused.json()["error"]["code"] == "key_leaked"
    assert "found in public" in refused.json()["error"]["message"]
    assert gateway.post("/v1/chat/completions", headers=new_headers, json=CHAT).status_code == 200
    with pytest.raises(Denied) as denied:
        authorize(old_headers["authorization"])
    assert denied.value.reason == "leaked" and denied.value.message
    [event] = [e for e in events.read_file(events_file) if e["detail-type"] == "Key Leaked"]
    assert event["detail"]["secret"] == "previous" and event["detail"]["display"] == record.display
    assert event["detail"]["url"] is None


def test_revoking_a_key_ends_its_old_secrets_grace(gateway, signer, events_file):
    _, record, old_headers = new_key("user")
    rotated, _ = key_ops.rotate_key(cli_operator(), record.key_id, grace_seconds=3600)
    post(*signer.report(match(rotated["key"])))
    assert gateway.post("/v1/chat/completions", headers=old_headers, json=CHAT).status_code == 401
    with pytest.raises(Denied):
        authorize(old_headers["authorization"])


@pytest.mark.parametrize("raw", [b"{}", b"[]", b"not json", b'[{"token": 1, "type": "x"}]', b'["x"]',
                                 json.dumps([{"token": "t", "type": "x"}] * 1001).encode()])
def test_a_signed_body_that_is_no_report_is_a_400(aws_tables, signer, raw):
    status, body = post(raw, {"Github-Public-Key-Identifier": signer.key_identifier,
                              "Github-Public-Key-Signature": signer.sign(raw)})
    assert status == 400 and body["error"]["code"] == "invalid_report"


def test_without_githubs_keys_a_report_is_answered_503_for_a_retry(aws_tables, signer, monkeypatch):
    monkeypatch.setenv(github_signatures.KEYS_FILE_ENV, str(signer.keys_file.with_name("missing.json")))
    status, body = post(*signer.report(match(keys.generate_key())))
    assert status == 503 and body["error"]["code"] == "signature_keys_unavailable"


def test_githubs_documented_sample_verifies_only_with_its_own_bytes(tmp_path, monkeypatch):
    """The signature is over the raw body: the same JSON re-serialized (other spacing) does not verify."""
    signer = GitHubSigner(tmp_path / "k.json")
    monkeypatch.setenv(github_signatures.KEYS_FILE_ENV, str(signer.keys_file))
    monkeypatch.setattr(github_signatures, "public_keys", github_signatures.PublicKeys())
    raw = b'[{"source":"commit","token":"some_token","type":"some_type","url":"https://example.com/base-repo-url/"}]'
    signature = signer.sign(raw)
    assert github_signatures.verify(raw, signer.key_identifier, signature)
    assert not github_signatures.verify(json.dumps(json.loads(raw)).encode(), signer.key_identifier, signature)
    assert not github_signatures.verify(raw, signer.key_identifier, base64.b64encode(b"x" * 70).decode())
