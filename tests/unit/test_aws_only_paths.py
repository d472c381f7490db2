"""Code paths that only run in AWS, driven through the functions' handlers so their AWS calls are checked
against the template's roles (tests/test_iam_conformance.py): the provider key read from Secrets Manager,
and the scheduled sweeper."""

import json
from datetime import timedelta

import httpx
import pytest

from onysoft import catalog
from onysoft.models import UsageRecord
from tests.helpers import load_function_module
from tests.unit.conftest import new_key

SECRET_VALUE = "sk-provider-from-secrets-manager"


@pytest.fixture
def upstream():
    from onysoft_tools.fake_provider import FakeUpstream

    fake = FakeUpstream().start()
    yield fake
    fake.stop()


def test_in_lambda_the_provider_key_comes_from_its_secret(gateway, upstream, monkeypatch):
    import boto3

    boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="onysoft/providers/openai", SecretString=SECRET_VALUE)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "onysoft-proxy")  # what Lambda sets: keys from secrets
    monkeypatch.delenv("ONYSOFT_PROVIDER_OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ONYSOFT_PROVIDER_OPENAI_BASE_URL", upstream.base_url)
    catalog.set_model("openai/fake-ok", input_usd_per_mtok="1", output_usd_per_mtok="2")
    catalog.catalog_cache.invalidate()
    _, _, headers = new_key("user")
    response = gateway.post("/v1/chat/completions", headers=headers,
                            json={"model": "openai/fake-ok", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    assert upstream.requests[-1]["headers"]["authorization"] == f"Bearer {SECRET_VALUE}"


class _InvocationKilled(BaseException):  # noqa: N818 - what a timeout or an out-of-memory kill looks like
    """Lambda ends the invocation: no except/finally in the proxy gets to settle or release."""


def test_the_scheduled_sweeper_closes_a_hold_its_invocation_left_open(gateway, monkeypatch, capsys):
    from starlette.testclient import TestClient

    from onysoft import clock, proxy_app, upstream
    from onysoft_tools.iam_record import attributed

    class Dies(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request):
            raise _InvocationKilled

    monkeypatch.setattr(upstream, "client_for", lambda provider: httpx.AsyncClient(transport=Dies()))
    # A key with a spend limit: closing its hold also gives the held amount back to its spend counter.
    account, _, headers = new_key("user", spend_limit_micros=50_000_000, limit_reset="daily")
    dying = TestClient(attributed(proxy_app.app, "ProxyFunction"))  # its own portal: this one does not survive
    with pytest.raises(_InvocationKilled):
        dying.post("/v1/chat/completions", headers=headers,
                     json={"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]})
    [record] = UsageRecord.query(account.account_id)
    assert record.hold_state is not None and record.spend_period  # left open, counted against the limit

    from onysoft import open_holds

    sweeper = load_function_module("sweeper")
    assert open_holds.count_older_than() == 0  # just placed
    real_now = clock.utc_now
    monkeypatch.setattr(clock, "utc_now", lambda: real_now() + timedelta(hours=2))
    assert open_holds.count_older_than() == 1  # what the stale-holds alarm would see without a sweep
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "onysoft-sweeper")  # metrics are printed in Lambda only
    capsys.readouterr()
    result = sweeper.handler({"source": "aws.scheduler"}, None)
    assert isinstance(result, dict)
    [record] = UsageRecord.query(account.account_id)
    assert record.hold_state is None and record.status != "pending"
    [emf] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert emf["StaleHoldsFound"] == [1] and emf["StaleHoldsSettled"] == [1] and emf["OpenHoldsOlderThan30Min"] == [0]


# ------------------------------------------------------------------------------------------- key events (EventBridge)

@pytest.fixture
def event_bus(aws_tables, monkeypatch):
    """The stack's bus in moto (named as the template's Globals name it to every function), with a rule that
    sends every `onysoft` event to a queue: returns a function reading what arrived."""
    import boto3

    from onysoft import events

    monkeypatch.delenv(events.FILE_ENV, raising=False)
    monkeypatch.setenv(events.BUS_ENV, "onysoft-test-events")
    events._clients.clear()
    bus = boto3.client("events", region_name="us-east-1")
    sqs = boto3.client("sqs", region_name="us-east-1")
    bus.create_event_bus(Name="onysoft-test-events")
    queue = sqs.create_queue(QueueName="onysoft-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    bus.put_rule(Name="all", EventBusName="onysoft-test-events", EventPattern=json.dumps({"source": ["onysoft"]}))
    bus.put_targets(Rule="all", EventBusName="onysoft-test-events", Targets=[{"Id": "q", "Arn": arn}])

    def received() -> list[dict]:
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]

    yield received
    events._clients.clear()


def test_the_dashboard_puts_key_rotated_on_the_bus(event_bus):
    from tests.unit.test_dashboard import make_event

    _, record, _ = new_key("user")
    dashboard = load_function_module("dashboard")
    event = make_event("POST", "/dashboard/keys/{key_id}/rotate", path_params={"key_id": record.key_id},
                       body={"grace": "1h"}, principal=f"user:{record.account_id}")
    assert dashboard.handler(event, None)["statusCode"] == 200
    [rotated] = event_bus()
    assert (rotated["detail-type"], rotated["detail"]["key_id"]) == ("Key Rotated", record.key_id)


def test_the_secret_scanning_function_puts_key_leaked_on_the_bus(event_bus, tmp_path, monkeypatch):
    from onysoft import github_signatures
    from tests.helpers import GitHubSigner

    signer = GitHubSigner(tmp_path / "keys.json")
    monkeypatch.setenv(github_signatures.KEYS_FILE_ENV, str(signer.keys_file))
    monkeypatch.setattr(github_signatures, "public_keys", github_signatures.PublicKeys())
    _, record, headers = new_key("user")
    raw, signed = signer.report({"token": headers["authorization"].removeprefix("Bearer "), "type": "onysoft_api_key",
                                 "url": "https://github.com/o/r/blob/x/f.py", "source": "content"})
    answer = load_function_module("secret_scanning").handler(
        {"headers": signed, "body": raw.decode(), "isBase64Encoded": False}, None)
    assert answer["statusCode"] == 200
    [leaked] = event_bus()
    assert (leaked["detail-type"], leaked["detail"]["key_id"]) == ("Key Leaked", record.key_id)


def test_the_scheduled_key_expiry_function_puts_key_expiring_on_the_bus(event_bus):
    from onysoft import expiry

    _, record, _ = new_key("user", expires_at=expiry.expires_in("2d"))
    result = load_function_module("key_expiry").handler({"source": "aws.scheduler"}, None)
    assert result["7d"] == 1
    [expiring] = event_bus()
    assert (expiring["detail-type"], expiring["detail"]["notice"]) == ("Key Expiring", "7d")


def test_a_secrets_key_is_read_once_per_max_age_and_the_request_path_runs_candidates_inline_only_when_at_hand(
        aws_tables, monkeypatch):
    """forwarding._at_hand decides whether _candidates runs on the event loop: only when it reads nothing over the
    network (the catalog within its TTL, every provider key at hand). A key from Secrets Manager is at hand for
    SECRET_MAX_AGE after it was read, and read again after that."""
    import boto3

    from onysoft import forwarding, providers

    secrets = boto3.client("secretsmanager", region_name="us-east-1")
    secrets.create_secret(Name="onysoft/providers/openai", SecretString="sk-first")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "onysoft-proxy")
    monkeypatch.delenv("ONYSOFT_PROVIDER_OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(providers, "_keys", {})
    catalog.set_model("openai/fake-ok", input_usd_per_mtok="1", output_usd_per_mtok="2")
    catalog.catalog_cache.invalidate()
    openai = providers.get_provider("openai")
    names = [("openai/fake-ok", True)]

    assert not forwarding._at_hand(names)  # the catalog is stale
    catalog.catalog_cache.model("openai/fake-ok")  # loaded (in the pool, on the request path)
    assert not providers.key_at_hand(openai) and not forwarding._at_hand(names)  # the key was never read
    assert providers.api_key(openai) == "sk-first"
    assert providers.key_at_hand(openai) and forwarding._at_hand(names)
    assert forwarding._at_hand([("openai/not-in-the-catalog", True)])  # its 404 needs nothing fetched

    secrets.put_secret_value(SecretId="onysoft/providers/openai", SecretString="sk-rotated")
    assert providers.api_key(openai) == "sk-first"  # within the age: no call
    now = providers.time.monotonic()
    monkeypatch.setattr(providers.time, "monotonic", lambda: now + providers.SECRET_MAX_AGE - 1)
    assert not providers.key_at_hand(openai)  # within 5 s of its age: not at hand for a request starting now
    monkeypatch.setattr(providers.time, "monotonic", lambda: now + providers.SECRET_MAX_AGE + 1)
    assert providers.api_key(openai) == "sk-rotated"  # read again past the age
