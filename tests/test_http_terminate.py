"""POST /admin/workflows/{name}/terminate and /cancel over real HTTP (issue #2 §4, contract §1.5, §5.4)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import Harness, executions

TERMINATED = "WORKFLOW_EXECUTION_STATUS_TERMINATED"


async def call(h: Harness, name: str, action: str, body: bytes | None = None) -> tuple[int, str, Any]:
    resp = await h.client.post(f"/admin/workflows/{name}/{action}", data=body, headers=h.headers)
    text = await resp.text()
    return resp.status, resp.content_type, json.loads(text)


async def wait_log(h: Harness, needle: str, within_s: float = 5.0) -> list[str]:
    """Wait until a line containing `needle` is in the fixture's executions.log."""
    deadline = time.monotonic() + within_s
    while True:
        lines = executions(h.project)
        if any(needle in line for line in lines):
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} never appeared in executions.log: {lines}")
        await asyncio.sleep(0.01)


async def wait_attempt_row(h: Harness, run_id: str, within_s: float = 5.0) -> None:
    """The attempt row of a started task is written without waiting: wait until it is readable."""
    deadline = time.monotonic() + within_s
    while True:
        if (await h.run(run_id))["tasks"]:
            return
        assert time.monotonic() < deadline, f"run {run_id} never showed a task attempt"
        await asyncio.sleep(0.005)


def refs(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(workflowId, runId) of each run a stop response lists; a listed status must be the final one."""
    for r in data["runs"]:
        if "status" in r and data["status"] == "terminated":
            assert r["status"] == TERMINATED, r
    return [(r["workflowId"], r["runId"]) for r in data["runs"]]


def db_status(h: Harness, run_id: str) -> tuple[str, str | None] | None:
    with sqlite3.connect(h.db_path) as db:
        row: tuple[str, str | None] | None = db.execute(
            "SELECT status, error FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
    return row


async def history_status(h: Harness, run_id: str) -> str:
    resp = await h.client.get("/admin/workflows/history?limit=1000", headers=h.headers)
    assert resp.status == 200
    [entry] = [e for e in await resp.json() if e["run_id"] == run_id]
    status: str = entry["status"]
    return status


# ---- terminate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [None, b"{}", b"not json at all"], ids=["no-body", "json", "garbage"])
async def test_terminate_by_workflow_id(harness: Harness, body: bytes | None) -> None:
    run = await harness.trigger("slow", b'{"n": 1}')
    wid = run["workflowId"]
    assert wid.startswith("slow-")
    status, ctype, data = await call(harness, wid, "terminate", body)  # the body is ignored
    assert (status, ctype) == (200, "application/json")
    assert list(data)[:2] == ["status", "message"]
    assert data["status"] == "terminated"
    assert data["message"] == f"'{wid}' terminated successfully\n"
    assert refs(data) == [(wid, run["runId"])]
    # terminated at once: in SQLite and in history before any waiting
    assert db_status(harness, run["runId"]) == ("TERMINATED", "Terminated by user request")
    assert await history_status(harness, run["runId"]) == TERMINATED
    detail = await harness.run(run["runId"])
    assert detail["status"] == TERMINATED
    assert detail["ended_at"] is not None


async def test_terminate_by_name_stops_every_input_run(harness: Harness) -> None:
    """MooseStack's terminate-by-name cannot reach `name-<hash>` runs; ours stops them all."""
    runs = [await harness.trigger("slow", f'{{"n": {i}}}'.encode()) for i in range(3)]
    other = await harness.trigger("blocking", b"1")  # another workflow is left alone
    status, _, data = await call(harness, "slow", "terminate")
    assert status == 200
    assert data["message"] == "'slow' terminated successfully\n"
    assert sorted(refs(data)) == sorted((r["workflowId"], r["runId"]) for r in runs)
    for r in runs:
        assert db_status(harness, r["runId"]) == ("TERMINATED", "Terminated by user request")
        assert await history_status(harness, r["runId"]) == TERMINATED
    assert db_status(harness, other["runId"]) == ("RUNNING", None)


async def test_terminate_by_name_stops_no_input_and_input_runs_together(harness: Harness) -> None:
    plain = await harness.trigger("slow")
    hashed = await harness.trigger("slow", b'{"n": 1}')
    status, _, data = await call(harness, "slow", "terminate")
    assert status == 200
    assert sorted(refs(data)) == sorted((r["workflowId"], r["runId"]) for r in (plain, hashed))
    assert db_status(harness, plain["runId"]) == ("TERMINATED", "Terminated by user request")
    assert db_status(harness, hashed["runId"]) == ("TERMINATED", "Terminated by user request")


async def test_terminate_does_not_run_on_cancel(harness: Harness) -> None:
    run = await harness.trigger("slow")
    await wait_log(harness, f"{run['runId']} slow started")
    status, _, _ = await call(harness, "slow", "terminate")
    assert status == 200
    await asyncio.sleep(0.1)  # give a wrongly scheduled on_cancel the chance to run
    assert executions(harness.project) == [f"{run['runId']} slow started"]
    detail = await harness.run(run["runId"])
    assert detail["status"] == TERMINATED
    assert [(t["task"], t["status"], t["output"]) for t in detail["tasks"]] == [
        ("sleepy", "TERMINATED", None)
    ]


async def test_terminate_frees_the_id_and_history_keeps_both(harness: Harness) -> None:
    first = await harness.trigger("slow")
    assert (await call(harness, "slow", "terminate"))[0] == 200
    second = await harness.trigger("slow")
    assert second["runId"] != first["runId"]
    assert db_status(harness, first["runId"]) == ("TERMINATED", "Terminated by user request")
    assert db_status(harness, second["runId"]) == ("RUNNING", None)


@pytest.mark.parametrize("name", ["nope", "chain", "slow-0000000000000000"])
async def test_terminate_something_that_never_ran_is_404(harness: Harness, name: str) -> None:
    status, ctype, data = await call(harness, name, "terminate")
    assert (status, ctype) == (404, "application/json")
    assert data == {
        "error": "Failed to terminate workflow",
        "details": f"Could not find a running workflow '{name}'",
    }


@pytest.mark.parametrize("by", ["name", "workflowId"])
async def test_terminate_a_finished_run_is_409(harness: Harness, by: str) -> None:
    run = await harness.trigger("hello", b'{"name": "done"}')
    await harness.wait_status(run["runId"], "COMPLETED")
    target = "hello" if by == "name" else run["workflowId"]
    status, ctype, data = await call(harness, target, "terminate")
    assert (status, ctype) == (409, "application/json")
    assert data == {
        "error": "Failed to terminate workflow",
        "details": f"Workflow '{target}' has already completed",
    }
    assert db_status(harness, run["runId"]) == ("COMPLETED", None)


async def test_terminate_twice_is_409_the_second_time(harness: Harness) -> None:
    await harness.trigger("slow")
    assert (await call(harness, "slow", "terminate"))[0] == 200
    status, _, data = await call(harness, "slow", "terminate")
    assert status == 409
    assert data["details"] == "Workflow 'slow' has already completed"


async def test_terminate_blocking_def_is_immediate_and_its_late_result_is_dropped(harness: Harness) -> None:
    run = await harness.trigger("blocking")
    await wait_log(harness, f"{run['runId']} blocking started")
    status, _, data = await call(harness, "blocking", "terminate")
    assert status == 200
    assert refs(data) == [("blocking", run["runId"])]
    # TERMINATED at once, although the thread is still running
    assert db_status(harness, run["runId"]) == ("TERMINATED", "Terminated by user request")
    assert (await harness.run(run["runId"]))["status"] == TERMINATED
    # the thread notices ctx.cancelled, keeps going 0.2 s, then returns "late"
    await wait_log(harness, f"{run['runId']} blocking returned cancelled=True")
    await asyncio.sleep(0.3)
    detail = await harness.run(run["runId"])
    assert detail["status"] == TERMINATED
    assert detail["error"] == "Terminated by user request"
    assert [(t["task"], t["status"], t["output"]) for t in detail["tasks"]] == [("block", "TERMINATED", None)]
    assert db_status(harness, run["runId"]) == ("TERMINATED", "Terminated by user request")
    with sqlite3.connect(harness.db_path) as db:
        assert db.execute(
            "SELECT COUNT(*) FROM task_attempts WHERE run_id = ? AND output IS NOT NULL", (run["runId"],)
        ).fetchone() == (0,)


# ---- cancel -------------------------------------------------------------------------------------


async def test_cancel_runs_on_cancel_with_the_same_state_and_ends_canceled(harness: Harness) -> None:
    run = await harness.trigger("slow")
    await wait_log(harness, f"{run['runId']} slow started")
    status, ctype, data = await call(harness, "slow", "cancel")
    assert (status, ctype) == (200, "application/json")
    assert data["status"] == "cancelled"
    assert data["message"] == "'slow' cancellation requested successfully\n"
    assert data["runs"] == [
        {"workflowId": "slow", "runId": run["runId"], "status": "WORKFLOW_EXECUTION_STATUS_CANCELED"}
    ]
    assert executions(harness.project) == [
        f"{run['runId']} slow started",
        f"{run['runId']} slow on_cancel state=['started']",
    ]
    await harness.wait_status(run["runId"], "CANCELED", within_s=2)
    detail = await harness.run(run["runId"])  # a second read: the first may be torn (test at the end)
    assert [(t["task"], t["status"]) for t in detail["tasks"]] == [("sleepy", "CANCELED")]
    assert db_status(harness, run["runId"]) == ("CANCELED", "Cancelled by user request")
    assert await history_status(harness, run["runId"]) == "WORKFLOW_EXECUTION_STATUS_CANCELED"


async def test_cancel_by_workflow_id_reaches_input_runs(harness: Harness) -> None:
    run = await harness.trigger("slow", b'{"n": 5}')
    await wait_log(harness, f"{run['runId']} slow started")
    status, _, data = await call(harness, run["workflowId"], "cancel")
    assert status == 200
    assert [r["runId"] for r in data["runs"]] == [run["runId"]]
    assert db_status(harness, run["runId"]) == ("CANCELED", "Cancelled by user request")


async def test_cancel_a_finished_run_is_409(harness: Harness) -> None:
    run = await harness.trigger("hello")
    await harness.wait_status(run["runId"], "COMPLETED")
    status, ctype, data = await call(harness, "hello", "cancel")
    assert (status, ctype) == (409, "application/json")
    assert data == {"error": "Failed to cancel workflow", "details": "Workflow 'hello' has already completed"}
    assert db_status(harness, run["runId"]) == ("COMPLETED", None)


@pytest.mark.parametrize("name", ["nope", "chain"])
async def test_cancel_unknown_is_404(harness: Harness, name: str) -> None:
    status, ctype, data = await call(harness, name, "cancel")
    assert (status, ctype) == (404, "application/json")
    assert data == {
        "error": "Failed to cancel workflow",
        "details": f"Could not find a running workflow '{name}'",
    }


async def test_cancel_blocking_def_ends_canceled_and_drops_its_late_result(harness: Harness) -> None:
    run = await harness.trigger("blocking", b'{"k": 1}')
    await wait_log(harness, f"{run['runId']} blocking started")
    status, _, data = await call(harness, run["workflowId"], "cancel")
    assert status == 200
    assert data["runs"][0]["status"] == "WORKFLOW_EXECUTION_STATUS_CANCELED"
    await wait_log(harness, f"{run['runId']} blocking returned cancelled=True")
    await asyncio.sleep(0.2)
    detail = await harness.run(run["runId"])
    assert detail["status"] == "WORKFLOW_EXECUTION_STATUS_CANCELED"
    assert [(t["task"], t["status"], t["output"]) for t in detail["tasks"]] == [("block", "CANCELED", None)]


# ---- stopping a run while its trigger is still being stored -------------------------------------------


@dataclass
class HeldInsert:
    entered: asyncio.Event  # a trigger reserved its workflowId and is storing its run
    release: asyncio.Event  # let the insert go on


@pytest.fixture
def slow_insert(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> HeldInsert:
    """Hold every run insert until `release` is set.

    A real insert waits for a group commit in the writer thread (milliseconds, more under load); this
    only widens that window so a stop request lands in it deterministically.
    """
    held = HeldInsert(asyncio.Event(), asyncio.Event())
    original = harness.store.insert_run

    async def insert(record: Any) -> None:
        held.entered.set()
        await held.release.wait()
        await original(record)

    monkeypatch.setattr(harness.store, "insert_run", insert)
    return held


async def stop_when_visible(h: Harness, target: str, action: str) -> tuple[int, Any]:
    """Send the stop request until the pending run is visible to it (not 404)."""
    deadline = time.monotonic() + 2
    while True:
        status, _, data = await call(h, target, action)
        if status != 404 or time.monotonic() > deadline:
            return status, data
        await asyncio.sleep(0.005)


async def test_terminate_while_the_trigger_is_being_stored(harness: Harness, slow_insert: HeldInsert) -> None:
    pending = asyncio.ensure_future(
        harness.client.post("/admin/workflows/slow/trigger", headers=harness.headers)
    )
    status, data = await stop_when_visible(harness, "slow", "terminate")
    assert status == 200, data
    [stopped] = data["runs"]
    slow_insert.release.set()
    resp = await pending
    assert resp.status == 200
    await asyncio.sleep(0.2)
    assert db_status(harness, stopped["runId"]) == ("TERMINATED", "Terminated by user request")
    # no user code runs after a 200 from terminate, and the workflowId is free again
    assert f"{stopped['runId']} slow started" not in executions(harness.project)
    again = await harness.client.post("/admin/workflows/slow/trigger", headers=harness.headers)
    assert again.status == 200, await again.text()


async def test_cancel_while_the_trigger_is_being_stored(
    harness: Harness, slow_insert: HeldInsert, monkeypatch: pytest.MonkeyPatch
) -> None:
    cancel_called = asyncio.Event()
    original_cancel = harness.engine.cancel

    async def cancel(*args: Any, **kwargs: Any) -> Any:
        cancel_called.set()  # the engine's cancel then runs on, synchronously, up to its first wait
        return await original_cancel(*args, **kwargs)

    monkeypatch.setattr(harness.engine, "cancel", cancel)
    pending = asyncio.ensure_future(
        harness.client.post("/admin/workflows/slow/trigger", headers=harness.headers)
    )
    await slow_insert.entered.wait()
    cancelling = asyncio.ensure_future(call(harness, "slow", "cancel"))
    await cancel_called.wait()
    slow_insert.release.set()
    status, _, data = await cancelling
    resp = await pending
    assert resp.status == 200
    assert status == 200, data
    run_id = (await resp.json())["runId"]
    await harness.wait_status(run_id, "CANCELED", within_s=0.5)
    assert db_status(harness, run_id) == ("CANCELED", "Cancelled by user request")


# ---- reading a run while it ends ----------------------------------------------------------------


async def test_run_detail_is_not_torn_by_a_run_ending_mid_read(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen unprovoked about once in a thousand polls of a fast `hello` run: status COMPLETED, its only
    task RUNNING with no output. Here the attempts read is held while the run is cancelled."""
    run = await harness.trigger("slow")
    await wait_log(harness, f"{run['runId']} slow started")
    await wait_attempt_row(harness, run["runId"])
    read_done, ended = asyncio.Event(), asyncio.Event()
    original = harness.store.attempts

    async def attempts(run_id: str) -> Any:
        rows = await original(run_id)
        if not read_done.is_set():
            read_done.set()
            await ended.wait()  # a slow reader thread: the run ends before the rows come back
        return rows

    monkeypatch.setattr(harness.store, "attempts", attempts)
    reading = asyncio.ensure_future(harness.run(run["runId"]))
    await read_done.wait()
    assert (await call(harness, "slow", "cancel"))[0] == 200
    ended.set()
    detail = await reading
    assert detail["tasks"], detail
    final = detail["status"] != "WORKFLOW_EXECUTION_STATUS_RUNNING"
    assert not (final and any(t["status"] == "RUNNING" for t in detail["tasks"])), detail
