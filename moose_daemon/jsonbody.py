"""The trigger body and the workflowId derived from it (contract §1.4).

A body becomes a `JsonInput`: the decoded value handed to the workflow, plus the compact re-serialisation
MooseStack hashes (serde_json with `preserve_order` and arbitrary precision). Both come from CPython's C json
code when every number's text survives a float/int round trip (the common case); otherwise the body is parsed
a second time keeping number text verbatim. Errors carry a serde_json-style `details` string such as
`trailing characters at line 1 column 14`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import re
import string
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate, repeat
from json.encoder import encode_basestring

MAX_DEPTH = 512

_JSON_WHITESPACE = b" \t\n\r"
# A JSON string; an unterminated one swallows the rest of the text.
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"?'
_NOT_BRACKET = re.compile(rf'{_STRING}|[^\[\]{{}}"]+', re.DOTALL)
_STRING_OR_BRACKET = re.compile(rf"{_STRING}|([\[\]{{}}])", re.DOTALL)
_DEPTH_DELTA = {"[": 1, "{": 1, "]": -1, "}": -1}
# Python reads the integer -0 as 0, which would re-serialise as "0"; a hit inside a string is harmless.
_MINUS_ZERO_INT = re.compile(r"-0(?![.eE0-9])")
_NON_FINITE = re.compile(rf"{_STRING}|(-?)(NaN|Infinity)", re.DOTALL)
_SURROGATE_HINT = re.compile(r"\\u[dD][89a-fA-F]")
_ESCAPE = re.compile(r"\\u([dD][89a-fA-F][0-9a-fA-F]{2})(\\u[dD][c-fC-F][0-9a-fA-F]{2})?|\\.", re.DOTALL)
_LITERALS = ("null", "true", "false")
# Same escaping as serde_json: raw UTF-8, short escapes, other control characters as lower-case \u00xx.
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


class InvalidJson(ValueError):
    """The body is not one well-formed JSON value; `details` says what and where."""

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self.details = details


@dataclass(frozen=True, slots=True)
class JsonInput:
    """A decoded trigger body: `value` for the workflow, `compact` for hashing and storage."""

    value: object
    compact: str


def parse_body(raw: bytes) -> JsonInput | None:
    """Parse a trigger body; None means "no input" (empty or JSON-whitespace only).

    Raises InvalidJson for invalid UTF-8, invalid JSON (including truncated JSON, which MooseStack treats as
    no input), trailing bytes, nesting deeper than MAX_DEPTH, NaN/Infinity, lone UTF-16 surrogate escapes and
    integers longer than Python's int/str digit limit. A leading UTF-8 BOM is rejected, as serde_json does.
    Cost is linear; megabyte bodies take tens to hundreds of milliseconds, so run those off the event loop.
    """
    if not raw.strip(_JSON_WHITESPACE):
        return None
    text = _decode_utf8(raw)
    _check_depth(text)
    value, numbers_round_trip = _load(text)
    if _SURROGATE_HINT.search(text):
        _reject_lone_surrogates(text)
    compact = _COMPACT.encode(value) if numbers_round_trip else _compact_keeping_number_text(text)
    return JsonInput(value=value, compact=compact)


def workflow_id(name: str, payload: JsonInput | None) -> str:
    """`name` without input, else `name-<first 16 hex of sha256(compact)>`."""
    if payload is None:
        return name
    digest = hashlib.sha256(payload.compact.encode("utf-8")).hexdigest()
    return f"{name}-{digest[:16]}"


def _decode_utf8(raw: bytes) -> str:
    if raw.startswith(codecs.BOM_UTF8):
        raise InvalidJson("unexpected UTF-8 byte order mark at line 1 column 1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJson(f"invalid UTF-8 at byte {exc.start}") from None


def _check_depth(text: str) -> None:
    """Reject nesting deeper than MAX_DEPTH before any recursive code sees the text."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    brackets = _NOT_BRACKET.sub("", text)
    if max(accumulate(map(_DEPTH_DELTA.__getitem__, brackets)), default=0) > MAX_DEPTH:
        index = _first_too_deep(text)
        raise InvalidJson(f"nesting deeper than {MAX_DEPTH} levels at {_where(text, index)}")


def _first_too_deep(text: str) -> int:
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        bracket = match.group(1)
        if bracket:
            depth += _DEPTH_DELTA[bracket]
            if depth > MAX_DEPTH:
                return match.start()
    return len(text)


class _FloatReader:
    """parse_float hook that notes whether every float's text survives float() and repr() unchanged."""

    __slots__ = ("exact",)

    def __init__(self) -> None:
        self.exact = True

    def __call__(self, text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise _OutOfRange(text)
        if self.exact and repr(value) != text:
            self.exact = False
        return value


class _NonFiniteConstant(ValueError):
    pass


class _OutOfRange(ValueError):
    """A number beyond a double (1e400): Python would make it infinity, which JSON cannot hold."""


def _refuse_non_finite(constant: str) -> object:
    raise _NonFiniteConstant(constant)


def _load(text: str) -> tuple[object, bool]:
    """Decode `text`; the flag says whether re-encoding the value reproduces every number's text."""
    floats = _FloatReader()
    try:
        value = json.loads(text, parse_float=floats, parse_constant=_refuse_non_finite)
    except json.JSONDecodeError as exc:
        raise _from_decode_error(text, exc.msg, exc.pos) from None
    except _NonFiniteConstant:
        raise _non_finite_error(text) from None
    except _OutOfRange as exc:
        shown = str(exc) if len(str(exc)) <= 40 else str(exc)[:37] + "..."
        raise InvalidJson(
            f"number out of range: {shown} (a number with a fraction or exponent must fit a double)"
        ) from None
    except ValueError:
        # int() refuses huge digit strings (quadratic cost); keep that guard rather than lift it globally.
        limit = sys.get_int_max_str_digits()
        raise InvalidJson(f"number out of range: integer with more than {limit} digits") from None
    return value, floats.exact and not _MINUS_ZERO_INT.search(text)


class _RawNumber(str):
    __slots__ = ()


class _Open:
    """A container being written by _compact_keeping_number_text."""

    __slots__ = ("closer", "entries", "is_object", "written")

    def __init__(self, entries: Iterator[tuple[str, object]], is_object: bool, closer: str) -> None:
        self.entries = entries
        self.is_object = is_object
        self.closer = closer
        self.written = False


def _compact_keeping_number_text(text: str) -> str:
    """The slow path for numbers like `2.50` or `1e3`: re-parse keeping their text and write it back verbatim.

    Iterative on purpose: a recursive walk would spend up to MAX_DEPTH Python frames on top of the caller's.
    Duplicate keys are merged by json.loads (first position, last value), as serde_json's ordered map does.
    """
    tree = json.loads(text, parse_int=_RawNumber, parse_float=_RawNumber)
    out: list[str] = []
    stack = [_Open(iter([("", tree)]), False, "")]
    while stack:
        frame = stack[-1]
        entry = next(frame.entries, None)
        if entry is None:
            out.append(frame.closer)
            stack.pop()
            continue
        if frame.written:
            out.append(",")
        frame.written = True
        key, node = entry
        if frame.is_object:
            out.append(encode_basestring(key))
            out.append(":")
        child = _write_scalar_or_open(node, out)
        if child is not None:
            stack.append(child)
    return "".join(out)


def _write_scalar_or_open(node: object, out: list[str]) -> _Open | None:
    if isinstance(node, _RawNumber):
        out.append(node)
    elif isinstance(node, str):
        out.append(encode_basestring(node))
    elif isinstance(node, dict):
        out.append("{")
        return _Open(iter(node.items()), True, "}")
    elif isinstance(node, list):
        out.append("[")
        return _Open(zip(repeat(""), node), False, "]")
    else:
        out.append("null" if node is None else "true" if node else "false")
    return None


def _reject_lone_surrogates(text: str) -> None:
    """serde_json refuses a `\\uD800`-style escape that is not half of a pair; Python's json keeps it."""
    # Only called on text json.loads accepted, so every backslash starts an escape inside a string.
    for match in _ESCAPE.finditer(text):
        first = match.group(1)
        if first is None:
            continue
        if int(first, 16) >= 0xDC00 or match.group(2) is None:
            index = match.start() + 5
            raise InvalidJson(f"lone surrogate in hex escape at {_where(text, index)}")


def _non_finite_error(text: str) -> InvalidJson:
    for match in _NON_FINITE.finditer(text):
        if match.group(2):
            reason = "invalid number" if match.group(1) else "expected value"
            return InvalidJson(f"{reason} at {_where(text, match.start(2))}")
    return InvalidJson("expected value")


def _from_decode_error(text: str, msg: str, pos: int) -> InvalidJson:
    reason, index = _translate(text, msg, pos)
    return InvalidJson(f"{reason} at {_where(text, index)}")


def _translate(text: str, msg: str, pos: int) -> tuple[str, int]:
    """Turn a CPython json message into serde_json's wording and the index serde would point at."""
    if msg == "Unterminated string starting at":
        return "EOF while parsing a string", len(text)
    if msg == "Expecting value":
        return _expected_value(text, pos)
    if pos >= len(text) and msg.startswith("Expecting"):
        return _eof_reason(text), len(text)
    if msg == "Expecting property name enclosed in double quotes":
        return ("trailing comma" if text[pos] == "}" else "key must be a string"), pos
    if msg == "Expecting ':' delimiter":
        return "expected `:`", pos
    if msg == "Expecting ',' delimiter":
        closer = "}" if _innermost_container(text, pos) == "{" else "]"
        return f"expected `,` or `{closer}`", pos
    if msg == "Extra data":
        return "trailing characters", pos
    if msg == "Invalid control character at":
        return "control character (\\u0000-\\u001F) found while parsing a string", pos
    if msg == "Invalid \\uXXXX escape":
        return _bad_unicode_escape(text, pos)
    if msg.startswith("Invalid \\"):
        return "invalid escape", pos + 1
    if msg.startswith("Illegal trailing comma"):  # CPython 3.13+
        return "trailing comma", pos
    return msg[:1].lower() + msg[1:], pos


def _expected_value(text: str, pos: int) -> tuple[str, int]:
    if pos >= len(text):
        return _eof_reason(text), len(text)
    char = text[pos]
    if char in "ntf":
        return _bad_literal(text, pos)
    if char == "-":
        return ("invalid number", pos + 1) if pos + 1 < len(text) else (_eof_reason(text), len(text))
    if char == "]" and text[:pos].rstrip(" \t\n\r").endswith(","):
        return "trailing comma", pos
    return "expected value", pos


def _bad_unicode_escape(text: str, pos: int) -> tuple[str, int]:
    """`pos` is the `u` of `\\uXXXX`; serde points at the first character that is not a hex digit."""
    for index in range(pos + 1, pos + 5):
        if index >= len(text):
            return "EOF while parsing a string", len(text)
        if text[index] not in string.hexdigits:
            return "invalid escape", index
    return "invalid escape", pos + 1


def _bad_literal(text: str, pos: int) -> tuple[str, int]:
    literal = next(word for word in _LITERALS if word[0] == text[pos])
    index = pos
    for expected in literal:
        if index >= len(text):
            return "EOF while parsing a value", len(text)
        if text[index] != expected:
            break
        index += 1
    return "expected ident", index


def _eof_reason(text: str) -> str:
    last = text.rstrip(" \t\n\r")[-1:]
    container = _innermost_container(text, len(text))
    if last in ("", ",", ":") or not container:
        return "EOF while parsing a value"
    return "EOF while parsing an object" if container == "{" else "EOF while parsing a list"


def _innermost_container(text: str, end: int) -> str:
    """The bracket ('{' or '[') still open at `end`, or '' at top level. Used on error paths only."""
    stack: list[str] = []
    for match in _STRING_OR_BRACKET.finditer(text, 0, end):
        bracket = match.group(1)
        if bracket in ("{", "["):
            stack.append(bracket)
        elif bracket and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _where(text: str, index: int) -> str:
    """serde_json's position: 1-based line, column in bytes of the offending byte (or line length at EOF)."""
    index = min(index, len(text))
    line = text.count("\n", 0, index) + 1
    line_start = text.rfind("\n", 0, index) + 1
    column = len(text[line_start:index].encode("utf-8")) + (1 if index < len(text) else 0)
    return f"line {line} column {column}"
