"""All SQL lives here. One writer connection with group commit, one reader connection (WAL).

Writes are queued to the writer thread (group_commit), which commits everything queued so far in one
transaction. An awaited write returns only after its transaction committed: that is what makes a 200
on trigger durable.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from .errors import StoreClosed, StoreError
from .group_commit import GroupCommitWriter, Op
from .models import AttemptRecord, AttemptStatus, RunRecord, RunStatus

log = logging.getLogger("moose_daemon.store")

SCHEMA_VERSION = 1
CHECKPOINT_INTERVAL_S = 0.2
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
_RUN_COLUMNS = "run_id, workflow_id, workflow, status, input, started_at, ended_at, error, attempt, start_task, resumed_from"
_ATTEMPT_COLUMNS = "run_id, task, attempt, status, started_at, ended_at, input, output, error_type, error"


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
    def __init__(self, path: Path, writer: GroupCommitWriter, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._loop = asyncio.get_running_loop()
        self._closing = False
        # Attempt starts wait for the end of the loop iteration: see start_attempt.
        self._unsent_starts: dict[tuple[str, str, int], list[Op]] = {}
        self._flush_scheduled = False
        self._checkpoint_task = asyncio.create_task(self._checkpoint_loop(), name="store-checkpoint")

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 5000,
        writer_checkpoint_every_s: float = 1.0,
    ) -> Store:
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(None, _open_writer, path, synchronous, busy_timeout_ms)
        try:
            reader = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            await reader.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        except sqlite3.Error as e:
            conn.close()
            raise StoreError(f"cannot open database {path}: {e}") from None
        writer = GroupCommitWriter(conn, loop, checkpoint_every_s=writer_checkpoint_every_s)
        return cls(path, writer, reader)

    async def close(self) -> None:
        self._closing = True
        self._send_starts()
        await self._writer.close()
        self._checkpoint_task.cancel()
        await asyncio.gather(self._checkpoint_task, return_exceptions=True)
        await self._reader.close()

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
        done: asyncio.Future[None] = self._loop.create_future()
        self._writer.submit(ops, done)
        await done

    async def on_writer(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `fn` with the writer connection, in order with the writes (for pragmas and tests)."""
        return await self._writer.call(fn)

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
        ops: list[Op] = []
        if last_attempt is not None:
            self._drop_unsent_start(last_attempt)
            ops.append(_attempt_op(last_attempt))
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
        """Record a RUNNING attempt, not waited for. It is sent at the end of this loop iteration, so an
        attempt that ends before then (a task that never waits) is written once, by its end."""
        if self._closing:
            return
        self._unsent_starts[(attempt.run_id, attempt.task, attempt.attempt)] = [_attempt_op(attempt)]
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._send_starts)

    def _send_starts(self) -> None:
        self._flush_scheduled = False
        starts, self._unsent_starts = self._unsent_starts, {}
        for ops in starts.values():
            self._writer.submit(ops, None)

    def _drop_unsent_start(self, attempt: AttemptRecord) -> None:
        """The attempt's end is an upsert of the whole row: its start need not be written at all."""
        self._unsent_starts.pop((attempt.run_id, attempt.task, attempt.attempt), None)

    async def end_attempt(self, attempt: AttemptRecord) -> None:
        """Durable on return: a COMPLETED attempt is never run again after a crash."""
        self._drop_unsent_start(attempt)
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


def _open_writer(path: Path, synchronous: str, busy_timeout_ms: int) -> sqlite3.Connection:
    """The writer connection, in WAL mode and at the current schema (runs in a worker thread)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as e:
        raise StoreError(f"cannot open database {path}: {e}") from None
    try:
        _prepare(conn, synchronous, busy_timeout_ms)
        _migrate(conn, path)
    except sqlite3.Error as e:
        conn.close()
        raise StoreError(f"cannot open database {path}: {e}") from None
    except StoreError:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, synchronous: str, busy_timeout_ms: int) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    row = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if row is None or str(row[0]).lower() != "wal":
        raise StoreError("cannot switch the database to WAL mode")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # Store._checkpoint_loop does it off the commit path
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")  # the WAL file shrinks back


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    row = conn.execute("PRAGMA user_version").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer moose_daemon (schema {version}, this one knows {SCHEMA_VERSION})"
        )
    if version == 0:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        if tables:
            raise StoreError(
                f"{path} is a SQLite database of something else (it has tables but no schema version)"
            )
        schema = resources.files("moose_daemon").joinpath("schema.sql").read_text()
        conn.executescript(f"BEGIN;\n{schema}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
