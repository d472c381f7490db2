"""JSON on the data path by orjson (C; the standard library's json was ~8% of the proxy's CPU a request, its
decoder entered through three Python frames a call, its encoder through four: docs/BENCHMARKS.md section 6).

For what providers and DynamoDB send. `loads` falls back to json for whatever orjson refuses and json accepts (NaN,
Infinity, 1e400, lone surrogates, UTF-16, nesting past 1,024), so nothing that parsed before fails now. One reading
differs: an integer literal past 64 bits is a float here (json: an exact int). The numbers that bill
(onysoft.provider_usage) refuse both alike (not an int, or past MAX_SANE_TOKENS), and DynamoDB carries its numbers
as strings; a client's request body, whose integers go upstream as they came, is read by json (forwarding).

`dumps` gives bytes: compact, non-ASCII as UTF-8 (json: \\u escapes; the same JSON). What orjson cannot write
(an integer past 64 bits, a key that is not a string) is written by json; NaN and Infinity, which JSON has no words
for, are written as null (json would write a NaN that a client's JSON parser refuses).
"""

import json

import orjson


def loads(data: bytes | str):
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value).encode()
