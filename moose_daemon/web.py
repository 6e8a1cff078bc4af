"""The aiohttp app: the daemon's only door. Handlers parse, call the engine, render."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from .auth import Authenticator
from .durations import format_duration, format_started_at, iso_utc
from .engine import ConflictPolicy, Engine, WorkflowInfo
from .errors import InvalidRequest, MooseError, StoreError, TooManyRequests
from .jsonbody import InvalidJson, parse_body
from .models import AttemptRecord, RunRecord, RunStatus
from .store import HistoryQuery

log = logging.getLogger("moose_daemon.web")

MAX_HISTORY_LIMIT = 1000
DEFAULT_HISTORY_LIMIT = 10
# Parsing a large body takes milliseconds (about 100 ms per MB): keep it off the event loop.
OFF_LOOP_BODY_BYTES = 64 * 1024
MAX_UNIX_SECONDS = 2**40  # far beyond any real time, and its microseconds still fit SQLite's integers
_DIGITS = re.compile(r"[0-9]{1,19}")

ENGINE = web.AppKey("engine", Engine)
AUTH = web.AppKey("auth", Authenticator)
DASHBOARD_BASE = web.AppKey("dashboard_base", str)  # "" outside dev mode

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(status: int, error: str, details: str) -> web.Response:
    return json_response({"error": error, "details": details}, status=status)


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The admin token on /admin routes, and one error shape for everything: never a traceback on the
    wire. (One middleware rather than two: each level costs every request a coroutine.)"""
    try:
        if request.path.startswith("/admin"):
            problem = await request.app[AUTH].check(
                request.headers.get("Authorization"), request.remote or ""
            )
            if problem is not None:
                return web.Response(status=401, text=problem)
        return await handler(request)
    except MooseError as e:
        response = error_response(e.status, e.error, e.details)
        if isinstance(e, TooManyRequests):
            response.headers["Retry-After"] = str(e.retry_after_s)
        return response
    except StoreError as e:  # the disk is full, the file is locked...: say so, acknowledge nothing
        log.error("http.store_unavailable method=%s path=%s error=%s", request.method, request.path, e)
        return error_response(503, "Service unavailable", f"the database cannot be used right now: {e}")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        details = e.text or e.reason
        if e.status == 404:
            details = f"No route {request.method} {request.path}"
        elif e.status == 405:
            details = f"{request.method} is not allowed on {request.path}"
            response = error_response(405, e.reason, details)
            if "Allow" in e.headers:
                response.headers["Allow"] = e.headers["Allow"]
            return response
        elif e.status == 413:
            details = f"Request body too large. Maximum size is {request.app._client_max_size} bytes"
        return error_response(e.status, e.reason, details)
    except ConnectionResetError:  # the client hung up mid-request: nobody to answer, nothing wrong here
        log.debug("http.client_gone method=%s path=%s", request.method, request.path)
        return error_response(400, "Bad request", "the connection was closed before the request was read")
    except Exception:
        log.exception("http.internal_error method=%s path=%s", request.method, request.path)
        return error_response(500, "Internal error", "the daemon hit an unexpected error; see its log")


# ---- handlers -----------------------------------------------------------------------------------


async def trigger(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    raw = await request.read()
    try:
        if len(raw) > OFF_LOOP_BODY_BYTES:
            payload = await asyncio.get_running_loop().run_in_executor(None, parse_body, raw)
        else:
            payload = parse_body(raw)
    except InvalidJson as e:
        raise InvalidRequest(e.details, error="Invalid JSON body") from None
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (1 <= len(key) <= 255 and key.isascii() and key.isprintable()):
        raise InvalidRequest(
            "Idempotency-Key must be 1 to 255 printable ASCII characters", error="Invalid request"
        )
    # request.query parses the query string into a MultiDict: most triggers have none
    raw_policy = (request.query_string and _single(request, "conflict")) or ConflictPolicy.FAIL.value
    try:
        policy = ConflictPolicy(raw_policy)
    except ValueError:
        choices = ", ".join(p.value for p in ConflictPolicy)
        raise InvalidRequest(
            f"conflict must be one of {choices}, got '{raw_policy}'", error="Invalid query"
        ) from None
    record = await request.app[ENGINE].trigger(name, payload, idempotency_key=key, conflict=policy)
    body = {"workflowId": record.workflow_id, "runId": record.run_id}
    base = request.app[DASHBOARD_BASE]
    if base:
        body["dashboardUrl"] = f"{base}/admin/runs/{record.run_id}"
    return json_response(body)


async def terminate(request: web.Request) -> web.Response:
    target = request.match_info["name"]
    runs = await request.app[ENGINE].terminate(target)
    return json_response(
        {"status": "terminated", "message": f"'{target}' terminated successfully\n", "runs": _run_refs(runs)}
    )


async def cancel(request: web.Request) -> web.Response:
    target = request.match_info["name"]
    runs = await request.app[ENGINE].cancel(target)
    return json_response(
        {
            "status": "cancelled",
            "message": f"'{target}' cancellation requested successfully\n",
            "runs": _run_refs(runs),
        }
    )


def _run_refs(runs: list[RunRecord]) -> list[dict[str, str]]:
    return [{"workflowId": r.workflow_id, "runId": r.run_id, "status": r.status.value} for r in runs]


async def pause(request: web.Request) -> web.Response:
    target = request.match_info["name"]
    runs = await request.app[ENGINE].pause(target)
    return json_response(
        {"status": "paused", "message": f"'{target}' paused successfully", "runs": _run_refs(runs)}
    )


async def unpause(request: web.Request) -> web.Response:
    target = request.match_info["name"]
    runs = await request.app[ENGINE].unpause(target)
    return json_response(
        {"status": "unpaused", "message": f"'{target}' unpaused successfully", "runs": _run_refs(runs)}
    )


async def resume(request: web.Request) -> web.Response:
    target = request.match_info["name"]
    try:
        payload = parse_body(await request.read())
    except InvalidJson as e:
        raise InvalidRequest(e.details, error="Invalid JSON body") from None
    body = payload.value if payload is not None else {}
    if not isinstance(body, dict) or not isinstance(body.get("from"), str) or not body["from"]:
        raise InvalidRequest(
            'the body must be {"from": "<task name>"} with an optional "runId"',
            error="Failed to resume workflow",
        )
    run_id = body.get("runId")
    if run_id is not None and not isinstance(run_id, str):
        raise InvalidRequest("runId must be a string", error="Failed to resume workflow")
    record = await request.app[ENGINE].resume(target, body["from"], run_id)
    return json_response(
        {"workflowId": record.workflow_id, "runId": record.run_id, "resumedFrom": record.resumed_from}
    )


async def status(request: web.Request) -> web.Response:
    record, attempts = await request.app[ENGINE].status(request.match_info["name"], _single(request, "id"))
    return json_response(run_entry(record, attempts))


async def list_workflows(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    infos = await engine.list_workflows()
    now = time.time()
    return json_response(
        {"workflows": [workflow_entry(i, now) for i in infos], "reload_error": engine.reload_error}
    )


async def history(request: web.Request) -> web.Response:
    query = parse_history_query(request)
    records = await request.app[ENGINE].history(query)
    now = time.time()
    headers = {}
    if len(records) == query.limit:
        last = records[-1]
        headers["X-Next-Cursor"] = f"{last.started_at}_{last.run_id}"
    return json_response([history_entry(r, now) for r in records], headers=headers)


async def run_detail(request: web.Request) -> web.Response:
    record, attempts = await request.app[ENGINE].run_detail(request.match_info["run_id"])
    return json_response(run_entry(record, attempts))


async def openapi(request: web.Request) -> web.Response:
    spec = resources.files("moose_daemon").joinpath("openapi.json").read_bytes()
    return web.Response(body=spec, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "healthy"})


async def root(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return json_response(
        {"name": "moose_daemon", "workflows": sorted(engine.workflows), "live_runs": len(engine.registry)}
    )


# ---- rendering and parsing ------------------------------------------------------------------------


def history_entry(r: RunRecord, now: float) -> dict[str, Any]:
    end = r.ended_at / 1e6 if r.ended_at is not None else now
    return {
        "name": r.workflow_id,
        "run_id": r.run_id,
        "status": r.status.value,
        "started_at": format_started_at(r.started_at / 1e6),
        "duration": format_duration(max(0.0, end - r.started_at / 1e6)),
        "workflow": r.workflow,
        "ended_at": None if r.ended_at is None else format_started_at(r.ended_at / 1e6),
        "attempt": r.attempt,
        "error": r.error,
    }


def run_entry(record: RunRecord, attempts: list[AttemptRecord]) -> dict[str, Any]:
    entry = history_entry(record, time.time())
    entry["input"] = _stored(record.input_json)
    entry["start_task"] = record.start_task
    entry["resumed_from"] = record.resumed_from
    entry["tasks"] = [attempt_entry(a) for a in attempts]
    return entry


def workflow_entry(info: WorkflowInfo, now: float) -> dict[str, Any]:
    wf = info.workflow
    return {
        "name": wf.name,
        "schedule": wf.schedule.text if wf.schedule else None,
        "paused": info.paused,
        "next_fire_at": None if info.next_fire_at is None else format_started_at(info.next_fire_at),
        "retries": wf.retries,
        "timeout": wf.config.timeout or "1h",
        "tasks": wf.get_task_names(),
        "last_run": None if info.last_run is None else history_entry(info.last_run, now),
    }


def _stored(json_text: str | None) -> orjson.Fragment | None:
    """Stored JSON goes out as it is: no decoding, and integers beyond 64 bits survive."""
    return None if json_text is None else orjson.Fragment(json_text)


def attempt_entry(a: AttemptRecord) -> dict[str, Any]:
    return {
        "task": a.task,
        "attempt": a.attempt,
        "status": a.status.value,
        "started_at": iso_utc(a.started_at / 1e6),
        "ended_at": None if a.ended_at is None else iso_utc(a.ended_at / 1e6),
        "input": _stored(a.input_json),
        "output": _stored(a.output_json),
        "error_type": a.error_type,
        "error": a.error,
    }


def _single(request: web.Request, key: str) -> str | None:
    values = request.query.getall(key, [])
    if len(values) > 1:
        raise InvalidRequest(f"query parameter '{key}' was given {len(values)} times", error="Invalid query")
    return values[0] if values else None


def _timestamp(request: web.Request, key: str) -> int | None:
    raw = _single(request, key)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < MAX_UNIX_SECONDS:
        raise InvalidRequest(f"{key} must be unix seconds, got '{raw}'", error="Invalid query")
    return int(seconds * 1e6)


def parse_history_query(request: web.Request) -> HistoryQuery:
    status = None
    raw_status = _single(request, "status")
    if raw_status:
        try:
            status = RunStatus.parse(raw_status)
        except ValueError as e:
            raise InvalidRequest(str(e), error="Invalid query") from None
    limit = DEFAULT_HISTORY_LIMIT
    raw_limit = _single(request, "limit")
    if raw_limit is not None:
        if not _DIGITS.fullmatch(raw_limit.strip()) or int(raw_limit) < 1:
            raise InvalidRequest(
                f"limit must be a whole number from 1 to 1000, got '{raw_limit}'", error="Invalid query"
            )
        limit = min(int(raw_limit), MAX_HISTORY_LIMIT)
    before = None
    cursor = _single(request, "cursor")
    if cursor:
        started, _, run_id = cursor.partition("_")
        if not _DIGITS.fullmatch(started) or int(started) >= MAX_UNIX_SECONDS * 1_000_000 or not run_id:
            raise InvalidRequest(f"cursor '{cursor}' is not one this daemon returned", error="Invalid query")
        before = (int(started), run_id)
    return HistoryQuery(
        limit=limit,
        status=status,
        workflow=_single(request, "workflow") or None,
        since_us=_timestamp(request, "since"),
        until_us=_timestamp(request, "until"),
        before=before,
    )


def build_app(engine: Engine, auth: Authenticator, *, dashboard_base: str, max_body: int) -> web.Application:
    app = web.Application(middlewares=[guard_middleware], client_max_size=max_body)
    app[ENGINE] = engine
    app[AUTH] = auth
    app[DASHBOARD_BASE] = dashboard_base
    app.router.add_get("/", root)
    app.router.add_get("/openapi.json", openapi)
    for path in ("/health", "/liveness", "/ready"):
        app.router.add_get(path, health)
    app.router.add_post("/admin/workflows/{name}/trigger", trigger)
    app.router.add_post("/admin/workflows/{name}/terminate", terminate)
    app.router.add_post("/admin/workflows/{name}/cancel", cancel)
    app.router.add_post("/admin/workflows/{name}/pause", pause)
    app.router.add_post("/admin/workflows/{name}/unpause", unpause)
    app.router.add_post("/admin/workflows/{name}/resume", resume)
    app.router.add_get("/admin/workflows/{name}/status", status)
    app.router.add_get("/admin/workflows/history", history)
    app.router.add_get("/admin/workflows", list_workflows)
    app.router.add_get("/admin/runs/{run_id}", run_detail)
    return app
