"""The `moose` command. Workflow verbs speak HTTP to the daemon and import only the standard library;
`dev`/`prod` and `generate hash-token` import what they need when they run."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

from .client import ClientError, DaemonClient, Reply, admin_token, daemon_url, find_project
from .errors import ConfigError

_CYAN, _GREEN, _BOLD, _RESET = "\x1b[38;5;14m", "\x1b[38;5;10m", "\x1b[1m", "\x1b[0m"


def _fail(message: str, code: int = 1) -> NoReturn:
    print(f"moose: {message}", file=sys.stderr)
    raise SystemExit(code)


def _label(action: str, details: str, color: str, stream: Any = None) -> None:
    stream = stream or sys.stdout
    styled = f"{color}{_BOLD}{action:>15}{_RESET}" if stream.isatty() else f"{action:>15}"
    print(f"{styled} {details}", file=stream)


# ---- daemon ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from .daemon import main as serve_main

    return serve_main(args.command, Path(args.project), port=args.port, log_level=args.log_level)


def cmd_hash_token(args: argparse.Namespace) -> int:
    from .tokens import generate, generate_pbkdf2

    key, token = generate_pbkdf2() if args.pbkdf2 else generate()
    if args.json:
        print(json.dumps({"api_key_hash": key, "bearer_token": token}, indent=2))
        _label("Token", "Generated successfully", _GREEN, sys.stderr)
    else:
        _label("ENV API Key", key, _CYAN)
        _label("Bearer Token", token, _CYAN)
        _label("Token", "Generated successfully", _GREEN)
    return 0


# ---- workflow verbs -------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> DaemonClient:
    project = find_project(Path(args.project).resolve())
    try:
        return DaemonClient(daemon_url(project), admin_token(project))
    except (ConfigError, ClientError) as e:
        _fail(str(e))


def _call(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    client = _client(args)
    try:
        reply = client.call(method, path, body, headers)
    except ClientError as e:
        _fail(str(e))
    if reply.status == 401:
        _fail(f"{reply.message}. Set MOOSE_ADMIN_TOKEN, or run the CLI in the daemon's project folder.")
    if not reply.ok:
        _fail(reply.message)
    return reply


def _name_path(name: str, verb: str) -> str:
    return f"/admin/workflows/{quote(name, safe='')}/{verb}"


def cmd_run(args: argparse.Namespace) -> int:
    body = None
    if args.input is not None:
        try:
            json.loads(args.input)
        except ValueError as e:
            _fail(f"--input is not valid JSON: {e}", 2)
        body = args.input.encode()
    path = _name_path(args.name, "trigger")
    if args.conflict:
        path += "?" + urlencode({"conflict": args.conflict})
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    data = _call(args, "POST", path, body, headers).data
    print(f"Workflow '{args.name}' started successfully.")
    print(f"  workflowId: {data['workflowId']}")
    print(f"  runId:      {data['runId']}")
    if data.get("dashboardUrl"):
        print(f"  View it at: {data['dashboardUrl']}")
    return 0


def cmd_terminate(args: argparse.Namespace) -> int:
    _print_runs(_call(args, "POST", _name_path(args.name, "terminate")))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    _print_runs(_call(args, "POST", _name_path(args.name, "cancel")))
    return 0


def _print_runs(reply: Reply) -> None:
    print(reply.data["message"].rstrip("\n"))
    for run in reply.data.get("runs", []):
        print(f"  {run['workflowId']}  {run['runId']}  {_short(run['status'])}")


def _short(status: str) -> str:
    return status.removeprefix("WORKFLOW_EXECUTION_STATUS_")


def cmd_pause(args: argparse.Namespace) -> int:
    _print_runs(_call(args, "POST", _name_path(args.name, "pause")))
    return 0


def cmd_unpause(args: argparse.Namespace) -> int:
    _print_runs(_call(args, "POST", _name_path(args.name, "unpause")))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    body: dict[str, str] = {"from": args.from_task}
    if args.id:
        body["runId"] = args.id
    data = _call(args, "POST", _name_path(args.name, "resume"), json.dumps(body).encode()).data
    print(f"Workflow '{args.name}' resumed from task '{args.from_task}' (run {data['resumedFrom']}).")
    print(f"  workflowId: {data['workflowId']}")
    print(f"  runId:      {data['runId']}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    data = _call(args, "GET", "/admin/workflows").data
    if data.get("reload_error"):
        print(
            f"moose: the last reload failed, the previous definitions are in use: {data['reload_error']}",
            file=sys.stderr,
        )
    workflows = data["workflows"]
    if args.json:
        print(json.dumps(workflows, indent=2, ensure_ascii=False))
        return 0
    rows = [("Name", "Schedule", "Paused", "Last Run", "Last Status")]
    for wf in workflows:
        last = wf["last_run"]
        rows.append(
            (
                wf["name"],
                wf["schedule"] or "None",
                "yes" if wf["paused"] else "no",
                last["started_at"] if last else "-",
                _short(last["status"]) if last else "-",
            )
        )
    _table(rows)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    path = _name_path(args.name, "status")
    if args.id:
        path += "?" + urlencode({"id": args.id})
    run = _call(args, "GET", path).data
    if args.json:
        print(json.dumps(run, indent=2, ensure_ascii=False))
        return 0
    print(f"Workflow Status: {run['name']}")
    print(f"Run ID: {run['run_id']}")
    print(f"Status: {_short(run['status'])}")
    print(f"Started At: {run['started_at']}")
    print(f"Duration: {run['duration']}")
    if run["error"]:
        print(f"Error: {run['error']}")
    if run.get("resumed_from"):
        print(f"Resumed From: {run['resumed_from']} (at task '{run['start_task']}')")
    if not args.verbose:
        return 0
    print("Tasks:")
    for a in run["tasks"]:
        line = f"  • {a['task']} attempt {a['attempt']}: {a['status']}  {a['started_at']} -> {a['ended_at'] or '...'}"
        print(line)
        if a["error"]:
            print(f"      Error: {a['error_type'] or ''}: {a['error']}")
        if a["output"] is not None:
            print(f"      Output: {json.dumps(a['output'], ensure_ascii=False)[:500]}")
    return 0


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def cmd_history(args: argparse.Namespace) -> int:
    """Pages through the daemon's history (1000 rows a request) until --limit rows, as MooseStack's CLI
    has no cap."""
    query: dict[str, str] = {}
    for key in ("status", "workflow", "since", "until", "cursor"):
        if getattr(args, key):
            query[key] = str(getattr(args, key))
    rows: list[Any] = []
    cursor = None
    while len(rows) < args.limit:
        query["limit"] = str(min(args.limit - len(rows), 1000))
        reply = _call(args, "GET", f"/admin/workflows/history?{urlencode(query)}")
        rows += reply.data
        cursor = reply.next_cursor
        if cursor is None:
            break
        query["cursor"] = cursor
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    rows_out: list[tuple[str, ...]] = [("Workflow Name", "Run ID", "Status", "Started At", "Duration")]
    rows_out += [(r["name"], r["run_id"], _short(r["status"]), r["started_at"], r["duration"]) for r in rows]
    _table(rows_out)
    if cursor is not None:
        print(f"more: moose workflow history --cursor {cursor}", file=sys.stderr)
    return 0


# ---- parser -----------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got '{text}'")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moose", description="MooseStack-compatible workflows, one local process."
    )
    parser.add_argument(
        "--project",
        default=".",
        help="the project folder (default: the nearest one holding moose.config.toml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for mode, text in (("dev", "run the daemon in dev mode"), ("prod", "run the daemon in prod mode")):
        p = sub.add_parser(mode, help=text)
        p.add_argument(
            "--project", default=argparse.SUPPRESS, help="the project folder (default: the current one)"
        )
        p.add_argument("--port", type=int, help="override http_server_config.port (0 picks a free port)")
        p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        p.set_defaults(func=cmd_serve)

    gen = sub.add_parser("generate", help="generate credentials")
    gen_sub = gen.add_subparsers(dest="what", required=True, metavar="WHAT")
    ht = gen_sub.add_parser("hash-token", help="make an admin key (for the config) and its bearer token")
    ht.add_argument("--json", action="store_true", help="print JSON on stdout")
    ht.add_argument(
        "--pbkdf2", action="store_true", help="make a MooseStack-format 40-hex key instead of argon2id"
    )
    ht.set_defaults(func=cmd_hash_token)

    wf = sub.add_parser("workflow", help="run and manage workflows on the running daemon")
    wf.add_argument("--project", default=argparse.SUPPRESS, help="the daemon's project folder")
    wf_sub = wf.add_subparsers(dest="verb", required=True, metavar="VERB")
    run = wf_sub.add_parser("run", aliases=["r"], help="start a workflow")
    run.add_argument("name")
    run.add_argument("-i", "--input", help="the input, as JSON")
    run.add_argument("--idempotency-key", help="repeat a trigger safely: the same key returns the same run")
    run.add_argument(
        "--conflict",
        choices=["fail", "use_existing", "terminate_existing"],
        help="when this workflowId is already running (default: fail)",
    )
    run.set_defaults(func=cmd_run)
    term = wf_sub.add_parser("terminate", help="stop at once (a workflowId, or a name: all its runs)")
    term.add_argument("name")
    term.set_defaults(func=cmd_terminate)
    can = wf_sub.add_parser("cancel", aliases=["c"], help="cancel cooperatively; on_cancel handlers run")
    can.add_argument("name")
    can.set_defaults(func=cmd_cancel)
    for verb, func, text in (
        ("pause", cmd_pause, "no new scheduled firings; running runs stop at the next task boundary"),
        ("unpause", cmd_unpause, "undo pause: paused runs continue where they stopped"),
    ):
        p = wf_sub.add_parser(verb, aliases=[verb[0]], help=text)
        p.add_argument("name", help="a workflow name, or a workflowId for one run")
        p.set_defaults(func=func)
    res = wf_sub.add_parser(
        "resume", aliases=["rs"], help="re-run an ended run from a task, with that task's input"
    )
    res.add_argument("name", help="a workflow name or workflowId")
    res.add_argument("--from", dest="from_task", required=True, metavar="TASK")
    res.add_argument(
        "--id", help="the run to resume (default: the latest failed, cancelled, terminated or timed-out)"
    )
    res.set_defaults(func=cmd_resume)
    lst = wf_sub.add_parser("list", aliases=["l"], help="the workflows: schedule, paused, last run")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)
    st = wf_sub.add_parser(
        "status", aliases=["s"], help="one run: status, and with --verbose every task attempt"
    )
    st.add_argument("name", help="a workflowId or workflow name (its latest run)")
    st.add_argument("--id", help="a run id")
    st.add_argument("-v", "--verbose", action="store_true")
    st.add_argument("--json", action="store_true", help="clean JSON with every task attempt")
    st.set_defaults(func=cmd_status)
    hist = wf_sub.add_parser("history", aliases=["h"], help="list runs, newest first")
    hist.add_argument("-s", "--status", help="RUNNING, COMPLETED, FAILED, CANCELED, TERMINATED or TIMED_OUT")
    hist.add_argument("-l", "--limit", type=_positive_int, default=10)
    hist.add_argument("-w", "--workflow", help="only runs of this workflow")
    hist.add_argument("--since", type=float, metavar="UNIX_SECONDS", help="runs started at or after")
    hist.add_argument("--until", type=float, metavar="UNIX_SECONDS", help="runs started before")
    hist.add_argument("--cursor", help="continue after the page that printed this cursor")
    hist.add_argument("--json", action="store_true")
    hist.set_defaults(func=cmd_history)
    for verb_parser in {id(p): p for p in wf_sub.choices.values()}.values():  # `--project` after the verb too
        verb_parser.add_argument("--project", default=argparse.SUPPRESS, help="the daemon's project folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `moose workflow history | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
