"""Usage rollups (onysoft.usage_rollup) fed by the Usage table's real stream records (moto in-process): each
usage record counts once however often and in whatever grouping its stream records arrive."""

import importlib.util
import uuid
from collections import Counter
from pathlib import Path

import boto3
import pytest

from onysoft import config, usage_rollup
from onysoft.models import RollupMarker, UsageRecord, UsageRollup
from onysoft_tools.local.rollup_poller import RollupPoller, streams_client
from tests.unit.conftest import new_key

ROOT = Path(__file__).resolve().parents[2]


def stream_records() -> list[dict]:
    """Every record on the Usage table's stream so far, from the start (as a replay would read them)."""
    client = streams_client()
    arn = client.list_streams(TableName=config.table_name("ONYSOFT_TABLE_USAGE"))["Streams"][-1]["StreamArn"]
    records = []
    for shard in client.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = client.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"],
                                             ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = client.get_records(ShardIterator=iterator, Limit=1000)
            if not page["Records"]:
                break
            records += page["Records"]
            iterator = page.get("NextShardIterator")
    return records


def rollups(pk: str) -> dict[str, dict]:
    """The day totals of an account or key (its all-time item, a key's, apart: `all_time`)."""
    return {item.sk: {name: int(getattr(item, name) or 0) for name in usage_rollup.FIELDS}
            for item in UsageRollup.query(pk) if item.sk != usage_rollup.KEY_TOTAL_SK}


def all_time(key_id: str) -> dict[str, int]:
    """A key's all-time item, and the sum of its day items (the two must agree)."""
    [item] = [i for i in UsageRollup.query(f"key#{key_id}") if i.sk == usage_rollup.KEY_TOTAL_SK]
    return {name: int(getattr(item, name) or 0) for name in usage_rollup.FIELDS}


def summed_days(key_id: str) -> dict[str, int]:
    days = rollups(f"key#{key_id}").values()
    return {name: sum(day[name] for day in days) for name in usage_rollup.FIELDS}


def scanned_totals(account_id: str, key_id: str | None = None) -> dict[str, dict]:
    """The oracle: what the dashboard used to compute by reading every record, by <day>#<currency>#<model>."""
    totals: dict[str, Counter] = {}
    for record in UsageRecord.query(account_id):
        if key_id and record.key_id != key_id:
            continue
        bucket = totals.setdefault(f"{record.created_at[:10]}#{record.currency or ''}#{record.model or ''}",
                                   Counter(dict.fromkeys(usage_rollup.FIELDS, 0)))
        bucket["requests"] += 1
        bucket[record.status] += 1
        bucket["prompt_tokens"] += int(record.prompt_tokens or 0)
        bucket["completion_tokens"] += int(record.completion_tokens or 0)
        bucket["charge_micros"] += int(record.charge_micros or 0) if record.status == "settled" else 0
    return {sk: dict(counts) for sk, counts in totals.items()}


def _record(account_id: str, key_id: str, at: str, model: str, status: str = "pending", **fields) -> UsageRecord:
    request_id = uuid.uuid4().hex
    record = UsageRecord(account_id=account_id, sk=f"{at}#{request_id}", request_id=request_id, key_id=key_id,
                         created_at=at, status=status, model=model, currency="TRY", **fields)
    record.save()
    return record


def _settle(record: UsageRecord, prompt: int, completion: int, charge: int) -> None:
    record.update(actions=[UsageRecord.status.set("settled"), UsageRecord.prompt_tokens.set(prompt),
                           UsageRecord.completion_tokens.set(completion), UsageRecord.charge_micros.set(charge)])


@pytest.fixture
def tables(aws_tables):
    return aws_tables


def test_the_same_stream_records_twice_count_once(tables):
    record = _record("acct_a", "key_a", "2026-11-01T10:00:00.000000Z", "mock/echo")
    _settle(record, 10, 5, 700)
    records = stream_records()
    assert [r["eventName"] for r in records] == ["INSERT", "MODIFY"]
    assert usage_rollup.apply(records) == []
    once = rollups("acct#acct_a")
    assert once == {"2026-11-01#TRY#mock/echo": {"requests": 1, "pending": 0, "settled": 1, "failed": 0,
                                                 "prompt_tokens": 10, "completion_tokens": 5, "charge_micros": 700}}
    for batch in (records, records[:1], records[1:], records[::-1], records + records):
        assert usage_rollup.apply(batch) == []
        assert rollups("acct#acct_a") == once, batch
        assert all_time("key_a") == once["2026-11-01#TRY#mock/echo"]
    assert rollups("key#key_a") == once
    assert usage_rollup.key_totals(["key_a", "key_never"]) == {"key_a": usage_rollup.KeyTotals(1, 700)}
    assert RollupMarker.get("rec#acct_a#" + record.sk, "counted").status == "settled"


def test_hold_then_settle_counts_one_request_pending_in_between(tables):
    record = _record("acct_b", "key_b", "2026-11-02T23:59:59.999999Z", "openai/gpt-4o")
    usage_rollup.apply(stream_records())
    sk = "2026-11-02#TRY#openai/gpt-4o"
    assert rollups("acct#acct_b")[sk]["pending"] == 1 and rollups("acct#acct_b")[sk]["requests"] == 1
    record.update(actions=[UsageRecord.sent_at.set("2026-11-02T23:59:59.999999Z")])  # no change to a total
    _settle(record, 3, 4, 50)
    usage_rollup.apply(stream_records())  # the whole stream again: the INSERT is a duplicate now
    assert rollups("acct#acct_b") == {sk: {"requests": 1, "pending": 0, "settled": 1, "failed": 0,
                                           "prompt_tokens": 3, "completion_tokens": 4, "charge_micros": 50}}


def test_a_settle_seen_without_its_hold_counts_once_and_a_late_hold_does_not_undo_it(tables):
    record = _record("acct_c", "key_c", "2026-11-03T00:00:00.000000Z", "mock/echo")
    _settle(record, 1, 2, 3)
    insert, modify = stream_records()
    usage_rollup.apply([modify])  # the INSERT was lost (a local restart, say)
    usage_rollup.apply([insert])  # or comes late: a record never goes back to pending
    assert rollups("acct#acct_c") == scanned_totals("acct_c")
    assert rollups("acct#acct_c")["2026-11-03#TRY#mock/echo"]["pending"] == 0


def test_many_records_over_days_models_and_keys_in_chunks_equal_the_scan(tables):
    models = ["mock/echo", "openai/gpt-4o", "anthropic/claude", "mock/embed"]
    statuses = ["settled", "failed", "pending"]
    for n in range(usage_rollup.CHUNK * 3 + 7):  # several transactions, duplicates of records across them
        record = _record("acct_d", f"key_d{n % 3}", f"2026-10-{1 + n % 5:02d}T12:00:00.000000Z", models[n % 4])
        status = statuses[n % 3]
        if status == "settled":
            _settle(record, n, 2 * n, 10 * n)
        elif status == "failed":
            record.update(actions=[UsageRecord.status.set("failed")])
    records = stream_records()
    assert usage_rollup.apply(records[: len(records) // 2]) == []
    assert usage_rollup.apply(records) == []
    assert rollups("acct#acct_d") == scanned_totals("acct_d")
    for k in range(3):
        assert rollups(f"key#key_d{k}") == scanned_totals("acct_d", f"key_d{k}")
        assert all_time(f"key_d{k}") == summed_days(f"key_d{k}")  # a key's request count and spend
    assert sum(t["requests"] for t in rollups("acct#acct_d").values()) == usage_rollup.CHUNK * 3 + 7


def test_audit_and_idempotency_items_of_the_usage_table_are_not_usage(tables):
    from onysoft.models import AuditRecord

    AuditRecord(account_id="audit#all", sk="2026-11-01T00:00:00Z#a", audit_id="a", at="2026-11-01T00:00:00Z",
                actor="operator", action="account.create", target_account_id="acct_x").save()
    assert usage_rollup.apply(stream_records()) == []
    assert list(UsageRollup.scan()) == [] and list(RollupMarker.scan()) == []


def test_a_chunk_that_keeps_conflicting_is_reported_for_a_retry_from_its_first_record(tables, monkeypatch):
    _record("acct_e", "key_e", "2026-11-01T10:00:00.000000Z", "mock/echo")
    records = stream_records()
    spec = importlib.util.spec_from_file_location("rollup_app_under_test", ROOT / "functions/rollup/app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)

    def conflict(chunk):
        raise usage_rollup.RollupConflict

    monkeypatch.setattr(usage_rollup, "_apply_chunk", conflict)
    monkeypatch.setattr(usage_rollup.time, "sleep", lambda seconds: None)
    result = app.handler({"Records": records}, None)
    assert result == {"batchItemFailures": [{"itemIdentifier": records[0]["dynamodb"]["SequenceNumber"]}]}
    monkeypatch.undo()
    assert app.handler({"Records": records}, None) == {"batchItemFailures": []}
    assert rollups("acct#acct_e")["2026-11-01#TRY#mock/echo"]["pending"] == 1


def test_a_marker_changed_by_another_invocation_is_read_again(tables, monkeypatch):
    record = _record("acct_f", "key_f", "2026-11-01T10:00:00.000000Z", "mock/echo")
    _settle(record, 1, 1, 9)
    insert, modify = stream_records()
    real_batch_get = RollupMarker.batch_get
    raced = []

    def batch_get(keys, **kwargs):
        found = list(real_batch_get(keys, **kwargs))
        if not raced:  # another invocation counts the same INSERT between our read and our write
            raced.append(True)
            usage_rollup._apply_chunk(usage_rollup.changes_of([insert]))
        return found

    monkeypatch.setattr(RollupMarker, "batch_get", batch_get)
    assert usage_rollup.apply([insert, modify]) == []
    assert rollups("acct#acct_f") == scanned_totals("acct_f")


def test_through_the_proxy_billed_failed_and_refused_requests_count_as_the_usage_page_did(gateway):
    account, record, headers = new_key("user")
    for model in ("mock/echo", "mock/echo", "mock/error-500", "mock/embed"):
        path, body = ("/v1/embeddings", {"model": model, "input": "hello"}) if model == "mock/embed" else (
            "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi there"}]})
        gateway.post(path, headers=headers, json=body)
    poor, _, poor_headers = new_key("user", amount="0.000001")
    assert gateway.post("/v1/chat/completions", headers=poor_headers, json={
        "model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}).status_code == 402
    RollupPoller(config.table_name("ONYSOFT_TABLE_USAGE")).drain()
    totals = rollups(f"acct#{account.account_id}")
    assert totals == scanned_totals(account.account_id)
    echo = next(t for sk, t in totals.items() if sk.endswith("#mock/echo"))
    assert echo["settled"] == 2 and echo["charge_micros"] > 0 and echo["pending"] == 0
    failed = next(t for sk, t in totals.items() if sk.endswith("#mock/error-500"))
    assert (failed["requests"], failed["failed"], failed["charge_micros"]) == (1, 1, 0)
    assert rollups(f"acct#{poor.account_id}") == {}  # a refused hold wrote no record: counted nowhere
    assert rollups(f"key#{record.key_id}") == totals
    # The poller read the stream up to its end: polling again hands nothing over and changes nothing.
    poller = RollupPoller(config.table_name("ONYSOFT_TABLE_USAGE"))
    assert poller.drain() > 0  # a new poller reads from the start…
    assert rollups(f"acct#{account.account_id}") == totals  # …and counts nothing twice
    assert poller.drain() == 0


def test_template_stream_is_new_and_old_images(tables):
    client = boto3.client("dynamodb", region_name="us-east-1")
    spec = client.describe_table(TableName=config.table_name("ONYSOFT_TABLE_USAGE"))["Table"]["StreamSpecification"]
    assert spec == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}


def test_records_in_a_sharded_accounts_partitions_count_for_the_account(tables):
    """A sharded account (issue 16) keeps records under `<account_id>#<k>`: one account's totals, one marker
    per record (the same sk in two partitions is two records)."""
    for partition in ("acct_g", "acct_g#3", "acct_g#7"):
        request_id = "same"
        record = UsageRecord(account_id=partition, sk=f"2026-11-01T10:00:00.000000Z#{request_id}",
                             request_id=request_id, key_id="key_g", created_at="2026-11-01T10:00:00.000000Z",
                             status="pending", model="mock/echo", currency="TRY")
        record.save()
        _settle(record, 1, 1, 5)
    assert usage_rollup.apply(stream_records()) == []
    assert rollups("acct#acct_g") == {"2026-11-01#TRY#mock/echo": {
        "requests": 3, "pending": 0, "settled": 3, "failed": 0, "prompt_tokens": 3, "completion_tokens": 3,
        "charge_micros": 15}}
    assert rollups("acct#acct_g#3") == {}
