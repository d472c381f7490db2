"""The local gateway stays fast and keeps its data (issue 12): a request's cost does not grow with the tables,
`kill -9` of everything loses no acknowledged write, and an earlier version's state file is migrated or
refused with a message. Real processes: `onysoft dev`, its moto server, HTTP on loopback.
(The 20,000-request curve and start time with 100,000 usage records: `make bench`, docs/BENCHMARKS.md.)"""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time

import httpx
import pytest

from tests.integration.conftest import ROOT, DevGateway, child_pids, clean_env, dev_command, process_gone

SOAK_REQUESTS = 2_500
SOAK_WINDOW = 250
SOAK_RATIO = 1.5
CHAT = {"model": "mock/echo", "messages": [{"role": "user", "content": "a soak of the local gateway"}]}


def bench_key(dev: DevGateway, kind: str) -> dict:
    """An account of `kind` with a large balance and a key no rate limit stops."""
    account = dev.cli_json("accounts", "create", "--kind", kind, "--name", f"soak {kind}",
                           *(["--owner", "soak"] if kind != "user" else []))
    dev.cli_json("accounts", "topup", account["account_id"], "100000")
    key = dev.cli_json("keys", "create", "--account", account["account_id"], "--rpm", "1000000",
                       "--tpm", "1000000000")
    return {"account_id": account["account_id"], "key": key["key"], "key_id": key["key_id"]}


def test_soak_a_request_costs_the_same_at_the_end(new_gateway, tmp_path):
    """2,500 sequential chat requests: the last 250's median within 1.5x of the first 250's. With stock moto
    (every transaction deep-copies its tables) and the 2 s full-scan autosave, it grew ~5x by 800 requests."""
    dev = new_gateway(tmp_path / "state").start()
    key = bench_key(dev, "user")
    latencies: list[float] = []
    with httpx.Client(base_url=dev.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {key['key']}"}) as client:
        for _ in range(10):  # warm-up: authorizer cached, catalog loaded, connection open
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        for n in range(SOAK_REQUESTS):
            started = time.perf_counter()
            response = client.post("/v1/chat/completions", json=CHAT)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, (n, response.text)
        # The key's request count is the usage rollup's (issue 16): current once the poller has read the stream.
        deadline = time.monotonic() + 30
        view = client.get("/v1/key").json()
        while view["request_count"] < SOAK_REQUESTS + 10 and time.monotonic() < deadline:
            time.sleep(0.2)
            view = client.get("/v1/key").json()
    first = statistics.median(latencies[:SOAK_WINDOW])
    last = statistics.median(latencies[-SOAK_WINDOW:])
    print(f"soak: p50 first {SOAK_WINDOW} {first * 1000:.1f} ms, last {SOAK_WINDOW} {last * 1000:.1f} ms")
    assert last <= SOAK_RATIO * first, (
        f"p50 of the last {SOAK_WINDOW} requests is {last * 1000:.1f} ms, {last / first:.2f}x the first "
        f"{SOAK_WINDOW}'s {first * 1000:.1f} ms")
    assert view["request_count"] == SOAK_REQUESTS + 10
    journal_bytes = (dev.state_dir / "journal.log").stat().st_size
    assert dev.stop() == 0
    assert (dev.state_dir / "snapshot.jsonl").exists()
    print(f"soak: journal {journal_bytes} bytes before the clean stop compacted it")


def _kill_everything(dev: DevGateway) -> None:
    """SIGKILL to moto's process group and the gateway's: no cleanup code runs anywhere."""
    moto = child_pids(dev.process.pid)
    assert moto, "onysoft dev should run moto server as its child"
    for pid in moto:  # moto first: killed before the gateway's death could send it SIGTERM
        os.killpg(pid, signal.SIGKILL)
    os.killpg(dev.process.pid, signal.SIGKILL)
    dev.process.wait()
    deadline = time.monotonic() + 10
    while not all(process_gone(pid) for pid in moto) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(process_gone(pid) for pid in moto)
    dev.process = None


def test_kill_9_loses_no_acknowledged_write(new_gateway, tmp_path):
    state = tmp_path / "state"
    dev = new_gateway(state)
    dev.own_process_group = True
    dev.start()
    keys = {kind: bench_key(dev, kind) for kind in ("user", "partner_project", "partner_customer")}
    acknowledged: dict[str, dict] = {kind: {"chats": 0, "sent": 0, "view": None} for kind in keys}
    stop = threading.Event()
    errors: list[str] = []

    def traffic(kind: str) -> None:
        seen = acknowledged[kind]
        with httpx.Client(base_url=dev.base_url, timeout=10,
                          headers={"Authorization": f"Bearer {keys[kind]['key']}"}) as client:
            while not stop.is_set():
                try:
                    seen["sent"] += 1
                    if client.post("/v1/chat/completions", json=CHAT).status_code == 200:
                        seen["chats"] += 1
                    response = client.get("/v1/key")
                    if response.status_code == 200:
                        seen["view"] = response.json()  # what the gateway acknowledged so far
                except httpx.HTTPError:
                    return  # the gateway is gone
                except Exception as exc:  # noqa: BLE001
                    errors.append(repr(exc))
                    return

    threads = [threading.Thread(target=traffic, args=(kind,)) for kind in keys]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while min(a["chats"] for a in acknowledged.values()) < 15 and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill_everything(dev)  # mid-run: requests in flight on every key
    stop.set()
    for thread in threads:
        thread.join(15)
    assert not errors, errors
    assert all(a["chats"] >= 15 and a["view"] for a in acknowledged.values()), acknowledged

    restarted = new_gateway(state).start()
    assert "(new)" not in restarted.log()  # no second seed
    from tests.integration.ledger import Tables

    tables = Tables(restarted)
    for kind, key in keys.items():
        seen = acknowledged[kind]
        account = tables.account(key["account_id"])
        records = tables.usage(key["account_id"])
        balance, topped_up = int(account["balance_micros"]), int(account.get("topped_up_micros", 0))
        settled = [r for r in records if r["status"] == "settled"]
        pending = [r for r in records if r["status"] == "pending"]
        # Every write the gateway acknowledged is there: the last state a client read, and every request
        # whose answer arrived (its hold was written before the upstream call, its usage record with it).
        assert balance <= seen["view"]["balance_micros"], (kind, balance, seen["view"])
        assert seen["view"]["request_count"] <= len(records), kind
        assert seen["chats"] <= len(records) <= seen["sent"], (kind, seen, len(records))
        # And nothing half-written: the ledger adds up to the micro-unit, holds included.
        open_holds = sum(int(r["hold_micros"]) for r in pending)
        assert sum(int(r["charge_micros"]) for r in settled) == topped_up - balance - open_holds, kind
        # The key's request count and spend are the usage rollup's (issue 16): the stream died with moto, so the
        # journal's writes since the last snapshot go on it again at the restart, and the rollup (once per
        # record) counts what it had not read: exactly the records.
        totals = tables.key_totals(key["key_id"], len(records), pending=len(pending))
        assert (totals.get("requests"), totals.get("pending", 0)) == (len(records), len(pending)), (kind, totals)
        assert totals.get("charge_micros", 0) == sum(int(r["charge_micros"]) for r in settled), kind
    assert restarted.stop() == 0


def test_a_state_file_of_an_earlier_version_is_migrated(new_gateway, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "tables.json").write_text(json.dumps({"format": "onysoft-dev-tables/1", "tables": {
        "AccountsTable": [{"account_id": {"S": "acct_01dfa11e0000beef"}, "kind": {"S": "user"},
                           "currency": {"S": "TRY"}, "created_at": {"S": "2026-11-01T00:00:00Z"},
                           "balance_micros": {"N": "4250000"}, "topped_up_micros": {"N": "4250000"},
                           "markup_bp": {"N": "5000"}, "name": {"S": "kept"}}],
    }}))
    dev = new_gateway(state).start()
    shown = dev.cli_json("accounts", "show", "acct_01dfa11e0000beef")
    assert shown["balance_micros"] == 4_250_000
    assert not (state / "tables.json").exists() and (state / "tables.json.migrated").exists()
    assert "migrated 1 items" in dev.log()
    assert dev.stop() == 0
    again = new_gateway(state).start()  # the journal has it now; the old file is not read again
    assert again.cli_json("accounts", "show", "acct_01dfa11e0000beef")["balance_micros"] == 4_250_000
    assert again.stop() == 0


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "something-else/9", "tables": {}})])
def test_an_unreadable_state_file_gets_a_message_not_a_traceback(tmp_path, content):
    state = tmp_path / "state"
    state.mkdir()
    (state / "tables.json").write_text(content)
    import subprocess

    from tests.integration.conftest import free_port

    result = subprocess.run([*dev_command(), "--port", str(free_port()), "--state-dir", str(state)], cwd=ROOT,
                            env=clean_env(), capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1, result.stderr
    assert "tables.json" in result.stderr and "Move it away" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert (state / "tables.json").read_text() == content  # left as it was


def test_without_verbose_requests_are_logged_to_the_state_dir(new_gateway, tmp_path):
    dev = new_gateway(tmp_path / "state").start()
    key = dev.keys["user"]
    for _ in range(3):
        response = httpx.post(dev.base_url + "/v1/chat/completions", json=CHAT,
                              headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert response.status_code == 200
    assert dev.stop() == 0
    requests_log = (dev.state_dir / "requests.log").read_text()
    assert requests_log.count("POST /v1/chat/completions") == 3
    assert "/v1/chat/completions" not in dev.log()  # the terminal stays quiet
    assert key not in requests_log
