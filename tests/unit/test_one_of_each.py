"""The concepts written once (issue 13 §4): the request id, the retry policy, the expiry rule and the duration
syntax."""

import re
from datetime import UTC, datetime

import pytest

from onysoft import expiry, retries
from tests.unit.conftest import new_key

REQUEST_ID = re.compile(r"req_[0-9a-f]{24}")


# ---------------------------------------------------------------------------------------------- request ids


def test_every_answer_has_one_request_id_and_a_billed_one_is_its_usage_records(gateway):
    from onysoft.models import UsageRecord

    account, _, headers = new_key("user")
    answers = [
        gateway.get("/v1/models"),  # no key: 401 from the app's error handler
        gateway.get("/v1/nowhere", headers=headers),  # 404 from routing
        gateway.get("/v1/key", headers=headers),
        gateway.post("/v1/chat/completions", headers=headers,
                     json={"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}),
    ]
    ids = [a.headers.get_list("x-onysoft-request-id") for a in answers]
    assert [a.status_code for a in answers] == [401, 404, 200, 200]
    assert all(len(found) == 1 and REQUEST_ID.fullmatch(found[0]) for found in ids), ids
    assert len({found[0] for found in ids}) == len(ids)  # one per request
    [record] = list(UsageRecord.query(account.account_id))
    assert record.request_id == ids[-1][0]


def test_a_request_id_fits_dynamodbs_client_request_token():
    from onysoft.request_ids import new_request_id

    assert len("h1" + new_request_id()) <= 36  # billing's transaction tokens: 'h<attempt>' or 'c' + the id


# ---------------------------------------------------------------------------------------------- retries


def test_retry_stops_at_the_first_success_and_backs_off_between(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(retries.time, "sleep", waits.append)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("not yet")
        return "done"

    seen = []
    policy = retries.Backoff(5, base_seconds=0.1, cap_seconds=0.15)
    assert retries.retry(flaky, policy, on_failure=lambda n, exc: seen.append(n)) == "done"
    assert len(calls) == 3 and seen == [1, 2] and waits == [0.1, 0.15]  # doubled, then capped


def test_retry_raises_the_last_failure_and_never_retries_a_refusal(monkeypatch):
    monkeypatch.setattr(retries.time, "sleep", lambda seconds: None)
    calls = []

    def always(exc):
        def fn():
            calls.append(exc)
            raise exc
        return fn

    with pytest.raises(TimeoutError):
        retries.retry(always(TimeoutError()), retries.Backoff(4, 0.01, 1.0))
    assert len(calls) == 4
    calls.clear()
    with pytest.raises(PermissionError):
        retries.retry(always(PermissionError()), retries.Backoff(4, 0.01, 1.0),
                      retry_if=lambda exc: not isinstance(exc, PermissionError))
    assert len(calls) == 1


def test_jittered_waits_stay_within_the_backoff():
    policy = retries.Backoff(8, base_seconds=0.02, cap_seconds=1.0, jitter=True)
    for failures in range(1, 8):
        ceiling = min(0.02 * 2 ** (failures - 1), 1.0)
        assert all(0 <= policy.delay(failures) <= ceiling for _ in range(50))


# ---------------------------------------------------------------------------------------------- expiry


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), (" 12H ", 43_200), ("30d", 2_592_000),
                                               ("0s", 0)])
def test_durations(text, seconds):
    assert expiry.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "m", "1.5h", "-1d", "2w", "1d2h", "1234567890s"])
def test_not_durations(text):
    with pytest.raises(expiry.NotATime):
        expiry.parse_duration(text)


def test_expiry_times():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert expiry.expires_in("1h", now) == "2026-01-01T01:00:00.000000Z"
    with pytest.raises(expiry.NotATime):
        expiry.expires_in("0m", now)
    with pytest.raises(expiry.NotATime):
        expiry.expires_in("999999999d", now)
    now_iso = "2026-01-01T00:00:00.000000Z"
    assert expiry.future_expiry("2026-06-01T12:00:00+02:00", now_iso) == "2026-06-01T10:00:00.000000Z"
    assert expiry.future_expiry("2026-06-01", now_iso) == "2026-06-01T00:00:00.000000Z"  # no zone: UTC
    with pytest.raises(expiry.InThePast):
        expiry.future_expiry("2025-12-31T23:59:59Z", now_iso)
    with pytest.raises(expiry.NotATime):
        expiry.future_expiry("tomorrow", now_iso)
    assert expiry.is_expired("2026-01-01T00:00:00.000000Z", now_iso)
    assert not expiry.is_expired("2026-01-01T00:00:00.000001Z", now_iso)
    assert not expiry.is_expired(None, now_iso) and not expiry.is_expired("", now_iso)


def test_the_key_store_refuses_an_expiry_that_is_not_a_future_time(aws_tables):
    from onysoft.accounts import AccountError, create_account
    from onysoft.api_keys import create_key

    account = create_account("user", name="expiry")
    for bad in ("2020-01-01T00:00:00Z", "not a time"):
        with pytest.raises(AccountError):
            create_key(account.account_id, expires_at=bad)
    created = create_key(account.account_id, expires_at="2999-01-01T00:00:00+01:00")
    assert created.record.expires_at == "2998-12-31T23:00:00.000000Z"  # stored in clock's sortable form
