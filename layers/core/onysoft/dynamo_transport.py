"""DynamoDB's data-plane calls without botocore's per-call machinery (issue 25, docs/BENCHMARKS.md section 6).

PynamoDB hands every call to `client._make_api_call(operation, params)` with `params` already in DynamoDB's wire
form (every attribute value a {"S": ...}/{"N": "..."} dict). botocore then walks the whole structure again with
its shape model, resolves the endpoint through its rules engine (with JMESPath over the transaction's items),
emits a dozen events, builds its header dicts and parses the answer back with the shape model: about a quarter of
the proxy's CPU a request, for four calls. `LeanClient` sends those same params as JSON instead, signed by
botocore's own SigV4 signer with the client's own credentials (refreshed as botocore refreshes them), over a
urllib3 pool to the endpoint botocore resolved when it built the client, and raises botocore's own ClientError
(its modelled class) with the fields PynamoDB and the gateway read. Retries follow botocore's standard mode, which
PynamoDB configures: throttling, 5xx and connection failures, up to 4 attempts, exponential backoff with jitter.

Only the operations in LEAN_OPERATIONS take this path, and only when every value is JSON (no binary attributes
here); anything else, and every other attribute of the client (meta, exceptions, the control plane), is the
botocore client's.
"""

from __future__ import annotations

import json
import logging
import random
import time

import urllib3
from botocore import exceptions as bexc
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.exceptions import ClientError

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


def _tls(client) -> dict:
    """TLS as botocore's own session for this client verifies it: its CA bundle (AWS_CA_BUNDLE, the config's, or
    certifi's), or no verification where the client was told so."""
    from botocore.httpsession import get_cert_path

    verify = getattr(getattr(client, "_endpoint", None), "http_session", None)
    verify = getattr(verify, "_verify", True)
    if verify is False:
        return {"cert_reqs": "CERT_NONE"}
    return {"cert_reqs": "CERT_REQUIRED", "ca_certs": get_cert_path(verify)}


class LeanClient:
    """A botocore DynamoDB client whose data-plane calls skip botocore's pipeline (see the module's docstring)."""

    def __init__(self, client, connect_timeout: float, read_timeout: float, max_connections: int):
        self._client = client
        self._url = client.meta.endpoint_url.rstrip("/") + "/"
        self._region = client.meta.region_name
        self._credentials = client._request_signer._credentials  # botocore's: refreshable where the role is
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=max_connections, retries=False,
                                         timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
                                         **_tls(client))

    def __getattr__(self, name):  # everything else is the botocore client's
        return getattr(self._client, name)

    def batch_get_item(self, **params):
        return self._make_api_call("BatchGetItem", params)

    def _make_api_call(self, operation: str, params: dict) -> dict:
        if operation not in LEAN_OPERATIONS:
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
            body = json.dumps(params, separators=(",", ":"))
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
            except (urllib3.exceptions.HTTPError, OSError) as exc:
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

    def _send(self, operation: str, call: dict) -> tuple[int, dict, bytes]:
        request = AWSRequest("POST", self._url, data=call["body"].encode(),
                             headers={**call["headers"], "X-Amz-Target": TARGET_PREFIX + operation,
                                      "Content-Type": CONTENT_TYPE})
        SigV4Auth(self._credentials.get_frozen_credentials(), "dynamodb", self._region).add_auth(request)
        prepared = request.prepare()
        # botocore's last event before the wire, as its endpoint emits it: a handler may answer instead (moto's
        # mock_aws in the unit tests does; PynamoDB's extra-headers hook adds to the request).
        _, stubbed = self._client.meta.events.emit_until_response(f"before-send.dynamodb.{operation}",
                                                                   request=prepared)
        if stubbed is not None:
            return stubbed.status_code, stubbed.headers, stubbed.content
        answer = self._pool.request("POST", prepared.url, body=prepared.body, headers=dict(prepared.headers.items()),
                                    redirect=False, preload_content=True)
        return answer.status, answer.headers, answer.data

    def _botocore_error(self, exc: Exception) -> bexc.BotoCoreError:
        """The exception botocore's HTTP session raises for the same failure (callers catch those)."""
        url = self._url
        if isinstance(exc, urllib3.exceptions.SSLError):
            return bexc.SSLError(endpoint_url=url, error=exc)
        if isinstance(exc, urllib3.exceptions.NewConnectionError | OSError):
            return bexc.EndpointConnectionError(endpoint_url=url, error=exc)
        if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
            return bexc.ConnectTimeoutError(endpoint_url=url, error=exc)
        if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
            return bexc.ReadTimeoutError(endpoint_url=url, error=exc)
        if isinstance(exc, urllib3.exceptions.ProtocolError):
            return bexc.ConnectionClosedError(endpoint_url=url, error=exc)
        return bexc.HTTPClientError(error=exc)

    @staticmethod
    def _metadata(status: int, headers) -> dict:
        return {"RequestId": headers.get("x-amzn-requestid", ""), "HTTPStatusCode": status,
                "HTTPHeaders": {k.lower(): v for k, v in headers.items()}, "RetryAttempts": 0}

    def _answer(self, data: bytes, status: int, headers) -> dict:
        parsed = json.loads(data) if data else {}
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
