"""onysoft.wire_json reads what json reads, the same way (one documented exception), and writes JSON that reads
back as the value it was given."""

import json
import math

import pytest

from onysoft import provider_usage, wire_json

SAME_AS_JSON = [
    b'{"a":1,"a":2}',  # the last of a duplicated name wins in both
    b'{"usage":{"prompt_tokens":9223372036854775807,"completion_tokens":-1}}',
    b'{"x":[1,2.5,-0.0,1e308,"\\u00e9\\ud83d\\ude00",null,true]}',
    b'NaN', b'[Infinity]', b'[1e400]',  # orjson refuses these; json's reading stands
    b'"\\ud800"',  # a lone surrogate
    '{"s":"é"}'.encode("utf-16"),  # json detects UTF-16
    b"[" * 600 + b"]" * 600,
]


@pytest.mark.parametrize("text", SAME_AS_JSON)
def test_loads_reads_what_json_reads(text):
    expected, got = json.loads(text), wire_json.loads(text)
    assert repr(got) == repr(expected) and type(got) is type(expected)


def test_what_neither_can_read_is_refused_as_json_refuses_it():
    for text in (b'{"a":', b"", b"\xff\xfe\x00", b"[1,]"):
        with pytest.raises(ValueError):
            wire_json.loads(text)


def test_an_integer_past_64_bits_reads_as_a_float_and_bills_exactly_as_json_would():
    text = b'{"prompt_tokens":3,"completion_tokens":123456789012345678901234567890}'
    assert isinstance(wire_json.loads(text)["completion_tokens"], float)
    # the one difference (see the module): the usage reader refuses both readings alike
    assert provider_usage.read(wire_json.loads(text)) is None
    assert provider_usage.read(json.loads(text)) is None


def test_dumps_writes_json_that_reads_back_as_the_value():
    value = {"model": "gpt-4o-mini", "seed": 10 ** 30, "n": [1, 2.5, "é", None, True], "nested": {"k": "v"}}
    assert json.loads(wire_json.dumps(value)) == value  # an integer past 64 bits: written by json, exactly
    assert json.loads(wire_json.dumps({1: "int key"})) == {"1": "int key"}  # as json writes it
    assert json.loads(wire_json.dumps({"x": math.nan})) == {"x": None}  # JSON has no NaN
    with pytest.raises(TypeError):
        wire_json.dumps({"b": b"bytes"})  # what JSON cannot carry is refused (the DynamoDB transport relies on it)
