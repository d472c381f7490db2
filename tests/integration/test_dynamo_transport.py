"""The lean DynamoDB transport (onysoft.dynamo_transport) answers as botocore's client answers, and what it puts on
the wire is signed as AWS verifies it.

moto does not check signatures, so the signature is checked here the way DynamoDB does: on the bytes a server
received (a recording server in a thread), recomputed from the headers the Authorization header says it signed.
The answers are compared with botocore's own client, call for call, against a real moto server process (the one
`onysoft dev` runs): successes, a failed condition with the item it returns, a cancelled transaction with its
reasons, a missing table, and an endpoint nothing listens on.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import botocore.auth
import botocore.httpsession
import botocore.session
import httpx
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, EndpointConnectionError

from onysoft.dynamo_transport import LeanClient
from tests.helpers import self_signed_certificate
from tests.integration.conftest import ROOT, clean_env, free_port

TABLE = "transport-test"
CREDENTIALS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "a-session-token")


def botocore_client(endpoint: str):
    session = botocore.session.get_session()
    session.set_credentials(CREDENTIALS.access_key, CREDENTIALS.secret_key, CREDENTIALS.token)
    return session.create_client("dynamodb", "us-east-1", endpoint_url=endpoint)


def lean(client) -> LeanClient:
    return LeanClient(client, connect_timeout=2, read_timeout=10)


@pytest.fixture(scope="module")
def moto_url():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "onysoft_tools.serial_moto", "-p", str(port)], cwd=ROOT,
                               env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(url + "/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        client = botocore_client(url)
        client.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
        yield url
    finally:
        process.terminate()
        process.wait(10)


def without_metadata(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "ResponseMetadata"}


def outcome(call):
    """What a caller sees of a call: the answer, or the exception's class and its response (no metadata)."""
    try:
        return "answer", without_metadata(call())
    except ClientError as exc:
        return type(exc).__name__, without_metadata(exc.response), exc.operation_name


def test_answers_and_errors_are_botocores(moto_url):
    boto = botocore_client(moto_url)
    fast = lean(botocore_client(moto_url))
    item = {"pk": {"S": "a"}, "n": {"N": "5"}, "l": {"L": [{"S": "x"}, {"N": "1.5"}]},
            "m": {"M": {"b": {"BOOL": True}}}}
    boto.put_item(TableName=TABLE, Item=item)

    def transact(client, pk: str):
        return client._make_api_call("TransactWriteItems", {"TransactItems": [
            {"Update": {"TableName": TABLE, "Key": {"pk": {"S": "a"}}, "UpdateExpression": "ADD n :one",
                        "ConditionExpression": "n < :max", "ExpressionAttributeValues": {":one": {"N": "1"},
                                                                                         ":max": {"N": "0"}},
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
            {"Put": {"TableName": TABLE, "Item": {"pk": {"S": pk}}}}]})

    calls = [
        lambda c: c._make_api_call("GetItem", {"TableName": TABLE, "Key": {"pk": {"S": "a"}}, "ConsistentRead": True}),
        lambda c: c._make_api_call("GetItem", {"TableName": TABLE, "Key": {"pk": {"S": "absent"}}}),
        lambda c: c.batch_get_item(RequestItems={TABLE: {"Keys": [{"pk": {"S": "a"}}], "ConsistentRead": True}}),
        lambda c: c._make_api_call("UpdateItem", {
            "TableName": TABLE, "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET n = :n",
            "ConditionExpression": "n = :old", "ExpressionAttributeValues": {":n": {"N": "6"}, ":old": {"N": "-1"}},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}),
        lambda c: transact(c, "b"),
        lambda c: c._make_api_call("GetItem", {"TableName": "no-such-table", "Key": {"pk": {"S": "a"}}}),
        lambda c: c._make_api_call("Query", {"TableName": TABLE, "KeyConditionExpression": "pk = :p",
                                             "ExpressionAttributeValues": {":p": {"S": "a"}}}),
    ]
    seen = set()
    for call in calls:
        expected, got = outcome(lambda call=call: call(boto)), outcome(lambda call=call: call(fast))
        assert got == expected
        seen.add(got[0])
    # The cases the gateway branches on were really there: a success, a failed condition, a cancelled transaction.
    assert {"answer", "ConditionalCheckFailedException", "TransactionCanceledException",
            "ResourceNotFoundException"} <= seen


def test_a_transaction_without_a_token_gets_one_as_botocore_gives_it(moto_url):
    """botocore fills TransactWriteItems' ClientRequestToken, so its retry of a transaction that went through
    unseen is a no-op; the lean transport does the same (the retry below would otherwise apply it twice)."""
    fast = lean(botocore_client(moto_url))
    sent = []
    fast.meta.events.register("before-send.dynamodb.TransactWriteItems",
                              lambda request, **_: sent.append(json.loads(request.body)))
    fast._make_api_call("TransactWriteItems", {"TransactItems": [
        {"Update": {"TableName": TABLE, "Key": {"pk": {"S": "t"}}, "UpdateExpression": "ADD n :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}}}}]})
    assert len(sent) == 1 and len(sent[0].get("ClientRequestToken", "")) >= 32


def test_an_endpoint_nothing_listens_on_is_botocores_connection_error():
    url = f"http://127.0.0.1:{free_port()}"
    fast = lean(botocore_client(url))
    with mock.patch("onysoft.dynamo_transport.time.sleep"), pytest.raises(EndpointConnectionError) as caught:
        fast._make_api_call("GetItem", {"TableName": TABLE, "Key": {"pk": {"S": "a"}}})
    assert url in str(caught.value)


class _Recorder(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.command, self.path, dict(self.headers.items()), body))
        answer = b'{"Item":{"pk":{"S":"a"}}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def _verify_sigv4(method: str, host: str, path: str, headers: dict, body: bytes) -> None:
    """Recompute the signature from what was received, as AWS does: the signed headers the Authorization header
    lists, the body's hash, the request's own X-Amz-Date, the secret key."""
    lowered = {k.lower(): v for k, v in headers.items()}
    authorization = lowered["authorization"]
    credential = authorization.split("Credential=")[1].split(",")[0]
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "x-amz-date", "x-amz-target", "x-amz-security-token"} <= set(signed)
    assert credential.split("/")[2:4] == ["us-east-1", "dynamodb"]
    when = datetime.datetime.strptime(lowered["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    rebuilt = AWSRequest(method, f"http://{host}{path}", data=body,
                         headers={name: lowered[name] for name in signed if name != "host"})
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
        botocore.auth.SigV4Auth(CREDENTIALS, "dynamodb", "us-east-1").add_auth(rebuilt)
    assert rebuilt.headers["Authorization"] == authorization


def test_what_goes_on_the_wire_is_signed_as_aws_verifies_it(moto_url):
    _Recorder.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        fast = lean(botocore_client(url))
        params = {"TableName": TABLE, "Key": {"pk": {"S": "ş ü/+="}}, "ConsistentRead": True}
        assert without_metadata(fast._make_api_call("GetItem", params)) == {"Item": {"pk": {"S": "a"}}}
        fast._make_api_call("TransactWriteItems", {"TransactItems": [
            {"Put": {"TableName": TABLE, "Item": {"pk": {"S": "p"}, "v": {"S": "\u00e7" * 300}}}}]})
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Recorder.received) == 2
    for method, path, headers, body in _Recorder.received:
        _verify_sigv4(method, headers["Host"], path, headers, body)
    # and the check itself can fail: one byte of the body changed after signing
    method, path, headers, body = _Recorder.received[0]
    with pytest.raises(AssertionError):
        _verify_sigv4(method, headers["Host"], path, headers, body.replace(b"ConsistentRead", b"ConsistentReaD"))


def test_tls_is_verified_as_botocore_verifies_it(tmp_path, monkeypatch):
    """Over HTTPS the transport checks the server's certificate against the CA bundle botocore's session would use
    for the same client (AWS_CA_BUNDLE here), refuses one that bundle did not sign with botocore's SSLError, and
    skips the check only where botocore was told not to check (verify=False)."""
    import ssl

    from botocore.exceptions import SSLError

    cert, key = self_signed_certificate(tmp_path)
    _Recorder.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    params = {"TableName": TABLE, "Key": {"pk": {"S": "a"}}}

    def client(**options):
        session = botocore.session.get_session()
        session.set_credentials(CREDENTIALS.access_key, CREDENTIALS.secret_key, CREDENTIALS.token)
        return lean(session.create_client("dynamodb", "us-east-1", endpoint_url=url, **options))

    try:
        with mock.patch("onysoft.dynamo_transport.time.sleep"), pytest.raises(SSLError):
            client()._make_api_call("GetItem", params)  # the default bundle does not know this certificate
        assert without_metadata(client(verify=False)._make_api_call("GetItem", params)) == {"Item": {"pk": {"S": "a"}}}
        monkeypatch.setenv("AWS_CA_BUNDLE", cert)
        assert without_metadata(client()._make_api_call("GetItem", params)) == {"Item": {"pk": {"S": "a"}}}
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Recorder.received) == 2  # the refused handshake sent nothing
    for method, path, headers, body in _Recorder.received:
        _verify_sigv4(method, headers["Host"], path, headers, body)


class _ClosingRecorder(_Recorder):
    """HTTP/1.1 with keep-alive, but the server drops the connection once it has answered, saying nothing (as a
    load balancer drops an idle one)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802
        super().do_POST()
        self.close_connection = True


def test_a_connection_the_server_closed_while_idle_is_replaced_before_it_is_used():
    """The second call must not fail, nor wait a retry's back-off: the dropped connection is seen before sending."""
    _Recorder.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ClosingRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fast = lean(botocore_client(f"http://127.0.0.1:{server.server_address[1]}"))
        params = {"TableName": TABLE, "Key": {"pk": {"S": "a"}}}
        with mock.patch("onysoft.dynamo_transport.time.sleep", side_effect=AssertionError("retried")):
            for _ in range(3):
                assert without_metadata(fast._make_api_call("GetItem", params)) == {"Item": {"pk": {"S": "a"}}}
                threading.Event().wait(0.05)  # the server's close reaches the client's socket (time.sleep is patched)
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Recorder.received) == 3


def test_an_endpoint_with_a_path_of_its_own_is_left_to_botocore():
    """The lean transport posts to the root, as DynamoDB answers; an endpoint behind a path goes through botocore,
    which sends (and signs) to that path."""
    _Recorder.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fast = lean(botocore_client(f"http://127.0.0.1:{server.server_address[1]}/behind/a/proxy"))
        answer = fast._make_api_call("GetItem", {"TableName": TABLE, "Key": {"pk": {"S": "a"}}})
    finally:
        server.shutdown()
        server.server_close()
    assert without_metadata(answer) == {"Item": {"pk": {"S": "a"}}}
    [(method, path, headers, body)] = _Recorder.received
    assert path.startswith("/behind/a/proxy")


class _Framing(BaseHTTPRequestHandler):
    """HTTP/1.1 answers framed as a server may frame them: `mode` says how (a length, chunks, a length and
    "Connection: close", no length and the end of the connection); every answer records the client's port."""

    protocol_version = "HTTP/1.1"
    mode = "length"
    ports: list = []
    item = {"pk": {"S": "a"}, "big": {"S": "ü" * 100_000}}  # larger than one read from the socket

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.ports.append(self.client_address[1])
        answer = json.dumps({"Item": self.item}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        if self.mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(answer), 7000):
                piece = answer[start:start + 7000]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.mode in ("length", "close"):
            self.send_header("Content-Length", str(len(answer)))
        if self.mode != "length":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("mode", ["length", "chunked", "close", "until_closed"])
def test_every_framing_of_an_answer_is_read_whole_and_a_kept_alive_connection_is_reused(mode):
    """DynamoDB answers with a length on a kept-alive connection: one connection for every call. Any other framing
    HTTP/1.1 allows is read whole too, and a server that says it closes gets a new connection next time."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Framing,), {"mode": mode, "ports": []}))
    handler = server.RequestHandlerClass
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fast = lean(botocore_client(f"http://127.0.0.1:{server.server_address[1]}"))
        params = {"TableName": TABLE, "Key": {"pk": {"S": "a"}}}
        with mock.patch("onysoft.dynamo_transport.time.sleep", side_effect=AssertionError("retried")):
            answers = [without_metadata(fast._make_api_call("GetItem", params)) for _ in range(4)]
    finally:
        server.shutdown()
        server.server_close()
    assert answers == [{"Item": _Framing.item}] * 4
    kept_alive = mode in ("length", "chunked")
    assert len(set(handler.ports)) == (1 if kept_alive else 4), handler.ports


class _HeaderRecorder(_Recorder):
    all_values: list = []

    def do_POST(self):  # noqa: N802
        self.all_values.append({name: self.headers.get_all(name) for name in ("Accept-Encoding", "X-Extra")})
        super().do_POST()


def test_a_header_a_hook_adds_goes_out_once_as_it_was_given():
    """A before-send hook (PynamoDB's extra headers) may give a header the transport also sends, or bytes: one of
    each on the wire, the hook's, decoded."""
    _HeaderRecorder.all_values = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HeaderRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fast = lean(botocore_client(f"http://127.0.0.1:{server.server_address[1]}"))

        def extra(request, **_):
            request.headers["Accept-Encoding"] = "gzip"
            request.headers["X-Extra"] = b"yes"

        fast.meta.events.register("before-send.dynamodb.GetItem", extra)
        answer = fast._make_api_call("GetItem", {"TableName": TABLE, "Key": {"pk": {"S": "a"}}})
    finally:
        server.shutdown()
        server.server_close()
    assert without_metadata(answer) == {"Item": {"pk": {"S": "a"}}}
    assert _HeaderRecorder.all_values == [{"Accept-Encoding": ["gzip"], "X-Extra": ["yes"]}]
