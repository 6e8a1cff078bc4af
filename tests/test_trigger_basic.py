from __future__ import annotations

import sqlite3

from conftest import Harness, executions


async def test_trigger_without_input_completes(harness: Harness) -> None:
    body = await harness.trigger("hello")
    assert body["workflowId"] == "hello"
    assert body["dashboardUrl"].endswith(f"/admin/runs/{body['runId']}")
    run = await harness.wait_status(body["runId"], "COMPLETED")
    assert run["tasks"][0]["output"] == {"hello": "world"}


async def test_trigger_is_stored_before_the_response(harness: Harness) -> None:
    body = await harness.trigger("slow", b'{"n": 1}')
    with sqlite3.connect(harness.db_path) as db:
        row = db.execute(
            "SELECT workflow_id, status, input FROM runs WHERE run_id = ?", (body["runId"],)
        ).fetchone()
    assert row == (body["workflowId"], "RUNNING", '{"n":1}')


async def test_chain_passes_outputs(harness: Harness) -> None:
    body = await harness.trigger("chain", b"5")
    run = await harness.wait_status(body["runId"], "COMPLETED")
    assert [(t["task"], t["output"]) for t in run["tasks"]] == [("a", 6), ("b", 7), ("c", 8)]
    assert len(executions(harness.project)) == 3
