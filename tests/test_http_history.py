"""GET /admin/workflows/history over real HTTP (issue #2 §4, contract §1.6).

Most tests write rows straight into the SQLite file (the store's own schema) so that timestamps,
statuses and row counts are exact and thousands of rows cost milliseconds.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness

PREFIX = "WORKFLOW_EXECUTION_STATUS_"
STARTED_AT = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6} UTC")
DURATION = re.compile(r"\d+ms|\d+s|\d+m \d+s|\d+h \d+m \d+s")
T0 = 1_796_412_340_705_401  # 2026-12-04 19:25:40.705401 UTC, in microseconds


@dataclass
class Row:
    run_id: str
    workflow_id: str
    workflow: str
    status: str
    started_at: int
    ended_at: int | None = None
    input: str | None = None
    error: str | None = None
    attempt: int = 1


def rid(i: int) -> str:
    return f"00000000-0000-7000-8000-{i:012d}"


def insert(db_path: Path, rows: Iterable[Row]) -> None:
    with sqlite3.connect(db_path) as db:
        db.executemany(
            "INSERT INTO runs (run_id, workflow_id, workflow, status, input, started_at, ended_at, error, attempt)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (
                    r.run_id,
                    r.workflow_id,
                    r.workflow,
                    r.status,
                    r.input,
                    r.started_at,
                    r.ended_at,
                    r.error,
                    r.attempt,
                )
                for r in rows
            ],
        )


def completed(i: int, started_at: int, workflow: str = "hello", status: str = "COMPLETED") -> Row:
    """A closed run with a workflowId of its own (so any number can coexist)."""
    return Row(rid(i), f"{workflow}-{i:016x}", workflow, status, started_at, started_at + 1000)


async def get(h: Harness, query: str = "") -> tuple[int, Any, Any]:
    resp = await h.client.get(f"/admin/workflows/history{query}", headers=h.headers)
    text = await resp.text()
    body = json.loads(text) if resp.content_type == "application/json" else text
    return resp.status, resp.headers, body


async def ok(h: Harness, query: str = "") -> list[dict[str, Any]]:
    status, _, body = await get(h, query)
    assert status == 200, body
    assert isinstance(body, list)
    return body


def display(us: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).strftime(
        "%Y-%m-%d %H:%M:%S.%f UTC"
    )


# ---- shape and order ----------------------------------------------------------------------------


async def test_empty_history_is_an_empty_array(harness: Harness) -> None:
    resp = await harness.client.get("/admin/workflows/history", headers=harness.headers)
    assert (resp.status, resp.content_type) == (200, "application/json")
    assert await resp.text() == "[]"
    assert "X-Next-Cursor" not in resp.headers


async def test_real_runs_newest_first_with_moosestack_keys(harness: Harness) -> None:
    runs = [await harness.trigger("hello", f'{{"name": "n{i}"}}'.encode()) for i in range(3)]
    for r in runs:
        await harness.wait_status(r["runId"], "COMPLETED")
    entries = await ok(harness)
    assert [e["run_id"] for e in entries] == [r["runId"] for r in reversed(runs)]
    for entry, run in zip(entries, reversed(runs), strict=True):
        assert list(entry)[:5] == ["name", "run_id", "status", "started_at", "duration"]
        assert entry["name"] == run["workflowId"]  # the workflowId, not the bare workflow name
        assert entry["workflow"] == "hello"
        assert entry["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"
        assert STARTED_AT.fullmatch(entry["started_at"]), entry["started_at"]
        assert re.fullmatch(r"\d+ms", entry["duration"]), entry["duration"]
        started = datetime.strptime(entry["started_at"], "%Y-%m-%d %H:%M:%S.%f UTC").replace(tzinfo=UTC)
        assert abs(started.timestamp() - time.time()) < 60


async def test_order_is_by_start_time_not_by_insertion(harness: Harness) -> None:
    insert(harness.db_path, [completed(1, T0 + 5), completed(2, T0 + 50), completed(3, T0 + 1)])
    assert [e["run_id"] for e in await ok(harness)] == [rid(2), rid(1), rid(3)]


async def test_default_limit_is_10(harness: Harness) -> None:
    insert(harness.db_path, [completed(i, T0 + i) for i in range(15)])
    entries = await ok(harness)
    assert [e["run_id"] for e in entries] == [rid(i) for i in range(14, 4, -1)]


@pytest.mark.parametrize(
    ("limit", "expected"), [(1, 1), (7, 7), (999, 999), (1000, 1000), (1001, 1000), (5000, 1000)]
)
async def test_limit_is_capped_at_1000(harness: Harness, limit: int, expected: int) -> None:
    insert(harness.db_path, [completed(i, T0 + i) for i in range(1200)])
    status, headers, entries = await get(harness, f"?limit={limit}")
    assert status == 200
    assert len(entries) == expected
    assert entries[0]["run_id"] == rid(1199)
    assert entries[-1]["run_id"] == rid(1200 - expected)
    assert headers["X-Next-Cursor"]  # there is more to read


@pytest.mark.parametrize(
    ("started", "ended", "duration"),
    [
        (T0, T0, "0ms"),
        (T0, T0 + 95_000, "95ms"),
        (T0, T0 + 999_999, "999ms"),
        (T0, T0 + 1_000_000, "1s"),
        (T0, T0 + 42_900_000, "42s"),
        (T0, T0 + 59_999_999, "59s"),
        (T0, T0 + 98_000_000, "1m 38s"),
        (T0, T0 + 3_599_000_000, "59m 59s"),
        (T0, T0 + 3_600_000_000, "1h 0m 0s"),
        (T0, T0 + 7_205_000_000, "2h 0m 5s"),
        (T0, T0 + 90_061_000_000, "25h 1m 1s"),
    ],
)
async def test_started_at_and_duration_formats(
    harness: Harness, started: int, ended: int, duration: str
) -> None:
    insert(harness.db_path, [Row(rid(1), "hello", "hello", "COMPLETED", started, ended)])
    [entry] = await ok(harness)
    assert entry["started_at"] == "2026-12-04 19:25:40.705401 UTC"
    assert entry["duration"] == duration


@pytest.mark.parametrize("us", [0, 1, 999_999, 1_000_000, 86_399_999_999, T0, 4_102_444_799_999_999])
async def test_started_at_keeps_every_microsecond(harness: Harness, us: int) -> None:
    insert(harness.db_path, [Row(rid(1), "hello", "hello", "COMPLETED", us, us)])
    [entry] = await ok(harness)
    assert entry["started_at"] == display(us)


async def test_running_duration_counts_to_now(harness: Harness) -> None:
    started = time.time_ns() // 1000 - 3_725_000_000  # 1h 2m 5s ago
    insert(harness.db_path, [Row(rid(1), "slow-x", "slow", "RUNNING", started)])
    [entry] = await ok(harness)
    assert entry["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"
    assert entry["duration"] in ("1h 2m 5s", "1h 2m 6s")
    assert entry["ended_at"] is None


# ---- filters ------------------------------------------------------------------------------------

STATUSES = ["RUNNING", "COMPLETED", "FAILED", "CANCELED", "TERMINATED", "TIMED_OUT", "PAUSED"]


def one_of_each(db_path: Path) -> None:
    insert(
        db_path,
        [
            Row(
                rid(i),
                f"wf-{s.lower()}",
                "hello",
                s,
                T0 + i,
                None if s in ("RUNNING", "PAUSED") else T0 + i + 5,
            )
            for i, s in enumerate(STATUSES)
        ],
    )


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ("RUNNING", "RUNNING"),
        ("running", "RUNNING"),
        ("Running", "RUNNING"),
        ("WORKFLOW_EXECUTION_STATUS_RUNNING", "RUNNING"),
        ("workflow_execution_status_running", "RUNNING"),
        ("completed", "COMPLETED"),
        ("WORKFLOW_EXECUTION_STATUS_COMPLETED", "COMPLETED"),
        ("FAILED", "FAILED"),
        ("canceled", "CANCELED"),
        ("cancelled", "CANCELED"),
        ("CANCELLED", "CANCELED"),
        ("WORKFLOW_EXECUTION_STATUS_CANCELED", "CANCELED"),
        ("terminated", "TERMINATED"),
        ("timed_out", "TIMED_OUT"),
        ("WORKFLOW_EXECUTION_STATUS_TIMED_OUT", "TIMED_OUT"),
        ("paused", "PAUSED"),  # added after issue #2 with pause/unpause
    ],
)
async def test_status_filter_spellings(harness: Harness, value: str, status: str) -> None:
    one_of_each(harness.db_path)
    entries = await ok(harness, f"?status={value}")
    assert [(e["run_id"], e["status"]) for e in entries] == [(rid(STATUSES.index(status)), PREFIX + status)]


async def test_status_and_limit_together_as_in_the_seed(harness: Harness) -> None:
    insert(
        harness.db_path, [completed(i, T0 + i, status="RUNNING" if i % 2 else "COMPLETED") for i in range(50)]
    )
    entries = await ok(harness, "?status=RUNNING&limit=20")
    assert [e["run_id"] for e in entries] == [rid(i) for i in range(49, 9, -2)]
    assert {e["status"] for e in entries} == {PREFIX + "RUNNING"}


async def test_workflow_filter(harness: Harness) -> None:
    insert(
        harness.db_path,
        [
            Row(rid(1), "slow", "slow", "COMPLETED", T0 + 1, T0 + 2),
            Row(rid(2), "slow-0123456789abcdef", "slow", "COMPLETED", T0 + 2, T0 + 3),
            Row(rid(3), "hello", "hello", "COMPLETED", T0 + 3, T0 + 4),
        ],
    )
    assert [e["run_id"] for e in await ok(harness, "?workflow=slow")] == [rid(2), rid(1)]
    assert [e["run_id"] for e in await ok(harness, "?workflow=hello")] == [rid(3)]
    assert await ok(harness, "?workflow=nope") == []
    # combined with a status
    assert await ok(harness, "?workflow=slow&status=failed") == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?since=2000", [3, 2]),
        ("?since=2000.0", [3, 2]),
        ("?since=2000.000001", [3]),
        ("?until=2000", [1]),
        ("?until=2000.000001", [2, 1]),
        ("?since=1500&until=3000", [2]),
        ("?since=3001", []),
        ("?since=0&until=99999", [3, 2, 1]),
    ],
)
async def test_since_and_until(harness: Harness, query: str, expected: list[int]) -> None:
    insert(harness.db_path, [completed(i, i * 1000 * 1_000_000) for i in (1, 2, 3)])
    assert [e["run_id"] for e in await ok(harness, query)] == [rid(i) for i in expected]


async def test_unknown_parameters_are_ignored(harness: Harness) -> None:
    insert(harness.db_path, [completed(1, T0)])
    assert [e["run_id"] for e in await ok(harness, "?foo=bar&page=3")] == [rid(1)]


# ---- bad queries --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("?status=bogus", "bogus"),
        ("?status=RUN", "RUN"),
        ("?status=timedout", "timedout"),
        ("?status=WORKFLOW_EXECUTION_STATUS_BOGUS", "WORKFLOW_EXECUTION_STATUS_BOGUS"),
        ("?limit=abc", "abc"),
        ("?limit=0", "'0'"),
        ("?limit=-1", "-1"),
        ("?limit=1.5", "1.5"),
        ("?limit=1e3", "1e3"),
        ("?limit=", "''"),
        ("?limit=%2B5", "+5"),
        ("?limit=5&limit=6", "'limit'"),
        ("?status=running&status=failed", "'status'"),
        ("?workflow=a&workflow=b", "'workflow'"),
        ("?since=abc", "abc"),
        ("?until=yesterday", "yesterday"),
        ("?since=nan", "nan"),
        ("?cursor=garbage", "garbage"),
        ("?cursor=123", "123"),
        ("?cursor=abc_def", "abc_def"),
        ("?cursor=1_a&cursor=2_b", "'cursor'"),
    ],
)
async def test_bad_query_is_400_json(harness: Harness, query: str, needle: str) -> None:
    insert(harness.db_path, [completed(1, T0)])
    status, headers, body = await get(harness, query)
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    assert list(body) == ["error", "details"]
    assert body["error"] == "Invalid query"
    assert needle in body["details"]


async def test_superscript_digit_limit_is_400(harness: Harness) -> None:
    status, _, body = await get(harness, "?limit=%C2%B2")  # '²'
    assert status == 400, body
    assert body["error"] == "Invalid query"


@pytest.mark.parametrize("query", ["?since=inf", "?until=-inf", "?since=1e300"])
async def test_out_of_range_timestamp_is_400(harness: Harness, query: str) -> None:
    status, _, body = await get(harness, query)
    assert status == 400, body
    assert body["error"] == "Invalid query"


@pytest.mark.parametrize("cursor", ["%C2%B2_x", "99999999999999999999_x"], ids=["unicode-digit", "huge"])
async def test_malformed_cursor_is_400(harness: Harness, cursor: str) -> None:
    status, _, body = await get(harness, f"?cursor={cursor}")
    assert status == 400, body
    assert body["error"] == "Invalid query"


# ---- cursor paging ------------------------------------------------------------------------------


async def walk(h: Harness, query: str, between_pages: Any = None) -> tuple[list[str], int]:
    """Follow X-Next-Cursor to the end; return the run_ids seen, in order, and the page count."""
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        q = query + (f"&cursor={cursor}" if cursor else "")
        status, headers, body = await get(h, q)
        assert status == 200, body
        pages += 1
        seen += [e["run_id"] for e in body]
        cursor = headers.get("X-Next-Cursor")
        if cursor is None:
            return seen, pages
        assert pages < 100, "paging does not end"
        if between_pages is not None:
            await between_pages(pages)


async def test_cursor_walks_every_row_once_while_new_runs_arrive(harness: Harness) -> None:
    # 23 rows, some sharing a start time, so that ties are broken by run_id
    # in 2001, so that every run started during the test is newer than all of them
    rows = [completed(i, 1_000_000_000_000_000 + (i // 3) * 1000) for i in range(23)]
    insert(harness.db_path, rows)
    expected = [r.run_id for r in sorted(rows, key=lambda r: (r.started_at, r.run_id), reverse=True)]
    added: list[str] = []

    async def new_runs(page: int) -> None:
        insert(harness.db_path, [completed(1000 + page, time.time_ns() // 1000)])
        added.append((await harness.trigger("hello", f'{{"page": {page}}}'.encode()))["runId"])

    seen, pages = await walk(harness, "?limit=5", new_runs)
    assert pages == 5
    assert seen == expected
    # the newer runs were stored, they just belong before the first page
    assert {e["run_id"] for e in await ok(harness, "?limit=1000")} >= set(added)


async def test_cursor_with_all_rows_at_one_instant(harness: Harness) -> None:
    rows = [completed(i, T0) for i in range(12)]
    insert(harness.db_path, rows)
    seen, pages = await walk(harness, "?limit=5")
    assert seen == [rid(i) for i in range(11, -1, -1)]
    assert pages == 3


async def test_cursor_when_rows_fill_the_last_page_exactly(harness: Harness) -> None:
    insert(harness.db_path, [completed(i, T0 + i) for i in range(10)])
    seen, pages = await walk(harness, "?limit=5")
    assert seen == [rid(i) for i in range(9, -1, -1)]
    assert pages == 3  # the third page is empty and has no cursor


async def test_cursor_keeps_the_filters(harness: Harness) -> None:
    insert(
        harness.db_path,
        [
            completed(
                i,
                T0 + i,
                workflow="slow" if i % 3 == 0 else "hello",
                status="FAILED" if i % 2 else "COMPLETED",
            )
            for i in range(60)
        ],
    )
    seen, _ = await walk(harness, "?limit=4&workflow=slow&status=completed")
    assert seen == [rid(i) for i in range(59, -1, -1) if i % 3 == 0 and i % 2 == 0]


async def test_no_cursor_when_the_page_is_not_full(harness: Harness) -> None:
    insert(harness.db_path, [completed(i, T0 + i) for i in range(4)])
    status, headers, body = await get(harness, "?limit=5")
    assert status == 200
    assert len(body) == 4
    assert "X-Next-Cursor" not in headers
