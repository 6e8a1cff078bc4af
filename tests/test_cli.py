"""The real `moose workflow ...` command in a subprocess, against a real `moose dev` daemon (issue #2 §6).

Every CLI call runs with a scrubbed environment (no inherited MOOSE_*), a timeout, and a loopback daemon
that `daemon_factory` stops after the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURE_PROJECT, KEY, MOOSE, TOKEN, DaemonProcess, executions, http_request

KEY_ENV = {"MOOSE_AUTHENTICATION__ADMIN_API_KEY": KEY}
RUN_ID = re.compile(r"^\s*runId:\s+(\S+)\s*$", re.MULTILINE)
WORKFLOW_ID = re.compile(r"^\s*workflowId:\s+(\S+)\s*$", re.MULTILINE)
HISTORY_HEADER = ["Workflow Name", "Run ID", "Status", "Started At", "Duration"]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOOSE_")}
    return {**env, **(extra or {})}


def moose(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MOOSE), *args], cwd=cwd, env=clean_env(env), capture_output=True, text=True, timeout=30
    )


def assert_clean_failure(r: subprocess.CompletedProcess[str], code: int) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stderr.strip(), "the reason belongs on stderr"


def request(
    url: str, method: str, path: str, token: str | None, body: bytes | None = None
) -> tuple[int, Any]:
    return http_request(url, method, path, token, body)


def local_token(project: Path) -> str:
    return (project / ".moose" / "admin-token").read_text().strip()


def wait_status(d: DaemonProcess, run_id: str, status: str, within_s: float = 10.0) -> dict[str, Any]:
    token = local_token(d.project)
    deadline = time.monotonic() + within_s
    while True:
        code, run = request(d.url, "GET", f"/admin/runs/{run_id}", token)
        assert code == 200, run
        if run["status"].endswith(status):
            return run
        assert time.monotonic() < deadline, f"run {run_id} is {run['status']}, not {status}"
        time.sleep(0.02)


def wait_for(predicate: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def run_id_of(stdout: str) -> str:
    m = RUN_ID.search(stdout)
    assert m, stdout
    return m.group(1)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that is bound (so nobody else takes it) but not listening: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def daemon(daemon_factory: Any, project: Path) -> DaemonProcess:
    """A daemon of one's own, for tests that look at the whole history or stop runs by name."""
    d: DaemonProcess = daemon_factory(project)
    return d


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon for the tests that only add completed runs of their own (starting one costs ~0.4 s)."""
    target = tmp_path_factory.mktemp("shared") / "project"
    shutil.copytree(FIXTURE_PROJECT, target, ignore=shutil.ignore_patterns("__pycache__", ".moose", "*.log"))
    d = DaemonProcess(target)
    try:
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
        d.proc.wait(timeout=10)


def history_size(d: DaemonProcess) -> int:
    code, rows = request(d.url, "GET", "/admin/workflows/history?limit=1000", local_token(d.project))
    assert code == 200, rows
    return len(rows)


# ---- run ------------------------------------------------------------------------------------------


def test_run_prints_workflow_id_and_run_id(shared: DaemonProcess) -> None:
    r = moose("workflow", "run", "hello", cwd=shared.project)
    assert r.returncode == 0, r.stderr
    assert "Workflow 'hello' started successfully." in r.stdout
    m = WORKFLOW_ID.search(r.stdout)
    assert m and m.group(1) == "hello", r.stdout
    run = wait_status(shared, run_id_of(r.stdout), "COMPLETED")
    assert run["tasks"][-1]["output"] == {"hello": "world"}
    assert r.stderr == ""


def test_run_with_input_hashes_the_compact_json(shared: DaemonProcess) -> None:
    r = moose("workflow", "run", "hello", "--input", '{"name": "Ann"}', cwd=shared.project)
    assert r.returncode == 0, r.stderr
    digest = hashlib.sha256(b'{"name":"Ann"}').hexdigest()[:16]
    m = WORKFLOW_ID.search(r.stdout)
    assert m and m.group(1) == f"hello-{digest}", r.stdout
    run = wait_status(shared, run_id_of(r.stdout), "COMPLETED")
    assert run["tasks"][-1]["output"] == {"hello": "Ann"}


def test_run_in_dev_prints_a_dashboard_url(shared: DaemonProcess) -> None:
    r = moose("workflow", "run", "hello", cwd=shared.project)
    assert r.returncode == 0, r.stderr
    assert f"/admin/runs/{run_id_of(r.stdout)}" in r.stdout


@pytest.mark.parametrize("bad", ["{bad", '{"name": "Ann"} trailing', "{'single': 1}"])
def test_invalid_input_json_is_a_usage_error(shared: DaemonProcess, bad: str) -> None:
    before = history_size(shared)
    r = moose("workflow", "run", "hello", "--input", bad, cwd=shared.project)
    assert_clean_failure(r, 2)
    assert "--input" in r.stderr and "JSON" in r.stderr
    assert r.stdout == ""
    assert history_size(shared) == before, "nothing is triggered"


def test_unknown_workflow_exits_1(shared: DaemonProcess) -> None:
    r = moose("workflow", "run", "nope", cwd=shared.project)
    assert_clean_failure(r, 1)
    assert "Could not find workflow 'nope'" in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize(
    "verb", [["run", "hello"], ["history"], ["terminate", "hello"], ["cancel", "hello"]], ids=" ".join
)
def test_daemon_not_running_says_start_moose_dev(project: Path, closed_port: int, verb: list[str]) -> None:
    r = moose("workflow", *verb, cwd=project, env={"MOOSE_URL": f"http://127.0.0.1:{closed_port}"})
    assert_clean_failure(r, 1)
    assert "moose dev" in r.stderr
    assert str(closed_port) in r.stderr


def test_daemon_not_running_found_through_the_config(project: Path, closed_port: int) -> None:
    """No MOOSE_URL, no daemon.json: the CLI goes to the config's port and explains that nothing answers."""
    config = project / "moose.config.toml"
    config.write_text(config.read_text().replace("port = 4000", f"port = {closed_port}"))
    r = moose("workflow", "run", "hello", cwd=project)
    assert_clean_failure(r, 1)
    assert "moose dev" in r.stderr and str(closed_port) in r.stderr


# ---- auth -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("daemon_env", "message"),
    [
        (KEY_ENV, "Unauthorized: Invalid or missing token"),
        ({}, "Unauthorized: Admin API key not configured"),
    ],
    ids=["key-configured", "no-key"],
)
def test_wrong_admin_token_shows_the_401_text(
    daemon_factory: Any, project: Path, daemon_env: dict[str, str], message: str
) -> None:
    daemon_factory(project, env=daemon_env)
    wrong = "0" * 32 + "." + "1" * 32
    r = moose("workflow", "run", "hello", cwd=project, env={"MOOSE_ADMIN_TOKEN": wrong})
    assert_clean_failure(r, 1)
    assert message in r.stderr
    assert wrong not in r.stderr + r.stdout, "the token is never echoed"


def test_admin_token_from_env_works_from_anywhere(daemon_factory: Any, project: Path, tmp_path: Path) -> None:
    d = daemon_factory(project, env=KEY_ENV)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"MOOSE_URL": d.url, "MOOSE_ADMIN_TOKEN": TOKEN}
    r = moose("workflow", "run", "hello", cwd=elsewhere, env=env)
    assert r.returncode == 0, r.stderr
    wait_status(d, run_id_of(r.stdout), "COMPLETED")
    # Without the token (and no .moose/ credential there) the same call is refused.
    r = moose("workflow", "run", "hello", cwd=elsewhere, env={"MOOSE_URL": d.url})
    assert_clean_failure(r, 1)
    assert "Unauthorized: Invalid or missing token" in r.stderr


def test_local_credential_works_with_a_key_configured(daemon_factory: Any, project: Path) -> None:
    """With an admin key set, the CLI in the project folder still needs no pasted token."""
    d = daemon_factory(project, env=KEY_ENV)
    r = moose("workflow", "run", "hello", cwd=project)
    assert r.returncode == 0, r.stderr
    wait_status(d, run_id_of(r.stdout), "COMPLETED")


# ---- terminate, cancel ----------------------------------------------------------------------------


def test_terminate_after_run(daemon: DaemonProcess) -> None:
    r = moose("workflow", "run", "slow", cwd=daemon.project)
    assert r.returncode == 0, r.stderr
    run_id = run_id_of(r.stdout)
    r = moose("workflow", "terminate", "slow", cwd=daemon.project)
    assert "Traceback" not in r.stderr
    assert r.returncode == 0, r.stderr
    assert "'slow' terminated successfully" in r.stdout
    assert run_id in r.stdout
    wait_status(daemon, run_id, "TERMINATED")


def test_terminate_stops_the_run_and_a_second_terminate_says_completed(daemon: DaemonProcess) -> None:
    r = moose("workflow", "run", "slow", cwd=daemon.project)
    assert r.returncode == 0, r.stderr
    run_id = run_id_of(r.stdout)
    moose("workflow", "terminate", "slow", cwd=daemon.project)  # its output: test_terminate_after_run
    wait_status(daemon, run_id, "TERMINATED")
    again = moose("workflow", "terminate", "slow", cwd=daemon.project)
    assert_clean_failure(again, 1)
    assert "already completed" in again.stderr


def test_terminate_unknown_exits_1(shared: DaemonProcess) -> None:
    r = moose("workflow", "terminate", "nope", cwd=shared.project)
    assert_clean_failure(r, 1)
    assert "nope" in r.stderr


def test_cancel_runs_on_cancel(daemon: DaemonProcess) -> None:
    r = moose("workflow", "run", "slow", cwd=daemon.project)
    assert r.returncode == 0, r.stderr
    run_id = run_id_of(r.stdout)
    wait_for(lambda: f"{run_id} slow started" in executions(daemon.project))
    r = moose("workflow", "cancel", "slow", cwd=daemon.project)
    assert r.returncode == 0, r.stderr
    assert "'slow' cancellation requested successfully" in r.stdout
    assert run_id in r.stdout
    wait_status(daemon, run_id, "CANCELED")
    wait_for(lambda: f"{run_id} slow on_cancel state=['started']" in executions(daemon.project))


def test_cancel_unknown_exits_1(shared: DaemonProcess) -> None:
    r = moose("workflow", "cancel", "nope", cwd=shared.project)
    assert_clean_failure(r, 1)
    assert "nope" in r.stderr


# ---- history --------------------------------------------------------------------------------------


def test_history_json_is_clean_json(daemon: DaemonProcess) -> None:
    first = run_id_of(moose("workflow", "run", "hello", cwd=daemon.project).stdout)
    wait_status(daemon, first, "COMPLETED")
    second = run_id_of(moose("workflow", "run", "slow", cwd=daemon.project).stdout)
    r = moose("workflow", "history", "--json", cwd=daemon.project)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)  # the whole stdout: no banner, no colour codes
    assert [row["run_id"] for row in rows] == [second, first], "newest first"
    assert {"name", "run_id", "status", "started_at", "duration"} <= set(rows[0])
    assert rows[0]["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"
    assert rows[1]["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"

    running = moose("workflow", "history", "--status", "running", "--json", cwd=daemon.project)
    assert [row["run_id"] for row in json.loads(running.stdout)] == [second]
    one = moose("workflow", "history", "--limit", "1", "--json", cwd=daemon.project)
    assert [row["run_id"] for row in json.loads(one.stdout)] == [second]


def test_history_table_has_the_header(daemon: DaemonProcess) -> None:
    empty = moose("workflow", "history", cwd=daemon.project)
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.split() == " ".join(HISTORY_HEADER).split(), "no runs: the header only"
    assert json.loads(moose("workflow", "history", "--json", cwd=daemon.project).stdout) == []

    run_id = run_id_of(moose("workflow", "run", "hello", cwd=daemon.project).stdout)
    wait_status(daemon, run_id, "COMPLETED")
    r = moose("workflow", "history", cwd=daemon.project)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0].strip()) == HISTORY_HEADER
    assert len(lines) == 2
    assert lines[1].split()[:3] == ["hello", run_id, "COMPLETED"]


@pytest.mark.parametrize("limit", ["0", "-1", "abc"])
def test_history_bad_limit_is_a_usage_error(shared: DaemonProcess, limit: str) -> None:
    r = moose("workflow", "history", "--limit", limit, cwd=shared.project)
    assert_clean_failure(r, 2)
    assert "--limit" in r.stderr
    assert r.stdout == ""


def test_history_bad_status_is_refused(shared: DaemonProcess) -> None:
    r = moose("workflow", "history", "--status", "SLEEPING", cwd=shared.project)
    assert_clean_failure(r, 1)
    assert "SLEEPING" in r.stderr


def test_workflow_without_a_verb_is_a_usage_error(tmp_path: Path) -> None:
    r = moose("workflow", cwd=tmp_path)
    assert_clean_failure(r, 2)


# ---- --project, imports ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--project", "{p}", "workflow", "run", "hello"],
        ["workflow", "--project", "{p}", "run", "hello"],
        ["workflow", "run", "hello", "--project", "{p}"],
    ],
    ids=["before-workflow", "before-verb", "after-verb"],
)
def test_project_option_from_another_cwd(shared: DaemonProcess, tmp_path: Path, argv: list[str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = moose(*[a.replace("{p}", str(shared.project)) for a in argv], cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    wait_status(shared, run_id_of(r.stdout), "COMPLETED")


def test_project_found_from_a_subfolder(shared: DaemonProcess) -> None:
    r = moose("workflow", "run", "hello", cwd=shared.project / "app")
    assert r.returncode == 0, r.stderr
    wait_status(shared, run_id_of(r.stdout), "COMPLETED")


HEAVY = ("aiohttp", "aiosqlite", "argon2", "orjson", "croniter", "pydantic")


def test_cli_imports_only_the_standard_library(tmp_path: Path, closed_port: int) -> None:
    """Import the CLI and run a workflow verb to its failure; list every module that came in."""
    script = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from moose_daemon.cli import main\n"
        "try:\n"
        "    main(['workflow', 'run', 'hello', '--input', '{\"a\": 1}'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=clean_env({"MOOSE_URL": f"http://127.0.0.1:{closed_port}"}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert "moose dev" in r.stderr, "the verb really ran"
    loaded = r.stdout.split()
    tops = {m.split(".")[0] for m in loaded}
    assert not tops & set(HEAVY), sorted(tops & set(HEAVY))
    third_party = {t for t in tops if t != "moose_daemon" and t not in sys.stdlib_module_names}
    assert not third_party, sorted(third_party)
    ours = {m for m in loaded if m.startswith("moose_daemon.")}
    assert ours <= {
        "moose_daemon.cli",
        "moose_daemon.client",
        "moose_daemon.config",
        "moose_daemon.errors",
    }, ours
