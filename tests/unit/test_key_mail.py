"""The optional mail subscriber of the event bus (functions/key_mail, onysoft.key_mail), on moto (DynamoDB, the
user pool, SES v2): an event about an account's key is mailed to the people whose principal owns the account, one
message each, and to no one else; never a secret; nothing without a sender."""

import json

import boto3
import pytest

from onysoft import accounts, events, key_mail
from tests.helpers import load_function_module

SENDER = "keys@onysoft.example"
handler = load_function_module("key_mail").handler


@pytest.fixture
def mail(aws_tables, monkeypatch):
    """A user pool with sign-ins of several principals, a verified sender; returns what SES sent."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    idp = boto3.client("cognito-idp", region_name="us-east-1")
    pool = idp.create_user_pool(PoolName="dashboard", Schema=[
        {"Name": "principal", "AttributeDataType": "String", "Mutable": False}])["UserPool"]["Id"]
    boto3.client("sesv2", region_name="us-east-1").create_email_identity(EmailIdentity=SENDER)
    monkeypatch.setenv(key_mail.POOL_ENV, pool)
    monkeypatch.setenv(key_mail.SENDER_ENV, SENDER)

    def person(email: str, principal: str, enabled: bool = True) -> None:
        idp.admin_create_user(UserPoolId=pool, Username=email, MessageAction="SUPPRESS", UserAttributes=[
            {"Name": "email", "Value": email}, {"Name": "custom:principal", "Value": principal}])
        if not enabled:
            idp.admin_disable_user(UserPoolId=pool, Username=email)

    def sent() -> list[tuple[str, str, str]]:
        backend = ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
        return [(m.destinations["ToAddresses"][0], m.subject, m.body) for m in backend.sent_messages]

    return person, sent


def test_a_leaked_keys_event_is_mailed_to_the_accounts_people_only(mail):
    person, sent = mail
    mine = accounts.create_account("user", name="mine")
    other = accounts.create_account("user", name="other")
    for email, principal in (("ayse@example.com", f"user:{mine.account_id}"),
                             ("mehmet@example.com", f"user:{mine.account_id}"),
                             ("stranger@example.com", f"user:{other.account_id}"),
                             ("ops@example.com", "operator"), ("partner@example.com", "partner:p1")):
        person(email, principal)
    person("gone@example.com", f"user:{mine.account_id}", enabled=False)
    detail = {"account_id": mine.account_id, "key_id": "key_0123456789abcdef", "display": "sk-ony-ab12…cd34",
              "name": "ci", "leaked_at": "2026-01-02T03:04:05.000000Z",
              "url": "https://github.com/o/r/blob/x/settings.py", "source": "content", "secret": "current"}
    result = handler(events.envelope(events.KEY_LEAKED, detail), None)
    assert result == {"sent": 2}
    messages = sent()
    assert sorted(to for to, _, _ in messages) == ["ayse@example.com", "mehmet@example.com"]
    for _, subject, body in messages:
        assert "“ci” (sk-ony-ab12…cd34)" in subject and "revoked" in subject
        assert detail["url"] in body and "sk-ony-" + "0" * 48 not in body


def test_an_org_projects_expiry_goes_to_the_orgs_people(mail):
    person, sent = mail
    project = accounts.create_account("project", name="web", owner="acme")
    person("admin@acme.example", "org:acme")
    person("other@else.example", "org:else")
    handler(events.envelope(events.KEY_EXPIRING, {"account_id": project.account_id, "key_id": "key_1",
                                                  "display": "sk-ony-aaaa…bbbb", "name": "",
                                                  "expires_at": "2026-03-01T00:00:00.000000Z", "notice": "7d"}), None)
    [(to, subject, body)] = sent()
    assert to == "admin@acme.example" and "expires on 2026-03-01" in subject


def test_nothing_is_mailed_without_a_sender_or_for_an_unknown_account(mail, monkeypatch):
    person, sent = mail
    mine = accounts.create_account("user")
    person("ayse@example.com", f"user:{mine.account_id}")
    event = events.envelope(events.KEY_EXPIRED, {"account_id": "acct_" + "0" * 16, "key_id": "k", "display": "d"})
    assert handler(event, None) == {"sent": 0}
    monkeypatch.delenv(key_mail.SENDER_ENV)
    event = events.envelope(events.KEY_EXPIRED, {"account_id": mine.account_id, "key_id": "k", "display": "d"})
    assert key_mail.deliver(event) == {"sent": 0}
    assert sent() == []


def test_every_event_type_has_words(mail):
    for detail_type in events.DETAIL_TYPES:
        subject, body = key_mail.compose(detail_type, {"account_id": "acct_1", "key_id": "key_1", "display": "d",
                                                       "name": "n", "balance_micros": 5})
        assert subject.startswith("Onysoft: ") and body.strip() and "None" not in subject
    assert json.dumps(key_mail.compose(events.BALANCE_LOW, {"account_id": "a", "balance_micros": 5}))
