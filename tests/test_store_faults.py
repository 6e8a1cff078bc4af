"""Faults around the store: a full disk, a database locked by another process, a corrupt or read-only
file. The daemon answers 503 rather than acknowledging what it could not store, and recovers."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import MOOSE, Harness, make_harness

from moose_daemon.errors import StoreError
from moose_daemon.store import Store


async def limit_pages(store: Store, extra_pages: int) -> None:
    """SQLite's own 'database or disk is full' (SQLITE_FULL), by capping the file's size."""
    pages = await store.on_writer(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
    await store.on_writer(lambda conn: conn.execute(f"PRAGMA max_page_count = {int(pages) + extra_pages}"))


async def test_a_full_disk_is_a_503_and_nothing_is_acknowledged_then_it_recovers(harness: Harness) -> None:
    await limit_pages(harness.store, 0)
    big = b'{"blob": "' + b"x" * 200_000 + b'"}'
    resp = await harness.client.post("/admin/workflows/hello/trigger", data=big, headers=harness.headers)
    assert resp.status == 503
    body = await resp.json()
    assert body["error"] == "Failed to start workflow" and "full" in body["details"]
    with sqlite3.connect(harness.db_path) as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    assert harness.engine.registry.by_workflow_id("hello") is None  # nothing half-started
    await limit_pages(harness.store, 100_000)
    done = await harness.trigger("hello", big)
    await harness.wait_status(done["runId"], "COMPLETED")


async def test_a_run_waits_for_the_disk_instead_of_running_ahead(harness: Harness, monkeypatch: Any) -> None:
    """While task results cannot be written, the run holds; it goes on, recorded, once they can."""
    original = harness.store.end_attempt
    failures = 0

    async def failing_end_attempt(attempt: Any) -> None:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise StoreError("database write failed: database or disk is full")
        await original(attempt)

    monkeypatch.setattr(harness.store, "end_attempt", failing_end_attempt)
    run = await harness.trigger("chain", b"1")
    done = await harness.wait_status(run["runId"], "COMPLETED")
    assert failures == 3
    assert [(t["task"], t["status"], t["output"]) for t in done["tasks"]] == [
        ("a", "COMPLETED", 2),
        ("b", "COMPLETED", 3),
        ("c", "COMPLETED", 4),
    ]


async def test_a_database_locked_by_another_process_is_a_503(aiohttp_client: Any, project: Path) -> None:
    db_path = project / ".moose" / "moose.db"
    h, auth = await make_harness(aiohttp_client, project, db_path)
    await h.engine.stop(1.0)
    await h.store.close()
    # the same daemon wiring, with a short busy timeout so the test does not wait 5 s
    store = await Store.open(db_path, busy_timeout_ms=200)
    h.engine.store = store
    h.engine._executor._store = store
    h.engine._accepting = True
    locker = sqlite3.connect(db_path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        resp = await h.client.post("/admin/workflows/hello/trigger", headers=h.headers)
        assert resp.status == 503
        assert "locked" in (await resp.json())["details"]
        locker.execute("ROLLBACK")
        resp = await h.client.post("/admin/workflows/hello/trigger", headers=h.headers)
        assert resp.status == 200
    finally:
        locker.close()
        await h.engine.stop(1.0)
        auth.close()
        await store.close()


def start_fails(project: Path) -> str:
    result = subprocess.run(
        [str(MOOSE), "dev", "--project", str(project), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_a_corrupt_database_refuses_to_start(project: Path) -> None:
    (project / ".moose").mkdir()
    (project / ".moose" / "moose.db").write_bytes(b"this is not sqlite" * 100)
    assert "moose.db" in start_fails(project)


def make_read_only(folder: Path) -> Callable[[], None]:
    """A folder nobody may write to, root included: mode 0500, plus the immutable flag when we are root
    (root ignores modes). Returns the undo."""
    folder.mkdir(mode=0o500)
    if os.geteuid() != 0:
        return lambda: folder.chmod(0o700)
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode != 0:
        folder.chmod(0o700)
        pytest.skip("running as root on a filesystem without chattr +i: a read-only folder cannot be made")
    return lambda: subprocess.run([chattr, "-i", str(folder)], check=True)


def test_a_read_only_state_folder_refuses_to_start(project: Path) -> None:
    undo = make_read_only(project / ".moose")
    try:
        reason = start_fails(project)
        assert ".moose" in reason and ("denied" in reason or "not permitted" in reason or "unable" in reason)
    finally:
        undo()


async def test_reads_that_fail_are_503_not_500(harness: Harness, monkeypatch: Any) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("database read failed: disk I/O error")

    monkeypatch.setattr(harness.store, "attempts", broken)
    monkeypatch.setattr(harness.store, "history", broken)
    for path in ("/admin/workflows/history", "/admin/workflows/hello/status", "/admin/runs/x"):
        resp = await harness.client.get(path, headers=harness.headers)
        assert resp.status in (503, 404), path
        if resp.status == 503:
            body = await resp.json()
            assert set(body) == {"error", "details"} and "disk I/O error" in body["details"]
    await asyncio.sleep(0)


async def test_every_200_is_stored_even_when_a_batch_neighbour_fills_the_disk(harness: Harness) -> None:
    """SQLite rolls back the whole transaction on a full disk: the small triggers that shared the group
    commit with a big one must not be acknowledged either."""
    await limit_pages(harness.store, 2)
    big = b'{"blob": "' + b"x" * 200_000 + b'"}'
    bodies = [b'{"n": %d}' % i for i in range(20)]
    bodies.insert(10, big)
    responses = await asyncio.gather(
        *(
            harness.client.post("/admin/workflows/slow/trigger", data=b, headers=harness.headers)
            for b in bodies
        )
    )
    acknowledged = [(await r.json())["runId"] for r in responses if r.status == 200]
    assert {r.status for r in responses} <= {200, 503}
    assert any(r.status == 503 for r in responses)
    with sqlite3.connect(harness.db_path) as db:
        stored = {row[0] for row in db.execute("SELECT run_id FROM runs")}
    assert set(acknowledged) <= stored
