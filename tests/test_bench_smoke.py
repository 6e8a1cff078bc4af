"""scripts/bench --quick runs and reports every figure; the numbers are not judged (machines are noisy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

FIGURES = {
    "trigger_rps", "ceiling_rps", "trigger_ratio", "trigger_p50_ms", "trigger_p99_ms", "completed_rps",
    "chain_step_ms", "chain_step_e2e_ms", "history_running_p99_ms", "history_latest_p99_ms",
    "history_deep_p99_ms", "history_oldest_p99_ms", "rss_per_run_b", "terminate_all_s", "cli_ms",
    "py_import_ms", "cli_ratio", "ready_s", "terminate_p50_ms", "terminate_p99_ms",
}  # fmt: skip


def test_the_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert not data["errors"], data["errors"]
    keys = {f["key"] for f in data["figures"]}
    assert keys >= FIGURES
    assert all(f["value"] is not None for f in data["figures"]), data["figures"]
    assert "trigger / ceiling" in result.stdout
