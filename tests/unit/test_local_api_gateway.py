"""The local API Gateway stage (onysoft_tools.local.api_gateway) with stand-in functions, in-process: an authorizer
without identity sources (Anthropic's routes) runs on every request, whatever headers it carries, and caches
nothing; a cached one is not called without its header; a Deny policy answers ACCESS_DENIED with the authorizer's
context in the gateway response's template, as API Gateway renders `$context.authorizer.<key>`."""

import json

from starlette.testclient import TestClient

from onysoft_tools import template
from onysoft_tools.local.api_gateway import LocalApiGateway

ALLOW = {"Version": "2012-10-17",
         "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": ["arn:aws:execute-api:*/*/*"]}]}


def _gateway(authorizer):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    tpl = template.load_template()
    functions = {route.function: ("asgi", app) for route in template.routes(tpl)}
    functions["AuthorizerFunction"] = ("lambda", authorizer)
    return TestClient(LocalApiGateway(tpl, functions=functions))


def test_anthropics_routes_call_their_authorizer_on_every_request_and_cache_nothing():
    calls: list[dict] = []

    def authorizer(event, context):
        calls.append(event)
        if event["headers"].get("X-Api-Key") != "good" and event["headers"].get("Authorization") != "Bearer good":
            raise Exception("Unauthorized")  # noqa: TRY002 - what API Gateway expects
        return {"principalId": "key_x", "context": {"key_id": "key_x"}, "policyDocument": ALLOW}

    with _gateway(authorizer) as client:
        for _ in range(2):
            assert client.post("/v1/messages", headers={"x-api-key": "good"}).status_code == 200
        assert client.post("/v1/messages/count_tokens", headers={"Authorization": "Bearer good"}).status_code == 200
        assert client.post("/v1/messages").status_code == 401  # no header at all: still the authorizer's call
        assert len(calls) == 4  # nothing cached
        assert calls[0]["resource"] == "/v1/messages" and calls[0]["headers"]["X-Api-Key"] == "good"
        # An OpenAI route's authorizer (identity source Authorization) is never called without that header.
        assert client.post("/v1/chat/completions", headers={"x-api-key": "good"}).status_code == 401
        assert len(calls) == 4
        assert client.post("/v1/chat/completions", headers={"Authorization": "Bearer good"}).status_code == 200
        assert client.post("/v1/chat/completions", headers={"Authorization": "Bearer good"}).status_code == 200
        assert len(calls) == 5  # cached for ReauthorizeEvery


def test_a_deny_policy_answers_access_denied_with_the_authorizers_context():
    def authorizer(event, context):
        return {"principalId": "key_x", "policyDocument": {**ALLOW, "Statement": [
            {**ALLOW["Statement"][0], "Effect": "Deny"}]},
            "context": {"error_code": "key_leaked", "error_message": "This API key was revoked: found at x"}}

    with _gateway(authorizer) as client:
        for path, headers in (("/v1/messages", {"x-api-key": "k"}), ("/v1/models", {"Authorization": "Bearer k"})):
            answer = client.request("POST" if path == "/v1/messages" else "GET", path, headers=headers)
            assert answer.status_code == 401, answer.text
            body = json.loads(answer.text)
            assert body["type"] == "error"
            assert body["error"] == {"message": "This API key was revoked: found at x", "type": "invalid_request_error",
                                     "code": "key_leaked", "param": None}


def test_a_plain_function_serves_one_call_per_instance_at_a_time_and_grows_like_lambda():
    """Eight calls at once: each gets an instance no other call is in (a new one, imported afresh, when all are
    busy); later calls reuse the idle ones. The dashboard's resolver keeps its request in module state."""
    import threading

    from onysoft_tools.local.lambdas import LambdaInstances

    busy: dict[str, bool] = {}
    overlaps: list[str] = []
    all_in = threading.Barrier(8)

    def new_instance(name):
        busy[name] = False

        def handler(event, context):
            if busy[name]:
                overlaps.append(name)
            busy[name] = True
            if event == "together":
                all_in.wait(timeout=10)  # all eight inside at once
            busy[name] = False
            return name
        return handler

    instances = LambdaInstances("Fn", new_instance)
    threads = [threading.Thread(target=instances, args=("together", None)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)
    assert not overlaps and instances.instances == 8 and len(busy) == 8
    assert {instances("again", None) for _ in range(20)} <= set(busy) and instances.instances == 8


def test_functions_built_on_a_powertools_resolver_take_turns_in_the_process():
    """Powertools keeps the event a resolver serves in BaseRouter.current_event, a class attribute: one per
    process. The local dashboard and any other resolver-based function share RESOLVER_CALLS, so no two of their
    calls overlap, or one request reads another's event (another person's principal)."""
    import threading

    from onysoft_tools import template
    from onysoft_tools.local import lambdas

    _, dashboard = lambdas.load_function(template.load_template(), "DashboardFunction")
    instances = getattr(dashboard, "__wrapped__", dashboard)
    assert instances._one_at_a_time is lambdas.RESOLVER_CALLS
    inside, overlaps = [], []
    all_started = threading.Barrier(2)

    def resolver_call(event, context):
        if inside:
            overlaps.append(event)
        inside.append(event)
        threading.Event().wait(0.2)
        inside.remove(event)

    first = lambdas.LambdaInstances("A", lambda name: resolver_call, one_at_a_time=lambdas.RESOLVER_CALLS)
    second = lambdas.LambdaInstances("B", lambda name: resolver_call, one_at_a_time=lambdas.RESOLVER_CALLS)

    def run(instances, event):
        all_started.wait(timeout=5)
        instances(event, None)

    threads = [threading.Thread(target=run, args=(first, "a")), threading.Thread(target=run, args=(second, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not overlaps
