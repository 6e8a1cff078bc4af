"""Every error is JSON `{"error", "details"}` with a fitting status, never a traceback (issue #2 §4)."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import pytest
from conftest import Harness

MAX_BODY = 1024 * 1024  # what conftest.make_harness configures


async def send(
    h: Harness, method: str, path: str, body: bytes | None = None, auth: bool = True
) -> tuple[int, str, str]:
    resp = await h.client.request(method, path, data=body, headers=h.headers if auth else {})
    return resp.status, resp.content_type, await resp.text()


def json_error(ctype: str, text: str) -> dict[str, Any]:
    assert ctype == "application/json", text
    body: dict[str, Any] = json.loads(text)
    assert list(body) == ["error", "details"], body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["details"], str) and body["details"]
    return body


def run_count(h: Harness) -> int:
    with sqlite3.connect(h.db_path) as db:
        count: int = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    return count


# ---- routing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("GET", "/admin/nope"),
        ("GET", "/admin/workflows/hello"),
        ("POST", "/admin/workflows/hello/run"),
        ("POST", "/admin/workflows/hello/trigger/extra"),
        ("GET", "/ADMIN/workflows/history"),
        ("GET", "/admin//workflows/history"),
        ("POST", "/workflows/hello/trigger"),  # the pre-#3432 path
    ],
)
async def test_unknown_route_is_404_json(harness: Harness, method: str, path: str) -> None:
    status, ctype, text = await send(harness, method, path)
    assert status == 404
    body = json_error(ctype, text)
    assert body["error"] == "Not Found"
    assert method in body["details"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/workflows/hello/trigger"),
        ("PUT", "/admin/workflows/hello/trigger"),
        ("GET", "/admin/workflows/hello/terminate"),
        ("DELETE", "/admin/workflows/hello/cancel"),
        ("POST", "/admin/workflows/history"),
        ("POST", "/admin/runs/abc"),
        ("POST", "/health"),
    ],
)
async def test_wrong_method_is_405_json(harness: Harness, method: str, path: str) -> None:
    status, ctype, text = await send(harness, method, path)
    assert status == 405
    body = json_error(ctype, text)
    assert body["error"] == "Method Not Allowed"
    assert body["details"] == f"{method} is not allowed on {path}"
    assert run_count(harness) == 0


async def test_unknown_run_id_is_404_json(harness: Harness) -> None:
    status, ctype, text = await send(harness, "GET", "/admin/runs/not-a-run")
    assert status == 404
    assert json_error(ctype, text) == {"error": "Run not found", "details": "No run with id 'not-a-run'"}


@pytest.mark.parametrize(
    ("segment", "name"),
    [
        ("my%20flow", "my flow"),
        ("%C3%A9t%C3%A9", "été"),
        ("%E2%9C%93", "✓"),
        ("hello%00", "hello\x00"),
        ("%27%3B%20DROP%20TABLE%20runs%3B--", "'; DROP TABLE runs;--"),
    ],
    ids=["space", "accents", "check-mark", "nul", "sql"],
)
@pytest.mark.parametrize("action", ["trigger", "terminate", "cancel"])
async def test_odd_names_give_a_clean_404(harness: Harness, segment: str, name: str, action: str) -> None:
    status, ctype, text = await send(harness, "POST", f"/admin/workflows/{segment}/{action}")
    assert status == 404
    body = json_error(ctype, text)
    assert f"'{name}'" in body["details"]
    assert run_count(harness) == 0


@pytest.mark.parametrize("action", ["trigger", "terminate", "cancel"])
async def test_encoded_slash_in_name_gives_a_clean_404(harness: Harness, action: str) -> None:
    status, ctype, text = await send(harness, "POST", f"/admin/workflows/a%2Fb/{action}")
    assert status == 404
    body = json_error(ctype, text)
    assert "a/b" in body["details"] or "a%2Fb" in body["details"]
    assert run_count(harness) == 0


async def test_encoded_slash_cannot_reach_another_workflow(harness: Harness) -> None:
    """`x%2F..%2Fhello` must not be resolved into `hello`."""
    status, ctype, text = await send(harness, "POST", "/admin/workflows/x%2F..%2Fhello/trigger")
    assert status == 404
    json_error(ctype, text)
    assert run_count(harness) == 0


# ---- bodies -------------------------------------------------------------------------------------


async def test_body_over_the_limit_is_413_json(harness: Harness) -> None:
    body = b'"' + b"a" * MAX_BODY + b'"'
    status, ctype, text = await send(harness, "POST", "/admin/workflows/hello/trigger", body)
    assert status == 413
    assert json_error(ctype, text) == {
        "error": "Request Entity Too Large",
        "details": f"Request body too large. Maximum size is {MAX_BODY} bytes",
    }
    assert run_count(harness) == 0


async def test_body_of_exactly_the_limit_is_accepted(harness: Harness) -> None:
    body = b'{"s": "' + b"a" * (MAX_BODY - 9) + b'"}'
    assert len(body) == MAX_BODY
    status, ctype, text = await send(harness, "POST", "/admin/workflows/slow/trigger", body)
    assert (status, ctype) == (200, "application/json"), text[:300]
    assert json.loads(text)["workflowId"].startswith("slow-")


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b"[" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000],
    ids=["balanced-lists", "unclosed-lists", "objects"],
)
async def test_deeply_nested_json_is_400_quickly(harness: Harness, body: bytes) -> None:
    started = time.monotonic()
    status, ctype, text = await send(harness, "POST", "/admin/workflows/hello/trigger", body)
    elapsed = time.monotonic() - started
    assert status == 400
    err = json_error(ctype, text)
    assert err["error"] == "Invalid JSON body"
    assert err["details"].startswith("nesting deeper than 512 levels at line 1 column ")
    assert elapsed < 2.0
    assert run_count(harness) == 0


async def test_512_levels_are_accepted(harness: Harness) -> None:
    body = b"[" * 512 + b"]" * 512
    status, _, text = await send(harness, "POST", "/admin/workflows/slow/trigger", body)
    assert status == 200, text


@pytest.mark.parametrize(
    ("body", "details"),
    [
        (b'{"name": "\xff"}', "invalid UTF-8 at byte 10"),
        (b"\xc3", "invalid UTF-8 at byte 0"),
        (b'"\xed\xa0\x80"', "invalid UTF-8 at byte 1"),  # an encoded surrogate
        (b'{"a": "ok"}\x80', "invalid UTF-8 at byte 11"),
    ],
    ids=["ff", "truncated-sequence", "surrogate", "after-value"],
)
async def test_invalid_utf8_is_400(harness: Harness, body: bytes, details: str) -> None:
    status, ctype, text = await send(harness, "POST", "/admin/workflows/hello/trigger", body)
    assert status == 400
    assert json_error(ctype, text) == {"error": "Invalid JSON body", "details": details}


async def test_huge_integer_is_a_400_not_a_crash(harness: Harness) -> None:
    status, ctype, text = await send(harness, "POST", "/admin/workflows/hello/trigger", b"9" * 5000)
    assert status == 400
    assert json_error(ctype, text)["error"] == "Invalid JSON body"


async def test_large_body_parsed_off_the_loop_still_answers_correctly(harness: Harness) -> None:
    body = json.dumps({"items": list(range(30_000))}).encode()
    assert len(body) > 64 * 1024
    status, _, text = await send(harness, "POST", "/admin/workflows/slow/trigger", body)
    assert status == 200, text
    status, ctype, text = await send(harness, "POST", "/admin/workflows/slow/trigger", body[:-2] + b",]}")
    assert status == 400
    assert json_error(ctype, text) == {
        "error": "Invalid JSON body",
        "details": f"trailing comma at line 1 column {len(body)}",
    }


# ---- never a traceback ----------------------------------------------------------------------------

NASTY = [
    ("GET", "/nope", None),
    ("POST", "/admin/workflows/nope/trigger", b"{}"),
    ("POST", "/admin/workflows/hello/trigger", b"notjson"),
    ("POST", "/admin/workflows/hello/trigger", b"\xff\xfe"),
    ("POST", "/admin/workflows/hello/trigger", b"[" * 100_000),
    ("POST", "/admin/workflows/hello/trigger", b"9" * 100_000),
    ("POST", "/admin/workflows/hello/trigger", b'"\\ud800"'),
    ("POST", "/admin/workflows/hello/trigger", b'{"a": NaN}'),
    ("POST", "/admin/workflows/hello/trigger", b"x" * (MAX_BODY + 1)),
    ("POST", "/admin/workflows/nope/terminate", None),
    ("POST", "/admin/workflows/nope/cancel", None),
    ("GET", "/admin/workflows/history?limit=abc", None),
    ("GET", "/admin/workflows/history?limit=%C2%B2", None),
    ("GET", "/admin/workflows/history?since=inf", None),
    ("GET", "/admin/workflows/history?since=1e300", None),
    ("GET", "/admin/workflows/history?cursor=99999999999999999999_x", None),
    ("GET", "/admin/workflows/history?status=%00", None),
    ("GET", "/admin/runs/%00", None),
    ("PATCH", "/admin/workflows/history", None),
    ("POST", "/admin/workflows/%ZZ/trigger", None),
    ("POST", "/admin/workflows/hello/trigger?conflict=bogus", None),
    ("POST", "/admin/workflows/hello/resume", b"[]"),
    ("GET", "/admin/workflows/nope/status", None),
]


@pytest.mark.parametrize(("method", "path", "body"), NASTY, ids=[f"{m} {p[:50]}" for m, p, _ in NASTY])
async def test_no_response_ever_contains_a_traceback(
    harness: Harness, method: str, path: str, body: bytes | None
) -> None:
    status, ctype, text = await send(harness, method, path, body)
    assert status >= 400
    assert "Traceback" not in text
    assert 'File "' not in text
    assert "moose_daemon" not in text
    json_error(ctype, text)


async def test_server_keeps_serving_after_every_nasty_request(harness: Harness) -> None:
    for method, path, body in NASTY:
        await send(harness, method, path, body)
    data = await harness.trigger("hello")
    await harness.wait_status(data["runId"], "COMPLETED")
    resp = await harness.client.get("/health")
    assert resp.status == 200
