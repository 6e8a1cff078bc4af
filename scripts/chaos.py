"""Crash chaos for moose_daemon (issue 5, item 1). Run it through `scripts/chaos`.

It makes a throwaway project whose workflows chain async and plain-`def` tasks; every task appends
`<run_id> <task> start|done <attempt> <pid> <nonce>` to `executions.log` (one write(2) on an O_APPEND
descriptor, then fsync) before it goes on, and returns its nonce in its output. It starts the real daemon
(`moose prod`, loopback), drives a steady trigger load with unique inputs from a few aiohttp clients, and
SIGKILLs the daemon at random moments (some of them while it is still starting), restarting it each time
on the same port. It records every trigger answered 200. At the end it lets the runs finish, stops the
daemon cleanly, and checks, from the SQLite file and the executions file:

- lost: a trigger answered 200 whose run is not in the database (must be 0);
- not terminal: a run still RUNNING or PAUSED after the final wait (must be 0);
- finished task executed again: for each (run, task), the attempt number that COMPLETED in the database
  must be the highest attempt started in the executions file, and the execution whose nonce the stored
  output carries must be the last one started for that (run, task) (must be 0);
- chain broken: a COMPLETED run missing a task, or a task whose stored input is not its parent's stored
  output (must be 0); executed but not stored: a task ran for a run the database does not have (must be 0);
- duplicates of interrupted tasks: re-executions of a task that was interrupted (allowed: at-least-once),
  and how many of them came after the task had written `done` but before its COMPLETED row committed;
- `PRAGMA integrity_check` on the final database, and on a copy of the files as each crash left them.

It exits 1 when an invariant fails (the work folder is then kept for the evidence), 2 on a usage error.
Everything is bounded: `--kills` SIGKILLs spread over about `--seconds`, then at most `--final-wait`
seconds for the runs to finish.

    scripts/chaos                       # 20 kills over about 60 s
    scripts/chaos --kills 50 --seconds 120 --seed 7
    scripts/chaos --keep                # keep the work folder (project, database, logs)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

SELF = Path(__file__).resolve()
REPO = SELF.parent.parent
LOCAL = "127.0.0.1"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 15.0
RESTART_TRIES = 5
OPEN_STATUSES = ("RUNNING", "PAUSED")
# The documented way for a run to fail under crashes alone (executor.MAX_INTERRUPTIONS).
INTERRUPTION_LIMIT_ERROR = "times by daemon restarts"

# Each workflow's tasks and each task's parent (whose output is its input); None marks the starting task.
WORKFLOWS: dict[str, dict[str, str | None]] = {
    # a1 (async) -> a2 (def) -> a3 (async) -> a4 (async)
    "chaos-chain": {"a1": None, "a2": "a1", "a3": "a2", "a4": "a3"},
    # b1 (async) -> [b2 (async) -> [b4 (def)], b3 (async)]: depth first, b1 b2 b4 b3
    "chaos-tree": {"b1": None, "b2": "b1", "b4": "b2", "b3": "b1"},
}

MAIN_PY = '''\
"""Workflows for scripts/chaos. Every task appends `<run_id> <task> start|done <attempt> <pid> <nonce>`
to executions.log and fsyncs it before it goes on, and returns its nonce, so the checker can tell which
execution's output the database kept."""

import asyncio
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

from moose_daemon import Task, TaskConfig, TaskContext, Workflow, WorkflowConfig

LOG = Path(__file__).resolve().parent.parent / "executions.log"
MIN_S, MAX_S = {min_s!r}, {max_s!r}
# One write(2) per line on an O_APPEND descriptor: under SIGKILL a line is whole or absent.
_FD = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def record(ctx: TaskContext[Any], event: str, nonce: str) -> None:
    os.write(_FD, f"{{ctx.run_id}} {{ctx.task}} {{event}} {{ctx.attempt}} {{os.getpid()}} {{nonce}}\\n".encode())
    os.fsync(_FD)


def output(ctx: TaskContext[dict], nonce: str) -> dict:
    return {{"task": ctx.task, "nonce": nonce, "seq": ctx.input.get("seq"), "depth": ctx.input.get("depth", 0) + 1}}


async def async_step(ctx: TaskContext[dict]) -> dict:
    nonce = uuid.uuid4().hex[:16]
    record(ctx, "start", nonce)
    await asyncio.sleep(random.uniform(MIN_S, MAX_S))
    record(ctx, "done", nonce)
    return output(ctx, nonce)


def sync_step(ctx: TaskContext[dict]) -> dict:
    nonce = uuid.uuid4().hex[:16]
    record(ctx, "start", nonce)
    time.sleep(random.uniform(MIN_S, MAX_S))
    record(ctx, "done", nonce)
    return output(ctx, nonce)


def task(name: str, run: Any, *then: Task) -> Task:
    return Task[dict, dict](name=name, config=TaskConfig(run=run, on_complete=list(then) or None))


Workflow(
    name="chaos-chain",
    config=WorkflowConfig(
        starting_task=task("a1", async_step, task("a2", sync_step, task("a3", async_step, task("a4", async_step)))),
        retries=0,
        timeout="10m",
    ),
)
Workflow(
    name="chaos-tree",
    config=WorkflowConfig(
        starting_task=task("b1", async_step, task("b2", async_step, task("b4", sync_step)), task("b3", async_step)),
        retries=0,
        timeout="10m",
    ),
)
'''


class ChaosError(Exception):
    """The chaos run itself could not go on (not an invariant: those are in the Report)."""


# ---- the project ----------------------------------------------------------------------------------------


def make_project(root: Path, admin_key: str, task_ms: tuple[int, int]) -> Path:
    (root / "app").mkdir(parents=True)
    (root / "moose.config.toml").write_text(
        'source_dir = "app"\n\n[http_server_config]\nhost = "localhost"\nport = 4000\n\n'
        f'[authentication]\nadmin_api_key = "{admin_key}"\n'
    )
    (root / "app" / "__init__.py").write_text("")
    main = MAIN_PY.format(min_s=task_ms[0] / 1000, max_s=task_ms[1] / 1000)
    (root / "app" / "main.py").write_text(main)
    return root


def moose_executable() -> Path:
    here = Path(sys.executable).parent / "moose"
    return here if here.exists() else REPO / ".venv" / "bin" / "moose"


def child_env() -> dict[str, str]:
    """No MOOSE_* overrides from the caller's shell reach the daemon."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MOOSE_")}


# ---- the daemon -----------------------------------------------------------------------------------------


class DaemonFailed(ChaosError):
    """The daemon exited, or printed no ready line, when it was expected to serve."""


class Daemon:
    """The real `moose prod` in a subprocess; stderr of every incarnation goes to one log file."""

    def __init__(self, project: Path, log: Path, *, log_level: str = "warning") -> None:
        self.project = project
        self.log = log
        self.log_level = log_level
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.port = 0
        self.starts = 0
        self.pids: list[int] = []
        self._log_file: IO[bytes] = log.open("ab")
        self._drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def note(self, text: str) -> None:
        self._log_file.write(f"=== chaos: {text} ===\n".encode())
        self._log_file.flush()

    def log_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n    ".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""

    async def spawn(self) -> None:
        port = str(self.port)  # 0 the first time: the OS picks, and every restart reuses it
        argv = [str(moose_executable()), "prod", "--project", str(self.project), "--port", port]
        self.starts += 1
        self.note(f"start #{self.starts} --port {port}")
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            "--log-level",
            self.log_level,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log_file,
            env=child_env(),
        )
        self.pids.append(self.proc.pid)

    async def wait_ready(self, within_s: float = READY_TIMEOUT_S) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        stdout = self.proc.stdout
        try:
            async with asyncio.timeout(within_s):
                while True:
                    line = (await stdout.readline()).decode("utf-8", "replace")
                    if not line:
                        code = await self.proc.wait()
                        raise DaemonFailed(
                            f"the daemon exited with code {code} before it was ready:\n    {self.log_tail()}"
                        )
                    if "ready at " in line:
                        break
        except TimeoutError:
            await self.kill()
            raise DaemonFailed(f"no ready line within {within_s:.0f} s:\n    {self.log_tail()}") from None
        url = line.split("ready at ", 1)[1].split()[0]
        self.port = int(url.rsplit(":", 1)[1])
        self.url = f"http://{LOCAL}:{self.port}"
        self._drain = asyncio.create_task(self._drain_stdout(stdout))  # what user code prints
        return self.url

    @staticmethod
    async def _drain_stdout(stdout: asyncio.StreamReader) -> None:
        while await stdout.read(65536):
            pass

    async def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._end_drain()

    async def stop(self, within_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM; SIGKILL if it has not stopped within `within_s`. Returns the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(within_s):
                    await self.proc.wait()
            except TimeoutError:
                await self.kill()
                return -int(signal.SIGKILL)
        await self._end_drain()
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def _end_drain(self) -> None:
        """The daemon has exited: read its stdout to the end, so that the pipe (and the transport) close."""
        assert self.proc is not None and self.proc.stdout is not None
        drain = self._drain or asyncio.create_task(self._drain_stdout(self.proc.stdout))
        self._drain = None
        try:
            async with asyncio.timeout(5.0):
                await drain
        except TimeoutError:  # a grandchild holds the pipe open: leave it
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)

    def kill_now(self) -> None:
        """Synchronous last resort (finally blocks, atexit): nothing we started outlives us."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(self.proc.pid, 0)

    def close(self) -> None:
        self.kill_now()
        self._log_file.close()


# ---- the load -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    run_id: str
    workflow_id: str
    workflow: str
    input: dict[str, Any]


@dataclass
class LoadStats:
    sent: int = 0
    acks: list[Ack] = field(default_factory=list)
    refused: int = 0  # the daemon was down: nothing was sent
    unanswered: int = 0  # sent, then the connection died (a kill mid-request) or timed out
    http: Counter[int] = field(default_factory=Counter)  # non-200 answers by status
    samples: list[str] = field(default_factory=list)  # a few non-200 answers, for the report


class Load:
    """`clients` aiohttp sessions sending unique triggers at about `rate` per second in total."""

    def __init__(self, url: str, token: str, *, clients: int, rate: float, seed: int) -> None:
        self.url = url
        self.token = token
        self.clients = clients
        self.rate = rate
        self.seed = seed
        self.stats = LoadStats()
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]

    async def stop(self, within_s: float = REQUEST_TIMEOUT_S + 5) -> None:
        self.stopping.set()
        done, pending = await asyncio.wait(self._tasks, timeout=within_s) if self._tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise ChaosError(f"a load client crashed: {task.exception()!r}")

    async def _client(self, index: int) -> None:
        rng = random.Random(f"{self.seed}-{index}")
        names = sorted(WORKFLOWS)
        interval = self.clients / self.rate
        loop = asyncio.get_running_loop()
        next_at = loop.time() + rng.uniform(0, interval)
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
            for seq in itertools.count():
                delay = next_at - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), delay)
                if self.stopping.is_set():
                    return
                next_at = max(next_at + interval, loop.time())
                await self._trigger(session, rng.choice(names), {"client": index, "seq": seq})

    async def _trigger(self, session: aiohttp.ClientSession, name: str, payload: dict[str, Any]) -> None:
        stats = self.stats
        try:
            async with session.post(
                f"{self.url}/admin/workflows/{name}/trigger", data=json.dumps(payload)
            ) as resp:
                raw = await resp.read()
                stats.sent += 1
                if resp.status == 200:
                    body = json.loads(raw)
                    stats.acks.append(Ack(body["runId"], body["workflowId"], name, payload))
                    return
                stats.http[resp.status] += 1
                if len(stats.samples) < 5:
                    stats.samples.append(f"{resp.status} {raw[:200]!r}")
        except aiohttp.ClientConnectorError:
            stats.refused += 1
            await asyncio.sleep(0.02)
        except (aiohttp.ClientError, TimeoutError, OSError):
            stats.sent += 1
            stats.unanswered += 1
            await asyncio.sleep(0.01)


# ---- the checks -----------------------------------------------------------------------------------------


@dataclass
class Execution:
    """One execution of a task body, as the executions file tells it."""

    run_id: str
    task: str
    attempt: int
    pid: int
    nonce: str
    index: int  # line number of its `start`
    done: bool = False


@dataclass
class Report:
    seed: int
    kills_requested: int
    kills: int = 0
    kills_while_starting: int = 0  # SIGKILLs that hit the daemon before (or just at) its ready line
    starts: int = 0
    ready_s: list[float] = field(default_factory=list)
    triggers_sent: int = 0
    acknowledged: int = 0
    refused: int = 0
    unanswered: int = 0
    http_errors: dict[int, int] = field(default_factory=dict)
    http_samples: list[str] = field(default_factory=list)
    runs_stored: int = 0
    stored_unacknowledged: int = 0
    executions: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    interrupted_attempt_rows: int = 0
    interrupted_duplicates: int = 0
    duplicates_after_done: int = 0
    max_executions_of_a_task: int = 0
    # invariants: each list must be empty
    lost: list[str] = field(default_factory=list)
    not_terminal: list[str] = field(default_factory=list)
    finished_reexecuted: list[str] = field(default_factory=list)
    chain_broken: list[str] = field(default_factory=list)
    not_stored: list[str] = field(default_factory=list)
    unexpected_failures: list[str] = field(default_factory=list)
    daemon_failures: list[str] = field(default_factory=list)
    crash_integrity: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    crash_checks: int = 0
    integrity: str = "not checked"
    malformed_lines: int = 0
    elapsed_s: float = 0.0
    chaos_s: float = 0.0
    final_wait_s: float = 0.0
    workdir: str = ""

    def failures(self) -> list[str]:
        out = []
        if self.kills < self.kills_requested:
            out.append(f"only {self.kills} of {self.kills_requested} kills happened")
        if self.acknowledged == 0:
            out.append("no trigger was acknowledged: the load never reached the daemon")
        checks = [
            ("lost acknowledged runs", self.lost),
            ("runs not in a terminal state", self.not_terminal),
            ("finished tasks executed again", self.finished_reexecuted),
            ("broken chains", self.chain_broken),
            ("tasks executed for runs not stored", self.not_stored),
            ("runs that failed for another reason than crashes", self.unexpected_failures),
            ("daemon failures", self.daemon_failures),
            ("corrupt databases after a crash", self.crash_integrity),
            ("anomalies", self.anomalies),
        ]
        out += [f"{len(items)} {what}" for what, items in checks if items]
        if self.integrity != "ok":
            out.append(f"integrity_check: {self.integrity}")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()

    def format(self, details: int = 10) -> str:
        ready = sorted(self.ready_s)

        def must(items: list[str]) -> str:
            return f"{len(items):<8} must be 0" + ("" if not items else "   <-- FAILED")

        lines = [
            f"chaos: seed {self.seed}, {self.elapsed_s:.1f} s in all "
            f"({self.chaos_s:.1f} s under kills, {self.final_wait_s:.1f} s for the runs to finish)",
            f"  kills                    {self.kills} of {self.kills_requested} "
            f"({self.kills_while_starting} while the daemon was starting), {self.starts} starts",
        ]
        if ready:
            lines.append(
                f"  ready after start        {ready[0]:.2f} .. {ready[-1]:.2f} s "
                f"(median {statistics.median(ready):.2f} s)"
            )
        http = ", ".join(f"{n}x {code}" for code, n in sorted(self.http_errors.items())) or "none"
        lines += [
            f"  triggers sent            {self.triggers_sent} (answered 200: {self.acknowledged}, "
            f"cut off by a kill: {self.unanswered}, other answers: {http}; "
            f"{self.refused} refused while down)",
            f"  acknowledged             {self.acknowledged}",
            f"  runs stored              {self.runs_stored} ({self.stored_unacknowledged} stored but "
            "never acknowledged: the kill ate the answer)",
            f"  run statuses             {', '.join(f'{k} {v}' for k, v in sorted(self.statuses.items()))}",
            f"  task executions          {self.executions}",
            f"  lost                     {must(self.lost)}",
            f"  not terminal             {must(self.not_terminal)}",
            f"  finished task re-run     {must(self.finished_reexecuted)}",
            f"  chain broken             {must(self.chain_broken)}",
            f"  executed, not stored     {must(self.not_stored)}",
            f"  failed by other cause    {must(self.unexpected_failures)}",
            f"  interrupted duplicates   {self.interrupted_duplicates} (allowed, at-least-once; "
            f"{self.duplicates_after_done} of them after `done` was written but before COMPLETED committed; "
            f"{self.interrupted_attempt_rows} INTERRUPTED attempt rows; "
            f"at most {self.max_executions_of_a_task} executions of one task)",
            f"  integrity_check          {self.integrity} (final); "
            f"{self.crash_checks - len(self.crash_integrity)} of {self.crash_checks} "
            "copies of the files a crash left were ok",
        ]
        for what, items in [
            ("lost", self.lost),
            ("not terminal", self.not_terminal),
            ("finished task re-run", self.finished_reexecuted),
            ("chain broken", self.chain_broken),
            ("executed, not stored", self.not_stored),
            ("failed by other cause", self.unexpected_failures),
            ("daemon failure", self.daemon_failures),
            ("corrupt after a crash", self.crash_integrity),
            ("anomaly", self.anomalies),
            ("answer", self.http_samples),
        ]:
            for item in items[:details]:
                lines.append(f"    {what}: {item}")
            if len(items) > details:
                lines.append(f"    {what}: ... and {len(items) - details} more")
        failures = self.failures()
        lines.append("result: " + ("OK" if not failures else "FAILED: " + "; ".join(failures)))
        if self.workdir:
            lines.append(f"work folder: {self.workdir}")
        return "\n".join(lines)


def read_executions(path: Path) -> tuple[dict[tuple[str, str], list[Execution]], int]:
    """(run, task) -> its executions in file order, and the number of lines that did not parse."""
    by_task: dict[tuple[str, str], list[Execution]] = defaultdict(list)
    by_nonce: dict[str, Execution] = {}
    malformed = 0
    text = path.read_text() if path.exists() else ""
    for index, line in enumerate(text.splitlines()):
        parts = line.split()
        if len(parts) != 6 or parts[2] not in ("start", "done") or not parts[3].isdigit():
            malformed += 1
            continue
        run_id, task, event, attempt, pid, nonce = parts
        if event == "start":
            e = Execution(run_id, task, int(attempt), int(pid), nonce, index)
            by_task[(run_id, task)].append(e)
            by_nonce[nonce] = e
        elif nonce in by_nonce:
            by_nonce[nonce].done = True
        else:
            malformed += 1
    return dict(by_task), malformed


def integrity_check(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.Error as e:
        return f"error: {e}"
    finally:
        conn.close()
    return "ok" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:5])


def check_crash_copy(db: Path, scratch: Path) -> str:
    """integrity_check on a copy of the database and WAL exactly as a crash left them."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    try:
        if not db.exists():
            return "ok"  # killed before the database was created
        for suffix in ("", "-wal"):
            src = db.with_name(db.name + suffix)
            if src.exists():
                shutil.copy2(src, scratch / (db.name + suffix))
        return integrity_check(scratch / db.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def analyze(db: Path, executions_file: Path, acks: list[Ack], report: Report) -> None:
    """Fill the invariants of `report` from the final database and the executions file."""
    report.integrity = integrity_check(db)
    executions, report.malformed_lines = read_executions(executions_file)
    if report.malformed_lines:
        report.anomalies.append(f"{report.malformed_lines} lines of executions.log did not parse")
    names = sorted(WORKFLOWS)
    marks = ",".join("?" * len(names))
    conn = sqlite3.connect(db)
    try:
        runs = {
            r[0]: r
            for r in conn.execute(
                f"SELECT run_id, workflow_id, workflow, status, input, error FROM runs WHERE workflow IN ({marks})",
                names,
            )
        }
        attempts: dict[tuple[str, str], list[tuple[Any, ...]]] = defaultdict(list)
        for row in conn.execute(
            "SELECT run_id, task, attempt, status, input, output FROM task_attempts ORDER BY run_id, task, attempt"
        ):
            if row[0] in runs:
                attempts[(row[0], row[1])].append(row)
    finally:
        conn.close()

    # lost: every trigger answered 200 is a stored run of that workflowId and input
    seen: set[str] = set()
    for ack in acks:
        if ack.run_id in seen:
            report.anomalies.append(f"runId {ack.run_id} was acknowledged twice")
        seen.add(ack.run_id)
        row = runs.get(ack.run_id)
        if row is None:
            report.lost.append(
                f"run {ack.run_id} ({ack.workflow_id}, input {ack.input}) is not in the database"
            )
        elif (row[1], row[2]) != (ack.workflow_id, ack.workflow) or json.loads(row[4] or "null") != ack.input:
            report.lost.append(
                f"run {ack.run_id} was acknowledged as {ack.workflow_id} {ack.input} "
                f"but stored as {row[1]} {row[4]}"
            )
    report.acknowledged = len(acks)
    report.runs_stored = len(runs)
    report.stored_unacknowledged = len(set(runs) - seen)
    report.statuses = dict(Counter(r[3] for r in runs.values()))
    report.executions = sum(len(v) for v in executions.values())

    for run_id, _wid, workflow, status, _input, error in runs.values():
        if status in OPEN_STATUSES:
            report.not_terminal.append(f"run {run_id} ({workflow}) is {status}")
        elif status != "COMPLETED" and INTERRUPTION_LIMIT_ERROR not in (error or ""):
            report.unexpected_failures.append(f"run {run_id} ({workflow}) is {status}: {error}")

    # a task that ran for a run the database does not have
    for run_id in sorted({run for run, _ in executions} - set(runs)):
        report.not_stored.append(f"run {run_id} executed tasks but is not in the database")

    # finished tasks executed again, and the (allowed) duplicates of interrupted ones
    for key, rows in sorted(attempts.items()):
        run_id, task = key
        report.interrupted_attempt_rows += sum(1 for r in rows if r[3] == "INTERRUPTED")
        completed = [r for r in rows if r[3] == "COMPLETED"]
        execs = executions.get(key, [])
        if not completed:
            continue
        if len(completed) > 1:
            report.finished_reexecuted.append(
                f"{run_id} {task}: attempts {[r[2] for r in completed]} all COMPLETED"
            )
            continue
        number, output = completed[0][2], completed[0][5]
        started = [e.attempt for e in execs]
        if not execs:
            report.anomalies.append(f"{run_id} {task}: COMPLETED attempt {number} but no execution recorded")
            continue
        if max(started) > number:
            report.finished_reexecuted.append(
                f"{run_id} {task}: attempt {number} COMPLETED in the database, but attempts {started} "
                "were started (a higher attempt started after it)"
            )
            continue
        nonce = _nonce_of(output)
        producer = next((e for e in execs if e.nonce == nonce), None)
        if producer is None:
            report.anomalies.append(
                f"{run_id} {task}: the stored output {output} comes from no recorded execution"
            )
            continue
        if producer.attempt != number:
            report.anomalies.append(
                f"{run_id} {task}: the output stored for attempt {number} was made by attempt {producer.attempt}"
            )
        later = [e for e in execs if e.index > producer.index]
        if later:
            report.finished_reexecuted.append(
                f"{run_id} {task}: the execution whose output COMPLETED (attempt {number}, pid {producer.pid}) "
                f"was followed by {len(later)} more: "
                + ", ".join(f"attempt {e.attempt} pid {e.pid}" for e in later)
            )
    for execs in executions.values():
        report.max_executions_of_a_task = max(report.max_executions_of_a_task, len(execs))
        report.interrupted_duplicates += len(execs) - 1
        report.duplicates_after_done += sum(1 for e in execs[:-1] if e.done)

    # every COMPLETED run ran every task once to completion, each on its parent's stored output
    for run_id, _wid, workflow, status, run_input, _error in runs.values():
        if status != "COMPLETED":
            continue
        outputs: dict[str, Any] = {}
        inputs: dict[str, Any] = {}
        for task in WORKFLOWS[workflow]:
            done = [r for r in attempts.get((run_id, task), []) if r[3] == "COMPLETED"]
            if done:
                inputs[task], outputs[task] = json.loads(done[0][4] or "null"), json.loads(done[0][5])
        missing = [t for t in WORKFLOWS[workflow] if t not in outputs]
        if missing:
            report.chain_broken.append(f"run {run_id} is COMPLETED without a COMPLETED attempt of {missing}")
            continue
        for task, parent in WORKFLOWS[workflow].items():
            expected = json.loads(run_input or "null") if parent is None else outputs[parent]
            if inputs[task] != expected:
                report.chain_broken.append(
                    f"run {run_id} task {task} got {inputs[task]} but "
                    f"{'the trigger' if parent is None else parent} gave {expected}"
                )


def _nonce_of(output_json: str | None) -> str | None:
    try:
        value = json.loads(output_json or "null")
    except ValueError:
        return None
    return value.get("nonce") if isinstance(value, dict) else None


# ---- the run --------------------------------------------------------------------------------------------


def log_line(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"chaos: {text}", file=sys.stderr, flush=True)


async def wait_terminal(url: str, token: str, within_s: float) -> float:
    """Until the daemon reports no RUNNING or PAUSED run, or `within_s` passed. Returns the time waited."""
    t0 = time.monotonic()
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        while time.monotonic() - t0 < within_s:
            open_runs = 0
            try:
                for status in OPEN_STATUSES:
                    async with session.get(
                        f"{url}/admin/workflows/history", params={"status": status, "limit": "1"}
                    ) as resp:
                        if resp.status != 200:
                            raise ChaosError(f"history answered {resp.status}: {await resp.text()}")
                        open_runs += len(await resp.json())
            except aiohttp.ClientError as e:
                raise ChaosError(f"the daemon stopped answering while the runs finished: {e}") from None
            if open_runs == 0:
                break
            await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def _chaos(
    work: Path,
    report: Report,
    *,
    seconds: float,
    rate: float,
    clients: int,
    final_wait_s: float,
    early_share: float,
    task_ms: tuple[int, int],
    crash_checks: bool,
    quiet: bool,
) -> None:
    from moose_daemon.tokens import generate_pbkdf2

    key, token = generate_pbkdf2()
    project = make_project(work / "project", key, task_ms)
    db = project / ".moose" / "moose.db"
    rng = random.Random(report.seed)
    daemon = Daemon(project, work / "daemon.log")
    load: Load | None = None
    t_begin = time.monotonic()
    try:

        async def start() -> None:
            """Start (or restart) the daemon until it is ready; some starts are killed on the way."""
            for tries in itertools.count(1):
                early = report.kills < report.kills_requested and rng.random() < early_share
                # An early kill lands within a typical start (the median ready time so far), more often
                # towards its end, where the database is opened and the interrupted runs resume.
                kill_after = statistics.median(report.ready_s) * (1 - rng.random() ** 2) if early else None
                await daemon.spawn()
                t0 = time.monotonic()
                if kill_after is not None:
                    ready = asyncio.ensure_future(daemon.wait_ready())
                    await asyncio.wait([ready], timeout=kill_after)
                    if ready.done() and ready.exception() is not None:  # it died by itself
                        report.daemon_failures.append(f"start #{daemon.starts}: {ready.exception()}")
                        await daemon.kill()
                        if tries >= RESTART_TRIES:
                            raise DaemonFailed("the daemon does not start") from ready.exception()
                        continue
                    was_ready = ready.done()
                    ready.cancel()  # one reader of stdout at a time: kill() reads it to its end
                    with contextlib.suppress(asyncio.CancelledError, DaemonFailed):
                        await ready
                    await daemon.kill()
                    if was_ready:
                        when = f"{kill_after:.3f} s after spawn, just after its ready line"
                    else:
                        report.kills_while_starting += 1
                        when = f"{kill_after:.3f} s after spawn, while starting"
                    await crashed(when)
                    continue
                try:
                    await daemon.wait_ready()
                except DaemonFailed as e:
                    report.daemon_failures.append(f"start #{daemon.starts} (pid {daemon.pid}): {e}")
                    log_line(quiet, f"start #{daemon.starts} failed: {e}")
                    if tries >= RESTART_TRIES:
                        raise
                    await asyncio.sleep(0.5)
                    continue
                report.ready_s.append(time.monotonic() - t0)
                return

        async def crashed(when: str) -> None:
            report.kills += 1
            daemon.note(f"SIGKILL #{report.kills} {when}")
            acked = len(load.stats.acks) if load else 0
            log_line(
                quiet, f"kill {report.kills}/{report.kills_requested} {when} ({acked} acknowledged so far)"
            )
            if crash_checks:
                report.crash_checks += 1
                result = check_crash_copy(db, work / "crash-copy")
                if result != "ok":
                    report.crash_integrity.append(f"after kill #{report.kills}: {result}")

        await daemon.spawn()
        t0 = time.monotonic()
        url = await daemon.wait_ready()
        report.ready_s = [time.monotonic() - t0]
        log_line(quiet, f"daemon ready at {url} (work folder {work})")
        load = Load(url, token, clients=clients, rate=rate, seed=report.seed)
        load.start()
        t_chaos = time.monotonic()
        hard_deadline = t_chaos + 2 * seconds + 60
        while report.kills < report.kills_requested:
            if time.monotonic() > hard_deadline:
                report.daemon_failures.append(
                    "the kills did not fit in twice --seconds (+60 s): stopped early"
                )
                break
            remaining_time = max(0.0, seconds - (time.monotonic() - t_chaos))
            gap = remaining_time / (report.kills_requested - report.kills)
            restart = statistics.median(report.ready_s)
            delay = rng.uniform(0.0, 2 * max(0.05, gap - restart))
            await asyncio.sleep(delay)
            if not daemon.alive():
                report.daemon_failures.append(
                    f"the daemon (pid {daemon.pid}) exited by itself with code {daemon.proc and daemon.proc.returncode}"
                    f":\n    {daemon.log_tail()}"
                )
                await start()
                continue
            await daemon.kill()
            await crashed(f"{delay:.3f} s after ready")
            await start()
        report.chaos_s = time.monotonic() - t_chaos
        await load.stop()
        log_line(quiet, "load stopped; waiting for the runs to finish")
        report.final_wait_s = await wait_terminal(daemon.url, token, final_wait_s)
        code = await daemon.stop()
        if code != 0:
            report.daemon_failures.append(
                f"the final clean stop exited with code {code}:\n    {daemon.log_tail()}"
            )
    finally:
        daemon.close()
        if load is not None:
            load.stopping.set()
            stats = load.stats
            report.triggers_sent = stats.sent
            report.acknowledged = len(stats.acks)
            report.refused = stats.refused
            report.unanswered = stats.unanswered
            report.http_errors = dict(stats.http)
            report.http_samples = list(stats.samples)
        report.starts = daemon.starts
    with contextlib.suppress(OSError):
        log = (work / "daemon.log").read_text(errors="replace")
        if "Traceback" in log:
            report.anomalies.append(f"the daemon log has a traceback: see {work / 'daemon.log'}")
    analyze(db, project / "executions.log", load.stats.acks if load else [], report)
    report.elapsed_s = time.monotonic() - t_begin


def run_chaos(
    *,
    kills: int = 20,
    seconds: float = 60.0,
    seed: int | None = None,
    rate: float = 100.0,
    clients: int = 4,
    final_wait_s: float = 60.0,
    early_share: float = 0.15,
    task_ms: tuple[int, int] = (10, 200),
    crash_checks: bool = True,
    keep: bool | None = None,
    workdir: Path | None = None,
    quiet: bool = False,
) -> Report:
    """Run the chaos and return its Report (see `Report.failures()`). The work folder is removed when
    every invariant held, unless `keep` is True; it is kept when one failed, unless `keep` is False."""
    if seed is None:
        seed = random.SystemRandom().randrange(1, 2**31)
    report = Report(seed=seed, kills_requested=kills)
    work = Path(tempfile.mkdtemp(prefix="moose-chaos-", dir=workdir))
    report.workdir = str(work)
    try:
        asyncio.run(
            _chaos(
                work,
                report,
                seconds=seconds,
                rate=rate,
                clients=clients,
                final_wait_s=final_wait_s,
                early_share=early_share,
                task_ms=task_ms,
                crash_checks=crash_checks,
                quiet=quiet,
            )
        )
    except ChaosError as e:
        report.daemon_failures.append(str(e))
    if keep or (keep is None and not report.ok):
        return report
    shutil.rmtree(work, ignore_errors=True)
    report.workdir = ""
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/chaos", description="SIGKILL the daemon under load and check that nothing is lost."
    )
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver (default 20)")
    p.add_argument("--seconds", type=float, default=60.0, help="spread the kills over about this long (60)")
    p.add_argument("--seed", type=int, default=None, help="seed of the kill schedule and the load (random)")
    p.add_argument("--rate", type=float, default=100.0, help="triggers per second, all clients (100)")
    p.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (4)")
    p.add_argument("--final-wait", type=float, default=60.0, help="at most this long for runs to finish (60)")
    p.add_argument(
        "--early-share", type=float, default=0.15, help="share of restarts killed while starting (0.15)"
    )
    p.add_argument("--task-ms", default="10,200", help="each task sleeps a random MIN,MAX ms (10,200)")
    p.add_argument("--no-crash-checks", action="store_true", help="skip integrity_check after each crash")
    p.add_argument("--keep", action="store_true", help="keep the work folder even when everything held")
    p.add_argument("--quiet", action="store_true", help="print only the report")
    args = p.parse_args(argv)
    try:
        low, high = (int(x) for x in args.task_ms.split(","))
    except ValueError:
        p.error("--task-ms takes MIN,MAX in milliseconds, e.g. 10,200")
    if not 0 <= low <= high:
        p.error("--task-ms: need 0 <= MIN <= MAX")
    args.task_ms = (low, high)
    if args.kills < 0 or args.seconds <= 0 or args.rate <= 0 or args.clients < 1 or args.final_wait <= 0:
        p.error("--kills must be >= 0; --seconds, --rate and --final-wait > 0; --clients >= 1")
    if not 0 <= args.early_share < 1:
        p.error("--early-share is a share: 0 <= x < 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks that kill the daemon

    signal.signal(signal.SIGTERM, on_signal)
    report = run_chaos(
        kills=args.kills,
        seconds=args.seconds,
        seed=args.seed,
        rate=args.rate,
        clients=args.clients,
        final_wait_s=args.final_wait,
        early_share=args.early_share,
        task_ms=args.task_ms,
        crash_checks=not args.no_crash_checks,
        keep=True if args.keep else None,
        quiet=args.quiet,
    )
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
