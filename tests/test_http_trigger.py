"""POST /admin/workflows/{name}/trigger over real HTTP (issue #2 §4, contract §1.4)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, make_harness

HEX16 = re.compile(r"[0-9a-f]{16}")


def expected_id(name: str, compact: str) -> str:
    return f"{name}-{hashlib.sha256(compact.encode('utf-8')).hexdigest()[:16]}"


def db_row(db_path: Path, run_id: str) -> tuple[Any, ...] | None:
    """Read the run straight from the SQLite file, with a fresh connection of our own."""
    with sqlite3.connect(db_path) as db:
        row: tuple[Any, ...] | None = db.execute(
            "SELECT workflow_id, workflow, status, input FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
    return row


async def finished(h: Harness, run_id: str, status: str) -> dict[str, Any]:
    """Wait for `status`, then read the run again: the read that saw the status may be torn (see
    test_http_terminate.py::test_run_detail_is_not_torn_by_a_run_ending_mid_read)."""
    await h.wait_status(run_id, status, within_s=5)
    return await h.run(run_id)


async def post(h: Harness, name: str, body: bytes | None = None, **kw: Any) -> tuple[int, str, str]:
    headers = {**h.headers, **kw.pop("headers", {})}
    resp = await h.client.post(f"/admin/workflows/{name}/trigger", data=body, headers=headers, **kw)
    return resp.status, resp.content_type, await resp.text()


@pytest.fixture
async def prod(aiohttp_client: Any, tmp_path: Path, project: Path) -> AsyncIterator[Harness]:
    h, auth = await make_harness(aiohttp_client, project, tmp_path / "prod.db", dev=False)
    yield h
    await h.engine.stop(2.0)
    auth.close()
    await h.store.close()


# ---- workflowId -------------------------------------------------------------------------------


def test_verified_alice_hash_relation() -> None:
    """Contract §1.4: the body {"name": "alice"} hashes as its compact form {"name":"alice"}."""
    assert hashlib.sha256(b'{"name":"alice"}').hexdigest()[:16] == "3b8f02c64624e355"
    assert hashlib.sha256('{"b":1,"a":[1.0,2.50,1e3,"é/é"]}'.encode()).hexdigest()[:16] == "32e481bc672f6a7d"


@pytest.mark.parametrize(
    ("body", "compact"),
    [
        # the two values verified live against MooseStack (there with workflow `demo`)
        (b'{"name": "alice"}', '{"name":"alice"}'),
        ('{"b":1,"a":[1.0,2.50,1e3,"é/\\u00e9"]}'.encode(), '{"b":1,"a":[1.0,2.50,1e3,"é/é"]}'),
        # whitespace between tokens goes, key order stays
        (b' {\n  "z" : 1 ,\t"a" : [ 1 , 2 ] }\n', '{"z":1,"a":[1,2]}'),
        # a duplicate key keeps its first position and takes the last value
        (b'{"a": 1, "b": 2, "a": 3}', '{"a":3,"b":2}'),
        # number text is kept as written
        (b'{"n": 12345678901234567890123}', '{"n":12345678901234567890123}'),
        (b'{"n": -0.0, "m": 1E+2}', '{"n":-0.0,"m":1E+2}'),
        # escapes: \/ becomes /, \t stays, other control characters are lower-case \u00xx
        (b'{"s": "a\\/b\\t\\u001F"}', '{"s":"a/b\\t\\u001f"}'),
        # non-object JSON values are input too
        (b"[1, 2]", "[1,2]"),
        (b'"just a string"', '"just a string"'),
        (b"42", "42"),
        (b"null", "null"),
        (b"{}", "{}"),
    ],
    ids=[
        "alice",
        "contract-mixed",
        "whitespace",
        "duplicate-key",
        "bigint",
        "number-text",
        "escapes",
        "array",
        "string",
        "number",
        "null",
        "empty-object",
    ],
)
async def test_input_gives_hashed_workflow_id(harness: Harness, body: bytes, compact: str) -> None:
    data = await harness.trigger("hello", body)
    assert data["workflowId"] == expected_id("hello", compact)
    assert HEX16.fullmatch(data["workflowId"].removeprefix("hello-"))
    # the stored input is exactly the compact form that was hashed
    row = db_row(harness.db_path, data["runId"])
    assert row is not None
    assert (row[0], row[1], row[3]) == (data["workflowId"], "hello", compact)


async def test_alice_id_matches_contract_value(harness: Harness) -> None:
    data = await harness.trigger("hello", b'{"name": "alice"}')
    assert data["workflowId"] == "hello-3b8f02c64624e355"
    run = await finished(harness, data["runId"], "COMPLETED")
    assert run["tasks"][0]["output"] == {"hello": "alice"}


@pytest.mark.parametrize("body", [None, b"", b" ", b"\n\t\r  \n"], ids=["none", "empty", "space", "ws"])
async def test_empty_or_whitespace_body_is_no_input(harness: Harness, body: bytes | None) -> None:
    data = await harness.trigger("hello", body)
    assert data["workflowId"] == "hello"
    row = db_row(harness.db_path, data["runId"])
    assert row is not None
    assert (row[0], row[1], row[3]) == ("hello", "hello", None)
    run = await finished(harness, data["runId"], "COMPLETED")
    assert run["input"] is None
    assert run["tasks"][0]["output"] == {"hello": "world"}


async def test_content_type_is_ignored(harness: Harness) -> None:
    a = await harness.client.post(
        "/admin/workflows/hello/trigger",
        data=b'{"name": "ct"}',
        headers={**harness.headers, "Content-Type": "text/plain"},
    )
    assert a.status == 200
    assert (await a.json())["workflowId"] == expected_id("hello", '{"name":"ct"}')


async def test_input_is_passed_unwrapped_to_the_starting_task(harness: Harness) -> None:
    data = await harness.trigger("chain", b"41")
    run = await finished(harness, data["runId"], "COMPLETED")
    assert run["input"] == 41
    assert [t["input"] for t in run["tasks"]] == [41, 42, 43]


# ---- the 200 response -------------------------------------------------------------------------


async def test_dev_response_shape_and_order(harness: Harness) -> None:
    status, ctype, text = await post(harness, "hello", b'{"name": "order"}')
    assert (status, ctype) == (200, "application/json")
    body = json.loads(text)
    assert list(body) == ["workflowId", "runId", "dashboardUrl"]
    assert body["dashboardUrl"] == f"http://localhost:4000/admin/runs/{body['runId']}"
    # the dashboard URL is a page of this daemon that shows that run
    path = body["dashboardUrl"].removeprefix("http://localhost:4000")
    resp = await harness.client.get(path, headers=harness.headers)
    assert resp.status == 200
    detail = await resp.json()
    assert (detail["run_id"], detail["name"]) == (body["runId"], body["workflowId"])


async def test_prod_response_has_no_dashboard_url(prod: Harness) -> None:
    status, ctype, text = await post(prod, "hello")
    assert (status, ctype) == (200, "application/json")
    body = json.loads(text)
    assert list(body) == ["workflowId", "runId"]
    assert body["workflowId"] == "hello"
    assert "dashboardUrl" not in text


async def test_run_ids_are_distinct_uuids(harness: Harness) -> None:
    ids = [(await harness.trigger("hello", f'{{"i": {i}}}'.encode()))["runId"] for i in range(5)]
    assert len(set(ids)) == 5
    for run_id in ids:
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", run_id)


@pytest.mark.parametrize(
    ("name", "body", "compact"),
    [("slow", None, None), ("slow", b'{"n": 1}', '{"n":1}'), ("chain", b"7", "7")],
)
async def test_200_means_the_run_is_already_in_sqlite(
    harness: Harness, name: str, body: bytes | None, compact: str | None
) -> None:
    data = await harness.trigger(name, body)
    row = db_row(harness.db_path, data["runId"])
    assert row is not None, "the trigger answered 200 before the run was committed"
    assert row[:2] == (data["workflowId"], name)
    assert row[3] == compact


# ---- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nope", "Hello", "hello ", "HELLO"])
async def test_unknown_workflow_is_404(harness: Harness, name: str) -> None:
    status, ctype, text = await post(harness, name, b'{"name": "x"}')
    assert (status, ctype) == (404, "application/json")
    assert json.loads(text) == {
        "error": "Failed to start workflow",
        "details": f"Could not find workflow '{name}'",
    }
    with sqlite3.connect(harness.db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)


@pytest.mark.parametrize(
    ("body", "details"),
    [
        (b"notjson", "expected ident at line 1 column 2"),
        (b'{"name": "a"} xx', "trailing characters at line 1 column 15"),
        (b'{"name":"a"}}', "trailing characters at line 1 column 13"),
        (b"1 2", "trailing characters at line 1 column 3"),
        (b'{"name":', "EOF while parsing a value at line 1 column 8"),
        (b'{\n  "a": 1,\n  "b": tru\n}', "expected ident at line 3 column 11"),
        (b'{"a": 1,}', "trailing comma at line 1 column 9"),
        (b"[1, 2", "EOF while parsing a list at line 1 column 5"),
        (b"{'a': 1}", "key must be a string at line 1 column 2"),
        (b"NaN", "expected value at line 1 column 1"),
        (b'"\\ud800"', "lone surrogate in hex escape at line 1 column 7"),
        (b'\xef\xbb\xbf{"a": 1}', "unexpected UTF-8 byte order mark at line 1 column 1"),
    ],
    ids=[
        "ident",
        "trailing-word",
        "trailing-brace",
        "two-values",
        "truncated",
        "multiline",
        "trailing-comma",
        "open-list",
        "single-quotes",
        "nan",
        "lone-surrogate",
        "bom",
    ],
)
async def test_invalid_json_is_400_saying_where(harness: Harness, body: bytes, details: str) -> None:
    status, ctype, text = await post(harness, "hello", body)
    assert (status, ctype) == (400, "application/json")
    assert json.loads(text) == {"error": "Invalid JSON body", "details": details}
    with sqlite3.connect(harness.db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)


async def test_same_workflow_id_running_is_409_naming_the_run(harness: Harness) -> None:
    first = await harness.trigger("slow", b'{"n": 1}')
    status, ctype, text = await post(harness, "slow", b'{ "n" : 1 }')  # same compact form, same id
    assert (status, ctype) == (409, "application/json")
    body = json.loads(text)
    assert list(body) == ["error", "details"]
    assert body["error"] == "Failed to start workflow"
    assert first["runId"] in body["details"]
    assert first["workflowId"] in body["details"]
    # a different input is a different workflowId and starts fine
    other = await harness.trigger("slow", b'{"n": 2}')
    assert other["workflowId"] != first["workflowId"]


async def test_no_input_run_conflicts_only_with_itself(harness: Harness) -> None:
    first = await harness.trigger("slow")
    status, _, text = await post(harness, "slow")
    assert status == 409
    assert first["runId"] in json.loads(text)["details"]
    with_input = await harness.trigger("slow", b"1")
    assert with_input["workflowId"] == expected_id("slow", "1")


async def test_after_terminate_the_same_id_can_be_triggered_again(harness: Harness) -> None:
    first = await harness.trigger("slow", b'{"n": 1}')
    resp = await harness.client.post(
        f"/admin/workflows/{first['workflowId']}/terminate", headers=harness.headers
    )
    assert resp.status == 200, await resp.text()
    second = await harness.trigger("slow", b'{"n": 1}')
    assert second["workflowId"] == first["workflowId"]
    assert second["runId"] != first["runId"]
    with sqlite3.connect(harness.db_path) as db:
        rows = dict(db.execute("SELECT run_id, status FROM runs").fetchall())
    assert rows == {first["runId"]: "TERMINATED", second["runId"]: "RUNNING"}


async def test_after_completion_the_same_id_can_be_triggered_again(harness: Harness) -> None:
    first = await harness.trigger("hello")
    await harness.wait_status(first["runId"], "COMPLETED")
    second = await harness.trigger("hello")
    assert second["workflowId"] == "hello"
    assert second["runId"] != first["runId"]


# ---- input validation of the starting task -----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        (b"[1, 2]", ["'greet'", "Person", "list"]),
        (b'"bob"', ["'greet'", "Person", "str"]),
        (b"42", ["'greet'", "Person", "int"]),
        (b"null", ["'greet'", "Person", "None"]),
        (None, ["'greet'", "Person", "None"]),
        (b"{}", ["'greet'", "Person", "missing field 'name'"]),
        (b'{"email": "b@x"}', ["'greet'", "Person", "missing field 'name'"]),
        (b'{"name": "bob", "age": 3}', ["'greet'", "Person", "unknown field 'age'"]),
    ],
    ids=["array", "string", "number", "null", "no-body", "empty-object", "missing-name", "unknown-field"],
)
async def test_bad_input_for_typed_task_fails_the_run(
    harness: Harness, body: bytes | None, needles: list[str]
) -> None:
    data = await harness.trigger("typed", body)
    run = await finished(harness, data["runId"], "FAILED")
    assert run["status"] == "WORKFLOW_EXECUTION_STATUS_FAILED"
    for needle in needles:
        assert needle in run["error"], run["error"]
    # a validation failure is not retried: one attempt, InputError
    assert [(t["task"], t["status"], t["error_type"]) for t in run["tasks"]] == [
        ("greet", "FAILED", "InputError")
    ]
    with sqlite3.connect(harness.db_path) as db:
        status, error = db.execute(
            "SELECT status, error FROM runs WHERE run_id = ?", (data["runId"],)
        ).fetchone()
    assert status == "FAILED"
    assert "'greet'" in error


async def test_good_input_for_typed_task_completes(harness: Harness) -> None:
    data = await harness.trigger("typed", b'{"name": "bob", "email": "b@x"}')
    run = await finished(harness, data["runId"], "COMPLETED")
    assert run["tasks"][0]["output"] == "hi bob"
    assert run["error"] is None


# ---- concurrency --------------------------------------------------------------------------------


async def test_20_concurrent_triggers_of_one_workflow_id(harness: Harness) -> None:
    results = await asyncio.gather(*(post(harness, "slow", b'{"same": true}') for _ in range(20)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] + [409] * 19
    winner = json.loads(next(text for status, _, text in results if status == 200))
    for status, _, text in results:
        if status == 409:
            body = json.loads(text)
            assert body["error"] == "Failed to start workflow"
            assert winner["runId"] in body["details"]
    with sqlite3.connect(harness.db_path) as db:
        rows = db.execute("SELECT run_id, workflow_id, status FROM runs").fetchall()
    assert rows == [(winner["runId"], winner["workflowId"], "RUNNING")]


async def test_50_concurrent_triggers_with_distinct_inputs(harness: Harness) -> None:
    results = await asyncio.gather(*(post(harness, "slow", f'{{"i": {i}}}'.encode()) for i in range(50)))
    assert [status for status, _, _ in results] == [200] * 50
    bodies = [json.loads(text) for _, _, text in results]
    expected = {expected_id("slow", f'{{"i":{i}}}') for i in range(50)}
    assert {b["workflowId"] for b in bodies} == expected
    assert len({b["runId"] for b in bodies}) == 50
    with sqlite3.connect(harness.db_path) as db:
        stored = dict(db.execute("SELECT run_id, workflow_id FROM runs WHERE status = 'RUNNING'").fetchall())
    assert stored == {b["runId"]: b["workflowId"] for b in bodies}
