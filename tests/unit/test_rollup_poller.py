"""The local usage-rollup poller (onysoft_tools.local.rollup_poller) stays cheap: moto server is serial, so every
stream call it makes holds a gateway request up. A poll reads each shard once to its end, the stream is
described once, and an idle stream is polled less often; the totals stay exact (moto in-process)."""

from collections import Counter

import pytest

from onysoft import config
from onysoft_tools.local.rollup_poller import RollupPoller, streams_client
from tests.unit.test_usage_rollup import _record, _settle, rollups, scanned_totals


@pytest.fixture
def counted_poller(aws_tables):
    """A poller whose stream client counts its calls by operation."""
    calls: Counter = Counter()
    client = streams_client()
    client.meta.events.register("before-call.dynamodbstreams.*",
                                lambda model, **kwargs: calls.update([model.name]))
    poller = RollupPoller(config.table_name("ONYSOFT_TABLE_USAGE"))
    poller._client = client
    return poller, calls


def test_a_poll_reads_each_shard_once_and_the_stream_is_described_once(counted_poller):
    poller, calls = counted_poller
    first = _record("acct_p", "key_p", "2026-11-01T10:00:00.000000Z", "mock/echo")
    _settle(first, 3, 4, 500)
    assert poller.poll_once() == 2  # the INSERT and the MODIFY
    assert calls == {"ListStreams": 1, "DescribeStream": 1, "GetShardIterator": 1, "GetRecords": 1}
    calls.clear()
    second = _record("acct_p", "key_p", "2026-11-01T11:00:00.000000Z", "mock/echo")
    _settle(second, 1, 1, 100)
    _record("acct_p", "key_p", "2026-11-02T09:00:00.000000Z", "mock/echo")
    assert poller.poll_once() == 3
    assert calls == {"GetRecords": 1}  # a short page was the end: no second read, no DescribeStream
    calls.clear()
    assert poller.poll_once() == 0
    assert calls == {"GetRecords": 1}
    assert rollups("acct#acct_p") == scanned_totals("acct_p")
    assert rollups("key#key_p") == scanned_totals("acct_p", "key_p")


def test_drain_still_reads_to_the_end(counted_poller):
    poller, _calls = counted_poller
    for n in range(5):
        _settle(_record("acct_q", "key_q", f"2026-11-01T10:00:0{n}.000000Z", "mock/echo"), 1, 2, 30)
    assert poller.drain() == 10
    assert poller.drain() == 0
    assert rollups("acct#acct_q") == scanned_totals("acct_q")


def test_the_shards_are_described_again_after_a_while(counted_poller, monkeypatch):
    poller, calls = counted_poller
    poller.poll_once()
    calls.clear()
    monkeypatch.setattr(RollupPoller, "SHARDS_REFRESH", 0.0)
    poller.poll_once()
    assert calls["DescribeStream"] == 1


def test_an_idle_stream_is_polled_less_often_and_records_bring_the_interval_back():
    poller = RollupPoller("unused", interval=0.1, idle_interval=0.4)
    handed = iter([0, 0, 0, 0, 7, 0])
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        if len(waits) == 6:
            poller._stop.set()
        return poller._stop.is_set()

    poller.poll_once = lambda: next(handed)
    poller._stop.wait = wait
    poller._run()
    assert waits == [0.2, 0.4, 0.4, 0.4, 0.1, 0.2]
