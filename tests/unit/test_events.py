"""onysoft.events: key and balance events to the EventBridge bus (AWS) or to events.jsonl (local), never a secret,
never an error for the caller; and `onysoft events [--follow] [--json]`, which shows a local gateway's events."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from onysoft import events
from onysoft_tools.cli import main

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-ony-" + "ab" * 24


class _Key:
    account_id, key_id, display, name = "acct_0123456789abcdef", "key_0123456789abcdef", "sk-ony-abab…abab", "ci"


@pytest.fixture
def events_file(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(events.FILE_ENV, str(path))
    monkeypatch.delenv(events.BUS_ENV, raising=False)
    return path


def test_an_event_is_one_json_line_in_eventbridges_shape(events_file):
    events.emit(events.KEY_ROTATED, events.about_key(_Key, grace_until="2026-01-02T00:00:00.000000Z"))
    events.emit(events.BALANCE_LOW, {"account_id": "acct_0123456789abcdef", "balance_micros": 5})
    first, second = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert set(first) == {"version", "id", "detail-type", "source", "time", "detail"}
    assert (first["source"], first["detail-type"]) == ("onysoft", "Key Rotated")
    assert first["detail"] == {"account_id": _Key.account_id, "key_id": _Key.key_id, "display": _Key.display,
                               "name": "ci", "grace_until": "2026-01-02T00:00:00.000000Z"}
    assert first["id"] != second["id"] and first["time"].endswith("Z")
    assert second["detail-type"] == "Balance Low"
    assert events.read_file(events_file) == [first, second]
    assert oct(events_file.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("detail", [
    {"account_id": "acct_1", "note": f"the key {KEY}"},
    {"account_id": "acct_1", "nested": [{"secret": KEY[7:]}]},  # its 48 hex digits alone
])
def test_a_detail_that_holds_a_key_is_never_sent(events_file, detail):
    events.emit(events.KEY_LEAKED, detail)
    assert not events_file.exists()


def test_an_unknown_detail_type_is_not_sent(events_file):
    events.emit("Key Exploded", {"account_id": "acct_1"})
    assert not events_file.exists()


def test_emitting_never_raises(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(events.FILE_ENV, str(tmp_path / "no" / "such" / "dir" / "events.jsonl"))
    events.emit(events.KEY_EXPIRED, events.about_key(_Key))  # the directory is missing: logged, not raised
    assert "event not sent" in caplog.text
    monkeypatch.delenv(events.FILE_ENV)
    monkeypatch.setenv(events.BUS_ENV, "onysoft-events")
    monkeypatch.setenv("AWS_ENDPOINT_URL_EVENTS", "http://127.0.0.1:9")  # nothing listens there
    events._clients.clear()
    events.emit(events.KEY_EXPIRED, events.about_key(_Key))
    events._clients.clear()


def test_lines_from_concurrent_writers_never_interleave(events_file):
    def write(n: int) -> None:
        for i in range(50):
            events.emit(events.KEY_EXPIRING, events.about_key(_Key, writer=n, i=i, pad="x" * 2000))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = events_file.read_text().splitlines()
    assert len(lines) == 400
    seen = {(json.loads(line)["detail"]["writer"], json.loads(line)["detail"]["i"]) for line in lines}
    assert len(seen) == 400


def test_in_aws_an_event_goes_to_the_bus_with_source_onysoft(monkeypatch):
    import boto3
    from moto import mock_aws

    monkeypatch.delenv(events.FILE_ENV, raising=False)
    for name in ("AWS_ENDPOINT_URL_EVENTS", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        bus = boto3.client("events", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        bus.create_event_bus(Name="onysoft-test-events")
        queue = sqs.create_queue(QueueName="key-events")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        bus.put_rule(Name="leaks", EventBusName="onysoft-test-events",
                     EventPattern=json.dumps({"source": ["onysoft"], "detail-type": ["Key Leaked"]}))
        bus.put_targets(Rule="leaks", EventBusName="onysoft-test-events", Targets=[{"Id": "q", "Arn": queue_arn}])
        monkeypatch.setenv(events.BUS_ENV, "onysoft-test-events")
        events._clients.clear()
        events.emit(events.KEY_LEAKED, events.about_key(_Key, url="https://github.com/o/r/blob/x/f.py"))
        events.emit(events.KEY_ROTATED, events.about_key(_Key))  # the rule does not match it
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
        events._clients.clear()
    [message] = messages
    event = json.loads(message["Body"])
    assert (event["source"], event["detail-type"]) == ("onysoft", "Key Leaked")
    assert event["detail"]["key_id"] == _Key.key_id and event["detail"]["url"].startswith("https://github.com/")


# ------------------------------------------------------------------------------------------- onysoft events


def test_onysoft_events_prints_the_state_dirs_events(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(events.FILE_ENV, raising=False)
    state = tmp_path / "state"
    state.mkdir()
    (state / "dev.env").write_text(f"{events.FILE_ENV}={state / 'events.jsonl'}\n")
    assert main(["events", "--state-dir", str(state), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"events": []}
    monkeypatch.setenv(events.FILE_ENV, str(state / "events.jsonl"))
    events.emit(events.KEY_LEAKED, events.about_key(_Key, url="https://github.com/o/r"))
    monkeypatch.delenv(events.FILE_ENV)
    assert main(["events", "--state-dir", str(state), "--json"]) == 0
    [event] = json.loads(capsys.readouterr().out)["events"]
    assert event["detail-type"] == "Key Leaked" and event["detail"]["key_id"] == _Key.key_id
    assert main(["events", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "Key Leaked" in out and _Key.key_id in out and "https://github.com/o/r" in out


def test_onysoft_events_without_a_local_gateway_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(events.FILE_ENV, raising=False)
    assert main(["events", "--state-dir", str(tmp_path / "none")]) == 2
    assert "EventBridge" in capsys.readouterr().err


def test_onysoft_events_follow_prints_each_new_event(tmp_path, monkeypatch):
    state = tmp_path / "state"
    state.mkdir()
    path = state / "events.jsonl"
    (state / "dev.env").write_text(f"{events.FILE_ENV}={path}\n")
    monkeypatch.setenv(events.FILE_ENV, str(path))
    events.emit(events.KEY_ROTATED, events.about_key(_Key, n=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONYSOFT_")}
    follower = subprocess.Popen([sys.executable, "-m", "onysoft_tools.cli", "events", "--follow", "--json",
                                 "--state-dir", str(state)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(follower.stdout.readline())
        assert first["detail"]["n"] == 1
        events.emit(events.KEY_EXPIRED, events.about_key(_Key, n=2))
        second = json.loads(follower.stdout.readline())  # printed when it is appended (readline waits)
        assert (second["detail-type"], second["detail"]["n"]) == ("Key Expired", 2)
    finally:
        follower.send_signal(signal.SIGINT)
        code = follower.wait(timeout=20)
    assert code == 0, follower.stderr.read()
