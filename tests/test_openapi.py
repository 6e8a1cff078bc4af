"""The OpenAPI 3.1 document (moose_daemon/openapi.json) against the code and against a live daemon (issue 5 §3).

(a) the document validates as OpenAPI 3.1; (b) its operations are exactly the router's (method and path), so the
two cannot drift; (c) schemathesis fuzzes every operation of a real `moose dev` subprocess, in positive and
negative mode, and checks: no 5xx, every status is documented, content types and response bodies and headers
conform. Hypothesis runs derandomized with few examples, so the run is repeatable and takes well under a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from conftest import AUTH_HEADERS, FIXTURE_PROJECT, KEY, DaemonProcess, Harness
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

SPEC_PATH = Path(str(resources.files("moose_daemon").joinpath("openapi.json")))
SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text())
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
SCHEMA = schemathesis.openapi.from_path(SPEC_PATH)
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
MAX_EXAMPLES = int(os.environ.get("MOOSE_OPENAPI_EXAMPLES", "40"))  # per operation and mode
# Path values worth pinning besides the generated ones: real workflows of the fixture project (not
# `blocking`, whose thread outlives a cancel by design) and the workflowIds and runIds seeded below.
PINNED_WORKFLOWS = ["hello", "chain", "typed", "slow", "failing", "resumable", "two-step", "bad-output"]


# ---- (a) and (b): the document itself ---------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    assert SPEC["openapi"].startswith("3.1.")
    validate(SPEC)


def spec_routes() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in SPEC["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


async def test_the_document_describes_exactly_the_routes_the_app_serves(harness: Harness) -> None:
    served = {(route.method, route.resource.canonical) for route in harness.client.app.router.routes()}
    assert served, "no routes found"
    assert spec_routes() - served == set(), "documented but not served"
    assert served - spec_routes() == set(), "served but not documented"


async def test_the_daemon_serves_this_document(harness: Harness) -> None:
    resp = await harness.client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == SPEC


def test_every_operation_documents_its_errors() -> None:
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            statuses = set(op["responses"])
            assert "200" in statuses, (method, path)
            is_admin = path.startswith("/admin")
            assert ({"401", "429", "503"} <= statuses) == is_admin, (method, path)
            assert (op["security"] == []) != is_admin, (method, path)
            if "{" in path and is_admin:
                assert "404" in statuses, (method, path)
            if "requestBody" in op:
                assert {"400", "413"} <= statuses, (method, path)


# ---- (c): schemathesis against a live daemon ------------------------------------------------------


@dataclass
class Live:
    url: str
    session: requests.Session
    log: list[str]
    workflow_ids: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)

    def post(self, path: str, body: bytes | None = None) -> dict[str, Any]:
        resp = self.session.post(self.url + path, data=body, headers=AUTH_HEADERS, timeout=30)
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    def wait_ended(self, run_id: str) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            run = self.session.get(f"{self.url}/admin/runs/{run_id}", headers=AUTH_HEADERS).json()
            if run["status"] != "WORKFLOW_EXECUTION_STATUS_RUNNING":
                return
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} did not end")


def _seed(live: Live) -> None:
    """Runs in several states for the fuzzer to point at: completed, failed, running, terminated."""
    for name, body in [
        ("hello", b'{"name": "seed"}'),
        ("chain", b"1"),
        ("failing", b""),
        ("resumable", b'{"k": 1}'),
        ("slow", b'{"seed": 1}'),
        ("slow", b'{"seed": 2}'),
    ]:
        data = live.post(f"/admin/workflows/{name}/trigger", body)
        live.workflow_ids.append(data["workflowId"])
        live.run_ids.append(data["runId"])
    live.post(f"/admin/workflows/{live.workflow_ids[-1]}/terminate")
    live.wait_ended(live.run_ids[2])  # `failing`: two attempts, 1 s apart, then FAILED
    live.wait_ended(live.run_ids[3])  # `resumable`: r2 fails, so it can be resumed from r2


def _drain(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line)


@pytest.fixture(scope="module")
def live_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    project = tmp_path_factory.mktemp("openapi") / "project"
    shutil.copytree(FIXTURE_PROJECT, project, ignore=shutil.ignore_patterns("__pycache__", ".moose", "*.log"))
    daemon = DaemonProcess(project, env={"MOOSE_AUTHENTICATION__ADMIN_API_KEY": KEY})
    log: list[str] = []
    # Full pipes would block the daemon (a task printing megabytes blocks in its write, and then shutdown
    # waits for that thread forever): read both to the end.
    drainer = threading.Thread(target=_drain, args=(daemon.proc.stderr, log), daemon=True)
    drainer.start()
    threading.Thread(target=_drain, args=(daemon.proc.stdout, []), daemon=True).start()
    live = Live(daemon.url, requests.Session(), log)
    try:
        _seed(live)
        yield live
    finally:
        live.session.close()
        try:
            daemon.stop(signal.SIGTERM, timeout=20)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait()
        drainer.join(timeout=5)


def test_the_live_daemon_serves_the_same_document(live_daemon: Live) -> None:
    resp = live_daemon.session.get(f"{live_daemon.url}/openapi.json")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == SPEC


STOP_ACTIONS = ("terminate", "cancel", "pause", "unpause")


def _strategy(label: str, mode: GenerationMode, live: Live) -> st.SearchStrategy[Any]:
    """Generated cases, plus (positive mode) cases pinned to things that exist, so success paths run too."""
    op = OPERATIONS[label]
    strategies = [op.as_strategy(generation_mode=mode)]
    if mode is GenerationMode.NEGATIVE:
        return st.one_of(strategies)
    strategies += SCHEMA.get_strategies_from_examples(op)
    path_names = {p.name for p in op.path_parameters}
    names = [*PINNED_WORKFLOWS, *live.workflow_ids]
    if label.endswith(STOP_ACTIONS):  # a run of its own to stop, pause or unpause
        names.append(
            live.post("/admin/workflows/slow/trigger", json.dumps({"for": label}).encode())["workflowId"]
        )
    if label.endswith("/resume"):
        for name, task in [("resumable", "r2"), (live.workflow_ids[3], "r3"), ("failing", "boom")]:
            strategies.append(op.as_strategy(path_parameters={"name": name}, body={"from": task}))
    elif "name" in path_names:
        strategies += [op.as_strategy(path_parameters={"name": name}) for name in names]
    if "run_id" in path_names:
        strategies += [op.as_strategy(path_parameters={"run_id": run_id}) for run_id in live.run_ids]
    return st.one_of(strategies)


def _has_inputs(label: str) -> bool:
    """Negative mode needs something to break: a parameter or a body."""
    op = OPERATIONS[label]
    return bool(list(op.iter_parameters())) or bool(op.body)


CASES = [(label, GenerationMode.POSITIVE) for label in sorted(OPERATIONS)] + [
    (label, GenerationMode.NEGATIVE) for label in sorted(OPERATIONS) if _has_inputs(label)
]


def _failure_key(status: int, error: BaseException) -> str:
    parts = error.exceptions if isinstance(error, BaseExceptionGroup) else [error]
    titles = sorted({getattr(part, "title", None) or type(part).__name__ for part in parts})
    return f"{status}: {', '.join(titles)}"


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label}-{mode.value}" for label, mode in CASES])
def test_schemathesis_against_the_live_daemon(live_daemon: Live, label: str, mode: GenerationMode) -> None:
    statuses: Counter[int] = Counter()
    failures: dict[str, str] = {}  # one report per distinct failure, so one run shows them all

    @given(case=_strategy(label, mode, live_daemon))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(
            base_url=live_daemon.url, session=live_daemon.session, headers=dict(AUTH_HEADERS), timeout=30
        )
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, BaseExceptionGroup) as e:
            failures.setdefault(_failure_key(response.status_code, e), str(e))

    run()
    assert not failures, "\n\n".join(f"[{key}]\n{text}" for key, text in failures.items())
    assert statuses, "no request was sent"
    if mode is GenerationMode.POSITIVE:  # the success path was exercised, not only the errors
        assert any(200 <= status < 300 for status in statuses), statuses


def test_the_fuzzed_daemon_is_alive_and_logged_no_internal_error(live_daemon: Live) -> None:
    assert live_daemon.session.get(f"{live_daemon.url}/health").json() == {"status": "healthy"}
    assert not [line for line in live_daemon.log if "internal_error" in line], "".join(live_daemon.log)[
        -3000:
    ]
