"""The authorizer handler on real REQUEST events (events/), against moto's mock DynamoDB."""

import copy
import json
import sys
from datetime import timedelta

import pytest

from onysoft import clock, keys
from onysoft.accounts import create_account
from onysoft.api_keys import delete_key
from onysoft.models import ApiKey
from tests.helpers import EVENT_KEY, load_event, load_function_module


class FakeContext:
    function_name = "AuthorizerFunction"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:eu-central-1:123456789012:function:AuthorizerFunction"
    aws_request_id = "test-request"


@pytest.fixture
def authorizer(aws_tables, capsys):
    module = load_function_module("authorizer")
    # Powertools binds its handler to the stdout of its first import; write to whatever stdout is now,
    # so capsys sees the logs.
    module.logger.registered_handler.stream = _CurrentStdout()
    return module


class _CurrentStdout:
    def write(self, text):
        return sys.stdout.write(text)

    def flush(self):
        sys.stdout.flush()


def seed_event_key(kind="user", **key_fields) -> ApiKey:
    """Store the events' sample key on a fresh account, as `keys create` would (hash only)."""
    account = create_account(kind, name="sample")
    record = ApiKey(
        key_hash=keys.hash_key(EVENT_KEY), key_id="key_0123456789abcdef", display=keys.display_form(EVENT_KEY),
        name="sample", key_type=kind, account_id=account.account_id, currency=account.currency,
        status="active", created_at=clock.now_iso(), **key_fields,
    )
    record.save()
    return record


def event_with(header_value):
    event = copy.deepcopy(load_event("authorizer-valid-key.json"))
    for name in list(event.get("headers") or {}):
        if name.lower() == "authorization":
            del event["headers"][name]
    for name in list(event.get("multiValueHeaders") or {}):
        if name.lower() == "authorization":
            del event["multiValueHeaders"][name]
    if header_value is not None:
        event["headers"]["Authorization"] = header_value
        event.setdefault("multiValueHeaders", {})["Authorization"] = [header_value]
    return event


def test_valid_key_is_allowed_for_every_route_with_its_context(authorizer, capsys):
    record = seed_event_key("partner_customer", rpm=10, models=["mock/echo"])
    result = authorizer.handler(load_event("authorizer-valid-key.json"), FakeContext())
    assert result["principalId"] == record.key_id
    statement = result["policyDocument"]["Statement"][0]
    assert statement["Effect"] == "Allow"
    resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
    assert all(r.endswith("/*/*") for r in resources)
    context = result["context"]
    assert context["key_id"] == record.key_id
    assert context["key_type"] == "partner_customer"
    assert context["currency"] == "TRY"
    assert context["markup_bp"] == 3000
    assert context["rpm"] == 10
    assert context["models"] == "mock/echo"
    assert all(isinstance(v, (str, int, bool)) for v in context.values())
    assert EVENT_KEY not in capsys.readouterr().out


@pytest.mark.parametrize("event_name", ["authorizer-malformed-key.json", "authorizer-missing-key.json"])
def test_malformed_or_missing_key_is_refused_before_any_dynamodb_call(aws_tables, event_name, monkeypatch):
    module = load_function_module("authorizer")
    import onysoft.authorization as authorization

    def no_dynamodb(*_args, **_kwargs):
        raise AssertionError("DynamoDB must not be called for a malformed key")

    monkeypatch.setattr(authorization, "find_by_hash", no_dynamodb)
    with pytest.raises(Exception, match="^Unauthorized$"):
        module.handler(load_event(event_name), FakeContext())


def test_unknown_key_is_unauthorized(authorizer):
    seed_event_key()
    with pytest.raises(Exception, match="^Unauthorized$"):
        authorizer.handler(event_with("Bearer " + keys.generate_key()), FakeContext())


def test_deleted_key_is_unauthorized(authorizer, capsys):
    record = seed_event_key()
    delete_key(record.key_id)
    with pytest.raises(Exception, match="^Unauthorized$"):
        authorizer.handler(load_event("authorizer-valid-key.json"), FakeContext())
    logs = capsys.readouterr().out
    assert "deleted" in logs and EVENT_KEY not in logs


def test_expired_key_is_unauthorized_and_unexpired_is_allowed(authorizer):
    past = clock.to_iso(clock.utc_now() - timedelta(seconds=1))
    record = seed_event_key(expires_at=past)
    with pytest.raises(Exception, match="^Unauthorized$"):
        authorizer.handler(load_event("authorizer-valid-key.json"), FakeContext())
    record.update(actions=[ApiKey.expires_at.set(clock.to_iso(clock.utc_now() + timedelta(hours=1)))])
    assert authorizer.handler(load_event("authorizer-valid-key.json"), FakeContext())["principalId"] == record.key_id


def test_no_key_in_logs_for_any_outcome(authorizer, capsys, caplog):
    seed_event_key()
    unknown = keys.generate_key()
    authorizer.handler(load_event("authorizer-valid-key.json"), FakeContext())
    for header in ("Bearer " + unknown, "Bearer " + EVENT_KEY + "x", EVENT_KEY):
        with pytest.raises(Exception, match="Unauthorized"):
            authorizer.handler(event_with(header), FakeContext())
    captured = capsys.readouterr()
    everything = captured.out + captured.err + caplog.text
    assert everything  # the authorizer does log its decisions
    for secret in (EVENT_KEY, unknown, EVENT_KEY[7:], unknown[7:]):
        assert secret not in everything
    for line in captured.out.splitlines():
        json.loads(line)  # structured JSON logs, one object a line
