"""The single SQLite writer: a thread of its own that commits, in one transaction, every write queued
since its last commit (group commit).

The thread never waits for the event loop: while the loop handles requests, the thread takes whatever
is queued, applies it, hands the results back with one `call_soon_threadsafe` per batch, and goes on
with what was queued meanwhile. One failing item fails alone (see apply_batch); a failure SQLite answers
by rolling the whole transaction back (a full disk, an I/O error) fails every item of the batch. Items
commit in the order they were submitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import StoreError

log = logging.getLogger("moose_daemon.store")

Op = tuple[str, Sequence[Any]]


@dataclass(slots=True)
class _Pending:
    ops: list[Op]
    done: asyncio.Future[None] | None  # None: nobody waits (the write still commits in order)


@dataclass(slots=True)
class _Call:
    """Run `fn(conn)` in the writer thread, between two batches (pragmas, tests)."""

    fn: Callable[[sqlite3.Connection], Any]
    done: asyncio.Future[Any]


_STOP = None


class GroupCommitWriter:
    """`checkpoint_every_s`: see _checkpoint_if_due."""

    def __init__(
        self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop, *, checkpoint_every_s: float = 1.0
    ) -> None:
        self._conn = conn  # opened with check_same_thread=False; only the writer thread uses it from now on
        self._loop = loop
        self._checkpoint_every_s = checkpoint_every_s
        self._last_checkpoint = time.monotonic()
        self._queue: queue.SimpleQueue[_Pending | _Call | None] = queue.SimpleQueue()
        self._stopped: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._run, name="moose-sqlite-writer", daemon=True)
        self._thread.start()

    def submit(self, ops: list[Op], done: asyncio.Future[None] | None) -> None:
        self._queue.put(_Pending(ops, done))

    async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        done: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put(_Call(fn, done))
        return await done

    async def close(self) -> None:
        """Commit everything queued so far, then close the connection."""
        self._queue.put(_STOP)
        await asyncio.shield(self._stopped)

    # ---- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                items = [self._queue.get()]
                with contextlib.suppress(queue.Empty):
                    while True:
                        items.append(self._queue.get_nowait())
                if not self._handle(items):
                    return
                self._checkpoint_if_due()
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._to_loop(_set_stopped, self._stopped)

    def _handle(self, items: list[_Pending | _Call | None]) -> bool:
        """Apply `items` in order; False once the stop marker is reached."""
        batch: list[_Pending] = []
        for item in items:
            if isinstance(item, _Pending):
                batch.append(item)
                continue
            self._commit(batch)
            batch = []
            if item is _STOP:
                return False
            assert isinstance(item, _Call)
            try:
                result = item.fn(self._conn)
            except Exception as e:
                self._to_loop(_fail, item.done, e)
            else:
                self._to_loop(_succeed, item.done, result)
        self._commit(batch)
        return True

    def _checkpoint_if_due(self) -> None:
        """A checkpoint from the writer itself, between two batches, about once a second.

        The store's background checkpoint copies the WAL into the database off the commit path, but while
        this thread keeps committing it never catches up with the WAL's end, and SQLite only starts the
        WAL over once a checkpoint has reached it: under steady load the WAL grew by gigabytes. Here no
        commit can land during the checkpoint, so it reaches the end (it has little left to copy), and
        the next transaction starts the WAL over; journal_size_limit then truncates the file."""
        now = time.monotonic()
        if now - self._last_checkpoint < self._checkpoint_every_s:
            return
        self._last_checkpoint = now
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as e:
            log.warning("store.checkpoint_failed error=%s", e)

    def _commit(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        try:
            results = apply_batch(self._conn, batch)
        except Exception as e:  # a bug, not a database error: fail the items, keep the thread alive
            log.exception("store.batch_crashed items=%d", len(batch))
            results = [e] * len(batch)
        self._to_loop(_settle_batch, batch, results)

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self._loop.call_soon_threadsafe(fn, *args)


def apply_batch(conn: sqlite3.Connection, batch: list[_Pending]) -> list[BaseException | None]:
    """One transaction for the whole batch. It is first tried without savepoints (a statement that
    fails on its own is rare: the engine has already ruled out a second running workflowId); if one
    does, the transaction is rolled back and the batch applied again, each item in a savepoint, so
    that the failing item fails alone."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as e:
        return [e] * len(batch)
    try:
        for item in batch:
            for sql, params in item.ops:
                conn.execute(sql, params)
    except sqlite3.Error as e:
        if not conn.in_transaction:  # SQLite rolled the whole transaction back (a full disk, I/O)
            return [e] * len(batch)
        return _rollback_and_apply_each(conn, batch)
    return _commit(conn, [None] * len(batch))


def _rollback_and_apply_each(conn: sqlite3.Connection, batch: list[_Pending]) -> list[BaseException | None]:
    try:
        conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as e:
        return _rollback(conn, [e] * len(batch))
    results: list[BaseException | None] = []
    for item in batch:
        try:
            conn.execute("SAVEPOINT item")
            try:
                for sql, params in item.ops:
                    conn.execute(sql, params)
            except sqlite3.Error as e:
                if not conn.in_transaction:
                    return [e] * len(batch)
                conn.execute("ROLLBACK TO item")
                results.append(e)
            else:
                results.append(None)
            conn.execute("RELEASE item")
        except sqlite3.Error as e:  # the savepoint statements themselves failed: nothing is certain
            return _rollback(conn, [e] * len(batch))
    return _commit(conn, results)


def _commit(conn: sqlite3.Connection, results: list[BaseException | None]) -> list[BaseException | None]:
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        return _rollback(conn, [e] * len(results))
    return results


def _rollback(conn: sqlite3.Connection, results: list[BaseException | None]) -> list[BaseException | None]:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
    return results


# ---- on the event loop ---------------------------------------------------------------------------


def _settle_batch(batch: list[_Pending], results: list[BaseException | None]) -> None:
    for item, error in zip(batch, results, strict=True):
        done = item.done
        if done is None:
            if error is not None:
                log.error("store.write_failed error=%s", error)
        elif done.done():  # the waiter was cancelled; the write itself still happened or failed
            continue
        elif error is None:
            done.set_result(None)
        elif isinstance(error, sqlite3.IntegrityError):
            done.set_exception(error)
        else:
            done.set_exception(StoreError(f"database write failed: {error}"))


def _succeed(done: asyncio.Future[Any], result: Any) -> None:
    if not done.done():
        done.set_result(result)


def _fail(done: asyncio.Future[Any], error: Exception) -> None:
    if not done.done():
        done.set_exception(error)


def _set_stopped(stopped: asyncio.Future[None]) -> None:
    if not stopped.done():
        stopped.set_result(None)
