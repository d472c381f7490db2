"""The local gateway end to end: real HTTP, the real OpenAI SDK, the real CLI, moto server.

Everything here goes through `onysoft dev` as a user runs it: the template's routes, the real
authorizer handler (cached per Authorization header), the gateway responses, the proxy app.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import signal
import socket
import subprocess
import time
from decimal import Decimal

import httpx
import openai
import pytest

from onysoft_tools import template
from tests.integration.conftest import ROOT, DevGateway, child_pids, clean_env, dev_command, process_gone

KEY_TYPES = {"user": "TRY", "project": "TRY", "partner_project": "USD", "partner_customer": "TRY"}
ENVELOPE_FIELDS = {"message", "type", "code", "param"}
ANY_KEY = re.compile(r"sk-ony-[0-9a-f]{48}")


def assert_invalid_key(response: httpx.Response, *sent: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert set(body) <= {"error", "type"} and body.get("type", "error") == "error"  # gateway responses: both SDKs'
    assert set(body["error"]) == ENVELOPE_FIELDS
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["param"] is None
    assert isinstance(body["error"]["type"], str) and body["error"]["type"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    for value in sent:  # never echo what the client sent as a key
        if len(value) > 12:
            assert value not in response.text


def get(gateway: DevGateway, path: str, authorization: str | bytes | None = None, **kwargs) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        return httpx.get(gateway.base_url + path, headers=headers, timeout=10, **kwargs)
    except httpx.LocalProtocolError:  # httpx refuses to send it (e.g. trailing whitespace): send the bytes
        lines = [f"GET {path} HTTP/1.1", "Host: localhost", "Connection: close"]
        head = "\r\n".join(lines).encode()
        for name, value in headers.items():
            head += b"\r\n" + name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
        return parse_raw_response(raw_request(gateway, head + b"\r\n\r\n"))


def raw_request(gateway: DevGateway, request: bytes) -> bytes:
    """Bytes no HTTP client would send (folded header lines), straight over a socket."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def parse_raw_response(data: bytes) -> httpx.Response:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body)


# ------------------------------------------------------------------------------------------ demo keys


@pytest.mark.parametrize("key_type", list(KEY_TYPES))
def test_each_demo_key_shows_its_type_and_currency(gateway, key_type):
    key = gateway.keys[key_type]
    response = get(gateway, "/v1/key", f"Bearer {key}")
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["type"] == key_type
    assert view["currency"] == KEY_TYPES[key_type]
    assert view["status"] == "active"
    assert view["display"].startswith("sk-ony-") and key not in response.text
    assert Decimal(view["balance"]) == Decimal("100")


def test_demo_keys_file_is_private_and_lists_every_type(gateway):
    demo_file = gateway.state_dir / "demo-keys.json"
    assert demo_file.stat().st_mode & 0o777 == 0o600
    assert sorted(gateway.keys) == sorted(KEY_TYPES)
    assert {entry["type"]: entry["currency"] for entry in gateway.demo} == KEY_TYPES
    for key in gateway.keys.values():
        assert ANY_KEY.fullmatch(key)


def test_openai_sdk_reads_key_and_models(gateway):
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.keys["user"], max_retries=0)
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert "mock/echo" in ids
    assert all(m.object == "model" for m in models.data)

    view = client.get("/key", cast_to=object)
    assert view["type"] == "user" and view["currency"] == "TRY"

    raw = client.with_raw_response.models.list()
    assert raw.status_code == 200
    assert raw.headers.get("x-amzn-requestid")  # API Gateway's request id on every answer


def test_models_list_is_openai_list_format(gateway):
    response = get(gateway, "/v1/models", f"Bearer {gateway.keys['partner_project']}")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    entry = next(m for m in body["data"] if m["id"] == "mock/echo")
    assert entry["object"] == "model" and entry["owned_by"] == "mock" and isinstance(entry["created"], int)


README_MOCK_MODELS = ("mock/echo", "mock/slow-stream", "mock/error-500", "mock/rate-limited", "mock/timeout",
                      "mock/cut-stream", "mock/embed")


def test_a_fresh_gateway_serves_every_mock_model_the_readme_names(gateway):
    """A new user on `make dev` can try each fault the README promises, with the OpenAI SDK: each is in the
    catalog (it was a 404 when only mock/echo was seeded) and fails the way its name says."""
    readme = (ROOT / "README.md").read_text()
    assert all(f"`{model}`" in readme for model in README_MOCK_MODELS)
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.keys["user"], max_retries=0)
    assert set(README_MOCK_MODELS) <= {m.id for m in client.models.list().data}

    def chat(model: str, **extra):
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi there"}],
                                              max_tokens=16, **extra)

    assert chat("mock/echo").choices[0].message.content
    assert "".join(c.choices[0].delta.content or "" for c in chat("mock/slow-stream", stream=True) if c.choices)
    expected = {"mock/error-500": 502, "mock/rate-limited": 429, "mock/timeout": 504}
    for model, status in expected.items():
        with pytest.raises(openai.APIStatusError) as failed:
            chat(model)
        assert failed.value.status_code == status, model
    finished = []  # the stream breaks after a few chunks: no choice ever finishes
    with contextlib.suppress(openai.APIError, httpx.HTTPError):  # a cut may also surface as a broken body
        finished = [c for c in chat("mock/cut-stream", stream=True) if c.choices and c.choices[0].finish_reason]
    assert finished == []
    assert [c for c in chat("mock/echo", stream=True) if c.choices and c.choices[0].finish_reason]  # echo does
    assert len(client.embeddings.create(model="mock/embed", input="a b").data[0].embedding) == 8


# ------------------------------------------------------------------------------------------ bad keys

_HEX = "0123456789abcdef" * 3  # 48 hex digits

BAD_AUTHORIZATIONS = {
    "empty": "",
    "scheme only": "Bearer",
    "scheme and space": "Bearer ",
    "short key": "bearer sk-ony-short",
    "wrong prefix": f"Bearer sk-{_HEX}",
    "openai style prefix": f"Bearer sk-proj-{_HEX}",
    "uppercase hex": f"Bearer sk-ony-{_HEX.upper()}",
    "47 hex": f"Bearer sk-ony-{_HEX[:47]}",
    "49 hex": f"Bearer sk-ony-{_HEX}0",
    "basic auth": "Basic dXNlcjpwYXNzd29yZA==",
    "no scheme": f"sk-ony-{_HEX}",
    "two spaces": f"Bearer  sk-ony-{_HEX}",
    "very long": "Bearer " + "a" * 8000,
    "unicode": "Bearer sk-ony-ü€✓".encode(),
    "non-hex letters": "Bearer sk-ony-" + "g" * 48,
}


@pytest.mark.parametrize("authorization", list(BAD_AUTHORIZATIONS.values()), ids=list(BAD_AUTHORIZATIONS))
def test_malformed_authorization_is_401_envelope(gateway, authorization):
    for path in ("/v1/key", "/v1/models"):
        response = get(gateway, path, authorization)
        assert_invalid_key(response)


def test_missing_authorization_is_401_envelope(gateway):
    for path in ("/v1/key", "/v1/models"):
        response = get(gateway, path)
        assert_invalid_key(response)
        assert response.headers.get("www-authenticate") == "Bearer"


def test_well_formed_unknown_key_is_401(gateway):
    unknown = "sk-ony-" + secrets.token_hex(24)
    assert_invalid_key(get(gateway, "/v1/key", f"Bearer {unknown}"), unknown)
    assert_invalid_key(get(gateway, "/v1/key", f"Bearer {unknown}"), unknown)  # the cached denial too


def test_valid_key_with_anything_around_it_is_401(gateway):
    key = gateway.keys["user"]
    for value in (
        f"Bearer {key} x",  # trailing garbage
        f"Bearer {key}.",
        f"Bearer {key}\t{key}",
        f"Bearer {key} {gateway.keys['project']}",  # two keys
        f"Bearer {key}, Bearer {gateway.keys['project']}",
        f"Token {key}",  # another scheme
        f"Basic {key}",
        f"Bearer {key}".encode() + b"\xa0",  # trailing no-break space (plain spaces are HTTP whitespace)
        f"Bearer {key[:-1]}",
        f"Bearer {key}0",
    ):
        assert_invalid_key(get(gateway, "/v1/key", value), key)


def test_key_with_a_newline_is_401(gateway):
    key = gateway.keys["user"]
    # An obsolete folded header: the value arrives as "Bearer sk-ony-… <rest>", never as the key.
    request = (f"GET /v1/key HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key[:30]}\r\n {key[30:]}\r\n"
               "Connection: close\r\n\r\n").encode()
    response = parse_raw_response(raw_request(gateway, request))
    assert_invalid_key(response, key)


def test_two_authorization_headers_are_401(gateway):
    user, project = gateway.keys["user"], gateway.keys["project"]
    bad = "Bearer sk-ony-" + "f" * 48
    for first, second in ((bad, f"Bearer {user}"), (f"Bearer {user}", bad), (f"Bearer {user}", f"Bearer {project}")):
        response = httpx.get(gateway.base_url + "/v1/key", headers=[("Authorization", first),
                                                                     ("Authorization", second)], timeout=10)
        assert_invalid_key(response, user, project)


def test_openai_sdk_raises_authentication_error(gateway):
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="sk-ony-" + secrets.token_hex(24),
                           max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"


# ------------------------------------------------------------------------------------------ forged context


def _forged_context(account_id: str, key_id: str = "key_0000000000000000", key_type: str = "partner_project") -> str:
    return json.dumps({
        "requestId": "forged", "stage": "prod",
        "authorizer": {"principalId": key_id, "key_id": key_id, "key_type": key_type, "account_id": account_id,
                       "currency": "USD", "markup_bp": 0, "rpm": 0, "tpm": 0, "models": "", "expires_at": ""},
    })


def test_client_sent_request_context_grants_nothing(gateway):
    partner = get(gateway, "/v1/key", f"Bearer {gateway.keys['partner_project']}").json()
    forged = _forged_context(partner["account_id"], partner["key_id"])
    for name in ("x-amzn-request-context", "X-Amzn-Request-Context"):
        # No key, a malformed key, an unknown key: still 401, whatever the header claims.
        for authorization in (None, "Bearer nope", "Bearer sk-ony-" + secrets.token_hex(24)):
            response = get(gateway, "/v1/key", authorization, headers={name: forged})
            assert_invalid_key(response)
            assert partner["account_id"] not in response.text


def test_client_sent_request_context_does_not_change_who_you_are(gateway):
    partner = get(gateway, "/v1/key", f"Bearer {gateway.keys['partner_project']}").json()
    forged = _forged_context(partner["account_id"], partner["key_id"])
    response = get(gateway, "/v1/key", f"Bearer {gateway.keys['user']}",
                   headers={"x-amzn-request-context": forged, "x-amzn-lambda-context": "{}"})
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["type"] == "user" and view["currency"] == "TRY"
    assert view["account_id"] != partner["account_id"] and view["key_id"] != partner["key_id"]


# ------------------------------------------------------------------------------------------ routes


def test_unknown_route_is_404_envelope(gateway):
    key = gateway.keys["user"]
    for method, path, authorization in (
        ("GET", "/v1/nope", None), ("GET", "/v1/nope", f"Bearer {key}"), ("GET", "/", None),
        ("POST", "/v1/key", f"Bearer {key}"), ("DELETE", "/v1/models", None), ("GET", "/healthz", None),
        ("GET", "/v1/key/extra", f"Bearer {key}"),
    ):
        headers = {"Authorization": authorization} if authorization else {}
        response = httpx.request(method, gateway.base_url + path, headers=headers, timeout=10)
        assert response.status_code == 404, (method, path, response.text)
        error = response.json()["error"]
        assert set(error) == ENVELOPE_FIELDS
        assert error["code"] == "unknown_url"
        assert f"{method} {path}" in error["message"]


def test_local_routes_are_exactly_the_templates(gateway):
    tpl = template.load_template()
    routes = template.routes(tpl)
    assert routes, "template.yaml defines no routes"
    key = gateway.keys["user"]
    for route in routes:
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        kwargs = {"json": {}} if route.method in ("POST", "PUT", "PATCH") else {}
        response = httpx.request(route.method, gateway.base_url + path, headers={"Authorization": f"Bearer {key}"},
                                 timeout=10, **kwargs)
        code = (response.json().get("error") or {}).get("code") if response.headers.get(
            "content-type", "").startswith("application/json") and isinstance(response.json(), dict) else None
        assert code != "unknown_url", f"{route.method} {route.path} is in template.yaml but not served"
    templated = {(r.method, r.path) for r in routes}
    for method, path in (("GET", "/v1/chat/completions-not"), ("PUT", "/v1/key"), ("GET", "/v2/models")):
        assert (method, path) not in templated
        response = httpx.request(method, gateway.base_url + path, timeout=10)
        assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_url"


def test_request_body_over_6_mb_is_413(gateway):  # Lambda's payload limit, under API Gateway's 10 MB
    tpl = template.load_template()
    post = next((r for r in template.routes(tpl) if r.method == "POST"), None)
    method, path = (post.method, post.path) if post else ("GET", "/v1/models")
    response = httpx.request(method, gateway.base_url + path, content=b"x" * (6 * 1024 * 1024 + 1),
                             headers={"Authorization": f"Bearer {gateway.keys['user']}"}, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert "6 MB" in response.json()["error"]["message"]


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="session")
def cli_accounts(gateway):
    """One account of each kind made with the CLI, topped up."""
    accounts = {}
    for kind, currency in KEY_TYPES.items():
        created = gateway.cli_json("accounts", "create", "--kind", kind, "--name", f"it {kind}")
        assert created["kind"] == kind and created["currency"] == currency
        assert created["account_id"].startswith("acct_") and created["balance_micros"] == 0
        topped = gateway.cli_json("accounts", "topup", created["account_id"], "12.5")
        assert topped["balance_micros"] == 12_500_000 and Decimal(topped["balance"]) == Decimal("12.5")
        accounts[kind] = created["account_id"]
    return accounts


def test_cli_keys_charge_their_accounts_kind(gateway, cli_accounts):
    for kind, account_id in cli_accounts.items():
        created = gateway.cli_json("keys", "create", "--account", account_id, "--name", f"it {kind}")
        gateway.known_keys.add(created["key"])
        assert created["type"] == kind and created["account_id"] == account_id
        view = get(gateway, "/v1/key", f"Bearer {created['key']}").json()
        assert (view["type"], view["currency"], view["account_id"]) == (kind, KEY_TYPES[kind], account_id)
        assert Decimal(view["balance"]) == Decimal("12.5")


def test_cli_deleted_key_is_refused_at_once_even_when_cached(gateway, cli_accounts):
    account_id = cli_accounts["user"]
    first = gateway.cli_json("keys", "create", "--account", account_id, "--name", "first")
    second = gateway.cli_json("keys", "create", "--account", account_id, "--name", "second")
    gateway.known_keys.update((first["key"], second["key"]))
    assert ANY_KEY.fullmatch(first["key"]) and ANY_KEY.fullmatch(second["key"])

    listed = gateway.cli("keys", "list", "--account", account_id)
    assert first["key"] not in listed.stdout and second["key"] not in listed.stdout
    assert first["key"][7:] not in listed.stdout and not ANY_KEY.search(listed.stdout)
    entries = {entry["key_id"]: entry for entry in json.loads(listed.stdout)["keys"]}
    assert {first["key_id"], second["key_id"]} <= set(entries)
    for created in (first, second):
        entry = entries[created["key_id"]]
        assert entry["display"].startswith("sk-ony-") and len(entry["display"]) < len(created["key"])
        assert entry["type"] == "user" and entry["status"] == "active"

    # Use the first key once: the authorizer's Allow for it is now cached (ReauthorizeEvery).
    assert get(gateway, "/v1/key", f"Bearer {first['key']}").status_code == 200
    deleted = gateway.cli("keys", "delete", first["key_id"])
    assert first["key"] not in deleted.stdout

    response = get(gateway, "/v1/key", f"Bearer {first['key']}")
    assert_invalid_key(response, first["key"])
    ttl = template.authorizer_settings(template.load_template()).ttl_seconds
    if ttl > 0:
        # The answer came from the proxy's own check (the cached Allow let it through), not the authorizer.
        assert "x-amzn-errortype" not in response.headers
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=first["key"], max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()

    still = get(gateway, "/v1/key", f"Bearer {second['key']}")
    assert still.status_code == 200 and still.json()["key_id"] == second["key_id"]
    remaining = json.loads(gateway.cli("keys", "list", "--account", account_id).stdout)["keys"]
    assert first["key_id"] not in {e["key_id"] for e in remaining if e.get("status", "active") == "active"}


def test_no_table_holds_a_key(gateway, cli_accounts):
    import boto3

    env = gateway.env
    client = boto3.client(
        "dynamodb", endpoint_url=env["AWS_ENDPOINT_URL_DYNAMODB"], region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    known = set(gateway.known_keys)
    assert len(known) >= 4
    tables = [env[name] for name in template.TABLE_ENV.values()]
    scanned = 0
    for table in tables:
        kwargs = {"TableName": table}
        while True:
            page = client.scan(**kwargs)
            for item in page["Items"]:
                text = json.dumps(item, default=str)
                scanned += 1
                assert not ANY_KEY.search(text), f"a full key is stored in {table}"
                for key in known:
                    assert key not in text and key[7:] not in text, f"a known key is stored in {table}"
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    assert scanned > 0
    saved = [gateway.state_dir / name for name in ("journal.log", "snapshot.jsonl")]
    assert saved[0].exists()  # every write is journaled as it happens
    for path in saved:  # the saved copy of the tables holds no key either
        if path.exists():
            text = path.read_text(errors="replace")
            assert not ANY_KEY.search(text), f"a full key is stored in {path.name}"


# ------------------------------------------------------------------------------------------ lifecycle


def test_restart_keeps_keys_and_balances(new_gateway, tmp_path):
    state = tmp_path / "state"
    first = new_gateway(state).start()
    demo_key = first.keys["user"]
    assert get(first, "/v1/key", f"Bearer {demo_key}").status_code == 200
    account = first.cli_json("accounts", "create", "--kind", "partner_customer")
    first.cli_json("accounts", "topup", account["account_id"], "7.25")
    created = first.cli_json("keys", "create", "--account", account["account_id"])
    demo_before = (state / "demo-keys.json").read_text()
    assert first.stop() == 0

    second = new_gateway(state).start()
    assert (state / "demo-keys.json").read_text() == demo_before  # no new seed on a restart
    assert second.keys["user"] == demo_key
    view = get(second, "/v1/key", f"Bearer {demo_key}")
    assert view.status_code == 200 and view.json()["type"] == "user"
    restored = get(second, "/v1/key", f"Bearer {created['key']}")
    assert restored.status_code == 200, restored.text
    assert restored.json()["balance_micros"] == 7_250_000
    assert restored.json()["type"] == "partner_customer"
    assert "(new)" not in second.log()
    assert second.stop() == 0


def test_killed_gateway_takes_moto_with_it(new_gateway):
    dev = new_gateway().start()
    children = child_pids(dev.process.pid)
    assert children
    dev.process.kill()  # SIGKILL: no cleanup code runs; the kernel's parent-death signal stops moto
    dev.process.wait()
    deadline = time.monotonic() + 10
    while not all(process_gone(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(process_gone(pid) for pid in children), "moto server outlived a killed onysoft dev"
    dev.process = None


def test_sigterm_stops_cleanly(new_gateway):
    dev = new_gateway().start()
    assert dev.stop(sig=signal.SIGTERM) == 0


def test_an_idle_connection_outlives_a_clients_keep_alive(gateway):
    """A client keeps an idle connection 5 s (httpx, so the OpenAI SDK); the server must keep it longer, or a
    request sent on it as the server closes it breaks (a 200-request burst saw one). 6 s idle, then reused."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        for pause in (0, 6):
            time.sleep(pause)
            connection.request("GET", "/v1/key", headers={"Authorization": f"Bearer {gateway.keys['user']}"})
            answer = connection.getresponse()  # RemoteDisconnected if the server closed it while idle
            assert answer.status == 200 and json.loads(answer.read())["type"] == "user"
    finally:
        connection.close()


def test_port_in_use_fails_fast_without_leftovers(gateway, tmp_path):
    result = subprocess.run([*dev_command(), "--port", str(gateway.port), "--state-dir", str(tmp_path / "s")],
                            cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0
    assert str(gateway.port) in result.stderr
    assert get(gateway, "/v1/key", f"Bearer {gateway.keys['user']}").status_code == 200


# ------------------------------------------------------------------------------------------ in-process


def test_gateway_streams_and_sets_the_request_context_in_process():
    """LocalApiGateway with stand-in functions: chunks reach the client as they are sent (no buffering),
    the authorizer gets a REST REQUEST event, and the app sees only the gateway's request context."""
    import asyncio
    import threading

    import uvicorn

    from onysoft_tools.local.api_gateway import LocalApiGateway

    seen: dict = {}
    events: list[dict] = []

    def authorizer(event, context):
        events.append(event)
        if event["headers"].get("Authorization") != "Bearer good":
            raise Exception("Unauthorized")  # noqa: TRY002 - what API Gateway expects
        return {"principalId": "key_x", "context": {"key_id": "key_x", "markup_bp": 3000, "flag": True},
                "policyDocument": {"Version": "2012-10-17", "Statement": [
                    {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": ["arn:aws:execute-api:*/*/*"]}]}}

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        seen["headers"] = [(k.decode(), v.decode()) for k, v in scope["headers"]]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for index in range(3):
            await send({"type": "http.response.body", "body": f"chunk{index}\n".encode(), "more_body": True})
            await asyncio.sleep(0.4)
        await send({"type": "http.response.body", "body": b""})

    tpl = template.load_template()
    auth = template.authorizer_settings(tpl)
    functions = {route.function: ("asgi", app) for route in template.routes(tpl)}
    functions[auth.function] = ("lambda", authorizer)
    gateway_app = LocalApiGateway(tpl, functions=functions)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(gateway_app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        route = next(r for r in template.routes(tpl) if r.authorizer == auth.name)
        url = f"http://127.0.0.1:{port}{route.path}"
        forged = {"x-amzn-request-context": json.dumps({"authorizer": {"account_id": "acct_forged"}}),
                  "X-Amzn-Something": "forged"}
        started = time.monotonic()
        with httpx.stream(route.method, url, headers={"Authorization": "Bearer good", **forged}, timeout=10) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            first = next(lines)
            first_at = time.monotonic() - started
            rest = list(lines)
        assert first == "chunk0" and rest[:2] == ["chunk1", "chunk2"]
        assert first_at < 0.6, f"the first chunk came after {first_at:.2f}s: the response was buffered"

        amzn = [(k, v) for k, v in seen["headers"] if k.startswith("x-amzn-")]
        contexts = [json.loads(v) for k, v in amzn if k == "x-amzn-request-context"]
        assert len(contexts) == 1 and "forged" not in json.dumps(amzn)
        context = contexts[0]
        assert context["authorizer"]["principalId"] == "key_x"
        assert context["authorizer"]["markup_bp"] == "3000" and context["authorizer"]["flag"] == "true"
        assert context["resourcePath"] == route.path and context["httpMethod"] == route.method
        assert context["stage"] == template.stage_name(tpl) and context["identity"]["sourceIp"] == "127.0.0.1"

        event = events[-1]
        assert event["type"] == "REQUEST" and event["httpMethod"] == route.method
        assert event["methodArn"].endswith(f"/{template.stage_name(tpl)}/{route.method}{route.path}")
        assert event["multiValueHeaders"]["Authorization"] == ["Bearer good"]

        calls = len(events)
        denied = httpx.request(route.method, url, headers={"Authorization": "Bearer bad"}, timeout=10)
        denied_again = httpx.request(route.method, url, headers={"Authorization": "Bearer bad"}, timeout=10)
        assert denied.status_code == denied_again.status_code == 401
        assert len(events) == calls + (1 if auth.ttl_seconds > 0 else 2)  # the denial is cached too
    finally:
        server.should_exit = True
        thread.join(10)


def test_cognito_routes_and_lambda_integrations_in_process(tmp_path, monkeypatch):
    """A route behind a Cognito user pool authorizer (the dashboard's kind): an ID token of the local user pool
    (signed by moto's pool key, checked against its JWKS) is checked as API Gateway would, and a plain Lambda
    handler gets a REST proxy event with the claims."""
    import copy
    import threading

    import uvicorn

    from onysoft_tools.local import cognito
    from onysoft_tools.local.api_gateway import LocalApiGateway
    from tests.helpers import moto_cognito_jwks, sign_like_moto_cognito

    tpl = copy.deepcopy(template.load_template())
    api_id = next(k for k, v in tpl["Resources"].items() if v.get("Type") == template.API_TYPE)
    auth = tpl["Resources"][api_id]["Properties"].setdefault("Auth", {})
    auth.setdefault("Authorizers", {})["LocalPool"] = {"UserPoolArn": {"Fn::GetAtt": ["LocalUserPool", "Arn"]}}
    tpl["Resources"]["LocalDashboardFunction"] = {"Type": template.FUNCTION_TYPE, "Properties": {
        "CodeUri": "nowhere", "Handler": "app.handler", "Events": {"Get": {"Type": "Api", "Properties": {
            "RestApiId": {"Ref": api_id}, "Method": "GET", "Path": "/local-dashboard/things/{thing_id}",
            "Auth": {"Authorizer": "LocalPool"}}}}}}
    seen: dict = {}

    def handler(event, context):
        seen["event"] = event
        return {"statusCode": 201, "headers": {"Content-Type": "application/json"},
                "body": json.dumps({"thing": event["pathParameters"]["thing_id"]})}

    pool = cognito.Pool("http://127.0.0.1:9", "us-east-1", "us-east-1_localtest", "local-client")
    cognito._jwks_cache[pool.jwks_url] = (time.monotonic() + 600, moto_cognito_jwks())  # no server to ask
    now = int(time.time())
    claims = {"sub": "s-1", "aud": pool.client_id, "iss": pool.issuer, "token_use": "id", "iat": now, "exp": now + 600,
              "auth_time": now, "custom:principal": "operator", "email": "op@example.com"}
    for name, value in pool.env().items():
        monkeypatch.setenv(name, value)
    gateway_app = LocalApiGateway(tpl, functions={"LocalDashboardFunction": ("lambda", handler)}, state_dir=tmp_path)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(gateway_app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}/local-dashboard/things/t1"
        assert httpx.get(url, timeout=10).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer a.b.c"}, timeout=10).status_code == 401
        assert "event" not in seen
        for bad in ({"aud": "other"}, {"iss": pool.issuer + "x"}, {"token_use": "access"}, {"exp": now - 1}):
            forged = sign_like_moto_cognito({**claims, **bad})
            assert httpx.get(url, headers={"Authorization": f"Bearer {forged}"}, timeout=10).status_code == 401, bad
        assert "event" not in seen
        token = sign_like_moto_cognito(claims)
        response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert response.status_code == 201 and response.json() == {"thing": "t1"}
        event = seen["event"]
        assert event["resource"] == "/local-dashboard/things/{thing_id}"
        assert event["path"] == "/local-dashboard/things/t1"
        assert event["requestContext"]["authorizer"]["claims"]["custom:principal"] == "operator"
    finally:
        server.should_exit = True
        thread.join(10)
