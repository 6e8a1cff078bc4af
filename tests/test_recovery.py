"""Crash and restart recovery, the one-running-run-per-workflowId rule, and the store's group commit.

These drive Store and Engine directly on a temporary SQLite file (no HTTP): the rows a crash
would leave are written first, then a fresh Engine is started on them.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, executions

import moose_daemon.group_commit as group_commit
from moose_daemon.engine import Engine
from moose_daemon.errors import Conflict
from moose_daemon.jsonbody import parse_body
from moose_daemon.loader import load_workflows
from moose_daemon.models import AttemptRecord, AttemptStatus, RunRecord, RunStatus, new_run_id, now_us
from moose_daemon.store import HistoryQuery, Store


@pytest.fixture
async def store(project: Path) -> AsyncIterator[Store]:
    s = await Store.open(project / ".moose" / "moose.db")
    yield s
    await s.close()


def running_run(workflow: str, workflow_id: str | None = None, **kw: Any) -> RunRecord:
    return RunRecord(
        run_id=new_run_id(),
        workflow_id=workflow_id or workflow,
        workflow=workflow,
        status=kw.pop("status", RunStatus.RUNNING),
        input_json=kw.pop("input_json", None),
        started_at=now_us(),
        **kw,
    )


def attempt(run_id: str, task: str, number: int, status: AttemptStatus, **kw: Any) -> AttemptRecord:
    started = now_us()
    ended = None if status is AttemptStatus.RUNNING else started + 1
    return AttemptRecord(
        run_id=run_id, task=task, attempt=number, status=status, started_at=started, ended_at=ended, **kw
    )


async def settled(store: Store, run_id: str, within_s: float = 5.0) -> RunRecord:
    """Poll SQLite until the run has a final status."""
    deadline = time.monotonic() + within_s
    while True:
        record = await store.get_run(run_id)
        assert record is not None
        if record.status.is_final:
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is still {record.status}")
        await asyncio.sleep(0.01)


async def wait_for_line(project: Path, fragment: str, count: int = 1, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while len([line for line in executions(project) if fragment in line]) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} x {fragment!r} not in {executions(project)}")
        await asyncio.sleep(0.01)


def new_engine(store: Store, project: Path) -> Engine:
    return Engine(store, load_workflows(project, "app"), clock=FakeClock())


# ---- resume after a crash -----------------------------------------------------------------------------


async def test_crashed_run_resumes_from_the_interrupted_task(project: Path, store: Store) -> None:
    run = running_run("chain")
    await store.insert_run(run)
    await store.end_attempt(attempt(run.run_id, "a", 1, AttemptStatus.COMPLETED, output_json="1"))
    await store.end_attempt(attempt(run.run_id, "b", 1, AttemptStatus.RUNNING, input_json="1"))

    engine = new_engine(store, project)
    try:
        assert await engine.start() == 1
        final = await settled(store, run.run_id)
    finally:
        await engine.stop(2.0)

    assert final.status is RunStatus.COMPLETED, final
    assert executions(project) == [f"{run.run_id} b", f"{run.run_id} c"]  # a is not run again
    attempts = [(a.task, a.attempt, a.status) for a in await store.attempts(run.run_id)]
    assert sorted(attempts) == [
        ("a", 1, AttemptStatus.COMPLETED),
        ("b", 1, AttemptStatus.INTERRUPTED),
        ("b", 2, AttemptStatus.COMPLETED),
        ("c", 1, AttemptStatus.COMPLETED),
    ]
    outputs = {a.task: a.output_json for a in await store.attempts(run.run_id) if a.output_json}
    assert outputs == {"a": "1", "b": "2", "c": "3"}
    interrupted = next(a for a in await store.attempts(run.run_id) if a.status is AttemptStatus.INTERRUPTED)
    assert interrupted.ended_at is not None


async def test_failed_attempts_before_a_crash_still_count_against_retries(
    project: Path, store: Store
) -> None:
    # `failing` has task retries=1: one failure before the crash leaves exactly one attempt
    run = running_run("failing")
    await store.insert_run(run)
    await store.end_attempt(
        attempt(run.run_id, "boom", 1, AttemptStatus.FAILED, error_type="RuntimeError", error="kaboom")
    )
    engine = new_engine(store, project)
    try:
        await engine.start()
        final = await settled(store, run.run_id)
    finally:
        await engine.stop(2.0)
    assert final.status is RunStatus.FAILED
    assert final.error is not None and "2 attempt" in final.error
    assert executions(project) == [f"{run.run_id} failing attempt=2"]


async def test_a_task_interrupted_too_often_fails_the_run(project: Path, store: Store) -> None:
    run = running_run("chain")
    await store.insert_run(run)
    for n in range(1, 11):
        await store.end_attempt(attempt(run.run_id, "a", n, AttemptStatus.INTERRUPTED))
    engine = new_engine(store, project)
    try:
        await engine.start()
        final = await settled(store, run.run_id)
    finally:
        await engine.stop(2.0)
    assert final.status is RunStatus.FAILED
    assert final.error is not None and "interrupted" in final.error and "'a'" in final.error
    assert f"{run.run_id} a" not in executions(project)
    # and it is not retried as a new run (chain has the default 3 workflow retries): it would crash again
    runs = await store.history(HistoryQuery(limit=10, workflow="chain"))
    assert [r.run_id for r in runs] == [run.run_id]


async def test_run_of_a_removed_workflow_fails_with_the_reason(project: Path, store: Store) -> None:
    run = running_run("gone-away")
    await store.insert_run(run)
    await store.end_attempt(attempt(run.run_id, "x", 1, AttemptStatus.RUNNING))
    engine = new_engine(store, project)
    try:
        assert await engine.start() == 0
        final = await store.get_run(run.run_id)
    finally:
        await engine.stop(2.0)
    assert final is not None
    assert final.status is RunStatus.FAILED
    assert final.error is not None
    assert "gone-away" in final.error and "no longer exists" in final.error
    assert final.ended_at is not None
    assert len(engine.registry) == 0


# ---- clean stop and restart -----------------------------------------------------------------------------


async def test_clean_stop_leaves_the_run_running_and_the_next_engine_resumes_it(project: Path) -> None:
    db = project / ".moose" / "moose.db"
    store = await Store.open(db)
    engine = new_engine(store, project)
    await engine.start()
    record = await engine.trigger("slow", None)
    run_id = record.run_id
    await wait_for_line(project, f"{run_id} slow started")
    await engine.stop(2.0)

    assert f"{run_id} slow on_cancel state=['started']" in executions(project)
    stored = await store.get_run(run_id)
    assert stored is not None and stored.status is RunStatus.RUNNING
    assert [(a.attempt, a.status) for a in await store.attempts(run_id)] == [(1, AttemptStatus.INTERRUPTED)]
    await store.close()

    # a new process: fresh store connection, fresh definitions, fresh engine
    store = await Store.open(db)
    engine = new_engine(store, project)
    try:
        assert await engine.start() == 1
        await wait_for_line(project, f"{run_id} slow started", count=2)
        assert engine.registry.by_run_id(run_id) is not None
        with pytest.raises(Conflict):
            await engine.trigger("slow", None)  # still the running workflowId
        await engine.terminate("slow")
        final = await store.get_run(run_id)
        assert final is not None and final.status is RunStatus.TERMINATED
        deadline = time.monotonic() + 5
        while (
            len(attempts := await store.attempts(run_id)) < 2 or attempts[-1].status is AttemptStatus.RUNNING
        ):
            assert time.monotonic() < deadline, attempts
            await asyncio.sleep(0.01)
        assert [(a.attempt, a.status) for a in attempts] == [
            (1, AttemptStatus.INTERRUPTED),
            (2, AttemptStatus.TERMINATED),
        ]
    finally:
        await engine.stop(2.0)
        await store.close()


# ---- one running run per workflowId ---------------------------------------------------------------------


async def test_unique_index_refuses_a_second_running_row(store: Store) -> None:
    await store.insert_run(running_run("w", "w-1"))
    with pytest.raises(sqlite3.IntegrityError):
        await store.insert_run(running_run("w", "w-1"))
    # finished rows of the same workflowId are fine, and other workflowIds are unaffected
    await store.insert_run(running_run("w", "w-1", status=RunStatus.COMPLETED))
    await store.insert_run(running_run("w", "w-2"))
    rows = await store.history(HistoryQuery(limit=100))
    assert sorted((r.workflow_id, r.status.short) for r in rows) == [
        ("w-1", "COMPLETED"),
        ("w-1", "RUNNING"),
        ("w-2", "RUNNING"),
    ]


async def test_trigger_maps_the_unique_index_to_conflict(project: Path, store: Store) -> None:
    engine = new_engine(store, project)
    await engine.start()
    try:
        # a RUNNING row the engine's memory knows nothing about
        stray = running_run("hello")
        await store.insert_run(stray)
        with pytest.raises(Conflict):
            await engine.trigger("hello", None)
        assert engine.registry.by_workflow_id("hello") is None  # the reservation was released
        assert [r.run_id for r in await store.history(HistoryQuery(workflow="hello"))] == [stray.run_id]
        # another workflowId of the same workflow still starts
        other = await engine.trigger("hello", parse_body(b'{"name": "x"}'))
        assert (await settled(store, other.run_id)).status is RunStatus.COMPLETED
    finally:
        await engine.stop(2.0)


# ---- group commit -------------------------------------------------------------------------------------


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the first parameter (the run_id for inserts) of each item of each committed batch."""
    seen: list[list[str]] = []
    real = group_commit.apply_batch

    def spy(conn: sqlite3.Connection, batch: list[Any]) -> list[BaseException | None]:
        seen.append([str(item.ops[0][1][0]) for item in batch])
        return real(conn, batch)

    monkeypatch.setattr(group_commit, "apply_batch", spy)
    return seen


async def test_concurrent_inserts_all_land_in_few_transactions(
    store: Store, batches: list[list[str]]
) -> None:
    runs = [running_run("w", f"w-{i}") for i in range(200)]
    results = await asyncio.gather(*(store.insert_run(r) for r in runs), return_exceptions=True)
    assert results == [None] * 200
    stored = await store.history(HistoryQuery(limit=1000))
    assert {r.run_id for r in stored} == {r.run_id for r in runs}
    assert sum(len(b) for b in batches) == 200
    assert len(batches) < 200  # grouped, not one transaction per write
    # committed: a separate connection sees them
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (200,)


async def test_a_failing_item_fails_alone_in_its_batch(store: Store, batches: list[list[str]]) -> None:
    taken = running_run("w", "dup")
    await store.insert_run(taken)
    runs = [running_run("w", f"ok-{i}") for i in range(20)]
    bad = running_run("w", "dup")  # violates the one-running-run index
    runs.insert(10, bad)
    results = await asyncio.gather(*(store.insert_run(r) for r in runs), return_exceptions=True)
    assert isinstance(results[10], sqlite3.IntegrityError)
    assert results[:10] + results[11:] == [None] * 20
    stored = {r.run_id for r in await store.history(HistoryQuery(limit=1000))}
    assert stored == {taken.run_id} | {r.run_id for r in runs if r is not bad}
    # it really shared a transaction with good items
    shared = next(b for b in batches if bad.run_id in b)
    assert len(shared) > 1
    # and the store keeps working afterwards
    after = running_run("w", "after")
    await store.insert_run(after)
    assert await store.get_run(after.run_id) is not None


async def test_an_attempt_that_ends_within_the_loop_iteration_is_written_once(
    store: Store, batches: list[list[str]]
) -> None:
    run = running_run("w")
    await store.insert_run(run)
    batches.clear()
    a = attempt(run.run_id, "t", 1, AttemptStatus.RUNNING, input_json="1")
    store.start_attempt(a)
    a.status, a.ended_at, a.output_json = AttemptStatus.COMPLETED, now_us(), "2"
    await store.end_attempt(a)
    assert sum(len(b) for b in batches) == 1  # the start was never sent
    [stored] = await store.attempts(run.run_id)
    assert (stored.status, stored.input_json, stored.output_json) == (AttemptStatus.COMPLETED, "1", "2")


async def test_an_attempt_start_is_written_without_anyone_waiting(store: Store) -> None:
    run = running_run("w")
    await store.insert_run(run)
    store.start_attempt(attempt(run.run_id, "t", 1, AttemptStatus.RUNNING))
    deadline = time.monotonic() + 5
    while not await store.attempts(run.run_id):
        assert time.monotonic() < deadline, "the RUNNING attempt never reached the database"
        await asyncio.sleep(0.005)
    [stored] = await store.attempts(run.run_id)
    assert stored.status is AttemptStatus.RUNNING


async def test_close_commits_what_is_queued_even_unsent_starts(project: Path) -> None:
    path = project / ".moose" / "moose.db"
    store = await Store.open(path)
    run = running_run("w")
    await store.insert_run(run)
    store.start_attempt(attempt(run.run_id, "t", 1, AttemptStatus.RUNNING))
    await store.close()  # in the same loop iteration as the start
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT status FROM task_attempts").fetchall() == [("RUNNING",)]


async def test_a_multi_statement_item_that_fails_is_undone_alone(store: Store) -> None:
    """The batch is first tried without savepoints; a failure re-applies it item by item."""
    await store.insert_run_with_key(running_run("w", "first"), "key-1")
    good = running_run("w", "good")
    bad = running_run("w", "second")
    results = await asyncio.gather(
        store.insert_run(good),
        store.insert_run_with_key(bad, "key-1"),  # its run row goes in, then its key fails
        store.finish_run(good.run_id, RunStatus.COMPLETED, now_us(), None),
        return_exceptions=True,
    )
    assert results[0] is None and isinstance(results[1], sqlite3.IntegrityError) and results[2] is None
    assert await store.get_run(bad.run_id) is None  # the half that succeeded was undone
    finished = await store.get_run(good.run_id)
    assert finished is not None and finished.status is RunStatus.COMPLETED


async def test_a_write_after_a_bug_in_a_batch_still_works(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception that is not a database error fails its batch; the writer thread goes on."""
    real = group_commit.apply_batch
    calls = 0

    def broken_once(conn: sqlite3.Connection, batch: list[Any]) -> list[BaseException | None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return real(conn, batch)

    monkeypatch.setattr(group_commit, "apply_batch", broken_once)
    with pytest.raises(Exception, match="a bug"):
        await store.insert_run(running_run("w", "a"))
    after = running_run("w", "b")
    await store.insert_run(after)
    assert await store.get_run(after.run_id) is not None


def wal_restarts(path: Path) -> int:
    """The WAL header's checkpoint sequence number: SQLite adds one each time it starts the WAL over."""
    with path.with_name(path.name + "-wal").open("rb") as f:
        return int.from_bytes(f.read(16)[12:16], "big")


@pytest.mark.parametrize("checkpoint_every_s", [0.05, None])
async def test_the_wal_starts_over_under_steady_writes(
    project: Path, checkpoint_every_s: float | None
) -> None:
    """A checkpoint from another connection never catches up with a writer that keeps committing, and
    SQLite starts the WAL over only once one has: the WAL grew by gigabytes under steady load. The writer
    now checkpoints between batches (`None` here turns that off, to show the test can tell)."""
    path = project / ".moose" / "moose.db"
    store = await Store.open(path, writer_checkpoint_every_s=checkpoint_every_s or 1e9)
    try:
        await store.insert_run(running_run("w", "first"))
        before = wal_restarts(path)
        deadline = time.monotonic() + 1.5
        count = 0

        async def writer(k: int) -> None:
            nonlocal count
            while time.monotonic() < deadline:
                count += 1
                await store.insert_run(running_run("w", f"w-{k}-{count}"))

        await asyncio.gather(*(writer(k) for k in range(32)))
        restarts = wal_restarts(path) - before
    finally:
        await store.close()
    if checkpoint_every_s is None:
        assert restarts <= 3, "the background checkpoints were enough after all: the test proves nothing"
    else:
        assert restarts >= 8  # about 28 here: one every 0.05 s
