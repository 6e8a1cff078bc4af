"""Pause/unpause, resume --from, Idempotency-Key and conflict policies, status, list, dev reload."""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, executions, make_harness, write_project

from moose_daemon.loader import load_workflows
from moose_daemon.reloader import Reloader


async def post(h: Harness, path: str, **kwargs: Any) -> tuple[int, Any]:
    resp = await h.client.post(path, headers={**h.headers, **kwargs.pop("headers", {})}, **kwargs)
    return resp.status, await resp.json()


async def get(h: Harness, path: str) -> tuple[int, Any]:
    resp = await h.client.get(path, headers=h.headers)
    return resp.status, await resp.json()


def ran(h: Harness, run_id: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in executions(h.project) if line.startswith(run_id)]


# ---- pause / unpause -------------------------------------------------------------------------------


async def test_pause_stops_at_the_next_task_boundary_and_unpause_continues(harness: Harness) -> None:
    run_id = (await harness.trigger("two-step"))["runId"]
    status, body = await post(harness, "/admin/workflows/two-step/pause")
    assert status == 200 and body["message"] == "'two-step' paused successfully"
    assert [r["runId"] for r in body["runs"]] == [run_id]
    await harness.wait_status(run_id, "PAUSED")  # after p1, before p2
    await asyncio.sleep(0.2)
    assert ran(harness, run_id) == ["p1 start"]
    _, workflows = await get(harness, "/admin/workflows")
    assert next(w for w in workflows["workflows"] if w["name"] == "two-step")["paused"] is True
    status, _ = await post(harness, "/admin/workflows/two-step/unpause")
    assert status == 200
    run = await harness.wait_status(run_id, "COMPLETED")
    assert [t["task"] for t in run["tasks"]] == ["p1", "p2"]
    assert ran(harness, run_id) == ["p1 start", "p2 start"]


async def test_a_run_triggered_while_its_workflow_is_paused_waits(harness: Harness) -> None:
    await post(harness, "/admin/workflows/two-step/pause")
    run_id = (await harness.trigger("two-step", b'{"n": 1}'))["runId"]
    await harness.wait_status(run_id, "PAUSED")
    assert ran(harness, run_id) == []
    await post(harness, "/admin/workflows/two-step/unpause")
    await harness.wait_status(run_id, "COMPLETED")


async def test_pause_one_run_by_workflow_id(harness: Harness) -> None:
    a = await harness.trigger("two-step", b'{"n": 1}')
    b = await harness.trigger("two-step", b'{"n": 2}')
    status, body = await post(harness, f"/admin/workflows/{a['workflowId']}/pause")
    assert status == 200 and [r["runId"] for r in body["runs"]] == [a["runId"]]
    await harness.wait_status(b["runId"], "COMPLETED")
    await harness.wait_status(a["runId"], "PAUSED")
    await post(harness, f"/admin/workflows/{a['workflowId']}/unpause")
    await harness.wait_status(a["runId"], "COMPLETED")


async def test_pausing_nothing_is_an_error(harness: Harness) -> None:
    status, body = await post(harness, "/admin/workflows/nope-123/pause")
    assert status == 404 and body["error"] == "Failed to pause workflow"
    done = await harness.trigger("hello")
    await harness.wait_status(done["runId"], "COMPLETED")
    status, body = await post(harness, "/admin/workflows/hello-0000/unpause")
    assert status == 404


async def test_cancel_and_terminate_reach_a_paused_run(harness: Harness) -> None:
    await post(harness, "/admin/workflows/two-step/pause")
    a = (await harness.trigger("two-step", b"1"))["runId"]
    await harness.wait_status(a, "PAUSED")
    status, _ = await post(harness, "/admin/workflows/two-step/terminate")
    assert status == 200
    await harness.wait_status(a, "TERMINATED")


async def test_a_paused_run_stays_paused_across_a_restart(aiohttp_client: Any, project: Path) -> None:
    db = project / ".moose" / "moose.db"
    h, auth = await make_harness(aiohttp_client, project, db)
    run_id = (await h.trigger("two-step"))["runId"]
    await post(h, "/admin/workflows/two-step/pause")
    await h.wait_status(run_id, "PAUSED")
    await h.engine.stop(1.0)
    auth.close()
    await h.store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone() == ("PAUSED",)

    h2, auth2 = await make_harness(aiohttp_client, project, db)
    try:
        await asyncio.sleep(0.2)
        assert (await h2.run(run_id))["status"].endswith("PAUSED")
        await post(h2, "/admin/workflows/two-step/unpause")
        await h2.wait_status(run_id, "COMPLETED")
        assert ran(h2, run_id) == ["p1 start", "p2 start"]  # p1 finished before the stop: not run again
    finally:
        await h2.engine.stop(1.0)
        auth2.close()
        await h2.store.close()


# ---- resume ----------------------------------------------------------------------------------------


async def test_resume_from_the_failed_task_reuses_its_input_and_skips_earlier_tasks(harness: Harness) -> None:
    first = await harness.trigger("resumable", b'{"job": 7}')
    failed = await harness.wait_status(first["runId"], "FAILED")
    assert "r2 is not allowed yet" in failed["error"]
    (harness.project / "allow-r2").write_text("")
    status, body = await post(harness, "/admin/workflows/resumable/resume", json={"from": "r2"})
    assert status == 200, body
    assert body["workflowId"] == first["workflowId"] and body["resumedFrom"] == first["runId"]
    run = await harness.wait_status(body["runId"], "COMPLETED")
    assert run["start_task"] == "r2" and run["resumed_from"] == first["runId"]
    r2 = next(t for t in run["tasks"] if t["task"] == "r2")
    assert r2["input"] == {"after": "r1", "got": {"job": 7}}  # what r2 received in the failed run
    assert [t["task"] for t in run["tasks"]] == ["r2", "r3"]
    assert ran(harness, first["runId"]) == ["r1", "r2"]
    assert ran(harness, body["runId"]) == ["r2", "r3"]


async def test_resume_a_given_run_by_id_and_from_the_starting_task(harness: Harness) -> None:
    first = await harness.trigger("resumable", b'{"job": 1}')
    await harness.wait_status(first["runId"], "FAILED")
    status, body = await post(
        harness, "/admin/workflows/resumable/resume", json={"from": "r1", "runId": first["runId"]}
    )
    assert status == 200
    run = await harness.wait_status(body["runId"], "FAILED")  # r2 still not allowed
    assert run["input"] == {"job": 1}


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"from": "nope"}, 400, "has no task 'nope' (its tasks: r1, r2, r3)"),
        ({"from": "r3"}, 400, "never ran"),
        ({}, 400, '{"from": "<task name>"}'),
        ({"from": "r1", "runId": 5}, 400, "runId must be a string"),
        ({"from": "r1", "runId": "not-a-run"}, 404, "No run 'not-a-run'"),
    ],
)
async def test_resume_errors(harness: Harness, body: dict[str, Any], status: int, text: str) -> None:
    first = await harness.trigger("resumable")
    await harness.wait_status(first["runId"], "FAILED")
    got, answer = await post(harness, "/admin/workflows/resumable/resume", json=body)
    assert (got, answer["error"]) == (status, "Failed to resume workflow")
    assert text in answer["details"]


async def test_resume_needs_an_ended_unsuccessful_run(harness: Harness) -> None:
    status, body = await post(harness, "/admin/workflows/hello/resume", json={"from": "hello"})
    assert status == 404
    done = await harness.trigger("hello")
    await harness.wait_status(done["runId"], "COMPLETED")
    status, body = await post(
        harness, "/admin/workflows/hello/resume", json={"from": "hello", "runId": done["runId"]}
    )
    assert status == 409 and "COMPLETED" in body["details"]


# ---- duplicate triggers ------------------------------------------------------------------------------


async def test_idempotency_key_returns_the_same_run(harness: Harness) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await post(harness, "/admin/workflows/hello/trigger", data=b'{"name":"a"}', headers=headers)
    again = await post(harness, "/admin/workflows/hello/trigger", data=b'{"name":"a"}', headers=headers)
    assert first[0] == again[0] == 200
    assert first[1]["runId"] == again[1]["runId"]
    with sqlite3.connect(harness.db_path) as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (1,)


async def test_concurrent_retries_with_one_key_start_one_run(harness: Harness) -> None:
    headers = {"Idempotency-Key": "burst"}
    answers = await asyncio.gather(
        *(post(harness, "/admin/workflows/slow/trigger", data=b"1", headers=headers) for _ in range(10))
    )
    assert {status for status, _ in answers} == {200}
    assert len({body["runId"] for _, body in answers}) == 1


async def test_a_key_used_for_another_workflow_is_a_conflict(harness: Harness) -> None:
    await post(harness, "/admin/workflows/hello/trigger", headers={"Idempotency-Key": "k"})
    status, body = await post(harness, "/admin/workflows/chain/trigger", headers={"Idempotency-Key": "k"})
    assert status == 409 and "workflow 'hello'" in body["details"]


async def test_conflict_policies(harness: Harness) -> None:
    first = await harness.trigger("slow")
    status, body = await post(harness, "/admin/workflows/slow/trigger?conflict=use_existing")
    assert status == 200 and body["runId"] == first["runId"]
    status, body = await post(harness, "/admin/workflows/slow/trigger?conflict=terminate_existing")
    assert status == 200 and body["runId"] != first["runId"]
    assert (await harness.run(first["runId"]))["status"].endswith("TERMINATED")
    status, body = await post(harness, "/admin/workflows/slow/trigger?conflict=fail")
    assert status == 409
    status, body = await post(harness, "/admin/workflows/slow/trigger?conflict=maybe")
    assert status == 400 and "use_existing" in body["details"]


# ---- status and list ---------------------------------------------------------------------------------


async def test_status_by_workflow_id_name_and_run_id(harness: Harness) -> None:
    a = await harness.trigger("chain", b"1")
    await harness.wait_status(a["runId"], "COMPLETED")
    b = await harness.trigger("chain", b"2")
    await harness.wait_status(b["runId"], "COMPLETED")
    _, by_id = await get(harness, f"/admin/workflows/{a['workflowId']}/status")
    assert by_id["run_id"] == a["runId"] and [t["output"] for t in by_id["tasks"]] == [2, 3, 4]
    _, by_name = await get(harness, "/admin/workflows/chain/status")
    assert by_name["run_id"] == b["runId"]
    _, by_run = await get(harness, f"/admin/workflows/chain/status?id={a['runId']}")
    assert by_run["run_id"] == a["runId"]
    status, body = await get(harness, "/admin/workflows/never-ran/status")
    assert status == 404 and "No executions found" in body["details"]


async def test_list_shows_every_workflow_with_its_last_run(harness: Harness) -> None:
    run = await harness.trigger("hello")
    await harness.wait_status(run["runId"], "COMPLETED")
    status, body = await get(harness, "/admin/workflows")
    assert status == 200 and body["reload_error"] is None
    by_name = {w["name"]: w for w in body["workflows"]}
    assert set(by_name) >= {"hello", "chain", "slow", "two-step", "resumable"}
    assert by_name["hello"]["last_run"]["run_id"] == run["runId"]
    assert by_name["chain"]["last_run"] is None
    assert by_name["chain"]["tasks"] == ["a", "b", "c"]
    assert by_name["hello"]["schedule"] is None and by_name["hello"]["paused"] is False


# ---- dev reload ----------------------------------------------------------------------------------------

VERSIONED = textwrap.dedent(
    """
    import asyncio
    from typing import Any
    from moose_daemon import Task, TaskConfig, TaskContext, Workflow, WorkflowConfig

    async def run(ctx: TaskContext[Any]) -> str:
        await asyncio.sleep(0.3)
        return "VERSION"

    Workflow(name="versioned", config=WorkflowConfig(starting_task=Task[Any, str](name="v", config=TaskConfig(run=run))))
    """
)


async def test_reload_swaps_definitions_keeps_runs_in_flight_and_survives_a_broken_edit(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    project = write_project(tmp_path / "reload", VERSIONED.replace("VERSION", "v1"))
    h, auth = await make_harness(aiohttp_client, project, project / ".moose" / "moose.db")
    reloader = Reloader(h.engine, lambda: load_workflows(project, "app"), project / "app")
    main = project / "app" / "main.py"
    try:
        in_flight = (await h.trigger("versioned"))["runId"]
        main.write_text(
            VERSIONED.replace("VERSION", "v2")
            + 'Workflow(name="extra", config=WorkflowConfig(starting_task=Task[Any, str](name="e", config=TaskConfig(run=run))))\n'
        )
        assert await reloader.reload()
        assert set(h.engine.workflows) == {"versioned", "extra"}
        old = await h.wait_status(in_flight, "COMPLETED")
        assert old["tasks"][0]["output"] == "v1"  # finished on the code it started with
        new = (await h.trigger("versioned"))["runId"]
        assert (await h.wait_status(new, "COMPLETED"))["tasks"][0]["output"] == "v2"

        main.write_text("import nonexistent_module_xyz\n")
        assert not await reloader.reload()
        _, listing = await get(h, "/admin/workflows")
        assert "nonexistent_module_xyz" in listing["reload_error"]
        assert {w["name"] for w in listing["workflows"]} == {"versioned", "extra"}  # the previous ones stay
        third = (await h.trigger("extra"))["runId"]
        await h.wait_status(third, "COMPLETED")
    finally:
        await h.engine.stop(1.0)
        auth.close()
        await h.store.close()


async def test_the_reloader_notices_a_file_change(aiohttp_client: Any, tmp_path: Path) -> None:
    project = write_project(tmp_path / "watch", VERSIONED.replace("VERSION", "v1"))
    h, auth = await make_harness(aiohttp_client, project, project / ".moose" / "moose.db")
    reloader = Reloader(h.engine, lambda: load_workflows(project, "app"), project / "app", interval_s=0.05)
    task = asyncio.create_task(reloader.run())
    try:
        await asyncio.sleep(0.1)
        (project / "app" / "more.py").write_text("# a new file\n")
        (project / "app" / "main.py").write_text(
            VERSIONED.replace("VERSION", "v1").replace('"versioned"', '"renamed"')
        )
        for _ in range(100):
            if "renamed" in h.engine.workflows:
                break
            await asyncio.sleep(0.05)
        assert set(h.engine.workflows) == {"renamed"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await h.engine.stop(1.0)
        auth.close()
        await h.store.close()


RETRIED_RESUME = textwrap.dedent(
    """
    from pathlib import Path
    from typing import Any
    from moose_daemon import Task, TaskConfig, TaskContext, Workflow, WorkflowConfig

    LOG = Path(__file__).resolve().parent.parent / "executions.log"

    def step(ctx: TaskContext[Any]) -> str:
        with LOG.open("a") as f:
            f.write(f"{ctx.run_id} {ctx.task}\\n")
        if ctx.task == "s2":
            raise RuntimeError("s2 fails")
        return "s1 out"

    s2 = Task[Any, str](name="s2", config=TaskConfig(run=step, retries=0))
    s1 = Task[Any, str](name="s1", config=TaskConfig(run=step, on_complete=[s2]))
    Workflow(name="twice", config=WorkflowConfig(starting_task=s1, retries=1))
    """
)


async def test_a_resumed_run_is_retried_from_where_it_resumed(aiohttp_client: Any, tmp_path: Path) -> None:
    project = write_project(tmp_path / "retried", RETRIED_RESUME)
    h, auth = await make_harness(aiohttp_client, project, project / ".moose" / "moose.db")
    try:
        first = await h.trigger("twice")  # fails, and its workflow retry fails too
        for _ in range(200):
            _, rows = await get(h, "/admin/workflows/history?workflow=twice")
            if len(rows) == 2 and all(r["status"].endswith("FAILED") for r in rows):
                break
            await asyncio.sleep(0.02)
        status, body = await post(h, "/admin/workflows/twice/resume", json={"from": "s2"})
        assert status == 200, body
        for _ in range(200):
            _, rows = await get(h, "/admin/workflows/history?workflow=twice")
            if len(rows) == 4 and all(r["status"].endswith("FAILED") for r in rows):
                break
            await asyncio.sleep(0.02)
        assert len(rows) == 4, rows
        retry = rows[0]  # the resumed run's own workflow-level retry
        assert retry["attempt"] == 2 and retry["name"] == first["workflowId"]
        detail = await h.run(retry["run_id"])
        assert detail["start_task"] == "s2" and [t["task"] for t in detail["tasks"]] == ["s2"]
        assert [t["input"] for t in detail["tasks"]] == ["s1 out"]
    finally:
        await h.engine.stop(1.0)
        auth.close()
        await h.store.close()
