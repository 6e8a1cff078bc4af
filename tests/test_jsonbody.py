"""Trigger body parsing, canonical compact form and workflowId (contract §1.4)."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from moose_daemon.jsonbody import MAX_DEPTH, InvalidJson, JsonInput, parse_body, workflow_id


class _Raw(str):
    pass


def reference_compact(text: str) -> str:
    """The contract's recipe, written independently: keep number text, re-emit by hand."""

    def emit(node: object) -> str:
        if isinstance(node, _Raw):
            return str(node)
        if isinstance(node, str):
            return json.dumps(node, ensure_ascii=False)
        if isinstance(node, dict):
            return "{" + ",".join(f"{emit(k)}:{emit(v)}" for k, v in node.items()) + "}"
        if isinstance(node, list):
            return "[" + ",".join(emit(v) for v in node) + "]"
        return json.dumps(node)

    return emit(json.loads(text, parse_int=_Raw, parse_float=_Raw))


def parsed(raw: bytes) -> JsonInput:
    result = parse_body(raw)
    assert result is not None
    return result


@pytest.mark.parametrize(
    ("body", "expected_id"),
    [
        (b'{"name": "alice"}', "demo-3b8f02c64624e355"),
        ('{"b":1,"a":[1.0,2.50,1e3,"é/\\u00e9"]}'.encode(), "demo-32e481bc672f6a7d"),
    ],
)
def test_workflow_id_matches_live_moosestack(body: bytes, expected_id: str) -> None:
    assert workflow_id("demo", parse_body(body)) == expected_id


def test_workflow_id_without_input_is_the_name() -> None:
    assert workflow_id("demo", None) == "demo"
    assert workflow_id("demo", parse_body(b"")) == "demo"


@pytest.mark.parametrize("body", [b"", b" ", b"\n", b" \t\r\n  "])
def test_empty_or_whitespace_body_is_no_input(body: bytes) -> None:
    assert parse_body(body) is None


@pytest.mark.parametrize(
    ("body", "compact"),
    [
        (b'{"name": "alice"}', '{"name":"alice"}'),
        ('{"b":1,"a":[1.0,2.50,1e3,"é/\\u00e9"]}'.encode(), '{"b":1,"a":[1.0,2.50,1e3,"é/é"]}'),
        (b' {\n "z" : 1 ,\t"a" : [ ] , "m" : { } }\n', '{"z":1,"a":[],"m":{}}'),
        # duplicate keys: first position, last value, at any depth
        (b'{"a":1,"b":2,"a":3}', '{"a":3,"b":2}'),
        (b'{"x":{"k":"old","j":0,"k":"new"}}', '{"x":{"k":"new","j":0}}'),
        (b'{"a":[{"b":2.50,"b":1e3}],"a":{"c":[]}}', '{"a":{"c":[]}}'),
        (b'{"a":[{"b":2.50,"c":1e3,"b":-0}]}', '{"a":[{"b":-0,"c":1e3}]}'),
        # numbers keep their exact text
        (b"[2.50, 1e3, 1E+2, -0, -0.0, 0.1, 1.5e-10, 1e-7]", "[2.50,1e3,1E+2,-0,-0.0,0.1,1.5e-10,1e-7]"),
        (b"[-0, 1, -1]", "[-0,1,-1]"),
        (b"-0", "-0"),
        (b'{"a-0":-0}', '{"a-0":-0}'),
        (b"123456789012345678901234567890", "123456789012345678901234567890"),
        (b"3.141592653589793238462643383279", "3.141592653589793238462643383279"),
        # strings: minimal re-escaping, like serde_json
        (b'"a\\/b"', '"a/b"'),
        (b'"\\u0041\\u00e9\\u4e2d"', '"Aé中"'),
        (b'"\\t\\n\\r\\b\\f\\"\\\\"', '"\\t\\n\\r\\b\\f\\"\\\\"'),
        (b'"\\u0008\\u000A\\u000c"', '"\\b\\n\\f"'),
        (b'"\\u0001\\u001F\\u0000"', '"\\u0001\\u001f\\u0000"'),
        (b'"\\u007f\\u2028"', '"\x7f\u2028"'),
        (b'"\\ud83d\\ude00"', '"\U0001f600"'),
        (b'"\\\\ud800"', '"\\\\ud800"'),
        ('"Zürich ✓"'.encode(), '"Zürich ✓"'),
        # any JSON value may be the input
        (b"null", "null"),
        (b" true ", "true"),
        (b"false", "false"),
        (b"42", "42"),
        (b'"x"', '"x"'),
        (b"[]", "[]"),
        (b"{}", "{}"),
    ],
)
def test_compact_form(body: bytes, compact: str) -> None:
    assert parsed(body).compact == compact


@pytest.mark.parametrize(
    "body",
    [
        b'{"order_id":"A1","items":[{"sku":"X","qty":2,"price":9.99},{"sku":"Y","qty":1,"price":24.5}]}',
        b'{"order_id":"A1","items":[{"sku":"X","qty":2,"price":9.90},{"sku":"Y","qty":1,"price":2.5E1}]}',
        b'{"k":"v","k":[1,{"k":null,"z":true}],"\\u00e9":"\\ud83d\\ude00\\/"}',
        b'[[[[]]],{},[{}],-0,"-0",0.5,5e-1]',
    ],
)
def test_compact_agrees_with_reference_recipe(body: bytes) -> None:
    assert parsed(body).compact == reference_compact(body.decode())


@pytest.mark.parametrize(
    "body",
    [
        b'{"n":1,"f":1.0,"big":123456789012345678901234567890,"s":"x","t":true,"z":null,"a":[1,2.5]}',
        b'{"price":2.50,"e":1e3,"neg":-0,"a":1,"a":2}',
        b'"\\u00e9"',
        b"[]",
    ],
)
def test_value_is_what_json_loads_gives(body: bytes) -> None:
    value = parsed(body).value
    expected = json.loads(body)
    assert value == expected
    assert json.dumps(value) == json.dumps(expected)


def test_value_number_types() -> None:
    value = parsed(b'{"i":7,"f":2.50,"e":1e3,"z":-0}').value
    assert isinstance(value, dict)
    assert [type(v) for v in value.values()] == [int, float, float, int]
    assert value == {"i": 7, "f": 2.5, "e": 1000.0, "z": 0}


@pytest.mark.parametrize("body", [b"[1e400]", b'{"a": -1E999}', b"1e309"])
def test_a_number_beyond_a_double_is_refused(body: bytes) -> None:
    """Python would make it infinity, which no JSON (and no task) can carry on."""
    with pytest.raises(InvalidJson, match="number out of range"):
        parse_body(body)


@pytest.mark.parametrize(
    ("body", "details"),
    [
        (b"notjson", "expected ident at line 1 column 2"),
        (b"xyz", "expected value at line 1 column 1"),
        (b'{"name":"alice"} x', "trailing characters at line 1 column 18"),
        (b'{"a":1}}', "trailing characters at line 1 column 8"),
        (b"01", "trailing characters at line 1 column 2"),
        # truncated JSON is an error here (MooseStack would treat it as no input)
        (b'{"name":', "EOF while parsing a value at line 1 column 8"),
        (b'{"name"', "EOF while parsing an object at line 1 column 7"),
        (b'{"a":1', "EOF while parsing an object at line 1 column 6"),
        (b"[1,2", "EOF while parsing a list at line 1 column 4"),
        (b"[", "EOF while parsing a list at line 1 column 1"),
        (b'"abc', "EOF while parsing a string at line 1 column 4"),
        (b"nul", "EOF while parsing a value at line 1 column 3"),
        (b'{\n  "a":\n', "EOF while parsing a value at line 3 column 0"),
        (b'{"a":1,}', "trailing comma at line 1 column 8"),
        (b"[1,]", "trailing comma at line 1 column 4"),
        (b"[,]", "expected value at line 1 column 2"),
        (b"[1 2]", "expected `,` or `]` at line 1 column 4"),
        (b'{"a":1 "b":2}', "expected `,` or `}` at line 1 column 8"),
        (b'{"a":[1}', "expected `,` or `]` at line 1 column 8"),
        (b'{"a" 1}', "expected `:` at line 1 column 6"),
        (b"{a:1}", "key must be a string at line 1 column 2"),
        (b'"a\x01"', "control character (\\u0000-\\u001F) found while parsing a string at line 1 column 3"),
        (b'"\\x"', "invalid escape at line 1 column 3"),
        (b'"\\u12g4"', "invalid escape at line 1 column 6"),
        (b"-a", "invalid number at line 1 column 2"),
        (b"NaN", "expected value at line 1 column 1"),
        (b"[Infinity]", "expected value at line 1 column 2"),
        (b"[-Infinity]", "invalid number at line 1 column 3"),
        (b'"\\ud800"', "lone surrogate in hex escape at line 1 column 7"),
        (b'["\\udc00"]', "lone surrogate in hex escape at line 1 column 8"),
        (b'"\\ud800\\u0041"', "lone surrogate in hex escape at line 1 column 7"),
        (b"\x0b1", "expected value at line 1 column 1"),
        # columns count bytes, as serde_json does
        ('{"é":1 x'.encode(), "expected `,` or `}` at line 1 column 9"),
        (b'{"a":"\xff"}', "invalid UTF-8 at byte 6"),
        (b"\xed\xa0\x80", "invalid UTF-8 at byte 0"),
        (b"\xef\xbb\xbf{}", "unexpected UTF-8 byte order mark at line 1 column 1"),
        (b"1" * 5000, "number out of range: integer with more than 4300 digits"),
    ],
)
def test_invalid_json_details(body: bytes, details: str) -> None:
    with pytest.raises(InvalidJson) as caught:
        parse_body(body)
    assert caught.value.details == details
    assert str(caught.value) == details
    assert isinstance(caught.value, ValueError)


def test_depth_limit_is_inclusive() -> None:
    assert parsed(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH).compact == "[" * MAX_DEPTH + "]" * MAX_DEPTH
    nested = b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH
    assert parsed(nested).compact == nested.decode()
    with pytest.raises(InvalidJson, match=r"^nesting deeper than 512 levels at line 1 column 513$"):
        parse_body(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))


def test_deep_nesting_at_the_limit_survives_a_deep_caller_stack() -> None:
    body = b"[" * MAX_DEPTH + b"2.50" + b"]" * MAX_DEPTH  # 2.50 forces the slow, number-keeping path

    def call_at_depth(levels: int) -> JsonInput | None:
        return parse_body(body) if levels == 0 else call_at_depth(levels - 1)

    result = call_at_depth(300)
    assert result is not None and result.compact == body.decode()


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000, b"[" * 100_000 + b"]" * 100_000])
def test_very_deep_json_fails_fast_without_recursion_error(body: bytes) -> None:
    start = time.perf_counter()
    with pytest.raises(InvalidJson, match="nesting deeper than 512 levels"):
        parse_body(body)
    assert time.perf_counter() - start < 2.0


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    body = b'["' + b"[{" * 1000 + b'", "\\"[[["]'
    assert parsed(body).value == ["[{" * 1000, '"[[[']


def test_many_shallow_brackets_are_fine() -> None:
    body = json.dumps([[i] for i in range(2000)]).encode()
    assert parsed(body).compact == body.decode().replace(" ", "")


def test_json_input_is_immutable() -> None:
    result = parsed(b"{}")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.compact = "[]"  # type: ignore[misc]
