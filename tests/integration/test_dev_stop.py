"""Ctrl-C stops `onysoft dev` within 5 s, whatever is open, and loses nothing acknowledged (issue 21).

Under load: keep-alive clients sending requests back to back, streams that would go on for minutes, the usage
rollup poller reading the stream, and a journal to compact. SIGINT (what Ctrl-C sends) must end the gateway and
its moto server within STOP_WITHIN seconds, with exit code 0; a restart on the same state dir then has every
request a client saw answered, the books exact and no hold left open, and the rollup's counts exact.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid

import httpx

from tests.integration.conftest import process_gone
from tests.integration.ledger import Tables, auth, check_ledger, new_account, new_key, start_gateway

STOP_WITHIN = 5.0  # DESIGN/README: Ctrl-C stops everything; issue 21 sets the bound
LOAD_CLIENTS = 6
OPEN_STREAMS = 2


def _chat(tag: str, model: str = "openai/fake-ok", stream: bool = False) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": tag}], "max_tokens": 8}
    return {**body, "stream": True} if stream else body


def test_ctrl_c_under_load_with_streams_open_stops_within_5_s_and_loses_nothing(upstream, tmp_path):
    state = tmp_path / "state"
    dev = start_gateway(state, upstream)
    account = new_account(dev, "user", "1000")
    key = new_key(dev, account["account_id"], "--rpm", "1000000", "--tpm", "1000000000")
    answered: list[str] = []  # request ids of every 200 a client read to the end
    streams_started = threading.Semaphore(0)
    stop_load = threading.Event()
    lock = threading.Lock()

    def load_client(number: int) -> None:
        with httpx.Client(base_url=dev.base_url, headers=auth(key["key"]), timeout=30) as client:
            n = 0
            while not stop_load.is_set():
                n += 1
                stream = n % 4 == 0  # a short stream now and then (mock-like: the fake's eight words)
                try:
                    with client.stream("POST", "/v1/chat/completions",
                                       json=_chat(f"stop-{number}-{n}-{uuid.uuid4().hex}", stream=stream)) as r:
                        r.read()
                        if r.status_code == 200 and (not stream or b"data: [DONE]" in r.content):
                            with lock:
                                answered.append(r.headers["x-onysoft-request-id"])
                except httpx.HTTPError:
                    return  # the gateway went away: this client is done

    def open_stream() -> None:
        try:
            with httpx.Client(base_url=dev.base_url, headers=auth(key["key"]), timeout=30) as client, \
                    client.stream("POST", "/v1/chat/completions",
                                  json=_chat(f"endless-{uuid.uuid4().hex}", "openai/fake-endless-stream",
                                             stream=True)) as response:
                assert response.status_code == 200
                chunks = 0
                for _ in response.iter_lines():
                    chunks += 1
                    if chunks == 3:
                        streams_started.release()
        except httpx.HTTPError:
            pass  # cut by the stop: expected

    threads = [threading.Thread(target=load_client, args=(i,), daemon=True) for i in range(LOAD_CLIENTS)]
    threads += [threading.Thread(target=open_stream, daemon=True) for _ in range(OPEN_STREAMS)]
    for thread in threads:
        thread.start()
    for _ in range(OPEN_STREAMS):
        assert streams_started.acquire(timeout=30), "the endless streams did not start"
    deadline = time.monotonic() + 60
    while len(answered) < 60 and time.monotonic() < deadline:  # the poller has had records to read
        time.sleep(0.05)
    assert len(answered) >= 60

    process, children = dev.process, dev.children
    assert children, "onysoft dev should run moto server as its child"
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=60)
    stopped_in = time.monotonic() - sent
    gone_by = time.monotonic() + 1
    while not all(process_gone(pid) for pid in children) and time.monotonic() < gone_by:
        time.sleep(0.02)
    dev.process = None
    stop_load.set()
    for thread in threads:
        thread.join(30)
    print(f"stopped in {stopped_in:.2f} s with {len(answered)} requests answered")
    assert code == 0, dev.log()
    assert all(process_gone(pid) for pid in children), "moto server outlived onysoft dev"
    assert stopped_in < STOP_WITHIN, f"Ctrl-C took {stopped_in:.2f} s:\n{dev.log()}"

    # Restart on the same state dir: everything a client saw answered is there, and the books are exact.
    again = start_gateway(state, upstream)
    try:
        tables = Tables(again)
        records = check_ledger(tables, account["account_id"])  # no hold left open; charges == top-ups - balance
        by_id = {r["request_id"]: r for r in records}
        assert set(answered) <= set(by_id), "a request the client saw answered has no usage record"
        assert all(by_id[rid]["status"] == "settled" for rid in answered)
        endless = [r for r in records if r["model"] == "openai/fake-endless-stream"]
        assert len(endless) == OPEN_STREAMS and all(r["status"] == "settled" for r in endless), endless
        # The usage rollup counts every record once, what the stop interrupted included.
        totals = tables.key_totals(key["key_id"], len(records), timeout=30)
        assert totals.get("requests") == len(records), (totals, len(records))
        assert totals.get("charge_micros") == sum(int(r.get("charge_micros", 0)) for r in records
                                                  if r["status"] == "settled")
    finally:
        assert again.stop() == 0


def test_moto_stops_on_sigterm_while_it_is_answering(tmp_path):
    """What a killed `onysoft dev` leaves its moto server is a SIGTERM (the parent-death signal). waitress's event loop
    hands an exception raised inside a socket's event to that channel's error handler and carries on: a stop
    that landed while a request was being read was lost (5 stops in 15 under this load), and moto outlived the
    gateway. Each of these stops lands under traffic from several keep-alive clients."""
    import subprocess
    import sys

    from tests.integration.conftest import ROOT, clean_env, free_port

    headers = {"X-Amz-Target": "DynamoDB_20120810.ListTables", "Content-Type": "application/x-amz-json-1.0",
               "Authorization": "AWS4-HMAC-SHA256 Credential=x/20261203/us-east-1/dynamodb/aws4_request, "
                                "SignedHeaders=host, Signature=x"}
    outlived = []
    for trial in range(8):
        port = free_port()
        moto = subprocess.Popen([sys.executable, "-m", "onysoft_tools.serial_moto", "-p", str(port)], cwd=ROOT,
                                env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/"
        for _ in range(400):
            try:
                httpx.post(url, headers=headers, content=b"{}", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        stop_load = threading.Event()

        def load(url: str = url, stop_load: threading.Event = stop_load) -> None:
            while not stop_load.is_set():
                try:
                    with httpx.Client(timeout=2) as client:
                        for _ in range(20):
                            client.post(url, headers=headers, content=b"{}")
                except httpx.HTTPError:
                    pass  # the server going away mid-request is the point

        clients = [threading.Thread(target=load, daemon=True) for _ in range(LOAD_CLIENTS)]
        for client in clients:
            client.start()
        time.sleep(0.3)
        moto.send_signal(signal.SIGTERM)
        try:
            moto.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            outlived.append(trial)
            moto.kill()
            moto.wait()
        stop_load.set()
        for client in clients:
            client.join(5)
    assert outlived == [], f"moto outlived SIGTERM in trials {outlived}"
