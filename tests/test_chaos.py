"""Crash chaos (issue 5 §1), short: the real `moose prod` SIGKILLed at random moments under a trigger load,
then the invariants of scripts/chaos.py asserted. The long run is `scripts/chaos`.

The checker itself is tested first on a hand-made database and executions file, so that a checker that
sees nothing cannot pass the chaos test by accident.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

CHAOS_PY = Path(__file__).resolve().parent.parent / "scripts" / "chaos.py"


def _load_chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("moose_chaos_script", CHAOS_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


chaos: Any = _load_chaos()


# ---- the checker on hand-made evidence --------------------------------------------------------------


class Evidence:
    """A database with the daemon's schema and an executions file, written by hand."""

    def __init__(self, root: Path) -> None:
        self.db = root / "moose.db"
        self.log = root / "executions.log"
        self.conn = sqlite3.connect(self.db)
        self.conn.executescript(resources.files("moose_daemon").joinpath("schema.sql").read_text())
        self.lines: list[str] = []
        self.acks: list[Any] = []
        self._n = 0

    def run(self, status: str = "COMPLETED", *, ack: bool = True, error: str | None = None) -> str:
        self._n += 1
        run_id, payload = f"run-{self._n}", {"client": 0, "seq": self._n}
        self.conn.execute(
            "INSERT INTO runs (run_id, workflow_id, workflow, status, input, started_at, error) "
            "VALUES (?,?,?,?,?,?,?)",
            (run_id, f"wid-{self._n}", "chaos-chain", status, json.dumps(payload), self._n, error),
        )
        if ack:
            self.acks.append(chaos.Ack(run_id, f"wid-{self._n}", "chaos-chain", payload))
        return run_id

    def execute(self, run_id: str, task: str, attempt: int, nonce: str, *, done: bool = True) -> None:
        self.lines.append(f"{run_id} {task} start {attempt} 100 {nonce}")
        if done:
            self.lines.append(f"{run_id} {task} done {attempt} 100 {nonce}")

    def attempt(self, run_id: str, task: str, attempt: int, status: str, inp: Any, out: Any) -> None:
        self.conn.execute(
            "INSERT INTO task_attempts (run_id, task, attempt, status, started_at, input, output) "
            "VALUES (?,?,?,?,?,?,?)",
            (
                run_id,
                task,
                attempt,
                status,
                attempt,
                json.dumps(inp),
                None if out is None else json.dumps(out),
            ),
        )

    def complete_chain(self, run_id: str, *, skip: str = "") -> None:
        """Every task of chaos-chain ran once and COMPLETED, each on its parent's output."""
        value: Any = {"client": 0, "seq": int(run_id.split("-")[1])}
        for task in chaos.WORKFLOWS["chaos-chain"]:
            out = {"task": task, "nonce": f"{run_id}-{task}"}
            self.execute(run_id, task, 1, out["nonce"])
            if task != skip:
                self.attempt(run_id, task, 1, "COMPLETED", value, out)
            value = out

    def analyze(self) -> Any:
        self.conn.commit()
        self.conn.close()
        self.log.write_text("".join(line + "\n" for line in self.lines))
        report = chaos.Report(seed=0, kills_requested=0)
        chaos.analyze(self.db, self.log, self.acks, report)
        return report


def test_the_checker_passes_a_clean_history(tmp_path: Path) -> None:
    ev = Evidence(tmp_path)
    for _ in range(3):
        ev.complete_chain(ev.run())
    report = ev.analyze()
    assert report.failures() == [], report.format()
    assert (report.acknowledged, report.runs_stored, report.executions) == (3, 3, 12)
    assert report.integrity == "ok" and report.interrupted_duplicates == 0


def test_the_checker_sees_each_broken_invariant(tmp_path: Path) -> None:
    ev = Evidence(tmp_path)
    # allowed: a1 killed before `done` (and before its RUNNING row committed, so attempt 1 again),
    # a2 run again after `done` but before its COMPLETED row committed
    r = ev.run()
    ev.execute(r, "a1", 1, "lost-a1", done=False)
    ev.execute(r, "a2", 1, "early-a2")
    ev.complete_chain(r)
    # forbidden: a start with a higher attempt than the one that COMPLETED
    r = ev.run()
    ev.complete_chain(r)
    ev.execute(r, "a3", 2, "again-a3")
    # forbidden: the same attempt number started again after the execution whose output was stored
    r = ev.run()
    ev.complete_chain(r)
    ev.execute(r, "a4", 1, "again-a4")
    # a COMPLETED run with a task that never COMPLETED
    ev.complete_chain(ev.run(), skip="a2")
    # a run left RUNNING, and one acknowledged but never stored
    ev.run("RUNNING")
    ev.acks.append(chaos.Ack("run-gone", "wid-gone", "chaos-chain", {"client": 0, "seq": -1}))
    # a task that ran for a run the database does not have; a run that failed for no crash reason
    ev.execute("run-ghost", "a1", 1, "ghost")
    ev.run("FAILED", error="internal error: KeyError")
    ev.run("FAILED", error="Task 'a1' was interrupted 10 times by daemon restarts")

    report = ev.analyze()
    assert [s.split(":")[0] for s in report.finished_reexecuted] == ["run-2 a3", "run-3 a4"], report.format()
    assert "attempts [1, 2] were started" in report.finished_reexecuted[0]
    assert "followed by 1 more" in report.finished_reexecuted[1]
    assert (report.interrupted_duplicates, report.duplicates_after_done) == (4, 3)
    assert len(report.chain_broken) == 1 and "['a2']" in report.chain_broken[0]
    assert report.lost == ["run run-gone (wid-gone, input {'client': 0, 'seq': -1}) is not in the database"]
    assert report.not_terminal == ["run run-5 (chaos-chain) is RUNNING"]
    assert report.not_stored == ["run run-ghost executed tasks but is not in the database"]
    assert len(report.unexpected_failures) == 1 and "KeyError" in report.unexpected_failures[0]
    assert not report.ok


# ---- the real daemon, killed -----------------------------------------------------------------------


def test_sigkill_chaos_keeps_every_acknowledged_run(tmp_path: Path) -> None:
    kills = 4
    report = chaos.run_chaos(
        kills=kills,
        seconds=6.0,
        rate=40.0,
        clients=3,
        final_wait_s=30.0,
        early_share=0.25,
        workdir=tmp_path,
        quiet=True,
    )
    text = report.format()
    print(text)
    assert report.kills == kills, text
    assert report.acknowledged > 0, text
    assert report.lost == [], text
    assert report.not_terminal == [], text
    assert report.finished_reexecuted == [], text
    assert report.chain_broken == [] and report.not_stored == [], text
    assert report.unexpected_failures == [] and report.daemon_failures == [], text
    assert report.integrity == "ok" and report.crash_integrity == [], text
    assert report.ok, text
