"""Key Expiring (7 days and 1 day before) and Key Expired (onysoft.key_expiry, KeyExpiryFunction's handler), on
moto's in-process DynamoDB, the clock moved rather than waited for: one event per crossing, whatever the number of
runs; only the latest threshold for a key found past several; a new expiry starts over; a deleted key is dropped
from the watch silently."""

from datetime import timedelta

import pytest

from onysoft import api_keys, clock, events, expiry, key_expiry
from onysoft.models import ApiKey
from onysoft.operations import keys as key_ops
from onysoft.operations.access import cli_operator
from tests.helpers import load_function_module
from tests.unit.conftest import new_key

handler = load_function_module("key_expiry").handler


@pytest.fixture
def events_file(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(events.FILE_ENV, str(path))
    return path


def at(monkeypatch, moment):
    monkeypatch.setattr(clock, "utc_now", lambda: moment)


def sent(events_file, key_id: str) -> list[tuple[str, str | None]]:
    return [(e["detail-type"], e["detail"].get("notice")) for e in events.read_file(events_file)
            if e["detail"]["key_id"] == key_id and e["detail-type"] in ("Key Expiring", "Key Expired")]


def test_notices_follow_the_thresholds():
    now = clock.utc_now()
    expires = clock.to_iso(now + timedelta(days=10))
    assert key_expiry.notice_due(expires, now) is None
    assert key_expiry.notice_due(expires, now + timedelta(days=3)) == "7d"  # 7 days left, exactly
    assert key_expiry.notice_due(expires, now + timedelta(days=8, seconds=1)) == "7d"
    assert key_expiry.notice_due(expires, now + timedelta(days=9)) == "1d"  # 1 day left, exactly
    assert key_expiry.notice_due(expires, now + timedelta(days=10)) == "expired"


def test_each_crossing_is_told_once_then_the_key_leaves_the_watch(aws_tables, events_file, monkeypatch):
    start = clock.utc_now()
    _, record, _ = new_key("user", expires_at=clock.to_iso(start + timedelta(days=10)))
    expires = clock.parse_iso(record.expires_at)
    for moment, expected in ((start, []), (expires - timedelta(days=6), [("Key Expiring", "7d")]),
                             (expires - timedelta(days=5), [("Key Expiring", "7d")]),
                             (expires - timedelta(hours=23), [("Key Expiring", "7d"), ("Key Expiring", "1d")]),
                             (expires, [("Key Expiring", "7d"), ("Key Expiring", "1d"), ("Key Expired", None)])):
        at(monkeypatch, moment)
        for _ in range(2):  # a second run (overlapping schedule, a retry) sends nothing more
            handler({"source": "aws.scheduler"}, None)
        assert sent(events_file, record.key_id) == expected, moment
    item = ApiKey.get(record.key_hash, consistent_read=True)
    assert item.expiry_notified == "expired" and item.expiry_watch is None
    assert key_expiry.run(expires + timedelta(days=1))["looked_at"] == 0  # off the index
    [expired] = [e for e in events.read_file(events_file) if e["detail-type"] == "Key Expired"]
    assert expired["detail"]["expires_at"] == record.expires_at and expired["detail"]["display"] == record.display


def test_a_key_found_past_several_thresholds_gets_the_latest_only(aws_tables, events_file):
    _, record, _ = new_key("user", expires_at=expiry.expires_in("12h"))
    handler({}, None)
    [event] = events.read_file(events_file)
    assert (event["detail-type"], event["detail"]["notice"]) == ("Key Expiring", "1d")
    assert 0 < event["detail"]["seconds_left"] <= 12 * 3600


def test_a_new_expiry_starts_the_notices_over_and_none_stops_them(aws_tables, events_file, monkeypatch):
    _, record, _ = new_key("user", expires_at=expiry.expires_in("3d"))
    handler({}, None)
    key_ops.update_key(cli_operator(), record.key_id, expires_at=clock.to_iso(clock.utc_now() + timedelta(days=5)))
    handler({}, None)
    assert sent(events_file, record.key_id) == [("Key Expiring", "7d"), ("Key Expiring", "7d")]
    key_ops.update_key(cli_operator(), record.key_id, expires_at=None)
    at(monkeypatch, clock.utc_now() + timedelta(days=30))
    assert handler({}, None)["looked_at"] == 0
    assert len(sent(events_file, record.key_id)) == 2


def test_a_deleted_key_leaves_the_watch_silently_and_a_rotated_one_keeps_its_notices(aws_tables, events_file):
    _, deleted, _ = new_key("user", expires_at=expiry.expires_in("2d"))
    key_ops.delete_key(cli_operator(), deleted.key_id)
    _, rotated, _ = new_key("user", expires_at=expiry.expires_in("2d"))
    handler({}, None)
    key_ops.rotate_key(cli_operator(), rotated.key_id, grace_seconds=3600)
    result = handler({}, None)
    assert result["looked_at"] == 1  # the rotated key's current secret only; the deleted key is gone
    assert sent(events_file, deleted.key_id) == []
    assert sent(events_file, rotated.key_id) == [("Key Expiring", "7d")]  # not told again after its rotation
    current = api_keys.find_by_key_id(rotated.key_id)
    assert (current.expiry_watch, current.expiry_notified) == ("watch", "7d")
