"""Engine semantics: task and workflow retries, timeouts, input validation, cancel and terminate.

Most tests drive the fixture project through the real HTTP server (`harness`); the few that need a
workflow of their own build a small project in tmp_path and drive an Engine directly.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, Harness, executions

from moose_daemon.engine import Engine
from moose_daemon.errors import Conflict, NotFound
from moose_daemon.executor import RetryPolicy, _task_deadline
from moose_daemon.jsonbody import parse_body
from moose_daemon.loader import load_workflows
from moose_daemon.models import AttemptRecord, RunRecord, RunStatus
from moose_daemon.store import Store

# ---- helpers ------------------------------------------------------------------------------------


async def wait_for_line(project: Path, fragment: str, within_s: float = 5.0, count: int = 1) -> list[str]:
    """Poll executions.log until `count` lines contain `fragment`."""
    deadline = time.monotonic() + within_s
    while True:
        lines = [line for line in executions(project) if fragment in line]
        if len(lines) >= count:
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"no line with {fragment!r} in {executions(project)}")
        await asyncio.sleep(0.01)


async def history(harness: Harness, query: str) -> list[dict[str, Any]]:
    resp = await harness.client.get(f"/admin/workflows/history?{query}", headers=harness.headers)
    assert resp.status == 200, await resp.text()
    data: list[dict[str, Any]] = await resp.json()
    return data


async def post(harness: Harness, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    resp = await harness.client.post(path, data=body, headers=harness.headers)
    return resp.status, await resp.json()


def attempts_of(run: dict[str, Any], task: str) -> list[dict[str, Any]]:
    return sorted((t for t in run["tasks"] if t["task"] == task), key=lambda t: t["attempt"])


@dataclass
class Direct:
    """An Engine over a project of our own, without HTTP."""

    engine: Engine
    store: Store
    clock: FakeClock
    project: Path

    async def trigger(self, name: str, body: bytes | None = None) -> RunRecord:
        return await self.engine.trigger(name, parse_body(body) if body is not None else None)

    async def settle(self, run_id: str, within_s: float = 5.0) -> RunRecord:
        """Wait until the run is no longer live, then return what SQLite says about it."""
        deadline = time.monotonic() + within_s
        while self.engine.registry.by_run_id(run_id) is not None:
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still live after {within_s}s")
            await asyncio.sleep(0.01)
        record = await self.store.get_run(run_id)
        assert record is not None
        return record

    async def attempts(self, run_id: str) -> list[AttemptRecord]:
        return await self.store.attempts(run_id)


@asynccontextmanager
async def direct_engine(tmp_path: Path, main_py: str) -> AsyncIterator[Direct]:
    project = tmp_path / "direct"
    (project / "app").mkdir(parents=True)
    (project / "app" / "__init__.py").write_text("")
    (project / "app" / "main.py").write_text(textwrap.dedent(main_py))
    store = await Store.open(project / ".moose" / "moose.db")
    clock = FakeClock()
    engine = Engine(store, load_workflows(project, "app"), clock=clock)
    await engine.start()
    try:
        yield Direct(engine, store, clock, project)
    finally:
        await engine.stop(2.0)
        await store.close()


HEADER = """\
import asyncio
import time
from typing import Any
from moose_daemon import Task, TaskConfig, TaskContext, Workflow, WorkflowConfig
"""


# ---- task retries ---------------------------------------------------------------------------------


async def test_failing_task_is_retried_once_with_one_second_backoff(harness: Harness) -> None:
    body = await harness.trigger("failing")
    run = await harness.wait_status(body["runId"], "FAILED")
    boom = attempts_of(run, "boom")
    assert [a["attempt"] for a in boom] == [1, 2]
    for a in boom:
        assert a["status"] == "FAILED"
        assert a["error_type"] == "RuntimeError"
        assert a["error"] == "kaboom"
        assert a["started_at"] and a["ended_at"]
    assert "'boom'" in run["error"]
    assert "kaboom" in run["error"]
    assert harness.clock.sleeps == [1.0]
    lines = [line for line in executions(harness.project) if body["runId"] in line]
    assert lines == [f"{body['runId']} failing attempt=1", f"{body['runId']} failing attempt=2"]
    # workflow retries=0: one run only
    assert len(await history(harness, "workflow=failing")) == 1


def test_retry_policy_doubles_from_one_second_and_caps_at_100() -> None:
    policy = RetryPolicy()
    assert [policy.delay(n) for n in range(1, 10)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0, 100.0]
    assert policy.delay(50) == 100.0
    custom = RetryPolicy(initial_s=0.5, coefficient=3.0, maximum_s=10.0)
    assert [custom.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 10.0]


async def test_flaky_task_completes_on_second_attempt(harness: Harness) -> None:
    body = await harness.trigger("flaky")
    run = await harness.wait_status(body["runId"], "COMPLETED")
    flaky = attempts_of(run, "flaky")
    assert [(a["attempt"], a["status"]) for a in flaky] == [(1, "FAILED"), (2, "COMPLETED")]
    assert flaky[0]["error_type"] == "ValueError"
    assert flaky[1]["output"] == "ok on attempt 2"
    assert run["error"] is None
    assert harness.clock.sleeps == [1.0]


async def test_zero_task_retries_means_exactly_one_attempt(tmp_path: Path) -> None:
    main_py = (
        HEADER
        + """
def fail(ctx: TaskContext[Any]) -> None:
    raise KeyError("gone")

Workflow(name="once", config=WorkflowConfig(
    starting_task=Task[Any, None](name="t", config=TaskConfig(run=fail, retries=0)), retries=0))
"""
    )
    async with direct_engine(tmp_path, main_py) as d:
        record = await d.trigger("once")
        final = await d.settle(record.run_id)
        assert final.status is RunStatus.FAILED
        attempts = await d.attempts(record.run_id)
        assert [(a.task, a.attempt, a.error_type) for a in attempts] == [("t", 1, "KeyError")]
        assert d.clock.sleeps == []


async def test_timed_out_attempt_is_retried_like_a_failure(tmp_path: Path) -> None:
    main_py = (
        HEADER
        + """
async def nap(ctx: TaskContext[Any]) -> None:
    await asyncio.sleep(30)

Workflow(name="naps", config=WorkflowConfig(
    starting_task=Task[Any, None](name="nap", config=TaskConfig(run=nap, timeout="50ms", retries=1)),
    retries=0))
"""
    )
    async with direct_engine(tmp_path, main_py) as d:
        record = await d.trigger("naps")
        final = await d.settle(record.run_id)
        assert final.status is RunStatus.FAILED
        attempts = await d.attempts(record.run_id)
        assert [(a.attempt, a.status.value, a.error_type) for a in attempts] == [
            (1, "FAILED", "TimeoutError"),
            (2, "FAILED", "TimeoutError"),
        ]
        assert d.clock.sleeps == [1.0]


# ---- workflow retries -------------------------------------------------------------------------------


async def test_workflow_retries_are_new_runs_of_the_same_workflow_id(harness: Harness) -> None:
    gate = asyncio.Event()
    requested: list[float] = []

    async def gated_sleep(seconds: float) -> None:
        requested.append(seconds)
        await gate.wait()

    harness.clock.sleep = gated_sleep  # type: ignore[method-assign]
    first = await harness.trigger("wf-retry")
    assert first["workflowId"] == "wf-retry"
    await harness.wait_status(first["runId"], "FAILED")

    # the second run exists and waits for its backoff: the workflowId still counts as running
    deadline = time.monotonic() + 5
    while requested != [1.0] or len(await history(harness, "workflow=wf-retry")) < 2:
        assert time.monotonic() < deadline, (requested, await history(harness, "workflow=wf-retry"))
        await asyncio.sleep(0.01)
    rows = await history(harness, "workflow=wf-retry")
    second = next(r for r in rows if r["attempt"] == 2)
    assert second["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"
    status, err = await post(harness, "/admin/workflows/wf-retry/trigger")
    assert status == 409
    assert second["run_id"] in err["details"]

    gate.set()
    deadline = time.monotonic() + 5
    while True:
        rows = await history(harness, "workflow=wf-retry")
        if len(rows) == 3 and all(r["status"].endswith("FAILED") for r in rows):
            break
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.01)
    rows.sort(key=lambda r: r["attempt"])
    assert [r["attempt"] for r in rows] == [1, 2, 3]
    assert {r["name"] for r in rows} == {"wf-retry"}
    assert len({r["run_id"] for r in rows}) == 3
    assert rows[0]["run_id"] == first["runId"]
    # each run ran its task exactly once (task retries=0); workflow backoff 1 s then 2 s
    for r in rows:
        run = await harness.run(r["run_id"])
        assert [(a["task"], a["attempt"]) for a in run["tasks"]] == [("once", 1)]
    assert requested == [1.0, 2.0]
    assert len([line for line in executions(harness.project) if line.endswith(" wf-retry")]) == 3
    # no fourth run, and the workflowId is free again
    assert harness.engine.registry.by_workflow_id("wf-retry") is None


# ---- timeouts -----------------------------------------------------------------------------------------


async def test_task_timeout_fails_the_attempt_with_timeout_error(harness: Harness) -> None:
    body = await harness.trigger("task-timeout")
    run = await harness.wait_status(body["runId"], "FAILED")
    (nap,) = attempts_of(run, "nap")
    assert nap["error_type"] == "TimeoutError"
    assert "200ms" in nap["error"]
    assert "'nap'" in run["error"]


async def test_workflow_timeout_ends_timed_out(harness: Harness) -> None:
    body = await harness.trigger("wf-timeout")
    run = await harness.wait_status(body["runId"], "TIMED_OUT")
    assert run["status"] == "WORKFLOW_EXECUTION_STATUS_TIMED_OUT"
    assert "300ms" in run["error"]
    (nap,) = attempts_of(run, "nap")
    assert nap["status"] != "RUNNING"
    assert nap["ended_at"] is not None
    assert len(await history(harness, "workflow=wf-timeout")) == 1  # retries=0


# ---- input validation -------------------------------------------------------------------------------


async def test_typed_input_is_validated_and_passed(harness: Harness) -> None:
    body = await harness.trigger("typed", b'{"name": "x"}')
    run = await harness.wait_status(body["runId"], "COMPLETED")
    (greet,) = attempts_of(run, "greet")
    assert greet["output"] == "hi x"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"{}", ["'name'", "'greet'"]),
        (b"[1,2]", ["'greet'", "list"]),
        (None, ["'greet'", "None"]),
        (b'{"name": "x", "age": 3}', ["'greet'", "'age'"]),
    ],
    ids=["missing-field", "array", "no-input", "unknown-field"],
)
async def test_invalid_input_fails_once_with_a_clear_message(
    harness: Harness, payload: bytes | None, expected: list[str]
) -> None:
    body = await harness.trigger("typed", payload)
    run = await harness.wait_status(body["runId"], "FAILED", within_s=5)
    for fragment in expected:
        assert fragment in run["error"], run["error"]
    (greet,) = attempts_of(run, "greet")  # the task's default retries=3 are not used
    assert greet["error_type"] == "InputError"
    assert harness.clock.sleeps == []


async def test_bad_output_fails_the_run_without_retry(harness: Harness) -> None:
    body = await harness.trigger("bad-output")
    run = await harness.wait_status(body["runId"], "FAILED")
    (bad,) = attempts_of(run, "bad")
    assert bad["error_type"] == "OutputError"
    assert bad["output"] is None
    assert "OutputError" in run["error"]
    assert "'bad'" in run["error"]


async def test_pydantic_models_validate_input_and_chain_outputs(tmp_path: Path) -> None:
    main_py = (
        HEADER
        + """
from pydantic import BaseModel

class OrderIn(BaseModel):
    order_id: str

class OrderTotals(BaseModel):
    order_id: str
    total: float

def price(ctx: TaskContext[OrderIn]) -> OrderTotals:
    assert isinstance(ctx.input, OrderIn)
    return OrderTotals(order_id=ctx.input.order_id, total=12.5)

def save(ctx: TaskContext[OrderTotals]) -> str:
    assert isinstance(ctx.input, OrderTotals)
    return f"saved {ctx.input.order_id} {ctx.input.total}"

_save = Task[OrderTotals, str](name="save", config=TaskConfig(run=save))
_price = Task[OrderIn, OrderTotals](name="price", config=TaskConfig(run=price, on_complete=[_save]))
Workflow(name="orders", config=WorkflowConfig(starting_task=_price, retries=0))
"""
    )
    async with direct_engine(tmp_path, main_py) as d:
        ok = await d.trigger("orders", b'{"order_id": "A1"}')
        assert (await d.settle(ok.run_id)).status is RunStatus.COMPLETED
        outputs = {a.task: a.output_json for a in await d.attempts(ok.run_id)}
        assert outputs == {"price": '{"order_id":"A1","total":12.5}', "save": '"saved A1 12.5"'}

        bad = await d.trigger("orders", b'{"id": "A1"}')
        final = await d.settle(bad.run_id)
        assert final.status is RunStatus.FAILED
        assert final.error is not None
        assert "order_id" in final.error
        assert "'price'" in final.error
        assert len(await d.attempts(bad.run_id)) == 1


# ---- cancel and terminate -----------------------------------------------------------------------------


async def test_cancel_runs_on_cancel_with_the_same_state(harness: Harness) -> None:
    body = await harness.trigger("slow")
    run_id = body["runId"]
    await wait_for_line(harness.project, f"{run_id} slow started")
    records = await harness.engine.cancel("slow")
    assert [r.run_id for r in records] == [run_id]
    run = await harness.wait_status(run_id, "CANCELED")
    assert run["status"] == "WORKFLOW_EXECUTION_STATUS_CANCELED"
    assert f"{run_id} slow on_cancel state=['started']" in executions(harness.project)
    (sleepy,) = attempts_of(run, "sleepy")
    assert sleepy["status"] == "CANCELED"
    # a cancelled run is not retried (workflow retries default to 3)
    assert len(await history(harness, "workflow=slow")) == 1
    assert harness.engine.registry.by_workflow_id("slow") is None


async def test_terminate_runs_no_on_cancel(harness: Harness) -> None:
    body = await harness.trigger("slow")
    run_id = body["runId"]
    await wait_for_line(harness.project, f"{run_id} slow started")
    records = await harness.engine.terminate("slow")
    assert [r.run_id for r in records] == [run_id]
    # the workflowId is free at once, before the run's task has even wound down
    again = await harness.engine.trigger("slow", None)
    assert again.run_id != run_id
    run = await harness.run(run_id)
    assert run["status"] == "WORKFLOW_EXECUTION_STATUS_TERMINATED"
    deadline = time.monotonic() + 5
    while attempts_of(await harness.run(run_id), "sleepy")[0]["status"] == "RUNNING":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert attempts_of(await harness.run(run_id), "sleepy")[0]["status"] == "TERMINATED"
    await asyncio.sleep(0.05)
    assert not [line for line in executions(harness.project) if "on_cancel" in line]
    await harness.engine.terminate("slow")
    await harness.wait_status(again.run_id, "TERMINATED")
    assert not [line for line in executions(harness.project) if "on_cancel" in line]
    assert len(await history(harness, "workflow=slow")) == 2


async def test_terminated_sync_task_ends_at_once_and_its_late_result_is_dropped(harness: Harness) -> None:
    body = await harness.trigger("blocking")
    run_id = body["runId"]
    await wait_for_line(harness.project, f"{run_id} blocking started")
    await harness.engine.terminate("blocking")
    run = await harness.run(run_id)
    assert run["status"] == "WORKFLOW_EXECUTION_STATUS_TERMINATED"
    # the thread is still running (it sleeps 0.2 s after seeing the flag): terminate did not wait for it
    assert not [line for line in executions(harness.project) if "blocking returned" in line]
    await wait_for_line(harness.project, f"{run_id} blocking returned cancelled=True")
    await asyncio.sleep(0.1)
    run = await harness.run(run_id)
    assert run["status"] == "WORKFLOW_EXECUTION_STATUS_TERMINATED"
    (block,) = attempts_of(run, "block")
    assert block["status"] == "TERMINATED"
    assert block["output"] is None


async def test_cancelled_sync_task_sees_the_flag(harness: Harness) -> None:
    body = await harness.trigger("blocking")
    run_id = body["runId"]
    await wait_for_line(harness.project, f"{run_id} blocking started")
    await harness.engine.cancel("blocking")
    run = await harness.wait_status(run_id, "CANCELED")
    await wait_for_line(harness.project, f"{run_id} blocking returned cancelled=True")
    await asyncio.sleep(0.1)
    (block,) = attempts_of(await harness.run(run_id), "block")
    assert block["status"] == "CANCELED"
    assert block["output"] is None
    assert run["status"] == "WORKFLOW_EXECUTION_STATUS_CANCELED"


async def test_cancel_or_terminate_of_a_finished_or_unknown_run_is_refused(harness: Harness) -> None:
    body = await harness.trigger("hello")
    await harness.wait_status(body["runId"], "COMPLETED")
    with pytest.raises(Conflict):
        await harness.engine.cancel("hello")
    with pytest.raises(Conflict):
        await harness.engine.terminate("hello")
    with pytest.raises(NotFound):
        await harness.engine.cancel("no-such-workflow")
    with pytest.raises(NotFound):
        await harness.engine.terminate("no-such-workflow")


async def test_cancelled_error_raised_by_task_code_fails_the_run(tmp_path: Path) -> None:
    main_py = (
        HEADER
        + """
async def inner_cancelled(ctx: TaskContext[Any]) -> None:
    # e.g. awaiting a helper task that something else cancelled
    helper = asyncio.ensure_future(asyncio.sleep(10))
    helper.cancel()
    await helper

Workflow(name="selfcancel", config=WorkflowConfig(
    starting_task=Task[Any, None](name="t", config=TaskConfig(run=inner_cancelled, retries=0)), retries=0))
"""
    )
    async with direct_engine(tmp_path, main_py) as d:
        record = await d.trigger("selfcancel")
        final = await d.settle(record.run_id)
        assert final.status is RunStatus.FAILED, final
        again = await d.trigger("selfcancel")  # the workflowId is free again, not a 409
        await d.settle(again.run_id)


async def test_an_attempt_gets_a_timer_only_if_it_can_fire_before_the_run_s() -> None:
    """With the defaults (one hour for the run and for each attempt) the attempt's timer could only
    fire after the run's, so there is none; a shorter attempt timeout still gets one."""
    now = asyncio.get_running_loop().time()
    assert _task_deadline(None, now + 10) is None
    assert _task_deadline(3600.0, now + 3600) is None
    assert _task_deadline(20.0, now + 10) is None
    short = _task_deadline(0.2, now + 10)
    assert short is not None and short.when() is not None and short.when() < now + 10
    assert _task_deadline(0.2, None) is not None  # the run never times out: the attempt still does
