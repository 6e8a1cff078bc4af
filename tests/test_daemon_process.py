"""The real `moose dev` / `moose prod` process (issue #2 §3, §4): the ready line, signals, state files,
refusing to start, prod mode, and durability across `kill -9`.

Only loopback addresses; every subprocess has a timeout; `daemon_factory` kills what is left after a test.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import KEY, MOOSE, TOKEN, DaemonProcess, executions, http_request

KEY_ENV = {"MOOSE_AUTHENTICATION__ADMIN_API_KEY": KEY}
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # logging's records, not the refusal reason


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOOSE_")}
    return {**env, **(extra or {})}


def request(
    url: str, method: str, path: str, token: str | None = TOKEN, body: bytes | None = None
) -> tuple[int, Any]:
    return http_request(url, method, path, token, body)


def wait_for(predicate: Callable[[], bool], within_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def wait_status(url: str, run_id: str, status: str, within_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        code, run = request(url, "GET", f"/admin/runs/{run_id}")
        assert code == 200, run
        if run["status"].endswith(status):
            return dict(run)
        assert time.monotonic() < deadline, f"run {run_id} is {run['status']}, not {status}"
        time.sleep(0.02)


# ---- the ready line, state files, signals ---------------------------------------------------------


def test_ready_line_state_files_and_token_mode(daemon_factory: Any, project: Path) -> None:
    d: DaemonProcess = daemon_factory(project)
    m = re.fullmatch(r"http://localhost:(\d+)", d.url)
    assert m and 0 < int(m.group(1)) < 65536, d.url
    code, body = request(d.url, "GET", "/health", token=None)
    assert (code, body) == (200, {"status": "healthy"})

    state = project / ".moose"
    info = json.loads((state / "daemon.json").read_text())
    assert info["url"] == d.url and info["pid"] == d.proc.pid
    token_file = state / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip()
    assert d.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly(daemon_factory: Any, project: Path, sig: int) -> None:
    d: DaemonProcess = daemon_factory(project, env=KEY_ENV)
    code, body = request(d.url, "POST", "/admin/workflows/slow/trigger")  # a task in flight
    assert code == 200, body
    wait_for(lambda: f"{body['runId']} slow started" in executions(project), what="slow to start")
    started = time.monotonic()
    assert d.stop(sig, timeout=10) == 0
    assert time.monotonic() - started < 5
    assert not (project / ".moose" / "daemon.json").exists()
    assert d.proc.stderr is not None
    assert "Traceback" not in d.proc.stderr.read()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_right_after_the_ready_line_stops_cleanly(
    daemon_factory: Any, project: Path, sig: int
) -> None:
    # Three tries: the window is small but hit every time on a 2-core machine; all three must be clean.
    for _ in range(3):
        d: DaemonProcess = daemon_factory(project)
        assert d.stop(sig, timeout=10) == 0
        assert not (project / ".moose" / "daemon.json").exists()


# ---- refusing to start ----------------------------------------------------------------------------


def refusal(project: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Start `moose dev`, expect it to refuse; return its one-line reason.

    Should it start after all (a regression), it is killed the moment its ready line appears, so that a
    daemon told to listen on 0.0.0.0 never stays up."""
    proc = subprocess.Popen(
        [str(MOOSE), "dev", "--project", str(project), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(env),
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        readable, _, _ = select.select([proc.stdout], [], [], 10)
        first = proc.stdout.readline() if readable else "(no output and no exit within 10 s)"
        if first:
            proc.kill()
        code = proc.wait(timeout=10)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert not first, f"it did not refuse: {first!r}"
    assert code != 0
    assert "Traceback" not in stderr, stderr
    reasons = [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(reasons) == 1, stderr
    assert not (project / ".moose" / "daemon.json").exists()
    return reasons[0]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


def test_refuses_a_port_in_use(project: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        reason = refusal(project, "--port", str(port))
    assert str(port) in reason and "in use" in reason


def test_refuses_invalid_toml(project: Path) -> None:
    (project / "moose.config.toml").write_text('[http_server_config\nhost = "localhost"\n')
    reason = refusal(project, "--port", "0")
    assert "moose.config.toml" in reason


def test_refuses_a_port_that_is_not_a_number(project: Path) -> None:
    edit(project / "moose.config.toml", "port = 4000", 'port = "abc"')
    reason = refusal(project)
    assert "http_server_config.port" in reason and "abc" in reason


def test_refuses_a_port_from_the_environment_that_is_not_a_number(project: Path) -> None:
    reason = refusal(project, env={"MOOSE_HTTP_SERVER_CONFIG__PORT": "abc"})
    assert "http_server_config.port" in reason and "MOOSE_HTTP_SERVER_CONFIG__PORT" in reason


@pytest.mark.parametrize("where", ["file", "env"])
def test_refuses_an_admin_key_that_is_not_a_key(project: Path, where: str) -> None:
    env = None
    if where == "file":
        edit(project / "moose.config.toml", 'admin_api_key = ""', 'admin_api_key = "zz"')
    else:
        env = {"MOOSE_AUTHENTICATION__ADMIN_API_KEY": "zz"}
    reason = refusal(project, "--port", "0", env=env)
    assert "admin_api_key" in reason
    assert "zz" not in reason, "the key itself is never printed"


def test_refuses_a_main_py_that_raises(project: Path) -> None:
    main = project / "app" / "main.py"
    main.write_text(main.read_text() + '\nraise RuntimeError("boom at import")\n')
    reason = refusal(project, "--port", "0")
    assert str(main) in reason or "app/main.py" in reason
    assert "boom at import" in reason


def test_refuses_two_workflows_with_one_name(project: Path) -> None:
    main = project / "app" / "main.py"
    main.write_text(
        main.read_text() + "\n\nWorkflow(\n    name='hello',\n    config=WorkflowConfig(\n"
        "        starting_task=Task[dict | None, dict](name='again', config=TaskConfig(run=hello_run))\n"
        "    ),\n)\n"
    )
    reason = refusal(project, "--port", "0")
    assert "'hello'" in reason and "main.py" in reason


def test_refuses_a_database_that_is_not_sqlite(project: Path) -> None:
    (project / ".moose").mkdir()
    (project / ".moose" / "moose.db").write_bytes(b"this is not an SQLite database\n" * 200)
    reason = refusal(project, "--port", "0")
    assert "moose.db" in reason


def test_refuses_a_non_loopback_host_without_a_key(project: Path) -> None:
    edit(project / "moose.config.toml", 'host = "localhost"', 'host = "0.0.0.0"')
    reason = refusal(project, "--port", "0")
    assert "0.0.0.0" in reason and "admin_api_key" in reason


def test_refuses_a_missing_config(tmp_path: Path) -> None:
    reason = refusal(tmp_path, "--port", "0")
    assert "moose.config.toml" in reason


# ---- prod, dashboardUrl ---------------------------------------------------------------------------


def test_prod_gives_no_dashboard_url(daemon_factory: Any, project: Path) -> None:
    d: DaemonProcess = daemon_factory(project, env=KEY_ENV, mode="prod")
    code, body = request(d.url, "POST", "/admin/workflows/hello/trigger")
    assert code == 200, body
    assert set(body) == {"workflowId", "runId"}
    wait_status(d.url, body["runId"], "COMPLETED")
    r = subprocess.run(
        [str(MOOSE), "workflow", "run", "hello", "--input", '{"name": "Bo"}'],
        cwd=project,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert "runId" in r.stdout and "/admin/runs/" not in r.stdout


def test_dev_dashboard_url_points_at_this_daemon(daemon_factory: Any, project: Path) -> None:
    d: DaemonProcess = daemon_factory(project, env=KEY_ENV)
    code, body = request(d.url, "POST", "/admin/workflows/hello/trigger")
    assert code == 200, body
    assert body["dashboardUrl"].startswith(d.url + "/"), body
    code, run = request(d.url, "GET", urlsplit(body["dashboardUrl"]).path)
    assert code == 200 and run["run_id"] == body["runId"]


# ---- durability -----------------------------------------------------------------------------------


def test_a_200_trigger_survives_kill_9(daemon_factory: Any, project: Path) -> None:
    d: DaemonProcess = daemon_factory(project, env=KEY_ENV)
    code, body = request(d.url, "POST", "/admin/workflows/slow/trigger", body=b'{"n": 1}')
    os.kill(d.proc.pid, signal.SIGKILL)  # the next instant after the 200
    d.proc.wait(timeout=10)
    assert code == 200, body
    run_id = body["runId"]
    starts_before = executions(project).count(f"{run_id} slow started")

    again: DaemonProcess = daemon_factory(project, env=KEY_ENV)
    code, rows = request(again.url, "GET", "/admin/workflows/history?limit=1000")
    assert code == 200, rows
    entry = next((r for r in rows if r["run_id"] == run_id), None)
    assert entry is not None, rows
    assert entry["name"] == body["workflowId"]
    assert entry["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"
    code, run = request(again.url, "GET", f"/admin/runs/{run_id}")
    assert code == 200 and run["input"] == {"n": 1}
    wait_for(
        lambda: executions(project).count(f"{run_id} slow started") == starts_before + 1,
        what="the resumed run to start its task again",
    )
    assert again.stop() == 0


def test_crash_reruns_only_the_interrupted_task(daemon_factory: Any, project: Path) -> None:
    d: DaemonProcess = daemon_factory(project, env=KEY_ENV)
    code, body = request(d.url, "POST", "/admin/workflows/crashy/trigger")
    assert code == 200, body
    run_id = body["runId"]
    wait_for(lambda: f"{run_id} y start" in executions(project), what="task y to start")
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(timeout=10)
    assert f"{run_id} y done" not in executions(project), "killed while y was running"

    again: DaemonProcess = daemon_factory(project, env=KEY_ENV)
    run = wait_status(again.url, run_id, "COMPLETED")
    assert run["tasks"][-1]["task"] == "z" and run["tasks"][-1]["output"] == 3
    lines = [line.split(" ", 1)[1] for line in executions(project) if line.startswith(f"{run_id} ")]
    assert lines.count("x start") == 1 and lines.count("x done") == 1, lines
    assert lines.count("y start") == 2 and lines.count("y done") == 1, lines
    assert lines.count("z start") == 1 and lines.count("z done") == 1, lines
    assert again.stop() == 0
