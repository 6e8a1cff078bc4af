"""Bad input on every route, table by table (issue 5 §2).

Each table runs against the in-process harness (a real aiohttp server on a loopback port, a real SQLite file,
a 1 MiB body limit) and every test ends by checking that the daemon still answers. The last tests replay
every table against a real `moose dev` subprocess and check that it never answered a 5xx, never logged an
internal error, and is still alive. Every error is JSON `{"error", "details"}`, except the two plain-text 401s.

Known daemon bugs are `xfail(strict=True)` with `BUG:` in the reason, so a fix turns them into failures that
ask for the marker to be removed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import AUTH_HEADERS, FIXTURE_PROJECT, KEY, TOKEN, DaemonProcess, Harness
from yarl import URL

from moose_daemon.auth import INVALID

MAX_BODY = 1024 * 1024  # what conftest.make_harness configures
RAW_TIMEOUT_S = 10.0
RUN_ID = "{run_id}"  # replaced by a real runId where a table needs one

# Every route build_app serves (HEAD is aiohttp's automatic twin of each GET).
# test_the_tables_cover_every_route keeps this list in step with the router.
ROUTES: list[tuple[str, str]] = [
    ("GET", "/"),
    ("GET", "/openapi.json"),
    ("GET", "/health"),
    ("GET", "/liveness"),
    ("GET", "/ready"),
    ("GET", "/admin/workflows"),
    ("GET", "/admin/workflows/history"),
    ("GET", "/admin/workflows/{name}/status"),
    ("GET", "/admin/runs/{run_id}"),
    ("POST", "/admin/workflows/{name}/trigger"),
    ("POST", "/admin/workflows/{name}/terminate"),
    ("POST", "/admin/workflows/{name}/cancel"),
    ("POST", "/admin/workflows/{name}/pause"),
    ("POST", "/admin/workflows/{name}/unpause"),
    ("POST", "/admin/workflows/{name}/resume"),
]
BODY_ROUTES = ["trigger", "resume"]  # the two that read their body
NAME_ROUTES = [(m, p) for m, p in ROUTES if "{name}" in p]
OTHER_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"]


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def send(
    h: Harness,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    headers: dict[str, str] | None = None,
    auth: bool = True,
) -> Reply:
    all_headers = {**(h.headers if auth else {}), **(headers or {})}
    # skip_auto_headers: no Content-Type guessed by the client, so the body is all the daemon sees.
    resp = await h.client.request(
        method, URL(path, encoded=True), data=body, headers=all_headers, skip_auto_headers={"Content-Type"}
    )
    return Reply(resp.status, resp.content_type, await resp.read(), dict(resp.headers))


def json_error(reply: Reply) -> dict[str, str]:
    """The one error shape: exactly `error` and `details`, both non-empty strings, as application/json."""
    assert reply.status >= 400, reply
    assert reply.content_type == "application/json", reply
    body: dict[str, str] = json.loads(reply.body)
    assert list(body) == ["error", "details"], body
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["details"], str) and body["details"], body
    assert "Traceback" not in reply.text and 'File "' not in reply.text
    return body


def error_shape(reply: Reply) -> None:
    """Any error the daemon itself answers: the JSON shape, or one of the two plain-text 401s."""
    assert reply.status < 500, reply
    if reply.status == 401:
        assert reply.content_type == "text/plain", reply
        assert reply.text.startswith("Unauthorized: "), reply
    elif reply.status >= 400:
        json_error(reply)


async def assert_alive(h: Harness) -> None:
    resp = await h.client.get("/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "healthy"}
    resp = await h.client.get("/admin/workflows", headers=h.headers)
    assert resp.status == 200


def run_count(h: Harness) -> int:
    with sqlite3.connect(h.db_path) as db:
        count: int = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    return count


def route(path: str, name: str = "hello", run_id: str = "nope") -> str:
    return path.replace("{name}", name).replace("{run_id}", run_id)


async def raw_request(h: Harness, request: bytes) -> bytes | None:
    """Send bytes the HTTP client would refuse to build; return the raw answer, None if the server hung up."""
    url = h.client.make_url("/")
    assert url.host is not None and url.port is not None
    return await raw_to(url.host, url.port, request)


async def raw_to(host: str, port: int, request: bytes) -> bytes | None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        try:
            writer.write(request)
            await writer.drain()
        except ConnectionError:
            pass  # the server may answer and close before reading everything
        try:
            async with asyncio.timeout(RAW_TIMEOUT_S):
                data = await reader.read()
        except ConnectionError:
            return None
        return data or None
    finally:
        writer.close()


def raw_status(data: bytes | None) -> int | None:
    if data is None:
        return None
    return int(data.split(b" ", 2)[1])


# ---- the tables cover every route --------------------------------------------------------------


async def test_the_tables_cover_every_route(harness: Harness) -> None:
    served = {(r.method, r.resource.canonical) for r in harness.client.app.router.routes()}
    assert {(m, p) for m, p in served if m != "HEAD"} == set(ROUTES)
    assert {p for m, p in served if m == "HEAD"} == {p for m, p in ROUTES if m == "GET"}


# ---- table 1: bodies that are not one JSON value ------------------------------------------------

BAD_JSON: list[tuple[str, bytes, str]] = [
    ("truncated", b'{"name":', "EOF while parsing a value at line 1 column 8"),
    ("not-json", b"notjson", "expected ident at line 1 column 2"),
    ("single-quotes", b"{'a': 1}", "key must be a string at line 1 column 2"),
    ("missing-colon", b'{"a" 1}', "expected `:` at line 1 column 6"),
    ("trailing-comma", b'{"a":1,}', "trailing comma at line 1 column 8"),
    ("unterminated-string", b'"abc', "EOF while parsing a string at line 1 column 4"),
    ("bad-escape", b'"\\x"', "invalid escape at line 1 column 3"),
    ("control-char", b'"a\x01b"', "control character (\\u0000-\\u001F) found while parsing a string"),
    ("trailing-word", b'{"a": 1} x', "trailing characters at line 1 column 10"),
    ("two-values", b"1 2", "trailing characters at line 1 column 3"),
    ("two-objects", b"{}{}", "trailing characters at line 1 column 3"),
    ("trailing-nul", b'{"a":1}\x00', "trailing characters at line 1 column 8"),
    ("nan", b'{"a": NaN}', "expected value at line 1 column 7"),
    ("infinity", b"-Infinity", "invalid number at line 1 column 2"),
    ("lone-surrogate", b'"\\ud800"', "lone surrogate in hex escape at line 1 column 7"),
    ("huge-integer", b"9" * 5000, "number out of range: integer with more than"),
    ("utf8-ff", b"\xff", "invalid UTF-8 at byte 0"),
    ("utf8-truncated", b'{"a": "\xc3"}', "invalid UTF-8 at byte 7"),
    ("utf8-overlong", b"\xc0\xaf", "invalid UTF-8 at byte 0"),
    ("utf8-surrogate", b'"\xed\xa0\x80"', "invalid UTF-8 at byte 1"),
    ("utf8-bom", b"\xef\xbb\xbf{}", "unexpected UTF-8 byte order mark at line 1 column 1"),
    ("utf16", '{"a": 1}'.encode("utf-16"), "invalid UTF-8 at byte 0"),
    ("deep-lists", b"[" * 100_000 + b"]" * 100_000, "nesting deeper than 512 levels at line 1 column 513"),
    ("deep-unclosed", b"[" * 100_000, "nesting deeper than 512 levels at line 1 column 513"),
    ("deep-objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nesting deeper than 512 levels"),
    ("deep-mixed", b'[{"a":' * 50_000 + b"1" + b"}]" * 50_000, "nesting deeper than 512 levels"),
]


@pytest.mark.parametrize("action", BODY_ROUTES)
@pytest.mark.parametrize(
    ("body", "details"), [(b, d) for _, b, d in BAD_JSON], ids=[i for i, _, _ in BAD_JSON]
)
async def test_a_body_that_is_not_one_json_value_is_400(
    harness: Harness, action: str, body: bytes, details: str
) -> None:
    started = time.monotonic()
    reply = await send(harness, "POST", f"/admin/workflows/hello/{action}", body)
    elapsed = time.monotonic() - started
    assert reply.status == 400, reply
    err = json_error(reply)
    assert err["error"] == "Invalid JSON body"
    assert err["details"].startswith(details), err
    assert elapsed < 2.0  # 100,000 levels are refused without recursing
    assert run_count(harness) == 0
    await assert_alive(harness)


@pytest.mark.parametrize(("method", "path"), [r for r in ROUTES if r[1].split("/")[-1] not in BODY_ROUTES])
async def test_routes_without_a_body_ignore_one(harness: Harness, method: str, path: str) -> None:
    """Garbage sent to a route that takes no body changes nothing: the answer is the one without it."""
    target = route(path, name="nope")
    without = await send(harness, method, target)
    for _, body, _ in BAD_JSON[:: len(BAD_JSON) // 6]:
        reply = await send(harness, method, target, body)
        assert reply.status == without.status, (body[:20], reply)
        error_shape(reply)
    assert run_count(harness) == 0
    await assert_alive(harness)


# ---- table 2: empty bodies ----------------------------------------------------------------------

EMPTY_BODIES = [b"", b" ", b"\n", b" \t\r\n "]


@pytest.mark.parametrize("body", EMPTY_BODIES, ids=["empty", "space", "newline", "whitespace"])
async def test_an_empty_body_triggers_without_input(harness: Harness, body: bytes) -> None:
    reply = await send(harness, "POST", "/admin/workflows/hello/trigger", body)
    assert reply.status == 200, reply
    data = json.loads(reply.body)
    assert data["workflowId"] == "hello"
    run = await harness.wait_status(data["runId"], "COMPLETED")
    assert run["input"] is None
    assert run["tasks"][0]["output"] == {"hello": "world"}
    await assert_alive(harness)


@pytest.mark.parametrize(
    "body",
    [
        *EMPTY_BODIES,
        b"null",
        b"[]",
        b"5",
        b'"r2"',
        b"{}",
        b'{"from": ""}',
        b'{"from": 5}',
        b'{"from": "r2", "runId": 5}',
    ],
    ids=[
        *("empty", "space", "newline", "whitespace"),
        *(
            "null",
            "list",
            "number",
            "string",
            "no-from",
            "empty-from",
            "from-not-a-string",
            "runid-not-a-string",
        ),
    ],
)
async def test_resume_needs_an_object_with_from(harness: Harness, body: bytes) -> None:
    reply = await send(harness, "POST", "/admin/workflows/resumable/resume", body)
    assert reply.status == 400, reply
    err = json_error(reply)
    assert err["error"] == "Failed to resume workflow"
    assert "from" in err["details"] or "runId" in err["details"]
    assert run_count(harness) == 0
    await assert_alive(harness)


# ---- table 3: JSON that is not an object ----------------------------------------------------------

# hello's task takes `dict | None`: anything else is accepted by the trigger and fails the run at once,
# with a reason naming the task and what it got (never a run stuck in RUNNING).
NOT_AN_OBJECT_TO_HELLO = [
    ("list", b"[1, 2]", "list"),
    ("empty-list", b"[]", "list"),
    ("number", b"5", "int"),
    ("float", b"1.5", "float"),
    ("string", b'"bob"', "str"),
    ("true", b"true", "bool"),
]


@pytest.mark.parametrize(
    ("body", "got"),
    [(b, g) for _, b, g in NOT_AN_OBJECT_TO_HELLO],
    ids=[i for i, _, _ in NOT_AN_OBJECT_TO_HELLO],
)
async def test_non_object_input_to_an_object_task_fails_the_run_naming_the_task(
    harness: Harness, body: bytes, got: str
) -> None:
    data = await harness.trigger("hello", body)
    run = await harness.wait_status(data["runId"], "FAILED")
    assert "'hello'" in run["error"], run["error"]
    assert "dict" in run["error"] and got in run["error"], run["error"]
    assert run["input"] == json.loads(body)
    assert [(t["task"], t["status"], t["error_type"]) for t in run["tasks"]] == [
        ("hello", "FAILED", "InputError")
    ]
    await assert_alive(harness)


@pytest.mark.parametrize(
    ("body", "outputs"),
    [
        (b"5", [6, 7, 8]),
        (b"0", [1, 2, 3]),
        (b"-3", [-2, -1, 0]),
        (b"null", [1, 2, 3]),
        (b" 41 ", [42, 43, 44]),
    ],
    ids=["five", "zero", "negative", "null", "padded"],
)
async def test_non_object_input_a_task_takes_is_accepted(
    harness: Harness, body: bytes, outputs: list[int]
) -> None:
    """chain's first task takes `int | None`: a bare number is its input."""
    data = await harness.trigger("chain", body)
    run = await harness.wait_status(data["runId"], "COMPLETED")
    assert [t["output"] for t in run["tasks"]] == outputs
    await assert_alive(harness)


@pytest.mark.parametrize(
    ("body", "got"),
    [(b'"5"', "str"), (b"[5]", "list"), (b"5.5", "float"), (b'{"n": 5}', "dict")],
    ids=["string", "list", "float", "object"],
)
async def test_input_chain_cannot_take_fails_naming_its_first_task(
    harness: Harness, body: bytes, got: str
) -> None:
    data = await harness.trigger("chain", body)
    run = await harness.wait_status(data["runId"], "FAILED")
    assert "'a'" in run["error"] and got in run["error"], run["error"]
    await assert_alive(harness)


async def test_an_input_mismatch_is_not_retried_as_a_new_run(harness: Harness) -> None:
    data = await harness.trigger("hello", b"[1, 2]")
    await harness.wait_status(data["runId"], "FAILED")
    await asyncio.sleep(0.3)  # FakeClock: retry backoffs return at once
    resp = await harness.client.get("/admin/workflows/history?limit=100", headers=harness.headers)
    runs = [r for r in await resp.json() if r["name"] == data["workflowId"]]
    assert len(runs) == 1, [(r["attempt"], r["status"]) for r in runs]


@pytest.mark.parametrize("body", [b'{"a": 1e400}', b"-1e400", b"[1E999]"], ids=["object", "negative", "list"])
async def test_a_number_beyond_double_range_is_refused_or_kept(harness: Harness, body: bytes) -> None:
    reply = await send(harness, "POST", "/admin/workflows/hello/trigger", body)
    if reply.status == 400:
        assert json_error(reply)["error"] == "Invalid JSON body"
        return
    assert reply.status == 200, reply
    run_id = json.loads(reply.body)["runId"]
    for _ in range(100):
        resp = await send(harness, "GET", f"/admin/runs/{run_id}")
        assert resp.status == 200, resp  # today: 500
        if json.loads(resp.body)["status"] != "WORKFLOW_EXECUTION_STATUS_RUNNING":
            break
        await asyncio.sleep(0.02)
    assert "internal error" not in (json.loads(resp.body)["error"] or "")
    assert (await send(harness, "GET", "/admin/workflows/hello/status")).status == 200


async def test_a_big_integer_reaches_the_task_as_written(harness: Harness) -> None:
    """MooseStack keeps every digit of a big integer; so do we, in the workflowId, the task and the run."""
    data = await harness.trigger("chain", str(2**64).encode())
    run = await harness.wait_status(data["runId"], "COMPLETED", within_s=5)
    assert [t["output"] for t in run["tasks"]] == [2**64 + 1, 2**64 + 2, 2**64 + 3]
    assert run["input"] == 2**64


# ---- table 4: bodies over the limit ------------------------------------------------------------

TOO_LARGE = f"Request body too large. Maximum size is {MAX_BODY} bytes"


async def chunked(data: bytes, size: int = 64 * 1024) -> Any:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("action", BODY_ROUTES)
@pytest.mark.parametrize(
    "make",
    [
        lambda: b" " * (MAX_BODY + 1),
        lambda: b'"' + b"a" * MAX_BODY + b'"',
        lambda: b"[" * (MAX_BODY + 1),
        lambda: b"\xff" * (4 * MAX_BODY),
        lambda: chunked(b" " * (2 * MAX_BODY)),
    ],
    ids=["one-byte-over", "string", "brackets", "4x-invalid-utf8", "chunked"],
)
async def test_a_body_over_the_limit_is_413_json(harness: Harness, action: str, make: Any) -> None:
    reply = await send(harness, "POST", f"/admin/workflows/hello/{action}", make())
    assert reply.status == 413, reply
    assert json_error(reply) == {"error": "Request Entity Too Large", "details": TOO_LARGE}
    assert run_count(harness) == 0
    await assert_alive(harness)


@pytest.mark.parametrize("action", BODY_ROUTES)
async def test_a_body_of_exactly_the_limit_is_read(harness: Harness, action: str) -> None:
    """At the limit the body is parsed: here it is invalid JSON, so 400, not 413."""
    body = b"{" + b" " * (MAX_BODY - 1)
    reply = await send(harness, "POST", f"/admin/workflows/hello/{action}", body)
    assert reply.status == 400, reply
    assert json_error(reply)["error"] == "Invalid JSON body"
    await assert_alive(harness)


@pytest.mark.parametrize(("method", "path"), [r for r in ROUTES if r[1].split("/")[-1] not in BODY_ROUTES])
async def test_a_huge_body_to_a_route_without_one_is_harmless(
    harness: Harness, method: str, path: str
) -> None:
    target = route(path, name="nope")
    without = await send(harness, method, target)
    reply = await send(harness, method, target, b"x" * (2 * MAX_BODY))
    assert reply.status in (without.status, 413), reply
    error_shape(reply)
    await assert_alive(harness)


# ---- table 5: odd request heads (headers, request line) -------------------------------------------

AUTH_LINE = f"Authorization: Bearer {TOKEN}\r\n".encode()


def head(request_line: bytes, *headers: bytes, body: bytes = b"") -> bytes:
    lines = [
        request_line,
        b"Host: localhost",
        *headers,
        b"Content-Length: %d" % len(body),
        b"Connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# id -> (request, acceptable statuses; None = the server hung up without an answer)
ODD_HEADS: dict[str, tuple[bytes, set[int | None]]] = {
    "header-10k": (head(b"GET /health HTTP/1.1", b"X-Big: " + b"a" * 10_000), {400, 431}),
    "header-1m": (head(b"GET /health HTTP/1.1", b"X-Big: " + b"a" * 1_000_000), {400, 431, None}),
    "header-name-10k": (head(b"GET /health HTTP/1.1", b"X-" + b"a" * 10_000 + b": v"), {400, 431}),
    "500-headers": (head(b"GET /health HTTP/1.1", *(b"X-H%d: v" % i for i in range(500))), {400, 431}),
    "url-20k": (head(b"GET /admin/runs/" + b"a" * 20_000 + b" HTTP/1.1", AUTH_LINE.strip()), {400, 414, 431}),
    "query-20k": (
        head(b"GET /admin/workflows/history?workflow=" + b"a" * 20_000 + b" HTTP/1.1"),
        {400, 414, 431},
    ),
    "raw-utf8-path": (head("POST /admin/workflows/été/trigger HTTP/1.1".encode(), AUTH_LINE.strip()), {400}),
    "raw-ff-path": (head(b"POST /admin/workflows/\xff/trigger HTTP/1.1", AUTH_LINE.strip()), {400}),
    "nul-in-header": (head(b"GET /health HTTP/1.1", b"X-A: a\x00b"), {400}),
    "bad-method-token": (head(b"G@T /health HTTP/1.1"), {400}),
    "tls-on-http": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64, {400}),
    "bad-content-length": (
        b"POST /admin/workflows/hello/trigger HTTP/1.1\r\nHost: x\r\n"
        + AUTH_LINE
        + b"Content-Length: -1\r\n\r\n",
        {400},
    ),
    "two-content-lengths": (
        b"POST /admin/workflows/hello/trigger HTTP/1.1\r\nHost: x\r\n"
        + AUTH_LINE
        + b"Content-Length: 2\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{}",
        {400},
    ),
    "auth-8k": (head(b"GET /admin/workflows HTTP/1.1", b"Authorization: Bearer " + b"a" * 8000), {401}),
    "auth-no-scheme": (head(b"GET /admin/workflows HTTP/1.1", b"Authorization: " + TOKEN.encode()), {401}),
    "auth-lower-scheme": (
        head(b"GET /admin/workflows HTTP/1.1", b"Authorization: bearer " + TOKEN.encode()),
        {401},
    ),
    "auth-utf8": (head(b"GET /admin/workflows HTTP/1.1", "Authorization: Bearer été".encode()), {401}),
    "auth-latin1": (head(b"GET /admin/workflows HTTP/1.1", b"Authorization: Bearer \xe9t\xe9"), {401}),
    "idempotency-key-256": (
        head(
            b"POST /admin/workflows/hello/trigger HTTP/1.1",
            AUTH_LINE.strip(),
            b"Idempotency-Key: " + b"k" * 256,
        ),
        {400},
    ),
    "idempotency-key-empty": (
        head(b"POST /admin/workflows/hello/trigger HTTP/1.1", AUTH_LINE.strip(), b"Idempotency-Key: "),
        {400},
    ),
}
# Non-UTF-8 bytes in a header value reach Python as lone surrogates (surrogateescape).
ODD_HEADS["idempotency-key-latin1"] = (
    head(b"POST /admin/workflows/hello/trigger HTTP/1.1", AUTH_LINE.strip(), b"Idempotency-Key: \xe9t\xe9"),
    {400},
)
ODD_HEADS_BUGGY: dict[str, tuple[bytes, set[int | None], str]] = {}  # none known


def odd_head_params() -> list[Any]:
    params = [pytest.param(req, ok, id=i) for i, (req, ok) in ODD_HEADS.items()]
    for i, (req, ok, reason) in ODD_HEADS_BUGGY.items():
        params.append(pytest.param(req, ok, id=i, marks=pytest.mark.xfail(strict=True, reason=reason)))
    return params


def check_raw_answer(data: bytes | None, acceptable: set[int | None]) -> None:
    """aiohttp's parser refuses a bad head with its own text/plain 400; the daemon's own errors are JSON."""
    status = raw_status(data)
    assert status in acceptable, (data or b"")[:300]
    if data is None:
        return
    assert b"Traceback" not in data
    headers, _, body = data.partition(b"\r\n\r\n")
    if status == 401:
        assert body.startswith(b"Unauthorized: "), data[:300]
    elif b"Content-Type: application/json" in headers:
        assert list(json.loads(body)) == ["error", "details"], body
    else:  # aiohttp's own answer to a request it could not parse
        assert b"Content-Type: text/plain" in headers, data[:300]


@pytest.mark.parametrize(("request_bytes", "acceptable"), odd_head_params())
async def test_odd_request_heads_get_a_4xx_and_the_daemon_lives(
    harness: Harness, request_bytes: bytes, acceptable: set[int | None]
) -> None:
    data = await raw_request(harness, request_bytes)
    check_raw_answer(data, acceptable)
    assert run_count(harness) == 0
    await assert_alive(harness)


async def hang_up_mid_body(url: URL) -> None:
    """Announce 100 bytes of body, send 2, hang up."""
    request = head(b"POST /admin/workflows/hello/trigger HTTP/1.1", AUTH_LINE.strip(), body=b"{}")
    request = request.replace(b"Content-Length: 2", b"Content-Length: 100")
    assert url.host is not None and url.port is not None
    _, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(request)
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await asyncio.sleep(0.1)


async def test_a_client_that_stops_mid_body_is_no_harm(harness: Harness) -> None:
    await hang_up_mid_body(harness.client.make_url("/"))
    assert run_count(harness) == 0
    await assert_alive(harness)


# ---- table 6: odd names -------------------------------------------------------------------------

# (id, path segment as sent, the name the daemon decodes, or None when the path matches no route)
ODD_NAMES: list[tuple[str, str, str | None]] = [
    ("encoded-slash", "a%2Fb", "a/b"),
    ("encoded-slash-to-hello", "x%2F..%2Fhello", "x/../hello"),
    ("encoded-dotdot", "%2E%2E", ".."),
    ("encoded-dot", "%2E", "."),
    ("dotdot-slash-hello", "..%2Fhello", "../hello"),
    ("space", "my%20flow", "my flow"),
    ("only-space", "%20", " "),
    ("trailing-space", "hello%20", "hello "),
    ("plus", "hello+world", "hello+world"),
    ("upper-case", "HELLO", "HELLO"),
    ("accents", "%C3%A9t%C3%A9", "été"),
    ("emoji", "%F0%9F%A6%8C", "🦌"),
    ("rtl-override", "%E2%80%AEolleh", "\u202eolleh"),
    ("nul", "hello%00", "hello\x00"),
    ("newline", "hello%0Aworld", "hello\nworld"),
    ("invalid-utf8", "%FF", "%FF"),  # kept percent-encoded
    ("bad-escape", "%ZZ", "%ZZ"),
    ("sql", "%27%3B%20DROP%20TABLE%20runs%3B--", "'; DROP TABLE runs;--"),
    ("long", "n" * 4000, "n" * 4000),
    ("literal-slash", "a/b", None),
]  # `..` sent verbatim: test_dot_segments_sent_verbatim_never_reach_a_workflow (clients resolve it)


def odd_name_params() -> list[Any]:
    return [
        pytest.param(method, path, segment, name, id=f"{path.split('/')[-1]}-{i}")
        for method, path in NAME_ROUTES
        for i, segment, name in ODD_NAMES
    ]


@pytest.mark.parametrize(("method", "path", "segment", "name"), odd_name_params())
async def test_odd_names_get_a_clean_404(
    harness: Harness, method: str, path: str, segment: str, name: str | None
) -> None:
    body = b'{"from": "hello"}' if path.endswith("/resume") else None
    reply = await send(harness, method, route(path, name=segment), body)
    assert reply.status == 404, reply
    err = json_error(reply)
    if name is None:
        assert err["error"] == "Not Found"
    elif name.isprintable() and len(name) < 100:
        assert f"'{name}'" in err["details"] or f"'{segment}'" in err["details"], err
    assert run_count(harness) == 0
    await assert_alive(harness)


@pytest.mark.parametrize(
    ("segment", "run_id"),
    [(s, n) for _, s, n in ODD_NAMES if n is not None],
    ids=[i for i, _, n in ODD_NAMES if n is not None],
)
async def test_odd_run_ids_get_a_clean_404(harness: Harness, segment: str, run_id: str) -> None:
    reply = await send(harness, "GET", f"/admin/runs/{segment}")
    assert reply.status == 404, reply
    err = json_error(reply)
    assert err["error"] == "Run not found"
    if run_id.isprintable() and len(run_id) < 100:
        assert err["details"] == f"No run with id '{run_id}'", err
    await assert_alive(harness)


@pytest.mark.parametrize(
    "target",
    [
        "/admin/workflows/../trigger",
        "/admin/workflows/x/../hello/trigger",
        "/admin/workflows/./hello/trigger",
    ],
    ids=["dotdot", "dotdot-to-hello", "dot"],
)
async def test_dot_segments_sent_verbatim_never_reach_a_workflow(harness: Harness, target: str) -> None:
    data = await raw_request(harness, head(f"POST {target} HTTP/1.1".encode(), AUTH_LINE.strip()))
    assert raw_status(data) == 404, data
    assert data is not None
    assert list(json.loads(data.partition(b"\r\n\r\n")[2])) == ["error", "details"]
    assert run_count(harness) == 0
    await assert_alive(harness)


# ---- table 7: wrong methods -----------------------------------------------------------------------


def wrong_method_params() -> list[Any]:
    params = []
    for allowed, path in ROUTES:
        allowed_set = {allowed, "HEAD"} if allowed == "GET" else {allowed}
        for method in OTHER_METHODS:
            if method not in allowed_set:
                params.append(pytest.param(method, path, id=f"{method} {path}"))
    return params


@pytest.mark.parametrize(("method", "path"), wrong_method_params())
async def test_a_wrong_method_is_405_json(harness: Harness, method: str, path: str) -> None:
    target = route(path)
    reply = await send(harness, method, target, b'{"from": "x"}' if method != "HEAD" else None)
    assert reply.status == 405, reply
    if method == "HEAD":
        assert reply.body == b"" and reply.content_type == "application/json"
    else:
        assert json_error(reply) == {
            "error": "Method Not Allowed",
            "details": f"{method} is not allowed on {target}",
        }
    assert run_count(harness) == 0
    await assert_alive(harness)


@pytest.mark.parametrize(("method", "path"), [("DELETE", p) for _, p in ROUTES if p.startswith("/admin")])
async def test_a_wrong_method_without_a_token_is_the_plain_401(
    harness: Harness, method: str, path: str
) -> None:
    reply = await send(harness, method, route(path), auth=False)
    assert reply.status == 401
    assert (reply.content_type, reply.text) == ("text/plain", INVALID)
    await assert_alive(harness)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("DELETE", "/health", {"GET", "HEAD"}), ("GET", "/admin/workflows/hello/trigger", {"POST"})],
    ids=["health", "trigger"],
)
async def test_a_405_names_the_allowed_methods(
    harness: Harness, method: str, path: str, allow: set[str]
) -> None:
    reply = await send(harness, method, path)
    assert reply.status == 405
    assert {m.strip() for m in reply.headers.get("Allow", "").split(",") if m.strip()} == allow


# ---- table 8: bad query values ----------------------------------------------------------------------

# query -> None for a 400 "Invalid query" (with this fragment in details), else the good status
HISTORY_QUERIES: list[tuple[str, int, str]] = [
    ("limit=abc", 400, "limit must be a whole number"),
    ("limit=0", 400, "limit must be a whole number"),
    ("limit=-1", 400, "limit must be a whole number"),
    ("limit=1.5", 400, "limit must be a whole number"),
    ("limit=", 400, "limit must be a whole number"),
    ("limit=1e3", 400, "limit must be a whole number"),
    ("limit=%2B5", 400, "limit must be a whole number"),
    ("limit=0x10", 400, "limit must be a whole number"),
    ("limit=%C2%B2", 400, "limit must be a whole number"),
    ("limit=%D9%A3", 400, "limit must be a whole number"),  # Arabic-Indic three
    ("limit=99999999999999999999", 400, "limit must be a whole number"),
    ("limit=1&limit=2", 400, "given 2 times"),
    ("limit=%205%20", 200, ""),
    ("limit=9999999999999999999", 200, ""),
    ("status=bogus", 400, "unknown status"),
    ("status=%00", 400, "unknown status"),
    ("status=%20", 400, "unknown status"),
    ("status=RUNNING&status=FAILED", 400, "given 2 times"),
    ("status=", 200, ""),
    ("status=running", 200, ""),
    ("status=cancelled", 200, ""),
    ("status=WORKFLOW_EXECUTION_STATUS_PAUSED", 200, ""),
    ("since=abc", 400, "since must be unix seconds"),
    ("since=-1", 400, "since must be unix seconds"),
    ("since=nan", 400, "since must be unix seconds"),
    ("since=inf", 400, "since must be unix seconds"),
    ("since=1e300", 400, "since must be unix seconds"),
    ("since=1099511627776", 400, "since must be unix seconds"),
    ("since=", 400, "since must be unix seconds"),
    ("until=-inf", 400, "until must be unix seconds"),
    ("until=%F0%9F%A6%8C", 400, "until must be unix seconds"),
    ("since=0&until=1e10", 200, ""),
    ("since=1.5", 200, ""),
    ("cursor=abc", 400, "is not one this daemon returned"),
    ("cursor=123", 400, "is not one this daemon returned"),
    ("cursor=123_", 400, "is not one this daemon returned"),
    ("cursor=_abc", 400, "is not one this daemon returned"),
    ("cursor=-1_abc", 400, "is not one this daemon returned"),
    ("cursor=99999999999999999999_x", 400, "is not one this daemon returned"),
    ("cursor=9999999999999999999_x", 400, "is not one this daemon returned"),
    ("cursor=", 200, ""),
    ("cursor=1_%00", 200, ""),
    ("workflow=%00", 200, ""),
    ("workflow=%F0%9F%A6%8C", 200, ""),
    ("workflow=" + "w" * 4000, 200, ""),
    ("unknown=1", 200, ""),
    ("%FF=%FF", 200, ""),
    ("limit", 400, "limit must be a whole number"),
    ("&&&=&", 200, ""),
]


@pytest.mark.parametrize(
    ("query", "status", "fragment"), HISTORY_QUERIES, ids=[q[:40] for q, _, _ in HISTORY_QUERIES]
)
async def test_history_query_values(harness: Harness, query: str, status: int, fragment: str) -> None:
    reply = await send(harness, "GET", f"/admin/workflows/history?{query}")
    assert reply.status == status, reply
    if status == 400:
        err = json_error(reply)
        assert err["error"] == "Invalid query"
        assert fragment in err["details"], err
    else:
        assert isinstance(json.loads(reply.body), list)
    await assert_alive(harness)


@pytest.mark.parametrize(
    ("query", "status", "fragment"),
    [
        ("id=x&id=y", 400, "given 2 times"),
        ("id=nope", 404, "No run with id 'nope'"),
        ("id=", 404, "No run with id ''"),
        ("id=%00", 404, "No run with id"),
        ("id=" + RUN_ID, 200, ""),
        ("", 200, ""),
        ("id=" + RUN_ID + "&unknown=1", 200, ""),
    ],
    ids=["repeated", "unknown", "empty", "nul", "good", "none", "extra-param"],
)
async def test_status_query_values(harness: Harness, query: str, status: int, fragment: str) -> None:
    data = await harness.trigger("hello")
    await harness.wait_status(data["runId"], "COMPLETED")
    reply = await send(
        harness, "GET", f"/admin/workflows/hello/status?{query.replace(RUN_ID, data['runId'])}"
    )
    assert reply.status == status, reply
    if status >= 400:
        assert fragment in json_error(reply)["details"]
    else:
        assert json.loads(reply.body)["run_id"] == data["runId"]
    await assert_alive(harness)


async def test_status_of_a_run_of_another_workflow_is_404(harness: Harness) -> None:
    data = await harness.trigger("chain")
    reply = await send(harness, "GET", f"/admin/workflows/hello/status?id={data['runId']}")
    assert reply.status == 404
    assert json_error(reply)["details"] == f"Run '{data['runId']}' is not a run of 'hello'"
    await assert_alive(harness)


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("conflict=bogus", 400),
        ("conflict=", 200),  # empty: the default
        ("conflict=FAIL", 400),
        ("conflict=fail&conflict=fail", 400),
        ("conflict=use_existing", 200),
        ("conflict=terminate_existing", 200),
        ("unknown=%FF", 200),
    ],
)
async def test_trigger_query_values(harness: Harness, query: str, status: int) -> None:
    reply = await send(harness, "POST", f"/admin/workflows/hello/trigger?{query}")
    assert reply.status == status, reply
    if status == 400:
        assert json_error(reply)["error"] == "Invalid query"
    await assert_alive(harness)


# ---- the same tables against the real daemon process ---------------------------------------------


@dataclass
class RealDaemon:
    daemon: DaemonProcess
    log: list[str]

    @property
    def url(self) -> str:
        return self.daemon.url


def _drain(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line)


@pytest.fixture
def real_daemon(tmp_path: Path) -> Iterator[RealDaemon]:
    """`moose dev` with an admin key (so it also has its own CLI token) and the default 10 MiB limit."""
    project = tmp_path / "project"
    shutil.copytree(FIXTURE_PROJECT, project, ignore=shutil.ignore_patterns("__pycache__", ".moose", "*.log"))
    daemon = DaemonProcess(project, env={"MOOSE_AUTHENTICATION__ADMIN_API_KEY": KEY})
    log: list[str] = []
    # Full pipes would block the daemon (a task printing megabytes blocks in its write, and then shutdown
    # waits for that thread forever): read both to the end.
    drainer = threading.Thread(target=_drain, args=(daemon.proc.stderr, log), daemon=True)
    drainer.start()
    threading.Thread(target=_drain, args=(daemon.proc.stdout, []), daemon=True).start()
    try:
        yield RealDaemon(daemon, log)
    finally:
        try:
            daemon.stop(timeout=20)
        except Exception:
            daemon.proc.kill()
            daemon.proc.wait()
        drainer.join(timeout=5)


def _sweep_requests() -> list[tuple[str, str, bytes | None]]:
    """One request per row of every table above (minus the rows of known bugs), against odd names."""
    rows: list[tuple[str, str, bytes | None]] = []
    for _, body, _ in BAD_JSON:
        rows += [("POST", f"/admin/workflows/hello/{action}", body) for action in BODY_ROUTES]
    for body in EMPTY_BODIES:
        rows.append(("POST", "/admin/workflows/resumable/resume", body))
    for _, body, _ in NOT_AN_OBJECT_TO_HELLO:
        rows.append(("POST", "/admin/workflows/hello/trigger", body))
    rows.append(("POST", "/admin/workflows/hello/trigger", b" " * (10 * 1024 * 1024 + 1)))
    for method, path in NAME_ROUTES:
        rows += [(method, route(path, name=segment), None) for _, segment, _ in ODD_NAMES]
    for param in wrong_method_params():
        method, path = param.values
        rows.append((method, route(path), None))
    rows += [("GET", f"/admin/workflows/history?{q}", None) for q, _, _ in HISTORY_QUERIES]
    return rows


def test_every_table_against_the_real_daemon(real_daemon: RealDaemon) -> None:
    session = requests.Session()
    seen: dict[int, int] = {}
    for method, path, body in _sweep_requests():
        resp = session.request(method, real_daemon.url + path, data=body, headers=AUTH_HEADERS, timeout=30)
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        reply = Reply(resp.status_code, resp.headers.get("Content-Type", "").split(";")[0], resp.content, {})
        if method != "HEAD":
            error_shape(reply)
        assert resp.status_code < 500, (method, path, resp.text)
    for request_bytes, acceptable in ODD_HEADS.values():
        host, port = URL(real_daemon.url).host, URL(real_daemon.url).port
        assert host is not None and port is not None
        data = asyncio.run(raw_to(host, port, request_bytes))
        check_raw_answer(data, acceptable)
    assert session.get(real_daemon.url + "/health").json() == {"status": "healthy"}
    assert session.get(real_daemon.url + "/admin/workflows", headers=AUTH_HEADERS).status_code == 200
    assert real_daemon.daemon.proc.poll() is None, "the daemon exited"
    assert {400, 404, 405, 413} <= set(seen), seen
    assert not [line for line in real_daemon.log if "internal_error" in line], "".join(real_daemon.log)[
        -3000:
    ]


def test_a_non_utf8_authorization_header_is_the_plain_401(real_daemon: RealDaemon) -> None:
    url = URL(real_daemon.url)
    assert url.host is not None and url.port is not None
    data = asyncio.run(
        raw_to(url.host, url.port, head(b"GET /admin/workflows HTTP/1.1", b"Authorization: Bearer \xe9t\xe9"))
    )
    assert raw_status(data) == 401, data
    assert data is not None and data.endswith(INVALID.encode())


def test_a_client_that_stops_mid_body_is_not_an_internal_error(real_daemon: RealDaemon) -> None:
    asyncio.run(hang_up_mid_body(URL(real_daemon.url)))
    time.sleep(0.3)
    assert requests.get(real_daemon.url + "/health").status_code == 200
    assert not [line for line in real_daemon.log if "internal_error" in line], "".join(real_daemon.log)[
        -2000:
    ]
