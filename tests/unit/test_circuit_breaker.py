"""onysoft.circuit_breaker: the state machine on an injected clock (no sleeps), its settings, its thread safety,
and the proxy failing fast before any hold (in-process, moto mock_aws)."""

from __future__ import annotations

import threading

import pytest

from onysoft import circuit_breaker
from onysoft.circuit_breaker import CLOSED, HALF_OPEN, OPEN, Breaker, Refused, Settings, Ticket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def opened() -> list[tuple[str, float]]:
    return []


@pytest.fixture
def breaker(clock, opened) -> Breaker:
    return Breaker("openai", Settings(), clock=clock, on_open=lambda provider, cooldown: opened.append(
        (provider, cooldown)))


def fail(breaker: Breaker, times: int = 1) -> None:
    for _ in range(times):
        ticket = breaker.admit()
        assert isinstance(ticket, Ticket) and not ticket.trial
        ticket.failed()


def open_it(breaker: Breaker) -> None:
    fail(breaker, breaker.settings.failures)
    assert breaker.state == OPEN


def test_k_failures_in_the_window_open_it_and_it_then_refuses_with_the_seconds_left(breaker, clock, opened):
    fail(breaker, 2)
    assert breaker.state == CLOSED and isinstance(breaker.admit(), Ticket)
    clock.now += 10
    fail(breaker)
    assert breaker.state == OPEN and opened == [("openai", 30.0)]
    clock.now += 12
    refused = breaker.admit()
    assert isinstance(refused, Refused) and refused.provider == "openai"
    assert refused.retry_after == pytest.approx(18.0) and refused.retry_after_header == "18"
    clock.now += 17.5
    assert breaker.admit().retry_after_header == "1"  # never 0: a client told 0 would come back at once


def test_failures_older_than_the_window_do_not_count(breaker, clock):
    fail(breaker, 2)
    clock.now += 600  # the first two fall out of the window
    fail(breaker, 2)
    assert breaker.state == CLOSED
    fail(breaker)
    assert breaker.state == OPEN


def test_answers_and_unsent_requests_are_not_failures(breaker):
    for _ in range(10):
        breaker.admit().answered()  # any HTTP status: the provider is there
        breaker.admit().unused()
    fail(breaker, 2)
    assert breaker.state == CLOSED


def test_after_the_cooldown_one_trial_goes_through_and_its_answer_closes_it(breaker, clock, opened):
    open_it(breaker)
    clock.now += 30
    trial = breaker.admit()
    assert isinstance(trial, Ticket) and trial.trial and breaker.state == HALF_OPEN
    others = breaker.admit()  # one trial at a time
    assert isinstance(others, Refused) and others.retry_after == pytest.approx(30.0)
    trial.answered()
    assert breaker.state == CLOSED and isinstance(breaker.admit(), Ticket)
    fail(breaker, 2)
    assert breaker.state == CLOSED  # closing forgot the failures before it: K new ones are needed
    fail(breaker)
    assert opened == [("openai", 30.0), ("openai", 30.0)]  # and the cool-down started over


def test_a_failed_trial_reopens_it_for_twice_as_long_up_to_the_cap(breaker, clock, opened):
    open_it(breaker)
    cooldowns = []
    for _ in range(7):
        clock.now += breaker.settings.max_cooldown_seconds  # past any cool-down
        trial = breaker.admit()
        assert trial.trial
        trial.failed()
        cooldowns.append(breaker.admit().retry_after)
    assert cooldowns == [60, 120, 240, 480, 600, 600, 600]
    assert [c for _, c in opened] == [30, 60, 120, 240, 480, 600, 600, 600]
    clock.now += 599
    assert isinstance(breaker.admit(), Refused)
    clock.now += 1
    breaker.admit().answered()
    assert breaker.state == CLOSED
    open_it(breaker)
    assert breaker.admit().retry_after == 30  # a close resets the cool-down


def test_a_trial_that_was_never_sent_lets_the_next_request_be_the_trial(breaker, clock):
    open_it(breaker)
    clock.now += 30
    breaker.admit().unused()  # e.g. its hold was refused (402): it says nothing about the provider
    assert breaker.state == HALF_OPEN
    trial = breaker.admit()
    assert isinstance(trial, Ticket) and trial.trial


def test_a_trial_that_never_reports_stops_blocking_after_its_lease(breaker, clock):
    open_it(breaker)
    clock.now += 30
    lost = breaker.admit()
    assert lost.trial
    clock.now += breaker.settings.trial_lease_seconds - 1
    assert isinstance(breaker.admit(), Refused)
    clock.now += 1
    second = breaker.admit()
    assert isinstance(second, Ticket) and second.trial
    lost.answered()  # late, and no longer the trial: ignored
    assert breaker.state == HALF_OPEN
    second.failed()
    assert breaker.state == OPEN


def test_requests_admitted_before_it_opened_neither_extend_nor_close_it(breaker, clock):
    earlier = [breaker.admit() for _ in range(5)]  # in flight together, as on a server that serves many at once
    for ticket in earlier[:3]:
        ticket.failed()
    assert breaker.state == OPEN
    earlier[3].failed()
    earlier[4].answered()
    assert breaker.state == OPEN and breaker.admit().retry_after == 30


def test_a_ticket_reports_once(breaker):
    ticket = breaker.admit()
    for _ in range(5):
        ticket.failed()
    assert breaker.state == CLOSED


def test_zero_failures_means_no_breaker(clock):
    breaker = Breaker("openai", Settings(failures=0), clock=clock)
    fail(breaker, 50)
    assert breaker.state == CLOSED


def test_settings_from_the_environment(monkeypatch):
    for name in ("ONYSOFT_CIRCUIT_FAILURES", "ONYSOFT_CIRCUIT_WINDOW_SECONDS", "ONYSOFT_CIRCUIT_COOLDOWN_SECONDS",
                 "ONYSOFT_CIRCUIT_MAX_COOLDOWN_SECONDS", "ONYSOFT_UPSTREAM_READ_TIMEOUT",
                 "ONYSOFT_UPSTREAM_CONNECT_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings.from_env()
    assert (defaults.failures, defaults.window_seconds, defaults.cooldown_seconds,
            defaults.max_cooldown_seconds) == (3, 600, 30, 600)
    assert defaults.window_seconds > defaults.failures * 120  # three read timeouts in a row fit in the window
    assert defaults.trial_lease_seconds > 120 + 5  # outlasts one upstream call
    monkeypatch.setenv("ONYSOFT_CIRCUIT_FAILURES", "5")
    monkeypatch.setenv("ONYSOFT_CIRCUIT_WINDOW_SECONDS", "60")
    monkeypatch.setenv("ONYSOFT_CIRCUIT_COOLDOWN_SECONDS", "90")
    monkeypatch.setenv("ONYSOFT_CIRCUIT_MAX_COOLDOWN_SECONDS", "45")  # below the cool-down: the cool-down wins
    monkeypatch.setenv("ONYSOFT_UPSTREAM_READ_TIMEOUT", "2")
    tuned = Settings.from_env()
    assert (tuned.failures, tuned.window_seconds, tuned.cooldown_seconds, tuned.max_cooldown_seconds) == (5, 60, 90, 90)
    assert tuned.trial_lease_seconds == 2 + 5 + 60
    monkeypatch.setenv("ONYSOFT_CIRCUIT_FAILURES", "-1")
    with pytest.raises(ValueError, match="ONYSOFT_CIRCUIT_FAILURES"):
        Settings.from_env()


def test_one_breaker_per_provider_per_process(monkeypatch):
    monkeypatch.setenv("ONYSOFT_CIRCUIT_FAILURES", "2")
    circuit_breaker.reset()
    try:
        openai = circuit_breaker.breaker("openai")
        assert circuit_breaker.breaker("openai") is openai and circuit_breaker.breaker("mock") is not openai
        assert openai.settings.failures == 2
        fail(openai, 2)
        assert openai.state == OPEN and circuit_breaker.breaker("mock").state == CLOSED
    finally:
        circuit_breaker.reset()


def test_many_threads_failing_at_once_open_it_exactly_once(clock, opened):
    breaker = Breaker("openai", Settings(failures=3), clock=clock,
                      on_open=lambda provider, cooldown: opened.append((provider, cooldown)))
    tickets = [breaker.admit() for _ in range(64)]
    start = threading.Barrier(len(tickets))

    def report(ticket: Ticket) -> None:
        start.wait()
        ticket.failed()

    threads = [threading.Thread(target=report, args=(t,)) for t in tickets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert opened == [("openai", 30.0)] and breaker.state == OPEN
    clock.now += 30
    admitted = []
    gate = threading.Barrier(32)

    def admit() -> None:
        gate.wait()
        admitted.append(breaker.admit())

    threads = [threading.Thread(target=admit) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(isinstance(a, Ticket) for a in admitted) == 1  # one trial, however many ask at once


# ---------------------------------------------------------------------------------------------- through the proxy


def records(account_id: str) -> list:
    from onysoft.models import UsageRecord

    return list(UsageRecord.query(account_id))


def chat(gateway, headers: dict, model: str, **extra):
    return gateway.post("/v1/chat/completions", headers=headers, json={
        "model": model, "max_tokens": 20, "messages": [{"role": "user", "content": "hello there"}], **extra})


def test_timeouts_open_the_providers_breaker_and_it_then_fails_fast_before_any_hold(gateway):
    from onysoft.accounts import get_account
    from tests.unit.conftest import new_key

    account, _, headers = new_key("user")
    for _ in range(3):  # mock/timeout: httpx's ReadTimeout after the send, charged its hold (as before)
        assert chat(gateway, headers, "mock/timeout").status_code == 504
    balance, made = get_account(account.account_id).balance_micros, len(records(account.account_id))
    for model in ("mock/echo", "mock/timeout"):  # the provider's breaker, whatever the model
        response = chat(gateway, headers, model)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert (error["code"], error["type"], error["param"]) == ("provider_circuit_open", "upstream_error", None)
        assert "Nothing was charged" in error["message"] and "mock" in error["message"]
        assert response.headers["retry-after"] == "30"
        assert response.headers["x-ratelimit-limit-requests"]  # the window's headers, read (no write)
    # Decided before the hold: no usage record, no money moved.
    assert get_account(account.account_id).balance_micros == balance
    assert len(records(account.account_id)) == made


def test_an_open_providers_model_is_skipped_for_its_fallback_on_another_provider(gateway, monkeypatch):
    from onysoft import catalog, circuit_breaker
    from onysoft.accounts import get_account
    from tests.unit.conftest import new_key

    monkeypatch.setenv("ONYSOFT_PROVIDER_OPENAI_BASE_URL", "mock://local/v1")  # another provider, the mock's answers
    monkeypatch.setenv("ONYSOFT_PROVIDER_OPENAI_API_KEY", "upstream-key")
    catalog.set_model("openai/echo", input_usd_per_mtok="1.25", output_usd_per_mtok="2.5")
    catalog.catalog_cache.invalidate()
    mock = circuit_breaker.breaker("mock")
    open_it(mock)
    account, _, headers = new_key("user")
    before = get_account(account.account_id).balance_micros
    response = chat(gateway, headers, "mock/echo", models=["openai/echo"])
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "openai/echo" and response.headers["x-onysoft-model"] == "openai/echo"
    [record] = records(account.account_id)
    assert record.status == "settled" and record.model == "openai/echo" and record.requested_model == "mock/echo"
    assert record.fallback_attempts == ["mock/echo: provider_circuit_open"]
    assert before - get_account(account.account_id).balance_micros == record.charge_micros > 0
    assert circuit_breaker.breaker("openai").state == CLOSED and mock.state == OPEN


def test_anthropics_routes_fail_fast_too_count_tokens_included(gateway):
    from onysoft import circuit_breaker
    from tests.unit.conftest import new_key
    from tests.unit.test_anthropic_access import COUNT, _x_api_key_headers

    _, _, headers = new_key("user")
    assert gateway.post("/v1/messages/count_tokens", headers=_x_api_key_headers(headers), json=COUNT
                        ).status_code == 200
    open_it(circuit_breaker.breaker("mock"))
    for path, body in (("/v1/messages/count_tokens", COUNT), ("/v1/messages", {**COUNT, "max_tokens": 10})):
        response = gateway.post(path, headers=_x_api_key_headers(headers), json=body)
        assert response.status_code == 503, response.text
        assert response.json()["type"] == "error" and "provider is failing" in response.json()["error"]["message"]
        assert response.headers["retry-after"] == "30"
