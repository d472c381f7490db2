"""Issue 23: the operator's dashboard over HTTP at thousands of items, reading a bounded number of them a page.

`onysoft dev` runs with `--dynamodb-endpoint` pointed at a recording proxy (in this process) in front of a real
moto server (its own process): every DynamoDB call the gateway makes passes through it, and what each read is
counted from the answer (tests.helpers.items_read: a Query's ScannedCount, a BatchGetItem's items). The tables
are then filled directly in moto with batch writes (3,000 accounts, 2,000 audit records of other accounts, 1,500
usage records of another key), and one page of accounts, of one account's audit log and of one key's usage must
read about `limit` items, not the table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import httpx
import pytest

from tests.helpers import items_read
from tests.integration.conftest import ROOT, DevGateway, clean_env, free_port

ACCOUNTS = 3000
OTHER_AUDIT = 2000
OTHER_USAGE = 1500


class RecordingProxy:
    """Forwards every request to moto and records the items each DynamoDB read returned or examined."""

    def __init__(self, target: str):
        self.target = target
        self.calls: list[tuple[str, str | None, str, int]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = httpx.request(self.command, proxy.target + self.path, headers=headers, content=body,
                                       timeout=60)
                operation = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2]
                if operation and answer.status_code == 200 and "DynamoDB_" in self.headers.get("X-Amz-Target", ""):
                    try:
                        found = items_read(operation, json.loads(body or b"{}"), answer.json())
                    except ValueError:
                        found = []
                    with proxy.lock:
                        proxy.calls.extend(found)
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def take(self) -> list[tuple[str, str | None, str, int]]:
        with self.lock:
            taken, self.calls = self.calls, []
        return taken

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    moto = subprocess.Popen([sys.executable, "-m", "onysoft_tools.serial_moto", "-H", "127.0.0.1", "-p", str(port)],
                            cwd=ROOT, env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    proxy = RecordingProxy(endpoint)
    gateway = DevGateway(tmp_path_factory.mktemp("scale") / "state", extra_args=["--dynamodb-endpoint", proxy.url])
    try:
        for _ in range(600):
            try:
                httpx.get(endpoint + "/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                threading.Event().wait(0.1)
        gateway.start()
        client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        yield gateway, proxy, client
    finally:
        gateway.stop(check=False)
        proxy.close()
        moto.terminate()
        moto.wait(30)
        log.close()


def _batch_put(client, table: str, items: list[dict]) -> None:
    for start in range(0, len(items), 25):
        request = {table: [{"PutRequest": {"Item": item}} for item in items[start:start + 25]]}
        while request:
            request = client.batch_write_item(RequestItems=request).get("UnprocessedItems") or None


def _read_of(proxy: RecordingProxy, table: str) -> list[tuple[str | None, str, int]]:
    return [(index, op, n) for name, index, op, n in proxy.take() if name == table and index != "open_holds"]


def _get(gateway: DevGateway, bearer: str, path: str, **params) -> dict:
    response = httpx.get(gateway.base_url + path, params=params, headers={"Authorization": f"Bearer {bearer}"},
                         timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers.get("x-content-type-options") == "nosniff"
    return response.json()


def test_a_page_of_accounts_audit_and_key_usage_reads_a_bounded_number_of_items(scaled):
    gateway, proxy, client = scaled
    accounts_table, usage_table = gateway.env["ONYSOFT_TABLE_ACCOUNTS"], gateway.env["ONYSOFT_TABLE_USAGE"]
    bearer = gateway.cli_json("token", "--principal", "operator")["token"]

    # One real account (through the CLI, audited) whose item is the model of 3,000 more, written straight to moto.
    target = gateway.cli_json("accounts", "create", "--kind", "user", "--name", "Scale target")["account_id"]
    for n in range(3):
        gateway.cli_json("accounts", "update", target, "--name", f"Scale target {n}")
    model = client.get_item(TableName=accounts_table, Key={"account_id": {"S": target}})["Item"]
    made = []
    for n in range(ACCOUNTS):
        account_id = f"acct_{n:016x}"
        made.append({**model, "account_id": {"S": account_id}, "name": {"S": f"Scale {n:04d}"},
                     "name_key": {"S": f"scale {n:04d}#{account_id}"}})
    bad_id = "acct_" + "b" * 16  # malformed: an unknown kind; first in name order
    made.append({**model, "account_id": {"S": bad_id}, "kind": {"S": "bogus"}, "name_key": {"S": f"#{bad_id}"}})
    _batch_put(client, accounts_table, made)

    # 2,000 audit records of other accounts in the operator's log, beside the target's three.
    audit = client.query(TableName=usage_table, KeyConditionExpression="account_id = :p",
                         ExpressionAttributeValues={":p": {"S": "audit#all"}}, Limit=1)["Items"][0]
    _batch_put(client, usage_table, [
        {**audit, "sk": {"S": f"2026-01-01T00:00:00.000000Z#aud_{n:016x}"},
         "target_account_id": {"S": f"acct_{n % ACCOUNTS:016x}"}} for n in range(OTHER_AUDIT)])

    # One key's three requests among 1,500 records of another key of the same account.
    demo = next(entry for entry in gateway.demo if entry["type"] == "user")
    key, account = gateway.keys["user"], demo["account_id"]
    for _ in range(3):
        answer = httpx.post(gateway.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                            json={"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        assert answer.status_code == 200, answer.text
    record = client.query(TableName=usage_table, KeyConditionExpression="account_id = :p",
                          ExpressionAttributeValues={":p": {"S": account}}, Limit=1)["Items"][0]
    key_id = record["key_id"]["S"]
    _batch_put(client, usage_table, [
        {**record, "sk": {"S": f"2026-12-01T00:00:{n // 1000:02d}.{n % 1000:06d}Z#req_{n}"},
         "request_id": {"S": f"req_{n}"}, "key_id": {"S": "key_other"}, "key_shard": {"S": "key_other"}}
        for n in range(OTHER_USAGE)])

    # A page of accounts: its index entries and its items, whatever the table holds; the bad item skipped, no 500.
    proxy.take()
    page = _get(gateway, bearer, "/dashboard/accounts", limit=50)
    reads = _read_of(proxy, accounts_table)
    assert len(page["accounts"]) == 49 and page["skipped"] == 1 and page["next"], page["skipped"]
    # its index entries, its items and their owners' account counts (ceilings: at most one per account)
    assert sum(n for _, _, n in reads) <= 50 + 50 + 50, reads
    assert {op for _, op, _ in reads} <= {"Query", "BatchGetItem"}  # never a Scan

    # Paging through gives every account once.
    listed, cursor = [], None
    while True:
        page = _get(gateway, bearer, "/dashboard/accounts", limit=1000, **({"cursor": cursor} if cursor else {}))
        listed += [a["account_id"] for a in page["accounts"]]
        cursor = page["next"]
        if not cursor:
            break
    stored = set()
    for scanned in client.get_paginator("scan").paginate(TableName=accounts_table):
        stored |= {i["account_id"]["S"] for i in scanned["Items"] if "kind" in i and i["kind"]["S"] != "bogus"}
    assert len(listed) == len(set(listed)) and set(listed) == stored and len(stored) > ACCOUNTS

    # Search by name prefix and by id.
    found = _get(gateway, bearer, "/dashboard/accounts", search="SCALE 012")
    assert sorted(a["name"] for a in found["accounts"]) == [f"Scale {n:04d}" for n in range(120, 130)]
    found = _get(gateway, bearer, "/dashboard/accounts", search=f"acct_{7:016x}")
    assert [a["name"] for a in found["accounts"]] == ["Scale 0007"]
    cli = gateway.cli_json("accounts", "list", "--search", "scale 29", "--limit", "5")
    assert [a["name"] for a in cli["accounts"]] == [f"Scale {n:04d}" for n in range(2900, 2905)] and cli["next"]

    # One account's audit: its own records only.
    proxy.take()
    log = _get(gateway, bearer, "/dashboard/audit", account_id=target, limit=2)
    reads = _read_of(proxy, usage_table)
    assert len(log["records"]) == 2 and {r["account_id"] for r in log["records"]} == {target}
    assert sum(n for _, _, n in reads) <= 2 + 1, reads

    # One key's usage: its by_key_shard entries and its records, not the other key's 1,500.
    proxy.take()
    usage = _get(gateway, bearer, f"/dashboard/accounts/{account}/usage", key_id=key_id, limit=2,
                 **{"from": "2026-01-01T00:00:00Z"})
    reads = _read_of(proxy, usage_table)
    assert len(usage["records"]) == 2 and {r["key_id"] for r in usage["records"]} == {key_id}
    assert sum(n for _, _, n in reads) <= (2 + 1) + 2, reads
