"""The local stand-in for RollupFunction's event source mapping: read the Usage table's DynamoDB Stream from
moto (`dynamodbstreams` ListStreams / DescribeStream / GetShardIterator / GetRecords on the same server) and
hand each batch to functions/rollup/app.py's handler, as Lambda would (a `{"Records": [...]}` event).

In AWS the mapping reads the stream with the function's role, so the stream calls here are recorded as
RollupFunction's (onysoft_tools.iam_record), like the handler's own calls.

Restarts. The local gateway's journal replays item images straight into moto's tables (journal.put_image); the
Usage table's stream does not survive a restart, so the replay puts the Usage writes of the journal (everything
since the last snapshot) on the stream again (journal._apply_images), and this poller, reading from the start,
hands them over. The rollup's own items (totals and per-record markers) are journaled like every other write,
so a record counted before the restart counts once (its marker, onysoft.usage_rollup), and one a `kill -9` kept
the poller from reading is counted after it: a key's request count and spend stay exact. A compaction (a clean
stop's, or a large journal's) keeps the stream records the poller has not read in the snapshot, and the next start
puts them back on the stream (onysoft_tools.local.moto_streams): so a stop never waits for the poller to catch up.

A batch the handler reports as failed (`batchItemFailures`) is read again from that sequence number, like
Lambda's ReportBatchItemFailures.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onysoft_tools import iam_record

logger = logging.getLogger("onysoft.rollup_poller")

FUNCTION = "RollupFunction"
CODE = Path(__file__).resolve().parents[3] / "functions" / "rollup" / "app.py"
BATCH = 1000  # GetRecords' largest page


def rollup_handler() -> Callable[[dict, Any], dict]:
    """functions/rollup/app.py's handler, imported by path (as Lambda would), attributed to RollupFunction."""
    name = "onysoft_function_RollupFunction"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, CODE)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot load {CODE}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return iam_record.attributed(module.handler, FUNCTION)


def streams_client(endpoint: str | None = None):
    import boto3

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # Always a local server (or moto in-process): botocore would otherwise send a call naming a stream ARN to
    # the account's endpoint (<account>.streams-ddb…), which moto's in-process routing does not know.
    endpoint = (endpoint or os.environ.get("AWS_ENDPOINT_URL_DYNAMODB")
                or f"https://streams.dynamodb.{region}.amazonaws.com")
    from botocore.config import Config

    # Short timeouts: a stop never waits long on a poll (the local server answers in milliseconds).
    return boto3.client("dynamodbstreams", region_name=region, endpoint_url=endpoint,
                        config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2}))


class RollupPoller:
    """Poll one table's stream; `poll_once` reads what is new on every shard and hands it to the handler.

    Cheap on the request path, because the moto server is serial (onysoft_tools.serial_moto) and every call the
    poller makes waits for, or holds up, a gateway request's: a poll reads each shard once, up to its end as of
    that read (not again for what arrived meanwhile: the next poll takes it, in a larger batch); the shard list
    is described once and again only every SHARDS_REFRESH seconds or when a shard closes; and the interval
    stretches (doubles, up to `idle_interval`) while the stream is idle. Measured: a poll every 0.2 s that also
    re-read what arrived while it ran (so under load, back to back) cost sequential chat requests ~40 ms of their
    ~90 ms p50; a batch a second costs about a millisecond a request (docs/BENCHMARKS.md, Local gateway)."""

    SHARDS_REFRESH = 60.0  # seconds between DescribeStream calls while no shard closes

    def __init__(self, table_name: str, *, endpoint: str | None = None, handler: Callable | None = None,
                 interval: float = 1.0, idle_interval: float | None = None):
        self.table_name = table_name
        self.endpoint = endpoint
        self.handler = handler
        self.interval = interval  # between polls while records come
        self.idle_interval = max(idle_interval if idle_interval is not None else 2 * interval, interval)
        self._client = None
        self._stream_arn: str | None = None
        self._shards: list[str] | None = None  # the stream's shard ids, as last described
        self._described = 0.0  # time.monotonic() of that DescribeStream
        self._iterators: dict[str, str | None] = {}  # shard id -> next iterator (None: shard closed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # poll_once from the thread and from a caller (tests) never overlap
        self.records_seen = 0
        self.polls = 0

    def _stream(self) -> str | None:
        if self._stream_arn is None:
            streams = self._client.list_streams(TableName=self.table_name).get("Streams") or []
            self._stream_arn = streams[-1]["StreamArn"] if streams else None
        return self._stream_arn

    def _shard_ids(self, arn: str) -> list[str]:
        """The stream's shards: described once, then again only now and then or when one has closed (in AWS a
        closed shard has children; moto's stream has one shard that never closes)."""
        stale = time.monotonic() - self._described > self.SHARDS_REFRESH
        closed = any(self._iterators.get(shard_id, "") is None for shard_id in self._shards or ())
        if self._shards is None or stale or closed:
            shards = self._client.describe_stream(StreamArn=arn)["StreamDescription"].get("Shards") or []
            self._shards = [shard["ShardId"] for shard in shards]
            self._described = time.monotonic()
        return self._shards

    def poll_once(self) -> int:
        """Read every shard up to its end; returns the number of stream records handed over."""
        with self._lock, iam_record.function_scope(FUNCTION):
            self.polls += 1
            if self._client is None:
                self._client = streams_client(self.endpoint)
            if self.handler is None:
                self.handler = rollup_handler()
            arn = self._stream()
            if arn is None:
                return 0
            handed = 0
            for shard_id in self._shard_ids(arn):
                if shard_id not in self._iterators:
                    self._iterators[shard_id] = self._client.get_shard_iterator(
                        StreamArn=arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
                handed += self._drain_shard(arn, shard_id)
            return handed

    def _drain_shard(self, arn: str, shard_id: str) -> int:
        """Pages of this shard up to its end as of the last read: a page shorter than BATCH was the end."""
        handed = 0
        while self._iterators.get(shard_id):
            page = self._client.get_records(ShardIterator=self._iterators[shard_id], Limit=BATCH)
            records = page.get("Records") or []
            if not records:
                self._iterators[shard_id] = page.get("NextShardIterator") or self._iterators[shard_id]
                break
            event = {"Records": [{**record, "eventSourceARN": arn} for record in records]}
            result = self.handler(event, None) or {}
            failures = [f["itemIdentifier"] for f in result.get("batchItemFailures") or []]
            if failures:  # read again from the first failed record, next time round
                self._iterators[shard_id] = self._client.get_shard_iterator(
                    StreamArn=arn, ShardId=shard_id, ShardIteratorType="AT_SEQUENCE_NUMBER",
                    SequenceNumber=failures[0])["ShardIterator"]
                break
            self._iterators[shard_id] = page.get("NextShardIterator")
            handed += len(records)
            if len(records) < BATCH:  # the end, as of this read: what came meanwhile waits for the next poll
                break
        self.records_seen += handed
        return handed

    def drain(self) -> int:
        """Poll until nothing new is there (tests: make the totals current)."""
        total = 0
        while True:
            handed = self.poll_once()
            total += handed
            if not handed:
                return total

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.is_set():
            try:
                handed = self.poll_once()
            except Exception as exc:  # noqa: BLE001 - a local poller keeps going, like Lambda's retries
                logger.warning("usage rollup poll failed: %s: %s", type(exc).__name__, exc)
                self._client, self._stream_arn, self._shards, self._iterators = None, None, None, {}
                self._stop.wait(max(self.idle_interval, 1.0))
                continue
            # Records came: poll again after `interval`. None: stretch the wait, up to idle_interval.
            wait = self.interval if handed else min(2 * wait, self.idle_interval)
            self._stop.wait(wait)

    def start(self) -> RollupPoller:
        self._thread = threading.Thread(target=self._run, name="onysoft-rollup-poller", daemon=True)
        self._thread.start()
        return self

    def stop(self, wait: float = 1.0) -> None:
        """Stop polling: wait up to `wait` seconds for a poll under way to end. No last poll: what the poller has
        not read stays on the stream, and a compaction keeps it for the next start (see the module's doc)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(wait)
