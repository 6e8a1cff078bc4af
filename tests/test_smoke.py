"""The user doc (trigger-workflows.txt) end to end, as a new user runs it: the repository's own example
project, `moose generate hash-token`, the real `moose dev`, the seed's curl commands with the real `curl`
binary and the seed's `moose workflow run` commands. Only the host and port (and the token) change.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import MOOSE, REPO, DaemonProcess, http_request

# ---- the seed's commands, verbatim ----------------------------------------------------------------

SEED_RUN = "moose workflow run example"
SEED_RUN_INPUT = """moose workflow run example --input '{"name": "John", "email": "john@example.com"}'"""
SEED_RUN_DATA = """moose workflow run data-processing --input '{
  "sourceUrl": "https://api.example.com/data",
  "batchSize": 100
}'"""

SEED_TRIGGER = r"""curl -X POST 'http://localhost:4000/admin/workflows/data-processing/trigger' \
  -H 'Authorization: Bearer <your-bearer-token>' \
  -H 'Content-Type: application/json' \
  -d '{
    "sourceUrl": "https://api.example.com/data",
    "batchSize": 100
  }'"""
SEED_TERMINATE = r"""curl -X POST 'http://localhost:4000/admin/workflows/data-processing/terminate' \
  -H 'Authorization: Bearer <your-bearer-token>'"""
SEED_HISTORY = r"""curl -X GET 'http://localhost:4000/admin/workflows/history' \
  -H 'Authorization: Bearer <your-bearer-token>'"""
SEED_HISTORY_RUNNING = r"""curl -X GET 'http://localhost:4000/admin/workflows/history?status=RUNNING&limit=20' \
  -H 'Authorization: Bearer <your-bearer-token>'"""

SEED_INPUT = {"sourceUrl": "https://api.example.com/data", "batchSize": 100}
DATA_ID = (
    "data-processing-"
    + hashlib.sha256(b'{"sourceUrl":"https://api.example.com/data","batchSize":100}').hexdigest()[:16]
)
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="the real curl binary is not installed")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MOOSE_") and not k.lower().endswith("_proxy")
    }
    return {**env, **(extra or {})}


def argv_of(command: str) -> list[str]:
    """A seed command as the shell would split it (line continuations included)."""
    return shlex.split(command.replace("\\\n", " "))


def curl(command: str, url: str, token: str) -> tuple[int, Any]:
    """Run a seed curl command against `url`; return the status and the decoded body."""
    assert CURL is not None
    argv = argv_of(command.replace("http://localhost:4000", url).replace("<your-bearer-token>", token))
    assert argv[0] == "curl"
    argv = [CURL, "-sS", "--max-time", "10", "-w", "\n%{http_code}", *argv[1:]]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=clean_env())
    assert r.returncode == 0, r.stderr
    body, _, code = r.stdout.rpartition("\n")
    try:
        return int(code), json.loads(body)
    except ValueError:
        return int(code), body


def moose_cli(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a seed `moose ...` command in `cwd`, with no token or URL in the environment."""
    argv = argv_of(command)
    assert argv[0] == "moose"
    return subprocess.run(
        [str(MOOSE), *argv[1:]], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=30
    )


def get(url: str, path: str, token: str) -> tuple[int, Any]:
    return http_request(url, "GET", path, token)


def wait_status(url: str, token: str, run_id: str, status: str, within_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        code, run = get(url, f"/admin/runs/{run_id}", token)
        assert code == 200, run
        if run["status"].endswith(status):
            return dict(run)
        assert time.monotonic() < deadline, f"run {run_id} is {run['status']}, not {status}"
        time.sleep(0.02)


def ids_of(stdout: str) -> tuple[str, str]:
    wf = re.search(r"workflowId:\s+(\S+)", stdout)
    run = re.search(r"runId:\s+(\S+)", stdout)
    assert wf and run, stdout
    return wf.group(1), run.group(1)


@pytest.fixture
def example_project(tmp_path: Path) -> Path:
    """The repository's own example project, as a fresh clone has it."""
    target = tmp_path / "example"
    target.mkdir()
    shutil.copytree(REPO / "app", target / "app", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "moose.config.toml", target / "moose.config.toml")
    return target


def hash_token(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [str(MOOSE), "generate", "hash-token", *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return r


# ---- the walk-through -----------------------------------------------------------------------------


@needs_curl
def test_seed_commands_end_to_end(daemon_factory: Any, example_project: Path) -> None:
    pair = json.loads(hash_token(example_project, "--json").stdout)  # the whole stdout is the JSON
    key, token = pair["api_key_hash"], pair["bearer_token"]
    d: DaemonProcess = daemon_factory(example_project, env={"MOOSE_AUTHENTICATION__ADMIN_API_KEY": key})
    url = d.url

    # Trigger Request, then Terminate Request at once (data-processing takes well over 50 ms).
    code, body = curl(SEED_TRIGGER, url, token)
    assert code == 200, body
    assert re.fullmatch(r"data-processing-[0-9a-f]{16}", body["workflowId"]), body
    assert body["workflowId"] == DATA_ID
    assert body["runId"] and body["dashboardUrl"], body
    triggered = body["runId"]
    code, stopped = curl(SEED_TERMINATE, url, token)
    assert code == 200, stopped
    assert stopped["status"] == "terminated" and stopped["message"], stopped
    run = wait_status(url, token, triggered, "TERMINATED")
    assert run["input"] == SEED_INPUT

    # History Request, plain and with the optional query parameters.
    code, rows = curl(SEED_HISTORY, url, token)
    assert code == 200, rows
    assert rows[0]["run_id"] == triggered and rows[0]["name"] == DATA_ID
    assert rows[0]["status"] == "WORKFLOW_EXECUTION_STATUS_TERMINATED"
    assert {"name", "run_id", "status", "started_at", "duration"} <= set(rows[0])
    code, running = curl(SEED_HISTORY_RUNNING, url, token)
    assert code == 200, running
    assert isinstance(running, list) and triggered not in [r["run_id"] for r in running]
    assert all(r["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING" for r in running), running

    # Manual Workflow Execution and Passing Input: the CLI finds the daemon and its credential in .moose/.
    results = {}
    for command in (SEED_RUN, SEED_RUN_INPUT, SEED_RUN_DATA):
        r = moose_cli(command, example_project)
        assert r.returncode == 0, (command, r.stdout, r.stderr)
        assert "started successfully" in r.stdout
        workflow_id, run_id = ids_of(r.stdout)
        results[command] = (workflow_id, wait_status(url, token, run_id, "COMPLETED"))

    workflow_id, run = results[SEED_RUN]
    assert workflow_id == "example"
    assert run["tasks"][-1]["output"] == {"delivered_to": "stdout", "message": "Hello, world!"}
    workflow_id, run = results[SEED_RUN_INPUT]
    assert workflow_id.startswith("example-")
    assert run["tasks"][-1]["output"] == {"delivered_to": "john@example.com", "message": "Hello, John!"}
    workflow_id, run = results[SEED_RUN_DATA]
    assert workflow_id == DATA_ID, "CLI and curl send the same JSON, so the same workflowId"
    assert run["input"] == SEED_INPUT
    assert run["tasks"][-1]["task"] == "load"
    assert run["tasks"][-1]["output"]["records"] == 1000
    assert run["tasks"][-1]["output"]["batches"] == 10

    code, rows = curl(SEED_HISTORY, url, token)
    assert code == 200 and len(rows) == 4, rows
    assert [r["status"].removeprefix("WORKFLOW_EXECUTION_STATUS_") for r in rows] == [
        "COMPLETED",
        "COMPLETED",
        "COMPLETED",
        "TERMINATED",
    ]

    # The status filter with something really running: batches of one take ~10 s, so it is still there.
    long_trigger = SEED_TRIGGER.replace('"batchSize": 100', '"batchSize": 1')
    code, body = curl(long_trigger, url, token)
    assert code == 200, body
    code, running = curl(SEED_HISTORY_RUNNING, url, token)
    assert code == 200, running
    assert [(r["run_id"], r["status"]) for r in running] == [
        (body["runId"], "WORKFLOW_EXECUTION_STATUS_RUNNING")
    ]
    code, stopped = curl(SEED_TERMINATE, url, token)
    assert code == 200, stopped
    wait_status(url, token, body["runId"], "TERMINATED")
    assert d.stop() == 0


@needs_curl
def test_without_a_key_curl_gets_401_not_configured(daemon_factory: Any, example_project: Path) -> None:
    """The doc: 'If the admin API key is not configured, the endpoint returns 401 Unauthorized: Admin API
    key not configured.' The repository's config ships with an empty key."""
    d: DaemonProcess = daemon_factory(example_project)
    code, body = curl(
        SEED_HISTORY, d.url, "430f0a069188d45e51871da8a782a758.a76e57c17106cb7e7a7bd9dbdfa0ccea"
    )
    assert (code, body) == (401, "Unauthorized: Admin API key not configured")
    # ...while the CLI, in the project folder, still works through the daemon's local credential.
    r = moose_cli(SEED_RUN, example_project)
    assert r.returncode == 0, r.stderr


@needs_curl
def test_plain_hash_token_output_in_the_config_works(daemon_factory: Any, example_project: Path) -> None:
    """`moose generate hash-token`, then 'Add the ENV API Key value to moose.config.toml', as the doc says."""
    out = hash_token(example_project).stdout
    assert "\x1b[" not in out, "no colour codes when piped"
    key_line = re.search(r"^\s*ENV API Key (\S+)$", out, re.MULTILINE)
    token_line = re.search(r"^\s*Bearer Token (\S+)$", out, re.MULTILINE)
    assert key_line and token_line, out
    assert "Token Generated successfully" in " ".join(out.split())
    key, token = key_line.group(1), token_line.group(1)
    assert re.fullmatch(r"[0-9a-f]{32}\.[0-9a-f]{32}", token), token

    config = example_project / "moose.config.toml"
    text = config.read_text()
    assert 'admin_api_key = ""' in text
    config.write_text(text.replace('admin_api_key = ""', f'admin_api_key = "{key}"'))
    d: DaemonProcess = daemon_factory(example_project)
    code, rows = curl(SEED_HISTORY, d.url, token)
    assert (code, rows) == (200, [])
    other = json.loads(hash_token(example_project, "--json").stdout)["bearer_token"]
    code, body = curl(SEED_HISTORY, d.url, other)
    assert (code, body) == (401, "Unauthorized: Invalid or missing token")
    assert d.stop() == 0
