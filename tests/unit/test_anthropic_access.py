"""Anthropic's clients in the gateway (issue 24): the key in `x-api-key` where Anthropic's API is served (the
authorizer's rule and the proxy's are one: keys.request_key), and POST /v1/messages/count_tokens (the provider's
count, never charged, the same key checks as every /v1 call, one request in the key's rpm window)."""

import json

import pytest

from onysoft import catalog, keys
from onysoft.accounts import get_account
from onysoft.authorization import Denied, authorize
from onysoft.caller import REQUEST_CONTEXT_HEADER
from onysoft.models import UsageRecord
from onysoft.operations import keys as key_ops
from onysoft.operations.access import cli_operator
from tests.helpers import load_event, load_function_module
from tests.unit.conftest import new_key

KEY = "sk-ony-" + "ab" * 24
OTHER = "sk-ony-" + "cd" * 24
COUNT = {"model": "mock/echo", "messages": [{"role": "user", "content": "one two three"}],
         "system": "be brief"}


@pytest.mark.parametrize("authorization, x_api_key, anthropic, expected", [
    (None, KEY, True, KEY),  # Claude Code with ANTHROPIC_API_KEY
    (f"Bearer {KEY}", None, True, KEY),
    (f"Bearer {KEY}", None, False, KEY),
    (None, KEY, False, None),  # x-api-key on an OpenAI route: not read
    (f"Bearer {KEY}", OTHER, True, KEY),  # both: Authorization decides, one rule everywhere
    ("Bearer nope", KEY, True, None),  # a bad Authorization is not rescued by x-api-key
    ("", KEY, True, None),
    (None, f"Bearer {KEY}", True, None),  # x-api-key carries the key alone
    (None, KEY + " ", True, None),
    (None, KEY.upper(), True, None),
    (None, "", True, None),
    (None, None, True, None),
])
def test_the_key_of_a_request(authorization, x_api_key, anthropic, expected):
    assert keys.request_key(authorization, x_api_key, anthropic=anthropic) == expected


def _authorizer_event(resource: str, headers: dict) -> dict:
    event = load_event("authorizer-valid-key.json")
    event.update(resource=resource, path=resource, headers=headers,
                 multiValueHeaders={k: [v] for k, v in headers.items()})
    event["methodArn"] = event["methodArn"].rsplit("/", 2)[0] + "/POST" + resource
    return event


def test_the_authorizer_reads_x_api_key_on_anthropics_routes_only(aws_tables):
    _, record, headers = new_key("user")
    secret = headers["authorization"].removeprefix("Bearer ")
    handler = load_function_module("authorizer").handler
    for resource in ("/v1/messages", "/v1/messages/count_tokens"):
        policy = handler(_authorizer_event(resource, {"x-api-key": secret}), None)
        assert policy["principalId"] == record.key_id and policy["context"]["key_id"] == record.key_id
        assert policy["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    for resource in ("/v1/chat/completions", "/v1/key"):
        with pytest.raises(Exception, match="Unauthorized"):
            handler(_authorizer_event(resource, {"x-api-key": secret}), None)
    with pytest.raises(Exception, match="Unauthorized"):  # another key in Authorization wins
        handler(_authorizer_event("/v1/messages", {"Authorization": f"Bearer {OTHER}", "x-api-key": secret}), None)
    with pytest.raises(Denied):
        authorize(None, secret)  # not an Anthropic route: x-api-key is not read
    assert authorize(None, secret, anthropic=True).key_id == record.key_id


def _x_api_key_headers(headers: dict) -> dict:
    """What the adapter sends the proxy for a client that put its key in x-api-key."""
    return {"x-api-key": headers["authorization"].removeprefix("Bearer "),
            REQUEST_CONTEXT_HEADER: headers[REQUEST_CONTEXT_HEADER], "anthropic-version": "2023-06-01"}


def test_the_proxy_reads_the_same_key_the_authorizer_did(gateway):
    account, record, headers = new_key("user")
    message = {"model": "mock/echo", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    answer = gateway.post("/v1/messages", headers=_x_api_key_headers(headers), json=message)
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"][0]["text"]
    [usage] = UsageRecord.query(account.account_id)
    assert usage.key_id == record.key_id and usage.status == "settled"
    # On an OpenAI route x-api-key is not a key (the authorizer would not have let it in; nor does the proxy).
    refused = gateway.post("/v1/chat/completions", headers=_x_api_key_headers(headers),
                           json={"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 401
    # A deleted key is refused by the proxy's re-read whatever the header (here: x-api-key, a cached answer).
    key_ops.delete_key(cli_operator(), record.key_id)
    refused = gateway.post("/v1/messages", headers=_x_api_key_headers(headers), json=message)
    assert refused.status_code == 401 and refused.json()["type"] == "error"
    assert refused.json()["error"]["type"] == "authentication_error"


# ------------------------------------------------------------------------------------------- count_tokens


def test_count_tokens_is_the_providers_count_and_is_never_charged(gateway):
    account, record, headers = new_key("user")
    before = get_account(account.account_id).balance_micros
    counted = gateway.post("/v1/messages/count_tokens", headers=_x_api_key_headers(headers), json=COUNT)
    assert counted.status_code == 200, counted.text
    # The mock counts words (+3 a message) and the system prompt, exactly as it reports a real call's input.
    assert counted.json() == {"input_tokens": 3 + 3 + 2}
    assert counted.headers["x-ratelimit-remaining-requests"]
    real = gateway.post("/v1/messages", headers=headers, json={**COUNT, "max_tokens": 10})
    usage = real.json()["usage"]
    assert counted.json()["input_tokens"] == usage["input_tokens"] + usage.get("cache_read_input_tokens", 0) \
        + usage.get("cache_creation_input_tokens", 0)
    records = list(UsageRecord.query(account.account_id))
    assert [r.endpoint for r in records] == ["messages"]  # the count left no usage record, held nothing
    assert get_account(account.account_id).balance_micros == before - records[0].charge_micros


@pytest.mark.parametrize("body, status, code", [
    ({"model": "mock/nope", "messages": [{"role": "user", "content": "x"}]}, 404, "not_found_error"),
    ({"model": "mock/echo", "messages": []}, 400, "invalid_request_error"),
    ({"messages": [{"role": "user", "content": "x"}]}, 400, "invalid_request_error"),
    ({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}, 400,
     "invalid_request_error"),  # a provider that does not serve Anthropic's API
    ({"model": "mock/error-500", "messages": [{"role": "user", "content": "x"}]}, 502, "api_error"),
])
def test_count_tokens_errors_are_anthropics_envelope(gateway, body, status, code):
    catalog.set_model("openai/gpt-4o-mini", input_usd_per_mtok="1", output_usd_per_mtok="1")
    catalog.catalog_cache.invalidate()
    _, _, headers = new_key("user")
    answer = gateway.post("/v1/messages/count_tokens", headers=headers, json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == code


def test_count_tokens_checks_the_key_as_every_v1_call(gateway):
    _, limited, limited_headers = new_key("user", models=["mock/embed"])
    answer = gateway.post("/v1/messages/count_tokens", headers=limited_headers, json=COUNT)
    assert answer.status_code == 403  # the allow-list
    _, record, headers = new_key("user")
    key_ops.delete_key(cli_operator(), record.key_id)
    assert gateway.post("/v1/messages/count_tokens", headers=headers, json=COUNT).status_code == 401
    forged = dict(headers, **{REQUEST_CONTEXT_HEADER: json.dumps({"authorizer": {"key_id": "key_x"}})})
    assert gateway.post("/v1/messages/count_tokens", headers=forged, json=COUNT).status_code == 401


def test_count_tokens_counts_in_the_keys_rpm_but_uses_no_tokens(gateway):
    _, record, headers = new_key("user", rpm=2, tpm=1)
    for remaining in ("1", "0"):
        answer = gateway.post("/v1/messages/count_tokens", headers=headers, json=COUNT)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-ratelimit-remaining-requests"] == remaining
        assert answer.headers["x-ratelimit-remaining-tokens"] == "1"  # no token counted
    limited = gateway.post("/v1/messages/count_tokens", headers=headers, json=COUNT)
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limit_error"
    assert int(limited.headers["retry-after"]) >= 1


def test_a_bare_model_name_on_anthropics_routes_is_anthropics(gateway, monkeypatch):
    """Claude Code with only ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL asks for its default model by Anthropic's
    name (`claude-opus-4-8`): that is the catalog's `anthropic/claude-opus-4-8`. (The anthropic provider is pointed
    at the built-in mock here: no network.)"""
    monkeypatch.setenv("ONYSOFT_PROVIDER_ANTHROPIC_BASE_URL", "mock://local/v1")
    monkeypatch.setenv("ONYSOFT_PROVIDER_ANTHROPIC_API_KEY", "sk-ant-test")
    catalog.set_model("anthropic/claude-opus-4-8", input_usd_per_mtok="5", output_usd_per_mtok="25")
    catalog.catalog_cache.invalidate()
    account, _, headers = new_key("user")
    message = {"model": "claude-opus-4-8", "max_tokens": 20, "messages": [{"role": "user", "content": "hi there"}]}
    answer = gateway.post("/v1/messages", headers=_x_api_key_headers(headers), json=message)
    assert answer.status_code == 200, answer.text
    [record] = UsageRecord.query(account.account_id)
    assert (record.model, record.provider, record.upstream_model) == (
        "anthropic/claude-opus-4-8", "anthropic", "claude-opus-4-8")
    counted = gateway.post("/v1/messages/count_tokens", headers=_x_api_key_headers(headers),
                           json={k: v for k, v in message.items() if k != "max_tokens"})
    assert counted.status_code == 200 and counted.json()["input_tokens"] == answer.json()["usage"]["input_tokens"]
    unknown = gateway.post("/v1/messages", headers=headers, json={**message, "model": "claude-nope-1"})
    assert unknown.status_code == 404 and "anthropic/claude-nope-1" in unknown.json()["error"]["message"]
    # On OpenAI's routes a name stays what it is: no provider is guessed.
    chat = gateway.post("/v1/chat/completions", headers=headers,
                        json={"model": "claude-opus-4-8", "messages": message["messages"]})
    assert chat.status_code == 404
