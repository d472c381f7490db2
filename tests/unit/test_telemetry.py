"""The proxy's structured request log and its CloudWatch metrics (EMF), as Lambda would print them."""

import io
import json
import logging

import pytest

from onysoft.accounts import get_account
from tests.unit.conftest import new_key

CHAT = {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def lambda_output(monkeypatch, capsys):
    """Everything the proxy prints in Lambda: the onysoft loggers' JSON lines and the EMF documents."""
    from onysoft import telemetry

    telemetry.logger()
    stream = io.StringIO()
    for handler in logging.getLogger("onysoft").handlers:
        if hasattr(handler, "stream"):  # not pytest's own log-capture handlers, which a CLI test may leave
            monkeypatch.setattr(handler, "stream", stream)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "onysoft-proxy")  # metrics are written in Lambda only

    def read() -> list[dict]:
        lines = stream.getvalue().splitlines() + capsys.readouterr().out.splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    return read


def _metrics(documents: list[dict]) -> list[dict]:
    return [d for d in documents if "_aws" in d]


def _metric(documents: list[dict], name: str) -> list[dict]:
    return [d for d in _metrics(documents) if name in d]


def _directive(document: dict, metric: str) -> dict:
    """The EMF metric directive of `document` that names `metric` (CloudWatch reads the value at the root)."""
    [found] = [d for d in document["_aws"]["CloudWatchMetrics"] if metric in [m["Name"] for m in d["Metrics"]]]
    # What CloudWatch needs of every directive (the EMF specification): each dimension a non-empty string at the
    # root, each metric a number at the root.
    for directive in document["_aws"]["CloudWatchMetrics"]:
        assert all(isinstance(document.get(name), str) and document[name] for dims in directive["Dimensions"]
                   for name in dims)
        assert all(isinstance(document.get(m["Name"]), int | float) and not isinstance(document[m["Name"]], bool)
                   for m in directive["Metrics"])
    return found


def test_a_request_is_one_structured_line_and_its_metrics_by_currency(gateway, lambda_output):
    account, record, headers = new_key("user")
    response = gateway.post("/v1/chat/completions", headers=headers, json=CHAT)
    assert response.status_code == 200
    charge = 100_000_000 - get_account(account.account_id).balance_micros
    out = lambda_output()
    [line] = [d for d in out if d.get("message") == "request"]
    assert line["key_id"] == record.key_id and line["account_id"] == account.account_id
    assert line["model"] == "mock/echo" and line["status"] == 200 and line["currency"] == "TRY"
    assert line["charge_micros"] == charge > 0
    assert isinstance(line["upstream_latency_ms"], int) and line["level"] == "INFO"
    # The line is its metrics' EMF document: one line a request, whatever it is counted under.
    assert _metrics(out) == [line] and line["service"] == "onysoft-gateway"
    assert line["Requests"] == 1 and line["ChargeMicros"] == charge
    assert _directive(line, "Requests") == _directive(line, "ChargeMicros") == {
        "Namespace": "Onysoft", "Dimensions": [["currency", "service"]],
        "Metrics": [{"Name": "Requests", "Unit": "Count"}, {"Name": "ChargeMicros", "Unit": "Count"}]}
    assert _directive(line, "ServerErrors") == _directive(line, "UpstreamLatency") == {
        "Namespace": "Onysoft", "Dimensions": [["service"]],
        "Metrics": [{"Name": "ServerErrors", "Unit": "Count"}, {"Name": "UpstreamLatency", "Unit": "Milliseconds"}]}
    assert line["ServerErrors"] == 0 and line["UpstreamLatency"] == line["upstream_latency_ms"]
    assert "HoldRefusals" not in line and isinstance(line["_aws"]["Timestamp"], int)
    key = headers["authorization"].split()[1]
    assert key not in json.dumps(out)  # never the key, only its id


def test_a_refused_hold_is_counted(gateway, lambda_output):
    _, _, headers = new_key("partner_project", amount="0.000001")
    response = gateway.post("/v1/chat/completions", headers=headers, json=CHAT)
    assert response.status_code == 402
    out = lambda_output()
    [line] = [d for d in out if d.get("message") == "request"]
    assert line["status"] == 402 and line["error_code"] == "insufficient_balance" and "charge_micros" not in line
    assert _metrics(out) == [line] and line["HoldRefusals"] == 1 and line["service"] == "onysoft-gateway"
    assert _directive(line, "HoldRefusals")["Dimensions"] == [["service"]]
    assert line["Requests"] == 1 and line["currency"] == "USD" and "ChargeMicros" not in line
    assert _directive(line, "Requests")["Metrics"] == [{"Name": "Requests", "Unit": "Count"}]


def test_a_failed_settle_is_counted_for_the_alarm(gateway, lambda_output, monkeypatch):
    from onysoft import billing

    def broken(token, **items):
        raise RuntimeError("DynamoDB unavailable")

    monkeypatch.setattr(billing, "_transact", broken)
    hold = billing.Hold("req_x", "acct", "sk", "", "key", 10, None, None, 0, "")
    with pytest.raises(RuntimeError):
        billing.release(hold, code="x", message="y")
    [failure] = _metric(lambda_output(), "SettleFailures")
    assert failure["SettleFailures"] == [1] and failure["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]


def test_extra_fields_of_the_onysoft_loggers_reach_the_log(lambda_output):
    logging.getLogger("onysoft.forwarding").warning("hold already closed", extra={"request_id": "req_1"})
    [line] = lambda_output()
    assert line["message"] == "hold already closed" and line["request_id"] == "req_1"


def test_nothing_is_printed_as_metrics_outside_lambda(gateway, lambda_output, monkeypatch):
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME")
    _, _, headers = new_key("user")
    assert gateway.post("/v1/chat/completions", headers=headers, json=CHAT).status_code == 200
    out = lambda_output()
    assert not _metrics(out) and [d for d in out if d.get("message") == "request"]


def test_the_proxy_refuses_a_body_over_lambdas_6_mb(gateway):
    _, _, headers = new_key("user")
    big = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * (6 * 1024 * 1024)}]})
    response = gateway.post("/v1/chat/completions", headers={**headers, "content-type": "application/json"},
                            content=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large" and "6 MB" in response.json()["error"]["message"]


def test_a_providers_breaker_opening_is_counted_by_provider_and_for_the_alarm(gateway, lambda_output):
    _, _, headers = new_key("user")
    for _ in range(3):  # the third timeout opens the mock provider's breaker
        assert gateway.post("/v1/chat/completions", headers=headers, json={**CHAT, "model": "mock/timeout"}
                            ).status_code == 504
    assert gateway.post("/v1/chat/completions", headers=headers, json=CHAT).status_code == 503
    out = lambda_output()
    opened = _metric(out, "CircuitOpened")
    assert [d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] for d in opened] == [[["service"]],
                                                                                   [["provider", "service"]]]
    assert all(d["CircuitOpened"] == [1] for d in opened) and opened[1]["provider"] == "mock"
    [line] = [d for d in out if d.get("message", "").startswith("circuit opened")]
    assert line["provider"] == "mock" and line["cooldown_seconds"] == 30 and line["level"] == "ERROR"
    [refused] = [d for d in out if d.get("message") == "request" and d["status"] == 503]
    assert refused["error_code"] == "provider_circuit_open" and "charge_micros" not in refused
