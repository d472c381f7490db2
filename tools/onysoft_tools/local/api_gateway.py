"""An ASGI app that answers like the template's API Gateway REST API stage: its routes (/v1/*, /dashboard/*),
its Lambda REQUEST authorizer (the real handler on a real REQUEST event, its answer cached for
ReauthorizeEvery seconds) and Cognito user pool authorizer, its gateway responses, a Lambda proxy integration
for plain handlers, and ASGI apps called the way the Lambda Web Adapter calls them (response streaming)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from onysoft_tools import template
from onysoft_tools.local import cognito as local_cognito
from onysoft_tools.local.lambdas import LOCAL_ACCOUNT_ID, FakeLambdaContext, load_function
from onysoft_tools.local.moto_process import REGION

logger = logging.getLogger("onysoft.dev")

LOCAL_API_ID = "local"
MAX_BODY_BYTES = 6 * 1024 * 1024  # what reaches a Lambda: its 6 MB request payload limit, not API Gateway's 10
REQUEST_CONTEXT_HEADER = b"x-amzn-request-context"
LAMBDA_CONTEXT_HEADER = b"x-amzn-lambda-context"
REQUEST_ID_RESPONSE_HEADER = b"x-amzn-requestid"


def _path_regex(path: str) -> re.Pattern[str]:
    pattern = ""
    for part in re.split(r"(\{[^}]+\})", path):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            greedy = name.endswith("+")
            name = name.rstrip("+")
            pattern += f"(?P<{name}>.+)" if greedy else f"(?P<{name}>[^/]+)"
        else:
            pattern += re.escape(part)
    return re.compile(pattern)


def _canonical_header(name: str) -> str:
    return "-".join(part[:1].upper() + part[1:] for part in name.split("-"))


def _resource_matches(pattern: str, arn: str) -> bool:
    regex = ".*".join(re.escape(piece) for piece in pattern.split("*"))
    return re.fullmatch(regex, arn) is not None


def policy_allows(policy: dict, method_arn: str) -> bool:
    """IAM evaluation of an authorizer's policy for one method ARN: an explicit Deny wins, then Allow."""
    statements = (policy.get("policyDocument") or {}).get("Statement") or []
    if isinstance(statements, dict):
        statements = [statements]
    allowed = False
    for statement in statements:
        actions = statement.get("Action") or []
        actions = [actions] if isinstance(actions, str) else actions
        if not any(a in ("execute-api:Invoke", "execute-api:*", "*") for a in actions):
            continue
        resources = statement.get("Resource") or []
        resources = [resources] if isinstance(resources, str) else resources
        if not any(_resource_matches(r, method_arn) for r in resources):
            continue
        if statement.get("Effect") == "Deny":
            return False
        if statement.get("Effect") == "Allow":
            allowed = True
    return allowed


def _context_value(value: Any) -> Any:
    # REST API hands the authorizer's context to the integration as strings.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class LocalRoute:
    method: str
    path: str
    regex: re.Pattern[str]
    function: str
    authorizer: str | None
    streaming: bool


@dataclass
class _CachedAuth:
    expires: float
    policy: dict | None  # None: the authorizer answered Unauthorized


@dataclass
class _Request:
    scope: dict
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    request_id: str
    started_ms: int
    route: LocalRoute | None = None
    path_parameters: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        found = None
        for key, value in self.headers:
            if key == name.lower():
                found = value  # API Gateway's `headers` keeps the last value of a repeated header
        return found


class LocalApiGateway:
    """An ASGI app that answers like the template's API Gateway REST API stage."""

    def __init__(self, tpl: dict, functions: dict[str, tuple[str, Any]] | None = None,
                 state_dir: Path | None = None):
        self.tpl = tpl
        self.state_dir = state_dir  # the local gateway's state dir (the user pool itself is read from the environment)
        self.stage = template.stage_name(tpl)
        self.responses = template.gateway_responses(tpl)
        self.routes = [
            LocalRoute(r.method, r.path, _path_regex(r.path), r.function, r.authorizer, r.streaming)
            for r in template.routes(tpl)
        ]
        self.authorizers: dict[str, Any] = {}
        self.cognito: dict[str, Any] = {}  # user pool authorizers: API Gateway checks the token itself
        for name in sorted({r.authorizer for r in self.routes if r.authorizer}):
            if template.authorizer_type(tpl, name) == "cognito":
                self.cognito[name] = template.cognito_authorizer(tpl, name)
            else:
                self.authorizers[name] = template.authorizer_settings(tpl, name=name)
        self.functions: dict[str, tuple[str, Any]] = dict(functions or {})
        for logical_id in {r.function for r in self.routes} | {a.function for a in self.authorizers.values()}:
            if logical_id not in self.functions:
                self.functions[logical_id] = load_function(tpl, logical_id)
        self._auth_cache: dict[tuple[str, str], _CachedAuth] = {}
        self._asgi_apps = [app for kind, app in self.functions.values() if kind == "asgi"]

    # -------------------------------------------------------------- ASGI entry

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets on a REST API
        now = time.time()
        request = _Request(
            scope=scope, method=scope["method"].upper(), path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])],
            request_id=str(uuid.uuid4()), started_ms=int(now * 1000),
        )
        request.route, request.path_parameters = self._match(request.method, request.path)
        if request.route is None:
            await self._gateway_response(send, request, "MISSING_AUTHENTICATION_TOKEN", "Missing Authentication Token")
            return
        body = await self._read_body(request, receive)
        if body is None:
            await self._gateway_response(send, request, "REQUEST_TOO_LARGE", "Request Too Long")
            return
        authorizer_context: dict | None = None
        if request.route.authorizer:
            outcome = await self._authorize(request)
            if isinstance(outcome, tuple):
                await self._gateway_response(send, request, *outcome)
                return
            authorizer_context = outcome
        kind, target = self.functions[request.route.function]
        if kind == "asgi":
            await self._call_asgi(target, request, body, authorizer_context, receive, send)
        else:
            await self._call_lambda(target, request, body, authorizer_context, send)

    async def _lifespan(self, receive, send) -> None:
        # uvicorn's lifespan for this app: start and stop every ASGI function app with it.
        stacks = []
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            for app in self._asgi_apps:
                stacks.append(_AppLifespan(app))
                await stacks[-1].startup()
        except Exception as exc:  # noqa: BLE001
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        for stack in reversed(stacks):
            with contextlib.suppress(Exception):
                await stack.shutdown()
        await send({"type": "lifespan.shutdown.complete"})

    def _match(self, method: str, path: str) -> tuple[LocalRoute | None, dict[str, str]]:
        # A REST API routes /dashboard/ to the /dashboard resource: one trailing slash is not part of the path.
        candidates = (path, path[:-1]) if len(path) > 1 and path.endswith("/") else (path,)
        for candidate in candidates:
            for route in self.routes:
                if route.method not in (method, "ANY"):
                    continue
                match = route.regex.fullmatch(candidate)
                if match:
                    return route, match.groupdict()
        return None, {}

    async def _read_body(self, request: _Request, receive) -> bytes | None:
        """The whole request body (API Gateway buffers requests), or None when over MAX_BODY_BYTES."""
        length = request.header("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    # -------------------------------------------------------------- gateway responses

    async def _gateway_response(self, send, request: _Request, response_type: str, message: str,
                                authorizer: dict | None = None) -> None:
        response = self.responses.get(response_type)
        default = self.responses.get("DEFAULT_5XX" if response_type.startswith(("AUTHORIZER", "INTEGRATION"))
                                     else "DEFAULT_4XX")
        status_of = {"MISSING_AUTHENTICATION_TOKEN": 403, "UNAUTHORIZED": 401, "ACCESS_DENIED": 403,
                     "AUTHORIZER_FAILURE": 500, "AUTHORIZER_CONFIGURATION_ERROR": 500, "REQUEST_TOO_LARGE": 413}
        if response is None and default is None:
            status, headers, body = status_of.get(response_type, 500), {"Content-Type": "application/json"}, \
                json.dumps({"message": message}).encode()
        else:
            chosen = response or default
            status, headers, body = template.render_gateway_response(
                chosen, message=message, http_method=request.method, path=request.path,
                request_id=request.request_id,
                status=None if response is not None else status_of.get(response_type), authorizer=authorizer,
            )
        raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw_headers += [(b"content-length", str(len(body)).encode()),
                        (REQUEST_ID_RESPONSE_HEADER, request.request_id.encode()),
                        (b"x-amzn-errortype", _error_type(response_type).encode())]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})
        logger.info("%s %s -> %d %s (request %s)", request.method, request.path, status, response_type,
                    request.request_id)

    # -------------------------------------------------------------- authorizer

    def _method_arn(self, request: _Request) -> str:
        api = f"arn:aws:execute-api:{REGION}:{LOCAL_ACCOUNT_ID}:{LOCAL_API_ID}"
        return f"{api}/{self.stage}/{request.method}{request.path}"

    def _request_context(self, request: _Request) -> dict:
        client = request.scope.get("client") or ("127.0.0.1", 0)
        return {
            "resourceId": "local", "resourcePath": request.route.path if request.route else request.path,
            "httpMethod": request.method, "extendedRequestId": request.request_id[:16],
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(request.started_ms / 1000)),
            "path": f"/{self.stage}{request.path}", "accountId": LOCAL_ACCOUNT_ID,
            "protocol": f"HTTP/{request.scope.get('http_version', '1.1')}", "stage": self.stage,
            "domainPrefix": LOCAL_API_ID, "requestTimeEpoch": request.started_ms, "requestId": request.request_id,
            "identity": {"sourceIp": client[0], "userAgent": request.header("user-agent"),
                         "accessKey": None, "accountId": None, "caller": None, "user": None, "userArn": None,
                         "cognitoIdentityId": None, "cognitoIdentityPoolId": None,
                         "cognitoAuthenticationType": None, "cognitoAuthenticationProvider": None},
            "domainName": request.header("host") or "localhost", "deploymentId": "local", "apiId": LOCAL_API_ID,
        }

    def _event_headers(self, request: _Request) -> tuple[dict[str, str], dict[str, list[str]]]:
        single: dict[str, str] = {}
        multi: dict[str, list[str]] = {}
        for name, value in request.headers:
            canonical = _canonical_header(name)
            single[canonical] = value
            multi.setdefault(canonical, []).append(value)
        return single, multi

    def _query(self, request: _Request) -> tuple[dict[str, str], dict[str, list[str]]]:
        single: dict[str, str] = {}
        multi: dict[str, list[str]] = {}
        for name, value in parse_qsl(request.query, keep_blank_values=True):
            single[name] = value
            multi.setdefault(name, []).append(value)
        return single, multi

    def authorizer_event(self, request: _Request, identity_header: str) -> dict:
        headers, multi_headers = self._event_headers(request)
        query, multi_query = self._query(request)
        return {
            "type": "REQUEST", "methodArn": self._method_arn(request),
            "resource": request.route.path, "path": request.path, "httpMethod": request.method,
            "headers": headers, "multiValueHeaders": multi_headers,
            "queryStringParameters": query, "multiValueQueryStringParameters": multi_query,
            "pathParameters": dict(request.path_parameters), "stageVariables": {},
            "requestContext": self._request_context(request),
        }

    async def _authorize(self, request: _Request) -> dict | tuple:
        """The authorizer's context (plus principalId), or (gateway response type, message[, authorizer
        context])."""
        from starlette.concurrency import run_in_threadpool

        if request.route.authorizer in self.cognito:
            return await self._authorize_cognito(request, self.cognito[request.route.authorizer])
        settings_ = self.authorizers[request.route.authorizer]
        if settings_.identity_header is None:  # no identity source: called for every request, nothing cached
            identity, cache_key = None, None
        else:
            identity = request.header(settings_.identity_header)
            if not identity:  # API Gateway answers 401 itself, without calling the authorizer
                return ("UNAUTHORIZED", "Unauthorized")
            cache_key = (settings_.name, hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest())
        cached = self._auth_cache.get(cache_key) if cache_key else None
        started = time.monotonic()
        if cached is not None and cached.expires > time.monotonic():
            policy = cached.policy
        else:
            self._auth_cache.pop(cache_key, None)
            kind, handler = self.functions[settings_.function]
            if kind != "lambda":
                logger.error("authorizer %s is not a Lambda handler", settings_.name)
                return ("AUTHORIZER_CONFIGURATION_ERROR", "Authorizer configuration error")
            event = self.authorizer_event(request, settings_.identity_header)
            try:
                policy = await run_in_threadpool(handler, event, FakeLambdaContext(settings_.function))
            except Exception as exc:  # noqa: BLE001 - what API Gateway sees is the Lambda's error
                if str(exc) == "Unauthorized":
                    policy = None
                else:
                    logger.error("authorizer failed: %s (request %s)", type(exc).__name__, request.request_id)
                    return ("AUTHORIZER_FAILURE", "Authorizer error")
            if policy is not None and not (isinstance(policy, dict) and policy.get("principalId") is not None
                                           and isinstance(policy.get("policyDocument"), dict)):
                logger.error("authorizer returned no valid policy (request %s)", request.request_id)
                return ("AUTHORIZER_CONFIGURATION_ERROR", "Authorizer configuration error")
            if settings_.ttl_seconds > 0 and cache_key:
                self._auth_cache[cache_key] = _CachedAuth(time.monotonic() + settings_.ttl_seconds, policy)
        if policy is None:
            return ("UNAUTHORIZED", "Unauthorized")
        if not policy_allows(policy, self._method_arn(request)):
            # A Deny's context is in the gateway response's $context.authorizer (API Gateway passes it there).
            return ("ACCESS_DENIED", "User is not authorized to access this resource",
                    {k: _context_value(v) for k, v in (policy.get("context") or {}).items()})
        context = {k: _context_value(v) for k, v in (policy.get("context") or {}).items()}
        context["principalId"] = str(policy["principalId"])
        context["integrationLatency"] = int((time.monotonic() - started) * 1000)
        return context

    async def _authorize_cognito(self, request: _Request, settings_: Any) -> dict | tuple[str, str]:
        """API Gateway's Cognito user pool authorizer, against the local user pool's JWKS (moto's cognito-idp)."""
        from starlette.concurrency import run_in_threadpool

        token = request.header(settings_.identity_header)
        if not token:
            return ("UNAUTHORIZED", "Unauthorized")
        try:
            claims = await run_in_threadpool(local_cognito.verify, local_cognito.Pool.from_env(), token)
        except (local_cognito.InvalidToken, LookupError):
            return ("UNAUTHORIZED", "Unauthorized")
        return {"claims": local_cognito.authorizer_claims(claims)}

    # -------------------------------------------------------------- integrations

    async def _call_asgi(self, app, request: _Request, body: bytes, authorizer_context: dict | None,
                         receive, send) -> None:
        """Call an ASGI app as the Lambda Web Adapter would: its context headers set, a client's dropped."""
        request_context = self._request_context(request)
        if authorizer_context is not None:
            request_context["authorizer"] = authorizer_context
        lambda_context = FakeLambdaContext(request.route.function)
        headers = [(k, v) for k, v in request.scope.get("headers", []) if not k.lower().startswith(b"x-amzn-")]
        headers.append((REQUEST_CONTEXT_HEADER, json.dumps(request_context).encode("utf-8")))
        headers.append((LAMBDA_CONTEXT_HEADER, json.dumps({
            "request_id": lambda_context.aws_request_id, "invoked_function_arn": lambda_context.invoked_function_arn,
            "env_config": {"function_name": lambda_context.function_name, "memory": 512, "version": "$LATEST",
                           "log_stream": "local", "log_group": lambda_context.log_group_name},
        }).encode("utf-8")))
        scope = dict(request.scope, headers=headers)
        body_sent = False

        async def replay_receive() -> dict:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the client's disconnect, when it comes

        started = False

        async def send_with_request_id(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = dict(message, headers=[*message.get("headers", []),
                                                 (REQUEST_ID_RESPONSE_HEADER, request.request_id.encode())])
            await send(message)

        try:
            await app(scope, replay_receive, send_with_request_id)
        except Exception:
            logger.exception("integration failed (request %s)", request.request_id)
            if not started:
                await self._gateway_response(send, request, "INTEGRATION_FAILURE", "Internal server error")
            else:
                raise

    async def _call_lambda(self, handler, request: _Request, body: bytes, authorizer_context: dict | None,
                           send) -> None:
        """A Lambda proxy integration: the REST API event in, {statusCode, headers, body} out."""
        from starlette.concurrency import run_in_threadpool

        headers, multi_headers = self._event_headers(request)
        query, multi_query = self._query(request)
        request_context = self._request_context(request)
        if authorizer_context is not None:
            request_context["authorizer"] = authorizer_context
        text_body = body.decode("utf-8", "surrogateescape") if body else None
        event = {
            "resource": request.route.path, "path": request.path, "httpMethod": request.method,
            "headers": headers or None, "multiValueHeaders": multi_headers or None,
            "queryStringParameters": query or None, "multiValueQueryStringParameters": multi_query or None,
            "pathParameters": request.path_parameters or None, "stageVariables": None,
            "requestContext": request_context, "body": text_body, "isBase64Encoded": False,
        }
        try:
            result = await run_in_threadpool(handler, event, FakeLambdaContext(request.route.function))
            status = int(result.get("statusCode", 200))
            out_body = result.get("body") or ""
            raw = base64.b64decode(out_body) if result.get("isBase64Encoded") else str(out_body).encode("utf-8")
            out_headers = [(k.lower().encode("latin-1"), str(v).encode("latin-1"))
                           for k, v in (result.get("headers") or {}).items()]
            for name, values in (result.get("multiValueHeaders") or {}).items():
                out_headers += [(name.lower().encode("latin-1"), str(v).encode("latin-1")) for v in values]
        except Exception:
            logger.exception("integration failed (request %s)", request.request_id)
            await self._gateway_response(send, request, "INTEGRATION_FAILURE", "Internal server error")
            return
        out_headers = [(k, v) for k, v in out_headers if k != b"content-length"]
        out_headers += [(b"content-length", str(len(raw)).encode()),
                        (REQUEST_ID_RESPONSE_HEADER, request.request_id.encode())]
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": raw})


def _error_type(response_type: str) -> str:
    return {"UNAUTHORIZED": "UnauthorizedException", "ACCESS_DENIED": "AccessDeniedException",
            "MISSING_AUTHENTICATION_TOKEN": "MissingAuthenticationTokenException",
            "REQUEST_TOO_LARGE": "RequestTooLargeException"}.get(response_type, "InternalServerErrorException")


class _AppLifespan:
    """Runs an inner ASGI app's lifespan protocol alongside ours."""

    def __init__(self, app):
        self.app = app
        self._to_app: asyncio.Queue = asyncio.Queue()
        self._from_app: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def startup(self) -> None:
        async def run() -> None:
            try:
                await self.app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                               self._to_app.get, self._from_app.put)
            except Exception:  # noqa: BLE001 - an app without lifespan support
                await self._from_app.put({"type": "lifespan.unsupported"})

        self._task = asyncio.create_task(run())
        await self._to_app.put({"type": "lifespan.startup"})
        message = await self._from_app.get()
        if message["type"] == "lifespan.startup.failed":
            raise RuntimeError(message.get("message") or "startup failed")

    async def shutdown(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._from_app.get(), 10)

