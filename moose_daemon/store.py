"""All SQL lives here. One writer connection with group commit, one reader connection (WAL).

Writes are queued; a single writer task commits everything queued so far in one transaction, each
item inside its own savepoint so that one failing item does not take the others down. An awaited
write returns only after its transaction committed: that is what makes a 200 on trigger durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from .errors import StoreClosed, StoreError
from .models import AttemptRecord, AttemptStatus, RunRecord, RunStatus

log = logging.getLogger("moose_daemon.store")

SCHEMA_VERSION = 1
CHECKPOINT_INTERVAL_S = 0.2
Op = tuple[str, Sequence[Any]]
_RUN_COLUMNS = "run_id, workflow_id, workflow, status, input, started_at, ended_at, error, attempt, start_task, resumed_from"
_ATTEMPT_COLUMNS = "run_id, task, attempt, status, started_at, ended_at, input, output, error_type, error"


@dataclass(slots=True)
class _Pending:
    ops: list[Op]
    done: asyncio.Future[None] | None


@dataclass(frozen=True, slots=True)
class WorkflowState:
    paused: bool
    next_fire_at: int | None
    last_fired_at: int | None
    schedule: str | None  # the schedule text next_fire_at was computed for


@dataclass(frozen=True, slots=True)
class ScheduleEvent:
    at: int
    outcome: str
    run_id: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    limit: int = 10
    status: RunStatus | None = None
    workflow: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    before: tuple[int, str] | None = None  # keyset cursor: (started_at, run_id) of the last row seen


class Store:
    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._write_task: asyncio.Task[None] = asyncio.create_task(self._write_loop(), name="store-writer")
        self._checkpoint_task = asyncio.create_task(self._checkpoint_loop(), name="store-checkpoint")

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000) -> Store:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open database {path}: {e}") from None
        try:
            await _prepare(writer, synchronous, busy_timeout_ms)
            await _migrate(writer, path)
            reader = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            await reader.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        except sqlite3.Error as e:
            await writer.close()
            raise StoreError(f"cannot open database {path}: {e}") from None
        except StoreError:
            await writer.close()
            raise
        return cls(path, writer, reader)

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        await self._write_task
        self._checkpoint_task.cancel()
        await asyncio.gather(self._checkpoint_task, return_exceptions=True)
        await self._reader.close()
        await self._writer.close()

    async def _checkpoint_loop(self) -> None:
        """Copy the WAL into the database from a connection of its own. SQLite's automatic checkpoint
        would run inside a commit and put its fsyncs on the trigger's latency."""
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            while True:
                await asyncio.sleep(CHECKPOINT_INTERVAL_S)
                try:
                    await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as e:
                    log.warning("store.checkpoint_failed error=%s", e)
        finally:
            await conn.close()

    # ---- the writer ---------------------------------------------------------------------------

    async def _write(self, ops: list[Op]) -> None:
        if self._closing:
            raise StoreClosed("the store is closed")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(ops, done))
        self._wakeup.set()
        await done

    def _write_later(self, ops: list[Op]) -> None:
        """Queue a write nobody waits for; it still commits before any write queued after it."""
        if not self._closing:
            self._pending.append(_Pending(ops, None))
            self._wakeup.set()

    async def _write_loop(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            batch, self._pending = self._pending, []
            try:
                # aiosqlite has no public call that runs several statements in one hop to its thread.
                results: list[BaseException | None] = await self._writer._execute(  # type: ignore[no-untyped-call]
                    _apply_batch, self._writer._conn, batch
                )
            except Exception as e:  # the batch never ran; fail every item in it
                results = [e] * len(batch)
            for item, error in zip(batch, results, strict=True):
                _settle(item, error)

    # ---- writes -------------------------------------------------------------------------------

    async def insert_run(self, run: RunRecord) -> None:
        """Durable on return. Raises StoreError, or sqlite3.IntegrityError if the workflowId is running."""
        await self._write([_insert_run_op(run)])

    async def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        ended_at: int,
        error: str | None,
        *,
        next_run: RunRecord | None = None,
        last_attempt: AttemptRecord | None = None,
    ) -> None:
        """Close a RUNNING run (a no-op if it is already closed), with its last task's attempt if that is
        not written yet, and open its retry if one is due: all in one transaction."""
        ops: list[Op] = [_attempt_op(last_attempt)] if last_attempt is not None else []
        ops.append(
            (
                "UPDATE runs SET status = ?, ended_at = ?, error = ? WHERE run_id = ? AND status IN ('RUNNING', 'PAUSED')",
                (status.name, ended_at, error, run_id),
            )
        )
        if next_run is not None:
            ops.append(_insert_run_op(next_run))
        await self._write(ops)

    def start_attempt(self, attempt: AttemptRecord) -> None:
        self._write_later([_attempt_op(attempt)])

    async def end_attempt(self, attempt: AttemptRecord) -> None:
        """Durable on return: a COMPLETED attempt is never run again after a crash."""
        await self._write([_attempt_op(attempt)])

    async def mark_interrupted_attempts(self, ended_at: int) -> None:
        """At start: attempts left RUNNING by a crash were interrupted."""
        await self._write(
            [
                (
                    # only runs left open can have attempts left RUNNING: the runs' status index finds them
                    "UPDATE task_attempts SET status = 'INTERRUPTED', ended_at = ? WHERE status = 'RUNNING' "
                    "AND run_id IN (SELECT run_id FROM runs WHERE status IN ('RUNNING', 'PAUSED'))",
                    (ended_at,),
                )
            ]
        )

    async def finish_runs(
        self, run_ids: list[str], status: RunStatus, ended_at: int, error: str | None
    ) -> None:
        """Close many live runs in one transaction (terminate by name)."""
        await self._write(
            [
                (
                    "UPDATE runs SET status = ?, ended_at = ?, error = ? "
                    "WHERE run_id = ? AND status IN ('RUNNING', 'PAUSED')",
                    (status.name, ended_at, error, run_id),
                )
                for run_id in run_ids
            ]
        )

    async def set_paused(self, run_id: str, paused: bool) -> None:
        """Move a live run between RUNNING and PAUSED (never out of a final status)."""
        new, old = ("PAUSED", "RUNNING") if paused else ("RUNNING", "PAUSED")
        await self._write(
            [("UPDATE runs SET status = ? WHERE run_id = ? AND status = ?", (new, run_id, old))]
        )

    async def insert_run_with_key(self, run: RunRecord, key: str) -> None:
        """Insert a run and remember the Idempotency-Key that asked for it, atomically."""
        await self._write(
            [
                _insert_run_op(run),
                (
                    "INSERT INTO idempotency_keys (key, workflow, run_id, created_at) VALUES (?,?,?,?)",
                    (key, run.workflow, run.run_id, run.started_at),
                ),
            ]
        )

    async def set_workflow_paused(self, workflow: str, paused: bool) -> None:
        await self._write(
            [
                (
                    "INSERT INTO workflow_state (workflow, paused) VALUES (?, ?) "
                    "ON CONFLICT (workflow) DO UPDATE SET paused = excluded.paused",
                    (workflow, int(paused)),
                )
            ]
        )

    async def record_firing(
        self, workflow: str, at: int, outcome: str, run_id: str | None, reason: str | None, next_fire_at: int
    ) -> None:
        """One scheduled firing (fired, skipped or failed) and the schedule's next firing time."""
        await self._write(
            [
                (
                    "INSERT INTO schedule_events (workflow, at, outcome, run_id, reason) VALUES (?,?,?,?,?)",
                    (workflow, at, outcome, run_id, reason),
                ),
                (
                    "INSERT INTO workflow_state (workflow, next_fire_at, last_fired_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (workflow) DO UPDATE SET next_fire_at = excluded.next_fire_at, "
                    "last_fired_at = excluded.last_fired_at",
                    (workflow, next_fire_at, at),
                ),
            ]
        )

    async def set_next_fire(self, workflow: str, next_fire_at: int, schedule: str) -> None:
        await self._write(
            [
                (
                    "INSERT INTO workflow_state (workflow, next_fire_at, schedule) VALUES (?, ?, ?) "
                    "ON CONFLICT (workflow) DO UPDATE SET next_fire_at = excluded.next_fire_at, "
                    "schedule = excluded.schedule",
                    (workflow, next_fire_at, schedule),
                )
            ]
        )

    # ---- reads --------------------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as e:
            raise StoreError(f"database read failed: {e}") from None

    async def history(self, q: HistoryQuery) -> list[RunRecord]:
        where: list[str] = []
        params: list[Any] = []
        if q.status is not None:
            where.append("status = ?")
            params.append(q.status.name)
        if q.workflow is not None:
            where.append("workflow = ?")
            params.append(q.workflow)
        if q.since_us is not None:
            where.append("started_at >= ?")
            params.append(q.since_us)
        if q.until_us is not None:
            where.append("started_at < ?")
            params.append(q.until_us)
        if q.before is not None:
            where.append("(started_at, run_id) < (?, ?)")  # a row value: SQLite seeks the index to it
            params.extend(q.before)
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC, run_id DESC LIMIT ?"
        params.append(q.limit)
        return [_run(row) for row in await self._fetch(sql, params)]

    async def running_runs(self) -> list[RunRecord]:
        rows = await self._fetch(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE status IN ('RUNNING', 'PAUSED') ORDER BY started_at"
        )
        return [_run(row) for row in rows]

    async def get_run(self, run_id: str) -> RunRecord | None:
        rows = await self._fetch(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        return _run(rows[0]) if rows else None

    async def latest_run(self, workflow_id: str) -> RunRecord | None:
        rows = await self._fetch(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE workflow_id = ? ORDER BY started_at DESC LIMIT 1",
            (workflow_id,),
        )
        return _run(rows[0]) if rows else None

    async def latest_run_of_workflow(self, workflow: str) -> RunRecord | None:
        rows = await self._fetch(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE workflow = ? ORDER BY started_at DESC, run_id DESC LIMIT 1",
            (workflow,),
        )
        return _run(rows[0]) if rows else None

    async def workflow_states(self) -> dict[str, WorkflowState]:
        rows = await self._fetch(
            "SELECT workflow, paused, next_fire_at, last_fired_at, schedule FROM workflow_state"
        )
        return {r[0]: WorkflowState(bool(r[1]), r[2], r[3], r[4]) for r in rows}

    async def schedule_events(self, workflow: str, limit: int = 20) -> list[ScheduleEvent]:
        rows = await self._fetch(
            "SELECT at, outcome, run_id, reason FROM schedule_events WHERE workflow = ? ORDER BY at DESC LIMIT ?",
            (workflow, limit),
        )
        return [ScheduleEvent(*r) for r in rows]

    async def run_for_key(self, key: str) -> tuple[str, str] | None:
        """(workflow, run_id) that an Idempotency-Key started, if any."""
        rows = await self._fetch("SELECT workflow, run_id FROM idempotency_keys WHERE key = ?", (key,))
        return (rows[0][0], rows[0][1]) if rows else None

    async def latest_closed_run(self, target: str) -> RunRecord | None:
        """The newest failed, cancelled, terminated or timed-out run of a workflowId or workflow name."""
        rows = await self._fetch(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE (workflow_id = ? OR workflow = ?) "
            "AND status IN ('FAILED', 'CANCELED', 'TERMINATED', 'TIMED_OUT') "
            "ORDER BY started_at DESC, run_id DESC LIMIT 1",
            (target, target),
        )
        return _run(rows[0]) if rows else None

    async def attempts(self, run_id: str) -> list[AttemptRecord]:
        rows = await self._fetch(
            f"SELECT {_ATTEMPT_COLUMNS} FROM task_attempts WHERE run_id = ? ORDER BY started_at, attempt",
            (run_id,),
        )
        return [_attempt(row) for row in rows]


def _insert_run_op(run: RunRecord) -> Op:
    return (
        f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            run.run_id,
            run.workflow_id,
            run.workflow,
            run.status.name,
            run.input_json,
            run.started_at,
            run.ended_at,
            run.error,
            run.attempt,
            run.start_task,
            run.resumed_from,
        ),
    )


def _attempt_op(a: AttemptRecord) -> Op:
    """An upsert: the start inserts the row, the end updates it in place (cheaper than a replace)."""
    return (
        f"INSERT INTO task_attempts ({_ATTEMPT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT (run_id, task, attempt) DO UPDATE SET status = excluded.status, "
        "ended_at = excluded.ended_at, output = excluded.output, error_type = excluded.error_type, "
        "error = excluded.error",
        (
            a.run_id, a.task, a.attempt, a.status.value, a.started_at,
            a.ended_at, a.input_json, a.output_json, a.error_type, a.error,
        ),
    )  # fmt: skip


def _run(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        row[0], row[1], row[2], RunStatus[row[3]], row[4], row[5], row[6], row[7], row[8], row[9], row[10]
    )


def _attempt(row: Sequence[Any]) -> AttemptRecord:
    return AttemptRecord(
        row[0], row[1], row[2], AttemptStatus(row[3]), row[4], row[5], row[6], row[7], row[8], row[9]
    )


def _settle(item: _Pending, error: BaseException | None) -> None:
    if item.done is None:
        if error is not None:
            log.error("store.write_failed error=%s", error)
        return
    if item.done.done():  # the waiter was cancelled; the write itself still happened or failed
        return
    if error is None:
        item.done.set_result(None)
    elif isinstance(error, sqlite3.IntegrityError):
        item.done.set_exception(error)
    else:
        item.done.set_exception(StoreError(f"database write failed: {error}"))


def _apply_batch(conn: sqlite3.Connection, batch: list[_Pending]) -> list[BaseException | None]:
    """Runs in the writer connection's thread: one transaction, one savepoint per item."""
    results: list[BaseException | None] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for item in batch:
            if len(item.ops) == 1:  # one statement: SQLite undoes a failed statement by itself
                try:
                    conn.execute(*item.ops[0])
                except sqlite3.Error as e:
                    if not conn.in_transaction:  # SQLite rolled the whole transaction back
                        return [e] * len(batch)
                    results.append(e)
                else:
                    results.append(None)
                continue
            conn.execute("SAVEPOINT item")
            try:
                for sql, params in item.ops:
                    conn.execute(sql, params)
            except sqlite3.Error as e:
                if not conn.in_transaction:  # SQLite rolled the whole transaction back (a full disk, I/O)
                    return [e] * len(batch)
                conn.execute("ROLLBACK TO item")
                results.append(e)
            else:
                results.append(None)
            conn.execute("RELEASE item")
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        return [e] * len(batch)
    return results


async def _prepare(conn: aiosqlite.Connection, synchronous: str, busy_timeout_ms: int) -> None:
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    row = await (await conn.execute("PRAGMA journal_mode = WAL")).fetchone()
    if row is None or str(row[0]).lower() != "wal":
        raise StoreError("cannot switch the database to WAL mode")
    await conn.execute(f"PRAGMA synchronous = {synchronous}")
    await conn.execute("PRAGMA wal_autocheckpoint = 0")  # Store._checkpoint_loop does it off the commit path


async def _migrate(conn: aiosqlite.Connection, path: Path) -> None:
    row = await (await conn.execute("PRAGMA user_version")).fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer moose_daemon (schema {version}, this one knows {SCHEMA_VERSION})"
        )
    if version == 0:
        tables = await conn.execute_fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        if list(tables):
            raise StoreError(
                f"{path} is a SQLite database of something else (it has tables but no schema version)"
            )
        schema = resources.files("moose_daemon").joinpath("schema.sql").read_text()
        await conn.executescript(f"BEGIN;\n{schema}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
