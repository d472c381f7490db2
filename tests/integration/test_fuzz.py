"""Property-based fuzzing of /v1 over real HTTP, against the session's `onysoft dev` (issue 6, part 3).

- any Authorization header that is not a valid key (printable or not, long, near misses of a real
  `sk-ony-` key) gets 401 in OpenAI's envelope: never 5xx, never 200, never a charge;
- any body (arbitrary JSON, chat- and embeddings-shaped JSON with wrong fields, bytes that are not JSON)
  with a valid key: never 5xx; every answer ≥ 400 is the envelope and leaves the account's balance and
  usage records exactly as they were; every 200 adds exactly one settled record and charges exactly it;
- arbitrary extra headers, including a forged `x-amzn-request-context` claiming another account, never
  change whose balance is charged, nor at what markup.

The provider is the built-in mock (`mock/echo`, seeded by onysoft dev). Issue 10's properties run against a
fake provider that bills what it is sent (tools/onysoft_tools/fake_provider.py, `fake-bill`): over bodies with
any output limits, `n`, content parts and extra fields, the output limit sent upstream is exactly the held
output per answer (never above it), and the hold never under-bounds the provider's bill.
Header bytes are built from what HTTP/1.1 can carry (h11's field-value grammar), so httpx sends them all.
"""

from __future__ import annotations

import json
import string
from decimal import Decimal

import httpx
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from onysoft import money
from tests.integration.ledger import Tables, check_envelope

MODEL = "mock/echo"
MESSAGES = [{"role": "user", "content": "fuzz me"}]
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
MAX_BODY = 6 * 1024 * 1024  # Lambda's request payload limit


@pytest.fixture(scope="module")
def fuzz(gateway):
    """Two fresh accounts on the session gateway: `a` (the caller) and `b` (the one a forgery would name).
    A's balance is below a full-size hold for mock/echo (~2 TRY), so holds without max_tokens shrink."""
    tables = Tables(gateway)
    created = {}
    for name, kind, amount in (("a", "user", "1.5"), ("b", "partner_project", "3")):
        account = gateway.cli_json("accounts", "create", "--kind", kind)
        account = gateway.cli_json("accounts", "topup", account["account_id"], amount)
        # Limits far above what the fuzzing sends, so answers are about the input, not the rate.
        key = gateway.cli_json("keys", "create", "--account", account["account_id"], "--rpm", "1000000",
                               "--tpm", "1000000000")
        gateway.known_keys.add(key["key"])
        created[name] = {"account": account, "key": key}
    return {"gateway": gateway, "tables": tables, **created}


def usage_count(tables: Tables, account_id: str) -> int:
    from boto3.dynamodb.conditions import Key

    return tables.usage_table.query(KeyConditionExpression=Key("account_id").eq(account_id), Select="COUNT",
                                    ConsistentRead=True)["Count"]


def state(fuzz, who: str = "a") -> tuple[int, int]:
    account_id = fuzz[who]["account"]["account_id"]
    return fuzz["tables"].balance(account_id), usage_count(fuzz["tables"], account_id)


def newest_record(fuzz, who: str = "a") -> dict:
    from boto3.dynamodb.conditions import Key

    account_id = fuzz[who]["account"]["account_id"]
    [record] = fuzz["tables"].usage_table.query(KeyConditionExpression=Key("account_id").eq(account_id),
                                                ScanIndexForward=False, Limit=1, ConsistentRead=True)["Items"]
    return record


# ---------------------------------------------------------------------------------------------- strategies

# h11's field-value grammar: runs of bytes other than NUL and whitespace, separated by spaces or tabs.
VALUE_BYTES = bytes(b for b in range(256) if b not in b"\x00\t\n\x0b\x0c\r ")
word = st.binary(min_size=1, max_size=60).map(lambda b: bytes(VALUE_BYTES[x % len(VALUE_BYTES)] for x in b))
header_value = st.builds(
    lambda words, seps: b"".join(w + (seps[i % len(seps)] if i < len(words) - 1 else b"")
                                 for i, w in enumerate(words)),
    st.lists(word, min_size=1, max_size=8), st.lists(st.sampled_from([b" ", b"\t", b"  "]), min_size=1))
long_value = st.integers(200, 8000).flatmap(lambda n: st.sampled_from([b"A" * n, b"Bearer " + b"f" * n,
                                                                       b"Bearer sk-ony-" + b"a" * n]))
HEX = "0123456789abcdef"


def near_miss(key: str) -> st.SearchStrategy[str]:
    """Strings one small step from a valid key: one character changed, dropped or added, case flipped,
    prefix bent, or a well-formed key that was never issued."""
    body = key[len("sk-ony-"):]
    changed = st.tuples(st.integers(0, len(key) - 1), st.characters(min_codepoint=33, max_codepoint=126)).filter(
        lambda t: key[t[0]] != t[1]).map(lambda t: key[:t[0]] + t[1] + key[t[0] + 1:])
    dropped = st.integers(0, len(key) - 1).map(lambda i: key[:i] + key[i + 1:])
    added = st.tuples(st.integers(0, len(key)), st.sampled_from(HEX + "g-_ ")).map(
        lambda t: key[:t[0]] + t[1] + key[t[0]:])
    upper = st.just("sk-ony-" + body.upper())
    prefixes = st.sampled_from(["sk-ONY-", "sk_ony-", "sk-ony_", "skony-", "sk-ony--", "Sk-ony-", "ony-"]).map(
        lambda p: p + body)
    unissued = st.text(HEX, min_size=48, max_size=48).filter(lambda h: h != body).map(lambda h: "sk-ony-" + h)
    return st.one_of(changed, dropped, added, upper, prefixes, unissued)


def authorization(key: str) -> st.SearchStrategy[bytes]:
    schemes = st.sampled_from(["Bearer ", "bearer ", "BEARER ", "Bearer\t", "Basic ", "Token ", "", "Bearer:",
                               "Bearer=", "sk-ony- "])
    near = st.tuples(schemes, near_miss(key)).map(lambda t: (t[0] + t[1]).encode())
    real_in_wrong_place = st.sampled_from([key, "Basic " + key, "Bearer " + key + " extra", "Bearer " + key + ",",
                                           key + " Bearer", "Bearer Bearer " + key, "Bearer" + key]).map(str.encode)
    return st.one_of(near, real_in_wrong_place, header_value, long_value)


def is_the_valid_key(value: bytes, key: str) -> bool:
    """Would a server, after stripping the header's ends (h11 does), read this as `Bearer <key>`?"""
    scheme, _, token = value.strip(b" \t").partition(b" ")
    return scheme.lower() == b"bearer" and token == key.encode()


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(10 ** 40), 10 ** 40),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                          max_leaves=12)
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
                           "content": st.one_of(st.text(max_size=200), json_value)}),
    json_value)
models = st.one_of(st.just(MODEL), st.just(MODEL), st.sampled_from(["", "mock/", "mock/nope", "MOCK/ECHO", "echo",
                                                                    "mock/echo ", "/mock/echo"]), json_value)
token_counts = st.one_of(st.integers(-5, 64), st.integers(-(10 ** 40), 10 ** 40), json_value)
optional = {
    "max_tokens": token_counts, "max_completion_tokens": token_counts,
    "n": st.one_of(st.integers(-3, 200), json_value),
    "stream": st.one_of(st.booleans(), json_value),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.one_of(st.booleans(), json_value)}),
                                json_value),
    "temperature": json_value, "tools": json_value, "user": json_value,
}
chat_bodies = st.fixed_dictionaries(
    {"model": models, "messages": st.one_of(st.lists(message, min_size=1, max_size=4), json_value)},
    optional=optional)
# Mostly well-formed requests with odd but plausible options: the part of the space that reaches the provider.
plausible_chat = st.fixed_dictionaries(
    {"model": st.just(MODEL),
     "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                                 "content": st.text(max_size=300)}), min_size=1, max_size=3)},
    optional={"max_tokens": st.integers(1, 64), "max_completion_tokens": st.integers(-2, 64),
              "n": st.integers(0, 4), "stream": st.booleans(),
              "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
              "temperature": st.floats(0, 2), "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5))),
              "tools": st.lists(st.fixed_dictionaries({
                  "type": st.just("function"), "function": st.fixed_dictionaries({"name": st.text(max_size=8)})}),
                  max_size=2),
              "metadata": json_value})
plausible_embeddings = st.fixed_dictionaries(
    {"model": st.just(MODEL), "input": st.one_of(st.text(min_size=1, max_size=200),
                                                 st.lists(st.text(max_size=40), min_size=1, max_size=4))},
    optional={"encoding_format": st.sampled_from(["float", "base64"]), "dimensions": st.integers(1, 8)})
embedding_bodies = st.fixed_dictionaries(
    {"model": models, "input": st.one_of(st.text(max_size=100), st.lists(st.text(max_size=30), max_size=4),
                                         json_value)},
    optional={"encoding_format": json_value, "dimensions": json_value, "user": json_value})


def encoded(strategy) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda body: json.dumps(body).encode())


def raw_bodies(shaped, plausible=None) -> st.SearchStrategy[bytes]:
    return st.one_of(
        encoded(plausible if plausible is not None else shaped), encoded(shaped),
        encoded(json_value),
        st.binary(max_size=300),
        encoded(shaped).flatmap(lambda b: st.integers(0, max(len(b) - 1, 0)).map(lambda i: b[:i])),  # truncated
        st.text(max_size=100).map(lambda t: t.encode("utf-16")),
    )


# ---------------------------------------------------------------------------------------------- checks


def post(fuzz, path: str, raw: bytes, headers: dict | list | None = None) -> httpx.Response:
    gateway = fuzz["gateway"]
    headers = headers if headers is not None else {
        "Authorization": f"Bearer {fuzz['a']['key']['key']}", "Content-Type": "application/json"}
    with httpx.stream("POST", gateway.base_url + path, content=raw, headers=headers, timeout=30) as response:
        response.read()
    return response


def check_answer(fuzz, response: httpx.Response, before: tuple[int, int]) -> None:
    """Never 5xx; ≥ 400 is the envelope and costs nothing; 200 adds one settled record and charges exactly it."""
    assert response.status_code < 500, (response.status_code, response.text[:300])
    event(f"HTTP {response.status_code}")
    after = state(fuzz)
    if response.status_code >= 400:
        check_envelope(response)
        assert after == before, f"a refused request ({response.status_code}) changed the account: {before} → {after}"
        return
    assert response.status_code == 200, response.status_code
    assert after[1] == before[1] + 1, "one usage record per answered request"
    record = newest_record(fuzz)
    assert record["status"] == "settled" and "hold_state" not in record
    assert record["request_id"] == response.headers["x-onysoft-request-id"]
    assert before[0] - after[0] == int(record["charge_micros"]) >= 0


# ---------------------------------------------------------------------------------------------- properties


@settings(FUZZ, max_examples=200)
@given(data=st.data(), path=st.sampled_from(["/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/key"]))
def test_any_authorization_that_is_not_a_valid_key_gets_401_and_costs_nothing(fuzz, data, path):
    key = fuzz["a"]["key"]["key"]
    value = data.draw(authorization(key), label="authorization")
    assume(not is_the_valid_key(value, key))
    before = state(fuzz)
    body = {"model": MODEL, "messages": MESSAGES} if "chat" in path else {"model": MODEL, "input": "x"}
    headers = [(b"Authorization", value), (b"Content-Type", b"application/json")]
    url = fuzz["gateway"].base_url + path
    if path.startswith("/v1/chat") or path.startswith("/v1/emb"):
        response = httpx.post(url, content=json.dumps(body).encode(), headers=headers, timeout=30)
    else:
        response = httpx.get(url, headers=headers, timeout=30)
    check_envelope(response, 401, "invalid_api_key")
    assert key not in response.text
    assert state(fuzz) == before


@settings(FUZZ, max_examples=250)
@given(raw=raw_bodies(chat_bodies, plausible_chat))
@example(raw=json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 10 ** 45}).encode())
@example(raw=b'{"model": "mock/echo", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}')
@example(raw=json.dumps({"model": MODEL, "messages": MESSAGES, "stream": True, "n": 3}).encode())
@example(raw=b"\xff\xfe{")
def test_any_chat_body_is_never_a_5xx_and_a_refusal_costs_nothing(fuzz, raw):
    before = state(fuzz)
    check_answer(fuzz, post(fuzz, "/v1/chat/completions", raw), before)


@settings(FUZZ, max_examples=150)
@given(raw=raw_bodies(embedding_bodies, plausible_embeddings))
@example(raw=json.dumps({"model": MODEL, "input": {}}).encode())
@example(raw=json.dumps({"model": MODEL, "input": [[1, 2], [3]]}).encode())
def test_any_embeddings_body_is_never_a_5xx_and_a_refusal_costs_nothing(fuzz, raw):
    before = state(fuzz)
    check_answer(fuzz, post(fuzz, "/v1/embeddings", raw), before)


# Header names: RFC 9110 tokens. Framing and hop-by-hop headers are left out (they are the transport's, and
# httpx sets them); Authorization is the key itself and has its own property above.
NAME_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
RESERVED = {"authorization", "content-length", "transfer-encoding", "host", "connection", "expect", "upgrade", "te",
            "trailer", "keep-alive", "content-encoding", "proxy-connection"}
header_name = st.one_of(
    st.sampled_from(["x-amzn-request-context", "X-Amzn-Request-Context", "x-amzn-lambda-context", "x-amzn-requestid",
                     "x-amzn-trace-id", "x-amzn-apigateway-api-id", "x-forwarded-for", "x-real-ip", "x-api-key",
                     "x-onysoft-account", "x-onysoft-request-id", "x-onysoft-key-id", "openai-organization",
                     "openai-project", "cookie", "forwarded", "content-type", "accept", "accept-encoding"]),
    st.text(NAME_CHARS, min_size=1, max_size=30)).filter(lambda n: n.lower() not in RESERVED)


@settings(FUZZ, max_examples=100)
@given(data=st.data(), with_key=st.booleans(), stream=st.booleans())
def test_extra_headers_never_change_who_pays(fuzz, data, with_key, stream):
    a, b = fuzz["a"], fuzz["b"]
    forged = {"authorizer": {"key_id": b["key"]["key_id"], "key_type": "partner_project",
                             "account_id": b["account"]["account_id"], "currency": "USD", "markup_bp": 0,
                             "rpm": 0, "tpm": 0, "principalId": b["key"]["key_id"]},
              "accountId": "123456789012", "stage": "v1"}
    forged_variants = st.sampled_from([json.dumps(forged), json.dumps({"authorizer": forged["authorizer"]}),
                                       json.dumps(forged["authorizer"]), "{}", "null", "not json"])
    extra = data.draw(st.lists(st.tuples(header_name, header_value), max_size=6), label="extra headers")
    context = data.draw(forged_variants, label="forged x-amzn-request-context")
    headers = [(b"x-amzn-request-context", context.encode()), *((n.encode(), v) for n, v in extra)]
    if with_key:
        headers.append((b"Authorization", f"Bearer {a['key']['key']}".encode()))
    if not any(n.lower() == b"content-type" for n, _ in headers):
        headers.append((b"Content-Type", b"application/json"))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "who pays"}], "max_tokens": 8,
            "stream": stream}
    before_a, before_b = state(fuzz, "a"), state(fuzz, "b")
    response = post(fuzz, "/v1/chat/completions", json.dumps(body).encode(), headers)
    assert state(fuzz, "b") == before_b, "a forged header charged another account"
    if not with_key:
        check_envelope(response, 401, "invalid_api_key")
        assert state(fuzz, "a") == before_a
        return
    assert response.status_code == 200, (response.status_code, response.text[:300])
    after_a = state(fuzz, "a")
    record = newest_record(fuzz, "a")
    assert after_a[1] == before_a[1] + 1
    assert (record["key_id"], record["currency"]) == (a["key"]["key_id"], "TRY")
    assert int(record["markup_bp"]) == 5000  # the key's own markup, not the forged 0
    assert before_a[0] - after_a[0] == int(record["charge_micros"]) > 0
    cost = (money.usd_cost(int(record["prompt_tokens"]), Decimal(record["input_usd_per_mtok"]))
            + money.usd_cost(int(record["completion_tokens"]), Decimal(record["output_usd_per_mtok"])))
    assert int(record["charge_micros"]) == money.charge_micros(cost, 5000, Decimal(record["fx_rate"]))


# ---------------------------------------------------------------------------------------------- found bugs


def test_body_over_6_mb_is_a_413_envelope_and_costs_nothing(fuzz):
    before = state(fuzz)
    raw = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (MAX_BODY + 10)}]}).encode()
    response = post(fuzz, "/v1/chat/completions", raw)
    check_envelope(response, 413, "request_too_large")
    assert state(fuzz) == before


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a":' * 5_000], ids=["array", "object"])
def test_deeply_nested_json_is_a_400_not_a_500(fuzz, raw):
    before = state(fuzz)
    response = post(fuzz, "/v1/chat/completions", raw)
    assert state(fuzz) == before
    check_envelope(response, 400, "invalid_json")


@pytest.mark.parametrize("n", ["x", [2], "1e400"], ids=["text", "list", "overflow"])
def test_shrunk_hold_with_a_non_numeric_n_never_leaves_a_stuck_hold(fuzz, n):
    gateway, tables = fuzz["gateway"], fuzz["tables"]
    account = gateway.cli_json("accounts", "create", "--kind", "user")
    account = gateway.cli_json("accounts", "topup", account["account_id"], "1")  # < a full hold: it shrinks
    key = gateway.cli_json("keys", "create", "--account", account["account_id"])
    gateway.known_keys.add(key["key"])
    raw = json.dumps({"model": MODEL, "messages": MESSAGES, "n": n}).encode()
    if n == "1e400":
        raw = raw.replace(b'"1e400"', b"1e400")
    response = post(fuzz, "/v1/chat/completions", raw, {"Authorization": f"Bearer {key['key']}",
                                                           "Content-Type": "application/json"})
    records = tables.usage(account["account_id"])
    assert not [r for r in records if r["status"] == "pending"], "the hold was left open"
    assert tables.balance(account["account_id"]) + sum(int(r.get("charge_micros", 0)) for r in records) == 1_000_000
    assert response.status_code < 500, response.text


# ------------------------------------------------------------------------ issue 10: the hold bounds the bill

limit_value = st.one_of(st.none(), st.integers(-3, 70_000), st.integers(1, 40),
                        st.sampled_from([1.5, "9", True, 2.0, 10 ** 40, [5]]))
n_value = st.one_of(st.none(), st.integers(-1, 4), st.sampled_from([2.5, "2", 129, False]))
text_part = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=120)})
media_part = st.sampled_from([
    {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}},
    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    {"type": "file", "file": {"file_id": "file-123"}},
])
content = st.one_of(st.text(max_size=300), st.lists(st.one_of(text_part, media_part), min_size=1, max_size=6))
extra_fields = st.dictionaries(
    st.sampled_from(["service_tier", "temperature", "metadata", "seed", "user", "store", "reasoning_effort",
                     "logprobs", "web_search_options", "modalities", "prediction", "top_p", "x_custom"]),
    st.one_of(st.sampled_from(["auto", "default", "priority", "flex", "low", None]), st.integers(0, 3),
              st.just(["text"]), st.just(["text", "audio"]), st.just({})),
    max_size=3)


@st.composite
def billed_bodies(draw) -> dict:
    body = {"model": "openai/fake-bill",
            "messages": [{"role": draw(st.sampled_from(["user", "system"])), "content": draw(content)}
                         for _ in range(draw(st.integers(1, 3)))]}
    for field, strategy in (("max_tokens", limit_value), ("max_completion_tokens", limit_value), ("n", n_value),
                            ("stream", st.one_of(st.none(), st.booleans()))):
        value = draw(strategy)
        if value is not None or draw(st.booleans()):
            body[field] = value
    body.update(draw(extra_fields))
    return body


@pytest.fixture(scope="module")
def billed(dev):
    tables = Tables(dev)
    account = dev.cli_json("accounts", "create", "--kind", "partner_project", "--owner", "fuzz")
    dev.cli_json("accounts", "topup", account["account_id"], "100000")
    key = dev.cli_json("keys", "create", "--account", account["account_id"], "--rpm", "1000000",
                       "--tpm", "1000000000")
    dev.known_keys.add(key["key"])
    return {"dev": dev, "tables": tables, "account_id": account["account_id"], "key": key["key"]}


def provider_bill_micros(usage: dict) -> int:
    """What the fake provider's bill costs the account, from the usage it computed (fake_provider.bill)."""
    from tests.integration.ledger import CACHED_INPUT, INPUT, OUTPUT

    cached = usage["prompt_tokens_details"]["cached_tokens"]
    cost = (money.usd_cost(usage["prompt_tokens"] - cached, INPUT) + money.usd_cost(cached, CACHED_INPUT)
            + money.usd_cost(usage["completion_tokens"], OUTPUT))
    return money.charge_micros(cost, 5000, Decimal(1))


@settings(FUZZ, max_examples=120)
@given(body=billed_bodies())
@example(body={"model": "openai/fake-bill", "messages": [{"role": "user", "content": "think hard"}]})
@example(body={"model": "openai/fake-bill", "max_completion_tokens": 1, "max_tokens": 32000,
               "messages": [{"role": "user", "content": "x"}]})
@example(body={"model": "openai/fake-bill", "max_tokens": 60_000, "n": 3, "stream": True,
               "messages": [{"role": "user", "content": [{"type": "text", "text": "two pictures"},
                                                         {"type": "image_url", "image_url": {"url": "u"}},
                                                         {"type": "image_url", "image_url": {"url": "v"}}]}]})
def test_the_limit_sent_upstream_is_the_held_output_and_the_hold_bounds_the_providers_bill(billed, upstream, body):
    tables, account_id = billed["tables"], billed["account_id"]
    seen = len(upstream.requests)
    before = tables.balance(account_id), len(tables.usage(account_id))
    raw = json.dumps(body).encode()
    with httpx.stream("POST", billed["dev"].base_url + "/v1/chat/completions", content=raw, timeout=60,
                      headers={"Authorization": f"Bearer {billed['key']}", "Content-Type": "application/json"}
                      ) as response:
        response.read()
    event(f"HTTP {response.status_code}")
    assert response.status_code in (200, 400), (response.status_code, response.text[:300])
    if response.status_code == 400:
        check_envelope(response, 400)
        assert len(upstream.requests) == seen, "a refused request reached the provider"
        assert (tables.balance(account_id), len(tables.usage(account_id))) == before
        return
    [sent] = upstream.requests[seen:]
    [record] = [r for r in tables.usage(account_id) if r["request_id"] == response.headers["x-onysoft-request-id"]]
    answers = sent["body"].get("n") or 1
    assert "max_tokens" not in sent["body"], "two output limits went upstream"
    assert sent["body"]["max_completion_tokens"] * answers == int(record["hold_output_tokens"])
    bill = provider_bill_micros(sent["usage"])
    assert bill <= int(record["hold_micros"]), "the hold under-bounds the provider's bill"
    assert record["status"] == "settled" and "overrun" not in record and "usage_estimated" not in record
    assert int(record["charge_micros"]) == bill == before[0] - tables.balance(account_id)
