"""DynamoDB's data-plane calls without botocore's per-call machinery (issue 25, docs/BENCHMARKS.md section 6).

PynamoDB hands every call to `client._make_api_call(operation, params)` with `params` already in DynamoDB's wire
form (every attribute value a {"S": ...}/{"N": "..."} dict). botocore then walks the whole structure again with
its shape model, resolves the endpoint through its rules engine (with JMESPath over the transaction's items),
emits a dozen events, builds its header dicts and parses the answer back with the shape model: about a quarter of
the proxy's CPU a request, for four calls. `LeanClient` sends those same params as JSON instead, signed with
SigV4 (onysoft.sigv4: the signing key derived once a day) with the client's own credentials (refreshed as
botocore refreshes them), to the endpoint botocore resolved when it built the client, over one kept-alive
HTTP/1.1 connection per thread (urllib3's pool cost ~0.18 ms more a call, and the calls already run one per pool
thread): http.client opens it (TLS, timeouts), the request is written whole and the answer parsed by httptools
(llhttp, in C; http.client's email-based header parsing was ~8% of the proxy's CPU a request). It raises
botocore's own ClientError (its modelled class) with the fields PynamoDB and the gateway read. Retries follow
botocore's standard mode, which PynamoDB configures: throttling, 5xx and connection failures, up to 4 attempts,
exponential backoff with jitter.

Only the operations in LEAN_OPERATIONS take this path, and only when every value is JSON (no binary attributes
here); anything else, and every other attribute of the client (meta, exceptions, the control plane), is the
botocore client's.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import select
import ssl
import threading
import time
from urllib.parse import urlsplit

import httptools
from botocore import exceptions as bexc
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.exceptions import ClientError

from onysoft import wire_json
from onysoft.sigv4 import Signer

logger = logging.getLogger("onysoft.dynamo_transport")

LEAN_OPERATIONS = frozenset({"GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "BatchGetItem",
                             "BatchWriteItem", "TransactWriteItems", "TransactGetItems"})
TARGET_PREFIX = "DynamoDB_20120810."
CONTENT_TYPE = "application/x-amz-json-1.0"
# botocore's standard retry mode, as PynamoDB configures it (1 + max_retry_attempts = 4 attempts).
MAX_ATTEMPTS = 4
RETRY_CAP_SECONDS = 20.0
THROTTLING_CODES = frozenset({"Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
                              "TooManyRequestsException", "ProvisionedThroughputExceededException",
                              "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
                              "LimitExceededException", "RequestThrottled", "SlowDown"})
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"})
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})


def _tls(client) -> ssl.SSLContext:
    """TLS as botocore's own session for this client verifies it: its CA bundle (AWS_CA_BUNDLE, the config's, or
    certifi's), or no verification where the client was told so."""
    from botocore.httpsession import get_cert_path

    verify = getattr(getattr(client, "_endpoint", None), "http_session", None)
    verify = getattr(verify, "_verify", True)
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=get_cert_path(verify))


class _ConnectionFailed(Exception):
    """A call that got no HTTP answer: `kind` says at which step (connect, tls, read, closed)."""

    def __init__(self, kind: str, cause: BaseException):
        super().__init__(f"{kind}: {cause}")
        self.kind = kind
        self.cause = cause


def _readable(sock) -> bool:
    """Whether an idle connection has something to read: its end, as nothing else is sent unasked. (poll: select
    cannot watch a descriptor above 1024.)"""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _Connections:
    """One kept-alive HTTP/1.1 connection per thread to the endpoint. A connection the server closed while idle
    (readable before a request is sent: its end of the stream) is replaced before it is used, as urllib3's pool
    does; any failure closes it."""

    def __init__(self, url: str, connect_timeout: float, read_timeout: float, tls: ssl.SSLContext | None):
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.hostname = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        default = 443 if self.https else 80
        self.host_header = parts.hostname if parts.port in (None, default) else f"{parts.hostname}:{parts.port}"
        if ":" in self.hostname and parts.port in (None, default):  # an IPv6 literal keeps its brackets
            self.host_header = f"[{self.hostname}]"
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.tls = tls
        self._local = threading.local()

    def _open(self) -> http.client.HTTPConnection:
        if self.https:
            conn = http.client.HTTPSConnection(self.hostname, self.port, timeout=self.connect_timeout,
                                               context=self.tls)
        else:
            conn = http.client.HTTPConnection(self.hostname, self.port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except ssl.SSLError as exc:
            conn.close()
            raise _ConnectionFailed("tls", exc) from exc
        except TimeoutError as exc:
            conn.close()
            raise _ConnectionFailed("connect_timeout", exc) from exc
        except OSError as exc:
            conn.close()
            raise _ConnectionFailed("connect", exc) from exc
        conn.sock.settimeout(self.read_timeout)
        return conn

    def _usable(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and (conn.sock is None or _readable(conn.sock)):
            conn.close()  # closed by the server while idle (or in a state nothing can be sent on)
            conn = None
        if conn is None:
            conn = self._local.conn = self._open()
        return conn

    def post(self, headers: dict, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """The answer's status, headers (names lowercased) and body."""
        conn = self._usable()
        try:
            conn.sock.sendall(_request(headers, body))
            answer = _Answer()
            parser = answer.parser = httptools.HttpResponseParser(answer)
            while not answer.complete:
                data = conn.sock.recv(RECV_BYTES)
                if not data:
                    if not answer.ends_at_close():
                        raise http.client.RemoteDisconnected("the connection closed before the answer was whole")
                    answer.complete = answer.closes = True
                    break
                parser.feed_data(data)
            closes = answer.closes or not answer.keep_alive
            status = parser.get_status_code()
        except BaseException as exc:
            conn.close()
            self._local.conn = None
            if isinstance(exc, TimeoutError):
                raise _ConnectionFailed("read_timeout", exc) from exc
            if isinstance(exc, ssl.SSLError):
                raise _ConnectionFailed("tls", exc) from exc
            if isinstance(exc, OSError | http.client.HTTPException | httptools.HttpParserError):
                raise _ConnectionFailed("closed", exc) from exc
            raise
        if closes:
            conn.close()
            self._local.conn = None
        return status, answer.headers, b"".join(answer.body)


RECV_BYTES = 65536


def _request(headers: dict, body: bytes) -> bytes:
    """The POST as it goes on the wire (http.client's request, without its per-header checks and buffering)."""
    lines = ["POST / HTTP/1.1"]
    given = set()
    for name, value in headers.items():
        value = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"invalid header {name!r}")  # a header must never smuggle another
        given.add(name.lower())
        lines.append(f"{name}: {value}")
    # What http.client adds unless a hook gave it already (never twice): DynamoDB's answer uncompressed, the length.
    if "accept-encoding" not in given:
        lines.append("Accept-Encoding: identity")
    if "content-length" not in given:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Answer:
    """One HTTP/1.1 answer as httptools' parser (C, llhttp) reports it: headers lowercased, the body's pieces."""

    __slots__ = ("parser", "headers", "body", "complete", "closes", "headers_done", "keep_alive")

    def __init__(self):
        self.parser = None
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.complete = self.closes = self.headers_done = self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # Asked now: once the message is complete, llhttp's flags are reset and the answer is always "no".
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def ends_at_close(self) -> bool:
        """Whether the server's close ends the answer: a body with neither a length nor chunks (HTTP/1.1 allows
        it; DynamoDB always sends a length)."""
        return self.headers_done and "content-length" not in self.headers \
            and "chunked" not in self.headers.get("transfer-encoding", "").lower()


class LeanClient:
    """A botocore DynamoDB client whose data-plane calls skip botocore's pipeline (see the module's docstring)."""

    def __init__(self, client, connect_timeout: float, read_timeout: float):
        self._client = client
        self._url = client.meta.endpoint_url.rstrip("/") + "/"
        # DynamoDB, moto and DynamoDB Local answer at the root; an endpoint with a path of its own (a proxy in
        # front?) is left to botocore, which signs and sends to that path.
        self._lean = urlsplit(self._url).path == "/"
        self._region = client.meta.region_name
        self._credentials = client._request_signer._credentials  # botocore's: refreshable where the role is
        self._signer = Signer(self._region)
        # One connection per calling thread: as many as the pool's threads (onysoft.blocking, ONYSOFT_DYNAMODB_THREADS).
        self._connections = _Connections(self._url, connect_timeout, read_timeout,
                                         _tls(client) if self._url.startswith("https:") else None)

    def __getattr__(self, name):  # everything else is the botocore client's
        return getattr(self._client, name)

    def batch_get_item(self, **params):
        return self._make_api_call("BatchGetItem", params)

    def _make_api_call(self, operation: str, params: dict) -> dict:
        if operation not in LEAN_OPERATIONS or not self._lean:
            return self._client._make_api_call(operation, params)
        # botocore's events around a call, as its own pipeline emits them, so what hooks botocore hooks this too:
        # before-parameter-build (its handlers fill an absent idempotency token, TransactWriteItems'
        # ClientRequestToken, so a retry below never applies a transaction twice; the tests' IAM recorder and
        # loop probe), before-call (a handler may answer instead: the tests' fault injection), after-call.
        events = self._client.meta.events
        model = self._client.meta.service_model.operation_model(operation)
        context: dict = {}
        events.emit(f"before-parameter-build.dynamodb.{operation}", params=params, model=model, context=context)
        try:
            body = wire_json.dumps(params).decode()
        except TypeError:  # a value JSON cannot carry (bytes): botocore's serializer knows what to do (it emits
            return self._client._make_api_call(operation, params)  # the first event again: hooks see it twice)
        request = {"url_path": "/", "query_string": "", "method": "POST", "headers": {}, "body": body,
                   "context": context}
        _, answered = events.emit_until_response(f"before-call.dynamodb.{operation}", model=model, params=request,
                                                 request_signer=self._client._request_signer, context=context)
        http, parsed = answered if answered is not None else self._send_with_retries(operation, request)
        events.emit(f"after-call.dynamodb.{operation}", http_response=http, parsed=parsed, model=model,
                    context=context)
        if http.status_code >= 300:
            raise self._client.exceptions.from_code(parsed.get("Error", {}).get("Code"))(parsed, operation)
        return parsed

    def _send_with_retries(self, operation: str, request: dict) -> tuple[AWSResponse, dict]:
        attempt = 0
        while True:
            attempt += 1
            try:
                status, headers, data = self._send(operation, request)
            except _ConnectionFailed as exc:
                if attempt >= MAX_ATTEMPTS:
                    raise self._botocore_error(exc) from exc
                logger.info("DynamoDB %s: %s; retrying", operation, type(exc).__name__)
                self._pause(attempt)
                continue
            http = AWSResponse(self._url, status, headers, None)
            if status < 300:
                return http, self._answer(data, status, headers)
            parsed = self._error(data, status, headers)
            code = parsed["Error"]["Code"]
            retryable = code in THROTTLING_CODES or code in TRANSIENT_CODES or status in TRANSIENT_STATUS
            if not retryable or attempt >= MAX_ATTEMPTS:
                return http, parsed
            self._pause(attempt)

    def _send(self, operation: str, call: dict) -> tuple[int, dict[str, str], bytes]:
        body = call["body"].encode()
        headers = self._signer.headers(self._connections.host_header, TARGET_PREFIX + operation, CONTENT_TYPE, body,
                                       self._credentials.get_frozen_credentials())
        headers.update(call["headers"])
        headers["Host"] = self._connections.host_header
        prepared = AWSPreparedRequest("POST", self._url, headers, body, stream_output=False)
        # botocore's last event before the wire, as its endpoint emits it: a handler may answer instead (moto's
        # mock_aws in the unit tests does; PynamoDB's extra-headers hook adds to the request).
        _, stubbed = self._client.meta.events.emit_until_response(f"before-send.dynamodb.{operation}",
                                                                   request=prepared)
        if stubbed is not None:
            return stubbed.status_code, {k.lower(): v for k, v in stubbed.headers.items()}, stubbed.content
        return self._connections.post(prepared.headers, prepared.body)

    def _botocore_error(self, exc: _ConnectionFailed) -> bexc.BotoCoreError:
        """The exception botocore's HTTP session raises for the same failure (callers catch those)."""
        url, cause = self._url, exc.cause
        if exc.kind == "tls":
            return bexc.SSLError(endpoint_url=url, error=cause)
        if exc.kind == "connect":
            return bexc.EndpointConnectionError(endpoint_url=url, error=cause)
        if exc.kind == "connect_timeout":
            return bexc.ConnectTimeoutError(endpoint_url=url, error=cause)
        if exc.kind == "read_timeout":
            return bexc.ReadTimeoutError(endpoint_url=url, error=cause)
        return bexc.ConnectionClosedError(endpoint_url=url, error=cause)

    @staticmethod
    def _metadata(status: int, headers: dict[str, str]) -> dict:
        return {"RequestId": headers.get("x-amzn-requestid", ""), "HTTPStatusCode": status,
                "HTTPHeaders": dict(headers), "RetryAttempts": 0}

    def _answer(self, data: bytes, status: int, headers) -> dict:
        parsed = wire_json.loads(data) if data else {}
        parsed["ResponseMetadata"] = self._metadata(status, headers)
        return parsed

    def _error(self, data: bytes, status: int, headers) -> dict:
        """An error answer as botocore's JSON parser shapes it: Error {Code, Message}, the modelled fields
        (message, CancellationReasons, Item) kept at the top, ResponseMetadata."""
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            parsed = {}
        if not isinstance(parsed, dict):
            parsed = {}
        code = str(parsed.pop("__type", "") or "").rsplit("#", 1)[-1] or str(status)
        message = parsed.get("message") or parsed.get("Message") or ""  # botocore keeps the field too
        return {**parsed, "Error": {"Code": code, "Message": message},
                "ResponseMetadata": self._metadata(status, headers)}

    @staticmethod
    def _pause(attempt: int) -> None:
        # botocore's standard mode: full jitter (not a secret: S311 does not apply)
        time.sleep(random.random() * min(RETRY_CAP_SECONDS, 2 ** (attempt - 1)))  # noqa: S311


def throttled(exc: BaseException | None) -> bool:
    """Whether a failure is DynamoDB refusing for capacity, after the retries (botocore's ClientError or a
    PynamoDB error caused by one, a transaction cancelled for throttling included), anywhere in its causes."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ClientError):
            response = exc.response or {}
            reasons = {r.get("Code") for r in response.get("CancellationReasons") or [] if isinstance(r, dict)}
            if response.get("Error", {}).get("Code") in THROTTLING_CODES or \
                    reasons & {"ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}:
                return True
        # PynamoDB keeps botocore's error as `cause` (and raises from it); Python's chain has the rest
        exc, seen = exc.__cause__ or getattr(exc, "cause", None) or exc.__context__, seen + 1
    return False
