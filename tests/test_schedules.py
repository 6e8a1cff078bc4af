"""Schedules with virtual time: nothing here waits for a real tick."""

from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ManualClock, write_project

from moose_daemon.engine import Engine
from moose_daemon.loader import load_workflows
from moose_daemon.schedules import InvalidSchedule, Schedule
from moose_daemon.store import HistoryQuery, Store

HEADER = textwrap.dedent(
    """
    import asyncio
    from typing import Any
    from moose_daemon import Task, TaskConfig, TaskContext, Workflow, WorkflowConfig

    def quick(ctx: TaskContext[Any]) -> str:
        return "ok"

    async def forever(ctx: TaskContext[Any]) -> None:
        await asyncio.sleep(3600)

    def boom(ctx: TaskContext[Any]) -> None:
        raise RuntimeError("firing fails")
    """
)
TICKER = textwrap.dedent(
    """
    Workflow(name="ticker", config=WorkflowConfig(
        starting_task=Task[Any, str](name="tick", config=TaskConfig(run=quick)), schedule="@every 1h"))
    """
)
OTHERS = textwrap.dedent(
    """
    Workflow(name="stuck", config=WorkflowConfig(
        starting_task=Task[Any, None](name="hang", config=TaskConfig(run=forever)), schedule="@every 1m",
        timeout="never"))
    Workflow(name="broken", config=WorkflowConfig(
        starting_task=Task[Any, None](name="boom", config=TaskConfig(run=boom, retries=0)), schedule="@every 10m",
        retries=0))
    """
)

HOUR = 3600.0


@pytest.fixture
def sched_project(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """Only the ticker by default; tests marked `others` get the minute-by-minute workflows too."""
    extra = OTHERS if request.node.get_closest_marker("others") else ""
    return write_project(tmp_path / "sched", HEADER + TICKER + extra)


Factory = Callable[[ManualClock], Any]


@pytest.fixture
async def engines(sched_project: Path) -> AsyncIterator[Factory]:
    started: list[tuple[Engine, Store]] = []

    async def make(clock: ManualClock) -> Engine:
        store = await Store.open(sched_project / ".moose" / "moose.db")
        engine = Engine(store, load_workflows(sched_project, "app"), clock=clock)
        await engine.start()
        started.append((engine, store))
        return engine

    yield make
    for engine, store in started:
        await engine.stop(1.0)
        await store.close()


async def runs_of(engine: Engine, workflow: str) -> list[Any]:
    return await engine.history(HistoryQuery(limit=1000, workflow=workflow))


def events(project: Path, workflow: str) -> list[tuple[str, str | None]]:
    with sqlite3.connect(project / ".moose" / "moose.db") as db:
        rows = db.execute(
            "SELECT outcome, reason FROM schedule_events WHERE workflow = ? ORDER BY at", (workflow,)
        )
        return list(rows)


async def test_first_firing_waits_for_the_next_tick_then_each_firing_is_a_run(engines: Factory) -> None:
    clock = ManualClock()
    engine = await engines(clock)
    await clock.advance(HOUR - 1)
    assert await runs_of(engine, "ticker") == []
    await clock.advance(1)
    first = await runs_of(engine, "ticker")
    assert len(first) == 1 and first[0].workflow_id == "ticker"
    await clock.advance(HOUR)
    runs = await runs_of(engine, "ticker")
    assert len(runs) == 2
    assert all(r.status.short == "COMPLETED" for r in runs)
    assert len({r.run_id for r in runs}) == 2


@pytest.mark.others
async def test_a_firing_while_the_previous_run_still_runs_is_skipped_and_recorded(
    engines: Factory, sched_project: Path
) -> None:
    clock = ManualClock()
    engine = await engines(clock)
    await clock.advance(60)
    await clock.advance(60)
    assert len(await runs_of(engine, "stuck")) == 1
    outcomes = events(sched_project, "stuck")
    assert outcomes[0] == ("FIRED", None)
    assert outcomes[1][0] == "SKIPPED" and "still running" in (outcomes[1][1] or "")


@pytest.mark.others
async def test_a_failed_firing_does_not_stop_the_schedule(engines: Factory) -> None:
    clock = ManualClock()
    engine = await engines(clock)
    for _ in range(3):
        await clock.advance(600)
    runs = await runs_of(engine, "broken")
    assert [r.status.short for r in runs] == ["FAILED", "FAILED", "FAILED"]


async def test_restart_makes_up_one_missed_firing_not_a_burst(engines: Factory) -> None:
    clock = ManualClock()
    engine = await engines(clock)
    await clock.advance(HOUR)
    assert len(await runs_of(engine, "ticker")) == 1
    await engine.stop(1.0)
    clock.now += 5 * HOUR  # the daemon was down for five firings
    engine2 = await engines(clock)
    await clock.advance(1)
    assert len(await runs_of(engine2, "ticker")) == 2  # one catch-up, not five
    await clock.advance(HOUR - 2)
    assert len(await runs_of(engine2, "ticker")) == 2
    await clock.advance(2)
    assert len(await runs_of(engine2, "ticker")) == 3


async def test_restart_before_the_tick_keeps_the_stored_time(engines: Factory) -> None:
    clock = ManualClock()
    engine = await engines(clock)
    await clock.advance(HOUR / 2)
    await engine.stop(1.0)
    engine2 = await engines(clock)
    await clock.advance(HOUR / 2 - 1)
    assert await runs_of(engine2, "ticker") == []
    await clock.advance(1)
    assert len(await runs_of(engine2, "ticker")) == 1


async def test_a_paused_workflow_starts_no_firings(engines: Factory, sched_project: Path) -> None:
    clock = ManualClock()
    engine = await engines(clock)
    await engine.pause("ticker")
    await clock.advance(HOUR)
    assert await runs_of(engine, "ticker") == []
    assert events(sched_project, "ticker") == [("SKIPPED", "the workflow is paused")]
    await engine.unpause("ticker")
    await clock.advance(HOUR)
    assert len(await runs_of(engine, "ticker")) == 1


@pytest.mark.parametrize(
    ("text", "cron", "every"),
    [
        ("5m", "*/5 * * * *", None),
        ("2h", "0 */2 * * *", None),
        ("0 12 * * *", "0 12 * * *", None),
        ("@every 30s", None, 30.0),
        ("@every 1h", None, 3600.0),
        ("@every 7d", None, 7 * 86400.0),
    ],
)
def test_schedule_forms(text: str, cron: str | None, every: float | None) -> None:
    schedule = Schedule.parse(text)
    assert (schedule.cron, schedule.every_s) == (cron, every)


@pytest.mark.parametrize(
    "text", ["", "every day", "61 * * * *", "@every", "@every soon", "* * *", "@every never"]
)
def test_bad_schedules_are_refused(text: str) -> None:
    with pytest.raises(InvalidSchedule):
        Schedule.parse(text)


def test_cron_next_tick_is_on_the_wall_clock_boundary() -> None:
    # 2027-01-15 10:03:20 UTC -> the next */5 boundary is 10:05:00
    start = 1_800_007_400.0
    assert Schedule.parse("*/5 * * * *").next_after(start) == start - (start % 300) + 300
