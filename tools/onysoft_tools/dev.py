"""`onysoft dev`: the whole gateway on a developer's machine, built from template.yaml.

What it runs, in this order:

1. a DynamoDB-compatible server: moto server in its own process (or `--dynamodb-endpoint`);
2. the template's tables (template.yaml is the only schema), with the state moto server itself restored;
3. on the first run only, a seed: catalog, a USD→TRY rate, one demo account and key per key type;
4. the dashboard's user pool and app client from template.yaml on moto's cognito-idp, with demo sign-ins
   (onysoft_tools.local.cognito), and `<state dir>/dev.env`, the connection settings the CLI reads;
5. an HTTP server (uvicorn) with an ASGI app that behaves like the deployed API Gateway stage: the
   template's routes, its Lambda REQUEST authorizer (the real `functions/authorizer` handler on a real
   REQUEST event, its answer cached for ReauthorizeEvery seconds), its gateway responses, and the real
   proxy ASGI app (`functions/proxy/app.py`) called the way the Lambda Web Adapter calls it.

State across restarts: moto server keeps everything in memory; started with `--state-dir`, it journals
every DynamoDB write to `<state dir>/journal.log` before answering it, and loads `<state dir>/snapshot.jsonl`
plus the journal at start (onysoft_tools.local.journal): `kill -9` loses no acknowledged write, and no request
pays for a scan of the tables. The demo keys' plaintext is kept in
`<state dir>/demo-keys.json` (mode 0600) so a restart can print them again: a local development
convenience only. Tables only ever hold a key's SHA-256, here as in AWS.

No process is left behind: moto runs in its own process group, dies with this process (Linux
PR_SET_PDEATHSIG), and is stopped (then killed if it lingers) on Ctrl-C, SIGTERM, a crash or exit.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from onysoft_tools import iam_record, settings, template
from onysoft_tools.local import cognito as local_cognito

logger = logging.getLogger("onysoft.dev")

REGION = "us-east-1"
LOCAL_ACCOUNT_ID = "000000000000"  # the account id in local execute-api ARNs
LOCAL_API_ID = "local"
DUMMY_ACCESS_KEY = "onysoft-dev"  # noqa: S105 - moto accepts any credentials; these are not secrets
DUMMY_SECRET_KEY = "onysoft-dev"  # noqa: S105
DEMO_KEYS_FILE = "demo-keys.json"
DEMO_OWNER = "demo"  # the org and partner id that own the demo project and partner accounts
MOTO_LOG_FILE = "moto.log"
REQUEST_LOG_FILE = "requests.log"  # per-request logs without --verbose
MAX_BODY_BYTES = 6 * 1024 * 1024  # what reaches a Lambda: its 6 MB request payload limit, not API Gateway's 10
REQUEST_CONTEXT_HEADER = b"x-amzn-request-context"
LAMBDA_CONTEXT_HEADER = b"x-amzn-lambda-context"
REQUEST_ID_RESPONSE_HEADER = b"x-amzn-requestid"

# Seed of a first run: (model, input USD/Mtok, output USD/Mtok). mock/* answers offline.
SEED_MODELS = (
    ("mock/echo", "1.00", "2.00"),
    # the mock provider's other models (onysoft.mock_provider), so every fault the README names can be tried
    ("mock/slow-stream", "1.00", "2.00"),
    ("mock/cut-stream", "1.00", "2.00"),
    ("mock/error-500", "1.00", "2.00"),
    ("mock/rate-limited", "1.00", "2.00"),
    ("mock/timeout", "1.00", "2.00"),
    ("mock/embed", "0.02", "0"),
    ("openai/gpt-4o-mini", "0.15", "0.60"),
    ("openai/gpt-4o", "2.50", "10.00"),
)
SEED_USDTRY = "41.50"
SEED_TOPUP = "100"


# ---------------------------------------------------------------------------------------------- arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3000, help="port to listen on (default 3000)")
    parser.add_argument("--no-seed", action="store_true",
                        help="do not seed the catalog, FX rate and demo accounts/keys on a first run")
    parser.add_argument("--dynamodb-endpoint", metavar="URL", default=None,
                        help="use this DynamoDB-compatible server instead of moto server "
                             "(its data is then its own: nothing is saved to the state dir; "
                             "moto server still runs the local user pool)")
    parser.add_argument("--verbose", action="store_true",
                        help="log every request on the terminal (default: to <state dir>/requests.log)")


# ---------------------------------------------------------------------------------------------- moto server


def _die_with_parent(parent_pid: int):
    """preexec_fn for the moto process: SIGTERM when this process dies, however it dies (Linux)."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                pr_set_pdeathsig = 1
                libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
            except Exception:  # noqa: BLE001, S110 - best effort; the parent also stops it explicitly
                pass
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class MotoServer:
    """moto server (serialized: onysoft_tools.serial_moto) in its own process and process group;
    stop() is idempotent and always reaps it."""

    STATE_ERROR = 3  # serial_moto's exit code for a state dir it cannot use (its message is in the log)

    def __init__(self, log_path: Path, state_dir: Path | None = None, verbose: bool = False):
        self.log_path = log_path
        self.state_dir = state_dir  # None: memory only
        self.verbose = verbose
        self.process: subprocess.Popen | None = None
        self.endpoint = ""

    def start(self, timeout: float = 300.0) -> str:
        """Start it and wait until it answers: loading a large state (snapshot + journal) takes a while."""
        last_error = "moto server did not start"
        for _attempt in range(3):  # a free port can be taken between the probe and moto's bind
            port = _free_port()
            command = [sys.executable, "-m", "onysoft_tools.serial_moto", "-H", "127.0.0.1", "-p", str(port)]
            command += ["--state-dir", str(self.state_dir)] if self.state_dir else []
            command += ["--verbose"] if self.verbose else []
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
            try:
                self.process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
                    process_group=0, preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509
                )
            finally:
                log.close()
            self.endpoint = f"http://127.0.0.1:{port}"
            if self._wait_ready(timeout):
                return self.endpoint
            if self.process is not None and self.process.poll() == self.STATE_ERROR:
                with open(self.log_path, "rb") as handle:
                    handle.seek(log_start)
                    said = handle.read().decode("utf-8", "replace").strip().splitlines()
                self.stop()
                from onysoft_tools.local.journal import StateError

                raise StateError(said[-1].removeprefix("onysoft dev: ") if said
                                 else f"moto server refused the state dir (see {self.log_path})")
            last_error = f"moto server did not answer on port {port} (see {self.log_path})"
            self.stop()
        raise RuntimeError(last_error)

    def _wait_ready(self, timeout: float) -> bool:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                httpx.get(self.endpoint + "/moto-api/", timeout=1.0)
                return True
            except httpx.HTTPError:
                time.sleep(0.1)
        return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 60.0) -> None:
        """SIGTERM (moto compacts its journal into the snapshot, seconds for a large state), then SIGKILL."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)  # its own group: anything it spawned goes too
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(grace)
        else:
            process.wait()


# ---------------------------------------------------------------------------------------------- state


def _write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------- seed


@dataclass
class DemoKey:
    type: str
    currency: str
    key: str
    key_id: str
    account_id: str
    display: str
    valid: bool = True


DEMO_KEYS_NOTE = (
    "Local development only: the demo keys' plaintext, kept so `onysoft dev` can print them again after a "
    "restart. Tables hold only each key's SHA-256. Never copy this file anywhere."
)


def seed() -> list[DemoKey]:
    from onysoft import catalog, money
    from onysoft.accounts import create_account, top_up
    from onysoft.api_keys import create_key
    from onysoft.key_types import KEY_TYPES

    for model, input_price, output_price in SEED_MODELS:
        catalog.set_model(model, input_usd_per_mtok=input_price, output_usd_per_mtok=output_price)
    catalog.set_fx("USDTRY", SEED_USDTRY)
    demo = []
    for key_type in KEY_TYPES.values():
        account = create_account(key_type.account_kind, name=f"demo {key_type.account_kind}",
                                 owner=None if key_type.account_kind == "user" else DEMO_OWNER)
        top_up(account.account_id, money.parse_amount(SEED_TOPUP))
        created = create_key(account.account_id, name=f"demo {key_type.name}")
        demo.append(DemoKey(type=created.record.key_type, currency=account.currency, key=created.plaintext,
                            key_id=created.record.key_id, account_id=account.account_id,
                            display=created.record.display))
    return demo


def write_demo_keys(path: Path, demo: list[DemoKey]) -> None:
    document = {
        "note": DEMO_KEYS_NOTE,
        "keys": [{k: v for k, v in vars(d).items() if k != "valid"} for d in demo],
    }
    _write_atomically(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"), mode=0o600)
    os.chmod(path, 0o600)


def read_demo_keys(path: Path) -> list[DemoKey]:
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8")).get("keys") or []
        return [DemoKey(**{k: entry[k] for k in ("type", "currency", "key", "key_id", "account_id", "display")})
                for entry in entries]
    except (ValueError, KeyError, TypeError, AttributeError):
        logger.warning("%s is unreadable: demo keys not shown", path)
        return []


def check_demo_keys(demo: list[DemoKey]) -> None:
    """Mark the demo keys that no longer authenticate (deleted, or the tables were reset)."""
    from onysoft import keys
    from onysoft.api_keys import find_by_hash, is_usable

    for entry in demo:
        record = find_by_hash(keys.hash_key(entry.key)) if keys.is_well_formed(entry.key) else None
        entry.valid = record is not None and is_usable(record)


# ---------------------------------------------------------------------------------------------- functions


class FakeLambdaContext:
    """The attributes handlers (and Powertools) read from a Lambda context object."""

    def __init__(self, function_name: str, timeout_seconds: float = 10.0, memory_mb: int = 512):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{LOCAL_ACCOUNT_ID}:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _repo_root() -> Path:
    return template.template_path().resolve().parent


def load_function(tpl: dict, logical_id: str) -> tuple[str, Any]:
    """('asgi', app) for a function run by the Lambda Web Adapter (Handler run.sh → app.py's `app`),
    ('lambda', handler) for a plain Python handler. Imported by file path under a unique module name."""
    props = ((tpl.get("Resources") or {}).get(logical_id) or {}).get("Properties") or {}
    code_uri = props.get("CodeUri")
    handler = str(props.get("Handler") or "")
    if not code_uri or not handler:
        raise RuntimeError(f"template.yaml: {logical_id} has no CodeUri/Handler")
    code_dir = _repo_root() / str(code_uri)
    if handler.endswith(".sh"):
        module_file, attribute, kind = "app.py", "app", "asgi"
    else:
        module_name, _, attribute = handler.rpartition(".")
        module_file, kind = module_name.replace(".", "/") + ".py", "lambda"
    spec = importlib.util.spec_from_file_location(f"onysoft_function_{logical_id}", code_dir / module_file)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {code_dir / module_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    # Under the tests (ONYSOFT_IAM_RECORD set), the AWS calls it makes are recorded as this function's.
    return kind, iam_record.attributed(getattr(module, attribute), logical_id)


# ---------------------------------------------------------------------------------------------- API Gateway


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

    async def _gateway_response(self, send, request: _Request, response_type: str, message: str) -> None:
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
                status=None if response is not None else status_of.get(response_type),
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

    async def _authorize(self, request: _Request) -> dict | tuple[str, str]:
        """The authorizer's context (plus principalId), or (gateway response type, message)."""
        from starlette.concurrency import run_in_threadpool

        if request.route.authorizer in self.cognito:
            return await self._authorize_cognito(request, self.cognito[request.route.authorizer])
        settings_ = self.authorizers[request.route.authorizer]
        identity = request.header(settings_.identity_header)
        if not identity:  # API Gateway answers 401 itself, without calling the authorizer
            return ("UNAUTHORIZED", "Unauthorized")
        cache_key = (settings_.name, hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest())
        cached = self._auth_cache.get(cache_key)
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
            if settings_.ttl_seconds > 0:
                self._auth_cache[cache_key] = _CachedAuth(time.monotonic() + settings_.ttl_seconds, policy)
        if policy is None:
            return ("UNAUTHORIZED", "Unauthorized")
        if not policy_allows(policy, self._method_arn(request)):
            return ("ACCESS_DENIED", "User is not authorized to access this resource")
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


# ---------------------------------------------------------------------------------------------- run


class _Stop(Exception):  # noqa: N818 - a signal, not an error
    """SIGTERM/SIGHUP: leave the serve loop and clean up, like Ctrl-C."""


def _raise_stop(signum, frame) -> None:
    raise _Stop(signal.Signals(signum).name)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: no ~40 ms wait for the client's delayed ACK on small answers.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _connection_env(endpoint: str, host: str, port: int) -> dict[str, str]:
    from onysoft import config

    values = {
        "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY,
    }
    for env_var in template.TABLE_ENV.values():
        values[env_var] = os.environ.get(env_var) or config.TABLE_ENV_DEFAULTS[env_var]
    url_host = f"[{host}]" if ":" in host else host
    values["ONYSOFT_GATEWAY_URL"] = f"http://{url_host}:{port}"
    return values


def _configure_logging(state: Path, verbose: bool) -> logging.StreamHandler | None:
    """The terminal gets warnings and errors; every per-request line (the gateway's, uvicorn's access log,
    the functions' own loggers) goes to <state dir>/requests.log, or to the terminal with --verbose.
    Returns the request file's handler (None with --verbose). It is a StreamHandler on a file we keep open:
    uvicorn's logging setup closes every FileHandler that exists when it starts."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(formatter)
    request_file = None
    if not verbose:
        terminal.setLevel(logging.WARNING)
        stream = open(state / REQUEST_LOG_FILE, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - process-long
        request_file = logging.StreamHandler(stream)
        request_file.setFormatter(formatter)
    for name in ("onysoft",):
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            log.removeHandler(handler)
        log.addHandler(terminal)
        if request_file is not None:
            log.addHandler(request_file)
        log.setLevel(logging.INFO)
        log.propagate = False
    return request_file


def _uvicorn_log_config(request_file: logging.StreamHandler | None) -> dict | None:
    """uvicorn's default logging (None), or the same with its access log in the request file."""
    if request_file is None:
        return None
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"] = {"()": lambda: logging.StreamHandler(request_file.stream), "formatter": "access"}
    config["formatters"]["access"]["use_colors"] = False
    return config


def _functions_log_to(request_file: logging.StreamHandler | None) -> None:
    """The functions' Powertools loggers print each invocation's lines to stdout: to the request file instead."""
    if request_file is None:
        return
    service = os.environ.get("POWERTOOLS_SERVICE_NAME", "")
    for handler in logging.getLogger(service).handlers if service else []:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setStream(request_file.stream)


def demo_principals(demo: list[DemoKey]) -> list[str]:
    """The demo seed's principals: its user, the org and partner that own the demo accounts, the operator."""
    user = next((d.account_id for d in demo if d.type == "user"), None)
    return ([f"user:{user}"] if user else []) + [f"org:{DEMO_OWNER}", f"partner:{DEMO_OWNER}", "operator"]


def _dashboard_banner(base_url: str, sign_ins: list[dict[str, str]]) -> str:
    lines = [f"Dashboard:   {base_url}/dashboard/   (its API: {base_url}/dashboard/…, Swagger UI: …/dashboard/docs)",
             "Demo sign-ins (the local user pool; more: onysoft users create --principal … --email … --password …):"]
    for entry in sign_ins:
        lines.append(f"  {entry['principal']:<28} {entry['email']:<28} {entry['password']}")
    lines.append("  a token for curl: onysoft token --email EMAIL --password PASSWORD")
    return "\n".join(lines)


def _banner(base_url: str, state: Path, endpoint: str, demo: list[DemoKey], seeded: bool, persisted: bool,
            dashboard: str = "") -> str:
    lines = [
        "",
        "Onysoft AI Gateway (local) — the template's routes, authorizer and gateway responses",
        f"  API:         {base_url}/v1   (OpenAI SDKs: base_url={base_url}/v1)",
        f"  state dir:   {state}" + ("" if persisted else "   (tables live in the given DynamoDB endpoint)"),
        f"  DynamoDB:    {endpoint}",
        f"  CLI:         onysoft --state-dir {state} accounts|keys|usage|catalog|fx …",
        "",
    ]
    if demo:
        lines.append("Demo keys" + (" (new)" if seeded else "") + f" — local only, kept in {state / DEMO_KEYS_FILE}:")
        for entry in demo:
            status = "" if entry.valid else "   [no longer valid]"
            lines.append(f"  {entry.type:<17} {entry.currency}  {entry.key}{status}")
            if entry.valid:
                lines.append(f'    curl -H "Authorization: Bearer {entry.key}" {base_url}/v1/key')
        example = next((e for e in demo if e.valid), None)
        if example:
            lines += ["", "Clients read the key from the environment:",
                      f"  export ONYSOFT_API_KEY={example.key}"]
    else:
        lines.append("No demo keys (create one: onysoft accounts create --kind user; onysoft keys create --account …)")
    if dashboard:
        lines += ["", dashboard]
    lines += ["", "Ctrl-C to stop.", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    state = settings.state_dir(getattr(args, "state_dir", None)).resolve()
    host, port = getattr(args, "host", "127.0.0.1"), int(getattr(args, "port", 3000))
    external = getattr(args, "dynamodb_endpoint", None)
    iam_record.install()  # only when ONYSOFT_IAM_RECORD is set (the IAM conformance check)
    state.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(state, 0o700)
    request_file = _configure_logging(state, bool(getattr(args, "verbose", False)))
    try:
        sock = _bind(host, port)
    except OSError as exc:
        print(f"onysoft dev: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    from onysoft_tools.local import journal, legacy_state

    moto = MotoServer(state / MOTO_LOG_FILE, state_dir=None if external else state,
                      verbose=bool(getattr(args, "verbose", False)))
    had_state = journal.has_state(state)  # before moto starts (and writes its journal)
    atexit.register(moto.stop)
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        os.environ.update(local_cognito.MOTO_ENV)  # the same user pool ids after every restart
        moto_endpoint = moto.start()  # the user pool lives there even when DynamoDB is elsewhere
        endpoint = external or moto_endpoint
        env = _connection_env(endpoint, host, port)
        os.environ.update(env)
        os.environ.pop("AWS_PROFILE", None)
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "onysoft-gateway")
        from onysoft.models import bind_tables

        bind_tables()  # before any handler module is imported

        import boto3

        client = boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION,
                              aws_access_key_id=DUMMY_ACCESS_KEY, aws_secret_access_key=DUMMY_SECRET_KEY)
        tpl = template.load_template()
        names = {logical_id: env[env_var] for logical_id, env_var in template.TABLE_ENV.items()}
        template.create_tables(client, tpl, names)

        demo_path = state / DEMO_KEYS_FILE
        if external:  # the server keeps its own data: a first run is one that never seeded it
            first_run = not demo_path.exists()
        else:  # moto loaded the journal and snapshot itself: a first run is one with neither (nor an old file)
            legacy = legacy_state.pending(state)
            first_run = not had_state and legacy is None
            if legacy is not None:
                count = legacy_state.migrate(client, names, legacy)
                print(f"onysoft dev: migrated {count} items from {legacy} (an earlier version's state file; "
                      f"kept as {legacy.name}{legacy_state.MIGRATED_SUFFIX}) into the journal", file=sys.stderr)
        pool = local_cognito.create_pool(moto_endpoint, REGION, tpl)  # template.yaml's pool, moto's cognito-idp
        env.update(pool.env())
        os.environ.update(pool.env())
        settings.write_env_file(state / settings.ENV_FILE_NAME, env)

        seeded = False
        if first_run and not getattr(args, "no_seed", False):
            demo = seed()  # every write journaled before it was acknowledged: on file before the keys file
            seeded = True
            write_demo_keys(demo_path, demo)
        else:
            demo = read_demo_keys(demo_path)
            check_demo_keys(demo)
        sign_ins = local_cognito.seed_users(pool, state, demo_principals(demo))

        gateway = LocalApiGateway(tpl, state_dir=state)
        from onysoft_tools.local.rollup_poller import RollupPoller  # RollupFunction's stream, as Lambda reads it

        poller = RollupPoller(names["UsageTable"], endpoint=endpoint).start()
        _functions_log_to(request_file)
        import uvicorn

        config = uvicorn.Config(gateway, log_level="info", access_log=True, lifespan="on",
                                timeout_graceful_shutdown=5, log_config=_uvicorn_log_config(request_file))
        server = uvicorn.Server(config)
        base_url = env["ONYSOFT_GATEWAY_URL"]
        print(_banner(base_url, state, endpoint, demo, seeded, not external,
                      dashboard=_dashboard_banner(base_url, sign_ins)), flush=True)
        try:
            server.run(sockets=[sock])
        except (KeyboardInterrupt, _Stop):
            pass
        finally:
            poller.stop()
        return 0
    except (KeyboardInterrupt, _Stop):
        return 130
    except (journal.StateError, legacy_state.LegacyStateError) as exc:
        print(f"onysoft dev: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:
        logger.error("onysoft dev failed: %s", exc)
        raise
    finally:
        with contextlib.suppress(Exception):
            sock.close()
        stopping = time.monotonic()
        moto.stop()  # SIGTERM: moto compacts its journal into the snapshot
        logger.info("moto server stopped in %.1f s", time.monotonic() - stopping)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("onysoft dev stopped.", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m onysoft_tools.dev`: the same as `onysoft dev`."""
    parser = argparse.ArgumentParser(prog="onysoft dev", description="Run the gateway locally.")
    parser.add_argument("--state-dir", default=None, help="where dev.env and the local state live (.onysoft)")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
