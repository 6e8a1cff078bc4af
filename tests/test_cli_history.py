"""`moose workflow history` pages through the daemon's history: no 1000 cap, filters, and a cursor."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from conftest import MOOSE, DaemonProcess

BASE_US = 1_700_000_000_000_000  # 2023-11-14


def add_runs(db: Path, n: int) -> None:
    rows = [
        (f"00000000-0000-7000-8000-{i:012d}", f"hello-{i:016x}", "hello", "COMPLETED", None,
         BASE_US + i * 1_000_000, BASE_US + i * 1_000_000 + 5, None, 1)
        for i in range(n)
    ]  # fmt: skip
    with sqlite3.connect(db, timeout=10) as conn:
        conn.executemany(
            "INSERT INTO runs (run_id, workflow_id, workflow, status, input, started_at, ended_at, error, attempt)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            rows,
        )


def history(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MOOSE), "workflow", "history", *args], cwd=project, capture_output=True, text=True, timeout=60
    )


def test_history_pages_past_1000_and_filters(daemon_factory: Any, project: Path) -> None:
    d: DaemonProcess = daemon_factory(project)
    add_runs(project / ".moose" / "moose.db", 1500)
    r = history(project, "--limit", "1200", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 1200 and len({row["run_id"] for row in rows}) == 1200
    assert [row["name"] for row in rows[:2]] == [f"hello-{1499:016x}", f"hello-{1498:016x}"]  # newest first

    since = (BASE_US + 1400 * 1_000_000) / 1e6
    r = history(project, "--since", str(since), "--limit", "1000", "--json")
    assert len(json.loads(r.stdout)) == 100

    first = history(project, "--limit", "3")
    assert first.returncode == 0 and "more: moose workflow history --cursor " in first.stderr
    cursor = first.stderr.strip().rsplit(" ", 1)[1]
    rest = history(project, "--limit", "2", "--cursor", cursor, "--json")
    assert [row["name"] for row in json.loads(rest.stdout)] == [f"hello-{1496:016x}", f"hello-{1495:016x}"]
    assert d.proc.poll() is None
