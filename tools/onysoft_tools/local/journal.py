"""The local gateway's durable state: an append-only journal of moto's mutating DynamoDB requests, and a
snapshot it is compacted into. Used by `onysoft_tools.serial_moto` (the moto server `onysoft dev` starts).

Why this shape. moto keeps everything in memory; the old way (scan every table every 2 s into tables.json)
cost O(table) per save through the same serialized moto and lost whatever happened after the last save.
Here every DynamoDB request that changed something (answered 2xx, not a read) is appended to
`<state dir>/journal.log` and handed to the OS *before* moto's answer goes back, so a write a client saw
acknowledged is on file even if every process is killed with SIGKILL the next instant. At start the snapshot
is loaded and the journal replayed; at a clean stop (SIGTERM) or when the journal passes `max_bytes`, the
state is compacted into `<state dir>/snapshot.jsonl` and the journal starts over.

What an entry holds. For the item writes (PutItem, UpdateItem, DeleteItem, BatchWriteItem,
TransactWriteItems) the after-image of every item the request wrote, read from moto's table right after it
answered, under serial_moto's lock (nothing else ran in between): replay is then a dict insert per item, and
does not depend on moto evaluating the expressions again (re-running them costs ~7 ms a transaction: a
16 MB journal took a minute to replay that way). Any other write (CreateTable, UpdateTimeToLive, PartiQL…)
is journaled as the request itself and replayed through moto's app; table requests are kept verbatim in
every snapshot, ahead of the items.

Durability policy: `os.write` per entry (the bytes are in the kernel's page cache: they survive the death of
any process, which is what "kill -9 loses no acknowledged write" needs). `fsync=True` (env
`ONYSOFT_DEV_FSYNC=1`) also fsyncs each entry, for a machine crash or power loss; it costs a disk flush per
write, which a development gateway does not need by default. Snapshots are always fsynced before they
replace the old one.

moto's own request recorder (`/moto-api/recorder/`) was evaluated and not used: it records every request
(reads included, ~3x the entries), before the request runs (failed and refused writes too), with all headers
(signatures included), opens the file once per request, has no snapshot or compaction, and replays over HTTP
one request at a time through moto's expression engine.

Crash safety of a compaction: the snapshot names the journal it absorbed (the journal's id, in its first
line). If the process dies after the new snapshot replaced the old one but before the journal was started
over, the next start sees that id and does not apply that journal a second time.

Files: journal.log (header `onysoft-dev-journal/1 <id>`, then entries `<crc32> <length> <target> <region>
<access key id or account>\\n<body>\\n`), snapshot.jsonl (a header, the schema requests kept verbatim, then every item,
one JSON object a line), moto.lock (one moto per state dir).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onysoft_tools.local import moto_streams, moto_ttl

logger = logging.getLogger("onysoft.journal")

JOURNAL_FILE = "journal.log"
SNAPSHOT_FILE = "snapshot.jsonl"
LOCK_FILE = "moto.lock"
JOURNAL_FORMAT = "onysoft-dev-journal/1"
SNAPSHOT_FORMAT = "onysoft-dev-snapshot/1"
DEFAULT_MAX_BYTES = 16 * 1024 * 1024  # bounds the replay after a crash (seconds); compaction is O(items)
DYNAMODB_PREFIX = "DynamoDB_20120810."

# DynamoDB operations that never change state: not journaled. Anything else (an operation this list does not
# know included) is journaled when it succeeds: replaying a read is harmless, missing a write is not.
READ_ONLY = frozenset({
    "GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems", "DescribeTable", "ListTables",
    "DescribeTimeToLive", "ListTagsOfResource", "DescribeContinuousBackups", "DescribeEndpoints",
    "DescribeLimits", "ListBackups", "DescribeBackup", "ListGlobalTables", "DescribeGlobalTable",
    "DescribeGlobalTableSettings", "ListExports", "DescribeExport", "ListImports", "DescribeImport",
    "DescribeKinesisStreamingDestination", "GetResourcePolicy", "DescribeContributorInsights",
    "ListContributorInsights", "DescribeTableReplicaAutoScaling",
})
# Item writes: compaction replaces them by the items themselves. Every other journaled operation (tables,
# TTL, tags…) is schema, kept verbatim in the snapshot and replayed before the items are loaded.
ITEMS_TARGET = "onysoft.items"  # an entry holding the after-images of the items one request wrote
KEYED_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
ITEM_WRITES = KEYED_WRITES | {"ExecuteStatement", "BatchExecuteStatement", "ExecuteTransaction", "items"}
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]*/([^/]+)/")


class StateError(RuntimeError):
    """The state dir cannot be used (unreadable snapshot, another moto on it…): a message for the user."""


@dataclass(frozen=True)
class Entry:
    target: str  # DynamoDB_20120810.PutItem
    region: str
    access_key: str
    body: bytes

    @property
    def operation(self) -> str:
        return self.target.rpartition(".")[2]

    def encode(self) -> bytes:
        head = f"{self.target} {self.region} {self.access_key}".encode("ascii")
        crc = zlib.crc32(self.body, zlib.crc32(head))
        return b"%08x %d " % (crc, len(self.body)) + head + b"\n" + self.body + b"\n"

    def as_json(self) -> dict:
        return {"target": self.target, "region": self.region, "access_key": self.access_key,
                "body": self.body.decode("utf-8")}


def journaled_target(target: str) -> bool:
    """Does a request with this X-Amz-Target go to the journal when it succeeds?"""
    return target.startswith(DYNAMODB_PREFIX) and target[len(DYNAMODB_PREFIX):] not in READ_ONLY


def entry_from_environ(environ: dict, body: bytes) -> Entry:
    match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    access_key, region = (match.group(1), match.group(2)) if match else ("-", "us-east-1")
    return Entry(environ.get("HTTP_X_AMZ_TARGET", ""), region, access_key, body)


def _account_of(environ: dict, access_key: str) -> str:
    """The account moto served the request in (moto's own rule: env, header, then the access key)."""
    if os.environ.get("MOTO_ACCOUNT_ID"):
        return os.environ["MOTO_ACCOUNT_ID"]
    if environ.get("HTTP_X_MOTO_ACCOUNT_ID"):
        return environ["HTTP_X_MOTO_ACCOUNT_ID"]
    from moto.iam.models import get_account_id_from

    return get_account_id_from(access_key if access_key != "-" else "AKIAEXAMPLE")


def _written(operation: str, body: dict) -> Iterator[tuple[str, dict]]:
    """(table name, attributes holding the key) of every item a successful write request wrote."""
    if operation in ("PutItem",):
        yield body["TableName"], body["Item"]
    elif operation in ("UpdateItem", "DeleteItem"):
        yield body["TableName"], body["Key"]
    elif operation == "BatchWriteItem":
        for table_name, requests in body["RequestItems"].items():
            for request in requests:
                if "PutRequest" in request:
                    yield table_name, request["PutRequest"]["Item"]
                else:
                    yield table_name, request["DeleteRequest"]["Key"]
    elif operation == "TransactWriteItems":
        for item in body["TransactItems"]:
            op_type, op = next(iter(item.items()))
            if op_type == "Put":
                yield op["TableName"], op["Item"]
            elif op_type in ("Update", "Delete"):
                yield op["TableName"], op["Key"]


def durable_entry(environ: dict, body: bytes) -> Entry:
    """What goes to the journal for a write moto just applied (under serial_moto's lock): for item writes the
    after-image of every item it wrote (or its deletion), so replay is a dict insert per item rather than moto
    parsing and running the expressions again; for anything else (tables, TTL, PartiQL…) the request itself."""
    request = entry_from_environ(environ, body)
    if request.operation not in KEYED_WRITES or not request.target.startswith(DYNAMODB_PREFIX):
        return request
    try:
        from moto.dynamodb.models import dynamodb_backends
        from moto.dynamodb.models.dynamo_type import DynamoType

        account = _account_of(environ, request.access_key)
        backend = dict.get(dynamodb_backends, account)
        backend = dict.get(backend, request.region) if backend is not None else None
        writes = []
        for table_name, attrs in _written(request.operation, json.loads(body)):
            table = backend.tables[table_name]
            key = {table.hash_key_attr: attrs[table.hash_key_attr]}
            bucket = table.items.get(DynamoType(key[table.hash_key_attr]))
            if table.range_key_attr:
                key[table.range_key_attr] = attrs[table.range_key_attr]
                item = bucket.get(DynamoType(key[table.range_key_attr])) if bucket is not None else None
            else:
                item = bucket
            writes.append([table_name, key, item.to_json()["Attributes"] if item is not None else None])
    except (KeyError, TypeError, ValueError, AttributeError, StopIteration):
        return request  # a table by ARN, a shape this does not know: the request, replayed through moto
    return Entry(ITEMS_TARGET, request.region, account,
                 json.dumps({"w": writes}, separators=(",", ":"), default=_json_default).encode("utf-8"))


def put_image(table: Any, attrs: dict) -> Any:
    """Put an item moto already validated once (its after-image) straight into the table: moto's put_item
    re-checks the item's size attribute by attribute (O(attributes²)), ~0.5 ms an item. Returns the item."""
    from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict

    item = Item.__new__(Item)
    item.hash_key = DynamoType(attrs[table.hash_key_attr])
    item.range_key = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
    item.attrs = LimitedSizeDict({name: DynamoType(value) for name, value in attrs.items()})  # dict.update: no checks
    if item.range_key is None:
        table.items[item.hash_key] = item
    else:
        table.items[item.hash_key][item.range_key] = item
    return item


def delete_image(table: Any, key: dict) -> None:
    from moto.dynamodb.models.dynamo_type import DynamoType

    hash_value = DynamoType(key[table.hash_key_attr])
    if not table.range_key_attr:
        table.items.pop(hash_value, None)
        return
    bucket = table.items.get(hash_value)
    if bucket is not None:
        bucket.pop(DynamoType(key[table.range_key_attr]), None)
        if not bucket:
            table.items.pop(hash_value, None)


def replay_environ(entry: Entry) -> dict:
    """A WSGI environ for moto's app that routes like the original request: same service, region, account."""
    return {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/", "QUERY_STRING": "", "SCRIPT_NAME": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "0", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http", "wsgi.version": (1, 0),
        "wsgi.input": io.BytesIO(entry.body), "wsgi.errors": io.StringIO(), "wsgi.multithread": False,
        "wsgi.multiprocess": False, "wsgi.run_once": False,
        "CONTENT_TYPE": "application/x-amz-json-1.0", "CONTENT_LENGTH": str(len(entry.body)),
        "HTTP_HOST": "127.0.0.1", "HTTP_X_AMZ_TARGET": entry.target,
        "HTTP_AUTHORIZATION": (f"AWS4-HMAC-SHA256 Credential={entry.access_key}/20000101/{entry.region}/dynamodb/"
                               "aws4_request, SignedHeaders=host;x-amz-target, Signature=0"),
    }


def call_app(app: Callable, environ: dict) -> tuple[str, list, bytes]:
    """Run a WSGI app to completion: (status, headers, body)."""
    response: dict[str, Any] = {}
    written: list[bytes] = []

    def start_response(status: str, headers: list, exc_info: Any = None):
        response["status"], response["headers"] = status, headers
        return written.append

    result = app(environ, start_response)
    try:
        body = b"".join([*written, *result])
    finally:
        close = getattr(result, "close", None)
        if close:
            close()
    return response.get("status", "500 INTERNAL SERVER ERROR"), response.get("headers", []), body


def has_state(state_dir: Path) -> bool:
    """Did a moto with this state dir ever run (a snapshot or a journal on file)?"""
    return (state_dir / SNAPSHOT_FILE).is_file() or (state_dir / JOURNAL_FILE).is_file()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------- reading


def read_journal(path: Path) -> tuple[str | None, list[Entry], int, int]:
    """(journal id, entries, length of the good part, bytes after it). A torn or damaged tail — the entry a
    kill cut short, never acknowledged — ends the good part."""
    data = path.read_bytes()
    if not data:
        return None, [], 0, 0
    newline = data.find(b"\n")
    header = data[:newline].decode("ascii", "replace").split() if newline >= 0 else []
    if len(header) != 2 or header[0] != JOURNAL_FORMAT:
        raise StateError(f"{path} is not a journal this version can read (first line: {header[:1]}); "
                         f"move it away to start from the snapshot only")
    journal_id, position, entries = header[1], newline + 1, []
    while position < len(data):
        end_of_head = data.find(b"\n", position)
        if end_of_head < 0:
            break
        parts = data[position:end_of_head].split(b" ")
        if len(parts) != 5:
            break
        try:
            crc, length = int(parts[0], 16), int(parts[1])
        except ValueError:
            break
        body_end = end_of_head + 1 + length
        if body_end + 1 > len(data) or data[body_end:body_end + 1] != b"\n":
            break
        body = data[end_of_head + 1:body_end]
        head = b" ".join(parts[2:])
        if zlib.crc32(body, zlib.crc32(head)) != crc:
            break
        target, region, access_key = (p.decode("ascii") for p in parts[2:])
        entries.append(Entry(target, region, access_key, body))
        position = body_end + 1
    return journal_id, entries, position, len(data) - position


def read_snapshot(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
        try:
            header = json.loads(first)
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
            raise StateError(f"{path} is not a snapshot this version can read (expected {SNAPSHOT_FORMAT}); "
                             "move the state dir away to start afresh")
        yield header
        for number, line in enumerate(handle, start=2):
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise StateError(f"{path}, line {number}: damaged ({exc}); snapshots are written whole and "
                                 "then renamed, so this file was changed by something else") from exc


# ---------------------------------------------------------------------------------------------- the store


class DurableState:
    """The journal and snapshot of one state dir, bound to one moto WSGI app. The caller serializes calls
    (serial_moto's lock): `record` and `compact` are never run concurrently with moto's requests."""

    def __init__(self, state_dir: Path, app: Callable, *, fsync: bool = False,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self.state_dir = state_dir
        self.app = app
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.journal_path = state_dir / JOURNAL_FILE
        self.snapshot_path = state_dir / SNAPSHOT_FILE
        self.journal_id = ""
        self.schema: list[Entry] = []  # schema requests since the beginning: carried into every snapshot
        self._fd: int | None = None
        self._size = 0
        self._lock_fd: int | None = None
        self.failed: str | None = None  # set when the journal could not be written: no more writes accepted
        self.stats: dict[str, Any] = {}

    # -------------------------------------------------------------- start

    def lock(self, wait_seconds: float = 30.0) -> None:
        """One moto per state dir: two writing the same journal would interleave two histories."""
        import fcntl

        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise StateError(f"another onysoft dev (moto) is using {self.state_dir}: stop it first, "
                                     "or give this one another --state-dir") from None
                time.sleep(0.1)
        self._lock_fd = fd

    def load(self) -> None:
        """Snapshot, then journal: the state as the last acknowledged write left it."""
        started = time.monotonic()
        absorbed, items, stream_records = None, 0, 0
        if self.snapshot_path.is_file():
            absorbed, items, stream_records = self._load_snapshot()
        replayed, diverged, dropped = 0, 0, 0
        journal_id = None
        if self.journal_path.is_file():
            journal_id, entries, good, dropped = read_journal(self.journal_path)
            if journal_id is not None and journal_id == absorbed:
                entries = []  # a compaction ended between the snapshot's rename and the journal's restart
            for entry in entries:
                diverged += 0 if self._apply(entry) else 1
                if entry.operation not in ITEM_WRITES:
                    self.schema.append(entry)
            replayed = len(entries)
            if dropped:
                logger.warning("journal: %d bytes after the last whole entry dropped (a write cut short by a "
                               "kill, never acknowledged)", dropped)
                with open(self.journal_path, "r+b") as handle:
                    handle.truncate(good)
            if journal_id == absorbed:
                journal_id = None
        if journal_id is None:
            self._new_journal()
        else:
            self.journal_id = journal_id
            self._open_journal()
        self.stats = {"snapshot_items": items, "snapshot_stream_records": stream_records,
                      "journal_entries": replayed, "replay_failures": diverged, "dropped_bytes": dropped,
                      "seconds": round(time.monotonic() - started, 3)}
        if diverged:
            logger.warning("journal: %d of %d entries did not apply again (see above)", diverged, replayed)

    def _load_snapshot(self) -> tuple[str | None, int, int]:
        from moto.dynamodb.models import dynamodb_backends

        records = read_snapshot(self.snapshot_path)
        header = next(records)
        table = None
        items = stream_records = 0
        for record in records:
            if "i" in record:
                if table is None:
                    raise StateError(f"{self.snapshot_path}: an item before its table")
                put_image(table, record["i"])
                items += 1
            elif "s" in record:
                if table is None:
                    raise StateError(f"{self.snapshot_path}: a stream record before its table")
                moto_streams.restore(table, [record["s"]])
                stream_records += 1
            elif "table" in record:
                account, region, name = record["table"]
                backend = dynamodb_backends[account][region]
                table = backend.tables.get(name)
                if table is None:
                    raise StateError(f"{self.snapshot_path}: table {name} has items but no schema request")
            elif "request" in record:
                entry = Entry(**{**record["request"], "body": record["request"]["body"].encode("utf-8")})
                self._apply(entry)
                self.schema.append(entry)
        return header.get("absorbed"), items, stream_records

    def _apply(self, entry: Entry) -> bool:
        if entry.target == ITEMS_TARGET:
            return self._apply_images(entry)
        status, _headers, body = call_app(self.app, replay_environ(entry))
        if status.startswith("2"):
            return True
        logger.warning("journal: %s did not apply again: %s %s", entry.target, status,
                       body[:300].decode("utf-8", "replace"))
        return False

    def _apply_images(self, entry: Entry) -> bool:
        from moto.dynamodb.models import dynamodb_backends

        backend = dynamodb_backends[entry.access_key][entry.region]  # access_key holds the account here
        try:
            for table_name, key, image in json.loads(entry.body)["w"]:
                table = backend.tables[table_name]
                if image is None:
                    delete_image(table, key)
                else:
                    item = put_image(table, image)
                    if table.stream_shard is not None:
                        # A stream does not survive a restart: the journal's writes since the last snapshot go
                        # on it again, so the usage rollup (idempotent per record) counts what a kill -9 kept
                        # it from reading. A clean stop read everything before the snapshot.
                        table.stream_shard.add(None, item)
        except (KeyError, ValueError, TypeError) as exc:
            logger.warning("journal: item images did not apply again: %s: %s", type(exc).__name__, exc)
            return False
        return True

    # -------------------------------------------------------------- journal

    def _open_journal(self) -> None:
        self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _new_journal(self) -> None:
        """Start an empty journal under a new id (temp file, fsync, rename: never a half-written header)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.journal_id = uuid.uuid4().hex
        tmp = self.journal_path.with_name(JOURNAL_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{JOURNAL_FORMAT} {self.journal_id}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.journal_path)
        _fsync_dir(self.state_dir)
        self._open_journal()

    def record(self, entry: Entry) -> None:
        """Append one acknowledged-to-be write; returns once the OS has it (and the disk, with fsync)."""
        data = entry.encode()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync:
            os.fdatasync(self._fd)
        self._size += len(data)
        if entry.operation not in ITEM_WRITES:
            self.schema.append(entry)

    def wants_compaction(self) -> bool:
        return self._size > self.max_bytes

    # -------------------------------------------------------------- snapshot

    def compact(self, deadline: float | None = None) -> dict:
        """Write every table's items, the streams' unread records and the schema requests to a new snapshot, then
        start the journal over. With a `deadline` (time.monotonic()), a compaction still writing then is
        abandoned: the old snapshot and the whole journal stay as they were (nothing is lost; the next start
        replays the journal), and the result says `abandoned`."""
        from moto.dynamodb.models import dynamodb_backends

        started = time.monotonic()
        tmp = self.snapshot_path.with_name(SNAPSHOT_FILE + ".tmp")
        items, expired, stream_records = 0, 0, 0
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"format": SNAPSHOT_FORMAT, "absorbed": self.journal_id,
                                     "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
            for entry in self.schema:
                handle.write(json.dumps({"request": entry.as_json()}, separators=(",", ":")) + "\n")
            for account in list(dynamodb_backends.keys()):
                for region, backend in list(dict.items(dynamodb_backends[account])):
                    for name, table in backend.tables.items():
                        expired += moto_ttl.expire(table)  # moto keeps expired items: not into the snapshot
                        handle.write(json.dumps({"table": [account, region, name]}) + "\n")
                        for item in _items(table):
                            handle.write(json.dumps({"i": item.to_json()["Attributes"]}, separators=(",", ":"),
                                                    default=_json_default) + "\n")
                            items += 1
                            if deadline is not None and items % 1024 == 0 and time.monotonic() > deadline:
                                handle.close()
                                tmp.unlink(missing_ok=True)
                                return {"abandoned": True, "items": items, "expired": expired,
                                        "stream_records": 0, "seconds": round(time.monotonic() - started, 3)}
                        for record in moto_streams.unread(table):  # what the rollup has not read yet
                            handle.write(json.dumps({"s": record}, separators=(",", ":"),
                                                    default=_json_default) + "\n")
                            stream_records += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.snapshot_path)
        _fsync_dir(self.state_dir)
        self._new_journal()
        return {"abandoned": False, "items": items, "expired": expired, "stream_records": stream_records,
                "seconds": round(time.monotonic() - started, 3)}

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _items(table: Any) -> Iterator[Any]:
    # Table.items: {hash: Item} or {hash: {range: Item}} (moto 5.2; the range pinned in moto_transactions).
    for bucket in table.items.values():
        if table.range_key_attr:
            yield from bucket.values()
        else:
            yield bucket


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        import base64

        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot write {type(value).__name__} to a snapshot")
