"""Benchmark of moose_daemon beside its ceiling (issue 4). Run it through `scripts/bench`.

It makes throwaway projects, starts the real daemon (`moose prod`) and, in the same run, a bare aiohttp app
that answers a small JSON (the ceiling), drives both with one aiohttp client process, and prints a table of
figures with the issue's goals beside them; `--out` gets the same as JSON, with the machine it ran on.
Everything listens on and talks to 127.0.0.1; every loop is bounded in count and in time.

    scripts/bench                   # the full run, about 2-5 minutes
    scripts/bench --quick           # every figure shrunk, under 30 s: checks that the benchmark works
    scripts/bench --only history    # some phases only (see --help for their names)
    scripts/bench --profile DIR     # also record the daemon with py-spy during each phase (pip install py-spy)

Missed goals do not fail the command (benchmarks are not timed tests); a phase that cannot run does.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import itertools
import json
import math
import os
import platform
import queue
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import aiohttp

SELF = Path(__file__).resolve()
REPO = SELF.parent.parent
LOCAL = "127.0.0.1"
CONCURRENCY = 32
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0
JSON_HEADERS = {"Content-Type": "application/json"}

# ---- sizes ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    seconds: float  # each throughput measurement
    rounds: int  # bare-daemon-daemon-bare rounds of throughput measurements
    warmup_s: float  # untimed load before each throughput measurement
    latency_n: int  # sequential triggers timed
    runs_k: int  # triggers fired for the completed-runs/s figure
    chain_reps: int  # 40-task chains timed
    terminate_n: int  # single-run terminates timed
    cli_n: int  # `moose workflow run` (and bare python) invocations timed
    history_rows: int  # finished runs bulk-inserted before the history queries
    history_n: int  # requests timed per history query
    deep_pages: int  # pages followed through X-Next-Cursor before timing the deep page
    rss_first: int  # sleeping runs at the first RSS reading
    rss_second: int  # ... and at the second
    start_n: int  # daemon starts timed with the example project


FULL = Sizes(
    seconds=4.0,
    rounds=2,
    warmup_s=1.0,
    latency_n=2000,
    runs_k=5000,
    chain_reps=10,
    terminate_n=50,
    cli_n=20,
    history_rows=1_000_000,
    history_n=500,
    deep_pages=500,
    rss_first=10_000,
    rss_second=50_000,
    start_n=5,
)
QUICK = Sizes(
    seconds=1.0,
    rounds=1,
    warmup_s=0.3,
    latency_n=200,
    runs_k=200,
    chain_reps=3,
    terminate_n=10,
    cli_n=5,
    history_rows=20_000,
    history_n=100,
    deep_pages=100,
    rss_first=1_000,
    rss_second=2_000,
    start_n=2,
)
# Phases profiled as a whole with --profile; the others record windows of their own.
PROFILE_WHOLE_PHASE = {"latency", "chain", "terminate"}
PHASES = ("throughput", "latency", "completed", "chain", "terminate", "cli", "history", "rss", "startup")

# ---- the table --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    phase: str
    label: str
    unit: str  # how the value prints: req/s, runs/s, ms, s, ratio, x, B
    goal_op: str | None = None  # "<" or ">=" (None: shown for context, no goal)
    goal: float | None = None
    goal_text: str = ""


ROWS = [
    Row("trigger_rps", "throughput", "trigger throughput, 32 connections", "req/s"),
    Row("ceiling_rps", "throughput", "bare aiohttp ceiling, same client", "req/s"),
    Row("trigger_ratio", "throughput", "trigger / ceiling", "ratio", ">=", 0.5, ">= 50%"),
    Row("trigger_p50_ms", "latency", "trigger latency p50, one client", "ms"),
    Row("trigger_p99_ms", "latency", "trigger latency p99, one client", "ms", "<", 5.0, "< 5 ms"),
    Row(
        "completed_rps",
        "completed",
        "completed one-task runs/s, end to end",
        "runs/s",
        ">=",
        5000,
        ">= 5000/s",
    ),
    Row("chain_step_ms", "chain", "chain40 overhead/step (task span / 40)", "ms", "<", 0.5, "< 0.5 ms"),
    Row("chain_step_e2e_ms", "chain", "chain40 overhead/step (wall / 40)", "ms", "<", 0.5, "< 0.5 ms"),
    Row(
        "history_running_p99_ms", "history", "history ?status=RUNNING&limit=20 p99", "ms", "<", 5.0, "< 5 ms"
    ),
    Row("history_latest_p99_ms", "history", "history ?limit=20 p99", "ms", "<", 5.0, "< 5 ms"),
    Row("history_deep_p99_ms", "history", "history deep page via cursor p99", "ms", "<", 5.0, "< 5 ms"),
    Row(
        "history_oldest_p99_ms",
        "history",
        "history cursor near the oldest rows p99",
        "ms",
        "<",
        5.0,
        "< 5 ms",
    ),
    Row("rss_per_run_b", "rss", "RSS per sleeping run (slope)", "B", "<", 10240, "< 10 KiB"),
    Row("terminate_all_s", "rss", "terminate every sleeping run by name", "s"),
    Row("cli_ms", "cli", "`moose workflow run` wall, median", "ms"),
    Row("py_import_ms", "cli", "python -c 'import http.client, json'", "ms"),
    Row("cli_ratio", "cli", "CLI / bare python", "x", "<", 2.0, "< 2x"),
    Row("ready_s", "startup", "daemon start to ready, example project", "s", "<", 0.5, "< 0.5 s"),
    Row("terminate_p50_ms", "terminate", "terminate one async task, median", "ms", "<", 5.0, "< 5 ms"),
    Row("terminate_p99_ms", "terminate", "terminate one async task, p99", "ms", "<", 5.0, "< 5 ms"),
]


def fmt_value(value: float, unit: str) -> str:
    if unit in ("req/s", "runs/s"):
        return f"{value:,.0f} {unit}"
    if unit == "ms":
        return f"{value:.3f} ms" if value < 1 else f"{value:.2f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "ratio":
        return f"{value * 100:.1f}%"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "B":
        return f"{value:,.0f} B"
    return f"{value:g} {unit}"


def verdict(row: Row, value: float | None) -> str:
    if value is None or row.goal_op is None or row.goal is None:
        return ""
    ok = value < row.goal if row.goal_op == "<" else value >= row.goal
    return "OK" if ok else "MISS"


# ---- helpers ----------------------------------------------------------------------------------------


class BenchError(Exception):
    """A phase could not run; the message says why."""


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def iso_ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def history_ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f UTC").replace(tzinfo=UTC).timestamp()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]) * 1024
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "python": sys.version.split()[0],
        "python_full": sys.version,
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
        "sqlite": sqlite3.sqlite_version,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": commit,
    }


def child_env() -> dict[str, str]:
    """The environment for the daemon and the CLI: no MOOSE_* overrides from the caller's shell, and
    bytecode caching on (a user's machine has .pyc files; PYTHONDONTWRITEBYTECODE would recompile every time)."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith("MOOSE_") and k != "PYTHONDONTWRITEBYTECODE"
    }


def venv_bin() -> Path:
    here = Path(sys.executable).parent
    return here if (here / "moose").exists() else REPO / ".venv" / "bin"


# ---- processes --------------------------------------------------------------------------------------

_LIVE: set[Proc] = set()


class Proc:
    """A child that prints `... ready at <url>` on stdout when it serves; stderr goes to a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, *, cwd: Path | None = None) -> None:
        self.name = name
        self.log = log
        self.lines: queue.Queue[tuple[float, str | None]] = queue.Queue()
        self._stderr: IO[bytes] = log.open("ab")
        self.t0 = time.perf_counter()
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=cwd,
            env=child_env(),
        )
        _LIVE.add(self)
        threading.Thread(target=self._drain, name=f"drain-{name}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self.lines.put((time.perf_counter(), raw.decode("utf-8", "replace")))
        self.lines.put((time.perf_counter(), None))

    def log_tail(self, n: int = 15) -> str:
        with contextlib.suppress(OSError):
            lines = self.log.read_text(errors="replace").splitlines()[-n:]
            return "\n    ".join(lines)
        return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> tuple[str, float]:
        """(URL, seconds from Popen to the ready line); the URL uses 127.0.0.1, not localhost."""
        deadline = time.perf_counter() + timeout
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                self.stop()
                raise BenchError(
                    f"{self.name} printed no ready line within {timeout:.0f} s; its log:\n    {self.log_tail()}"
                )
            try:
                at, line = self.lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if line is None:
                code = self.popen.wait(timeout=10)
                raise BenchError(
                    f"{self.name} exited with code {code} before it was ready; its log:\n    {self.log_tail()}"
                )
            if "ready at " in line:
                url = line.split("ready at ", 1)[1].split()[0].replace("//localhost:", f"//{LOCAL}:")
                return url, at - self.t0

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGTERM)
                try:
                    return self.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    print(
                        f"bench: {self.name} ignored SIGTERM for {timeout:.0f} s; killing it", file=sys.stderr
                    )
                    self.popen.kill()
                    return self.popen.wait(timeout=10)
            return self.popen.returncode
        finally:
            _LIVE.discard(self)
            self._stderr.close()


def kill_all() -> None:
    """atexit and signal path: nothing we started outlives us."""
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(timeout=10)
        _LIVE.discard(proc)


# ---- the bare ceiling ---------------------------------------------------------------------------------


def serve_bare(max_lifetime_s: float) -> int:
    """A bare aiohttp app answering a small JSON on the trigger route: the ceiling (run in a subprocess)."""
    import orjson
    from aiohttp import web

    parent = os.getppid()

    async def trigger(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            body=orjson.dumps({"workflowId": request.match_info["name"], "runId": "bare"}),
            content_type="application/json",
        )

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/admin/workflows/{name}/trigger", trigger)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, LOCAL, 0, backlog=1024)
        await site.start()
        port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
        print(f"bare aiohttp ready at http://{LOCAL}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        deadline = time.monotonic() + max_lifetime_s
        # Leave by ourselves if the benchmark is gone (even killed) or after max_lifetime_s.
        while not stop.is_set() and os.getppid() == parent and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        await runner.cleanup()

    asyncio.run(serve())
    return 0


# ---- the benchmark project ------------------------------------------------------------------------------

BENCH_MAIN = '''\
"""Workflows for scripts/bench: a one-task no-op, a 40-task chain of no-ops, and a sleeper."""

import asyncio

from moose_daemon import Task, TaskConfig, TaskContext, Workflow, WorkflowConfig


async def nothing(ctx: TaskContext) -> None:
    return None


async def sleep_an_hour(ctx: TaskContext) -> None:
    await asyncio.sleep(3600)


noop = Workflow(
    name="noop",
    config=WorkflowConfig(starting_task=Task(name="noop", config=TaskConfig(run=nothing)), retries=0),
)

_next = None
for _i in reversed(range(40)):
    _next = Task(name=f"step{_i:02d}", config=TaskConfig(run=nothing, on_complete=[_next] if _next else None))
chain40 = Workflow(name="chain40", config=WorkflowConfig(starting_task=_next, retries=0, timeout="never"))

sleeper = Workflow(
    name="sleeper",
    config=WorkflowConfig(
        starting_task=Task(name="sleep", config=TaskConfig(run=sleep_an_hour, timeout="never", retries=0)),
        retries=0,
        timeout="never",
    ),
)
'''


def make_project(root: Path, admin_key: str) -> Path:
    (root / "app").mkdir(parents=True)
    (root / "moose.config.toml").write_text(
        'source_dir = "app"\n\n[http_server_config]\nhost = "localhost"\nport = 4000\n\n'
        f'[authentication]\nadmin_api_key = "{admin_key}"\n'
    )
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "main.py").write_text(BENCH_MAIN)
    return root


def copy_example_project(root: Path) -> Path:
    shutil.copytree(REPO / "app", root / "app", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "moose.config.toml", root / "moose.config.toml")
    return root


# ---- bulk history ---------------------------------------------------------------------------------------

RUN_COLUMNS = "run_id, workflow_id, workflow, status, input, started_at, ended_at, error, attempt, start_task, resumed_from"
BULK_STEP_US = 500_000  # bulk rows are half a second apart, all older than the benchmark's own runs


def bulk_started_at(base_us: int, i: int) -> int:
    return base_us + i * BULK_STEP_US


def bulk_run_id(base_us: int, i: int) -> str:
    """UUIDv7-shaped and time-ordered like the daemon's, unique per row."""
    ms = bulk_started_at(base_us, i) // 1000
    h = f"{ms:012x}"
    return f"{h[:8]}-{h[8:]}-7{i >> 48 & 0xFFF:03x}-8{i >> 36 & 0xFFF:03x}-{i & 0xFFFFFFFFFFFF:012x}"


def bulk_insert(db: Path, n: int, base_us: int) -> dict[str, Any]:
    """n COMPLETED runs in one transaction with executemany (the daemon must be stopped).

    The runs indexes are dropped first and re-created from their own SQL in the same transaction (building
    an index by sorting is several times faster than n random B-tree inserts); the schema ends identical."""
    t0 = time.perf_counter()
    ids = os.urandom(8 * n).hex()  # workflowIds are SHA-256 prefixes of the input: random

    def rows() -> Iterator[tuple[Any, ...]]:
        for i in range(n):
            started = bulk_started_at(base_us, i)
            yield (
                bulk_run_id(base_us, i),
                f"noop-{ids[16 * i : 16 * i + 16]}",
                "noop",
                "COMPLETED",
                f'{{"bulk":{i}}}',
                started,
                started + 1000,
                None,
                1,
                None,
                None,
            )

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
        if str(mode).lower() != "delete":
            raise BenchError(f"cannot take {db} out of WAL mode (is the daemon still running?)")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")
        conn.execute("BEGIN IMMEDIATE")
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        conn.executemany(f"INSERT INTO runs ({RUN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows())
        inserted = time.perf_counter()
        for _, sql in indexes:
            conn.execute(sql)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")
        total = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    finally:
        conn.close()
    done = time.perf_counter()
    return {
        "rows_inserted": n,
        "rows_total": total,
        "insert_s": round(inserted - t0, 3),
        "index_and_commit_s": round(done - inserted, 3),
        "total_s": round(done - t0, 3),
        "db_bytes": db.stat().st_size,
    }


# ---- py-spy -------------------------------------------------------------------------------------------


class Profiler:
    """py-spy recording the daemon during one phase, summarised as top functions by self time."""

    def __init__(self, exe: str, out_dir: Path) -> None:
        self.exe = exe
        self.out_dir = out_dir
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None
        self._path: Path | None = None

    def start(self, phase: str, pid: int) -> None:
        self._path = self.out_dir / f"{phase}.txt"
        self._path.unlink(missing_ok=True)
        argv = [self.exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "--nonblocking"]
        self._proc = subprocess.Popen(
            [*argv, "-o", str(self._path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.out_dir / f"{phase}.py-spy.log").open("wb"),
        )
        time.sleep(0.3)  # let it attach

    def stop(self) -> dict[str, Any] | None:
        proc, path = self._proc, self._path
        self._proc = self._path = None
        if proc is None or path is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return summarise_profile(path) if path.exists() else None


# Leaf frames where a thread waits rather than works: py-spy --nonblocking does not always tell them apart.
IDLE_LEAVES = (
    "EpollSelector.select (selectors.py)",
    "_connection_worker_thread (aiosqlite/core.py)",  # its own line is `tx.get()`; its work is in callees
    "_worker (concurrent/futures/thread.py)",
    "Condition.wait (threading.py)",
)


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """From py-spy's raw (collapsed) stacks: busy samples by thread kind, top functions by self and by
    inclusive time, as shares of the busy samples (waiting in epoll or on a queue is left out)."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = in_threads = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short_frame(f) for f in stack.split(";")]
        if frames[-1] in IDLE_LEAVES:
            idle += count
            continue
        if frames[0].startswith("Thread._bootstrap"):
            in_threads += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    busy = total - idle

    def share(c: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / busy, 1)] for name, n in c.most_common(top)] if busy else []

    return {
        "file": str(path),
        "samples": total,
        "busy_samples": busy,
        "busy_in_threads_pct": round(100 * in_threads / busy, 1) if busy else None,
        "self_pct": share(self_time),
        "inclusive_pct": share(inclusive),
    }


def _short_frame(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`: lines of one function add up."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    parts = file.replace("\\", "/").split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else file
    return f"{name} ({short})"


# ---- HTTP --------------------------------------------------------------------------------------------------


def session(
    token: str | None, limit: int = CONCURRENCY, timeout_s: float = REQUEST_TIMEOUT_S
) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=60),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        headers=headers,
    )


async def get_json(s: aiohttp.ClientSession, url: str) -> tuple[Any, Mapping[str, str]]:
    async with s.get(url) as r:
        body = await r.read()
        if r.status != 200:
            raise BenchError(f"GET {url} answered {r.status}: {body[:300]!r}")
        return json.loads(body), r.headers


async def post_json(s: aiohttp.ClientSession, url: str, body: bytes | None = None) -> Any:
    async with s.post(url, data=body, headers=JSON_HEADERS) as r:
        raw = await r.read()
        if r.status != 200:
            raise BenchError(f"POST {url} answered {r.status}: {raw[:300]!r}")
        return json.loads(raw)


_SEQ = itertools.count()


async def send_all(s: aiohttp.ClientSession, url: str, n: int, *, workers: int) -> list[Any]:
    """`n` triggers with unique inputs from `workers` connections, each sending its next trigger as soon
    as the last one answered (the throughput figure's load), and their answers."""
    replies: list[Any] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            replies.append(await post_json(s, url, unique_body("k")))

    await asyncio.gather(*(worker(n // workers + (i < n % workers)) for i in range(workers)))
    return replies


def unique_body(tag: str) -> bytes:
    """A fresh input each time, so every trigger gets its own workflowId."""
    return b'{"%s":%d}' % (tag.encode(), next(_SEQ))


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    first_error: str | None = None
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def closed_loop(
    s: aiohttp.ClientSession,
    url: str,
    *,
    seconds: float,
    workers: int,
    tag: str,
    max_requests: int | None = None,
) -> LoadResult:
    """`workers` connections each sending the next request as soon as the last answered, until time (or
    `max_requests`) runs out. Counts answers with status 200."""
    result = LoadResult()
    deadline = time.perf_counter() + seconds
    budget = itertools.count()

    async def worker() -> None:
        while time.perf_counter() < deadline:
            if max_requests is not None and next(budget) >= max_requests:
                return
            try:
                async with s.post(url, data=unique_body(tag), headers=JSON_HEADERS) as r:
                    raw = await r.read()
                    result.statuses[r.status] += 1
                    if r.status == 200:
                        result.requests += 1
                        continue
                    error = f"{r.status} {raw[:200]!r}"
            except (aiohttp.ClientError, TimeoutError) as e:
                error = f"{type(e).__name__}: {e}"
            result.errors += 1
            result.first_error = result.first_error or error
            if result.errors > 100 and result.errors > result.requests:
                raise BenchError(f"POST {url} keeps failing: {result.first_error}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    result.seconds = time.perf_counter() - t0
    return result


# ---- the benchmark ---------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes) -> None:
        self.args = args
        self.sizes = sizes
        self.phases = [p for p in PHASES if p in args.only] if args.only else list(PHASES)
        self.values: dict[str, float] = {}
        self.notes: dict[str, str] = {}
        self.details: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.phase_s: dict[str, float] = {}
        self.profiles: dict[str, Any] = {}
        self.bin = venv_bin()
        self.moose = str(self.bin / "moose")
        self.daemon: Proc | None = None
        self.daemon_url = ""
        self.bare_url = ""
        self.project = Path()
        self.work = Path()
        self.token = ""
        self.profiler: Profiler | None = None
        self.interrupted = False
        if args.profile:
            exe = shutil.which("py-spy", path=str(self.bin)) or shutil.which("py-spy")
            if exe is None:
                raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
            self.profiler = Profiler(exe, Path(args.profile).resolve())

    # ---- the daemon under test ----

    def start_daemon(self, label: str) -> float:
        if not Path(self.moose).exists():
            raise BenchError(f"{self.moose} not found: run scripts/bench (it installs .venv) instead")
        argv = [self.moose, "prod", "--project", str(self.project), "--port", "0", "--log-level", "warning"]
        self.daemon = Proc("daemon", argv, self.work / "daemon.log")
        self.daemon_url, ready_s = self.daemon.wait_ready()
        self.details.setdefault("daemon_starts", []).append({"when": label, "ready_s": round(ready_s, 4)})
        return ready_s

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            code = self.daemon.stop()
            if code not in (0, None):
                print(f"bench: the daemon exited with code {code}; see {self.daemon.log}", file=sys.stderr)
            self.daemon = None

    def url(self, path: str) -> str:
        return self.daemon_url + path

    @property
    def pid(self) -> int:
        assert self.daemon is not None
        return self.daemon.pid

    async def wait_idle(self, s: aiohttp.ClientSession, within_s: float = 120.0) -> float:
        """Until the history shows no RUNNING run (the previous phase's runs have finished)."""
        t0 = time.perf_counter()
        while True:
            running, _ = await get_json(s, self.url("/admin/workflows/history?status=RUNNING&limit=1"))
            if not running:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > within_s:
                raise BenchError(
                    f"runs were still RUNNING {within_s:.0f} s after the previous phase: {running}"
                )
            await asyncio.sleep(0.01)

    async def live_runs(self, s: aiohttp.ClientSession) -> int:
        data, _ = await get_json(s, self.url("/"))
        return int(data["live_runs"])

    # ---- driver ----

    async def run(self) -> int:
        started = time.perf_counter()
        # SIGTERM and SIGHUP cancel the benchmark like Ctrl-C: `finally` stops the children and cleans up.
        main_task = asyncio.current_task()
        assert main_task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._interrupt, main_task)
        self.details["machine"] = machine_info()
        self.details["uptime_start"] = uptime()
        keep = self.args.keep
        self.work = Path(tempfile.mkdtemp(prefix="moose-bench-"))
        bare: Proc | None = None
        try:
            from moose_daemon.tokens import generate_pbkdf2

            key, self.token = generate_pbkdf2()
            self.project = make_project(self.work / "project", key)
            main_phases = [p for p in self.phases if p != "startup"]
            if "throughput" in main_phases:
                bare = Proc(
                    "bare aiohttp",
                    [sys.executable, str(SELF), "--serve-bare"],
                    self.work / "bare.log",
                )
                self.bare_url, _ = bare.wait_ready()
            if main_phases:
                self.start_daemon("fresh project")
            for phase in main_phases:
                await self.run_phase(phase)
            if bare is not None:
                bare.stop()
            self.stop_daemon()
            if "startup" in self.phases:
                await self.run_phase("startup")
        finally:
            self.stop_daemon()
            if bare is not None:
                bare.stop()
            kill_all()
            if keep:
                print(f"bench: kept {self.work}", file=sys.stderr)
            else:
                shutil.rmtree(self.work, ignore_errors=True)
        self.details["uptime_end"] = uptime()
        total_s = time.perf_counter() - started
        self.print_table(total_s)
        self.write_json(total_s)
        return 1 if self.errors else 0

    def _interrupt(self, main_task: asyncio.Task[int]) -> None:
        print("bench: interrupted; stopping what it started", file=sys.stderr)
        self.interrupted = True
        main_task.cancel()

    async def run_phase(self, phase: str) -> None:
        print(f"bench: {phase} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        method: Callable[[], Awaitable[None]] = getattr(self, f"phase_{phase}")
        try:
            if phase != "startup" and (self.daemon is None or not self.daemon.alive()):
                print("bench: the daemon is not running; starting it again", file=sys.stderr)
                self.start_daemon(f"restart before {phase}")
            with self.window(phase if phase in PROFILE_WHOLE_PHASE else None):
                await method()
        except Exception as e:
            message = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
            self.errors[phase] = message
            print(f"bench: {phase} failed: {message}", file=sys.stderr)
            if not isinstance(e, BenchError):
                traceback.print_exc()
        self.phase_s[phase] = round(time.perf_counter() - t0, 2)

    @contextlib.contextmanager
    def window(self, name: str | None) -> Iterator[None]:
        """With --profile: py-spy records the daemon for the duration of the block, saved as `name`."""
        if self.profiler is None or name is None or self.daemon is None:
            yield
            return
        self.profiler.start(name, self.pid)
        try:
            yield
        finally:
            summary = self.profiler.stop()
            if summary is not None:
                self.profiles[name] = summary

    # ---- phases ----

    async def phase_throughput(self) -> None:
        """Rounds of bare, daemon, daemon, bare (each after a warm-up): drift in the machine's load hits
        both alike, and more rounds average out the neighbours' noise (2 cores shared with other VMs)."""
        z = self.sizes
        trigger = "/admin/workflows/noop/trigger"
        runs: dict[str, list[dict[str, Any]]] = {"bare": [], "daemon": []}
        drains: list[float] = []
        async with (
            session(self.token) as daemon_s,
            session(self.token) as bare_s,
            session(self.token, limit=1) as idle_s,
        ):

            async def measure(label: str) -> None:
                s, base = (daemon_s, self.daemon_url) if label == "daemon" else (bare_s, self.bare_url)
                if label == "daemon":
                    await self.wait_idle(idle_s)
                await closed_loop(s, base + trigger, seconds=z.warmup_s, workers=CONCURRENCY, tag="w")
                pid = self.pid if label == "daemon" else self.bare_pid
                cpu0, client0 = cpu_seconds(pid), time.process_time()
                with self.window(f"throughput_{len(runs[label]) + 1}" if label == "daemon" else None):
                    result = await closed_loop(
                        s, base + trigger, seconds=z.seconds, workers=CONCURRENCY, tag="t"
                    )
                cpu = cpu_seconds(pid) - cpu0
                runs[label].append(
                    {
                        "requests": result.requests,
                        "errors": result.errors,
                        "first_error": result.first_error,
                        "seconds": round(result.seconds, 3),
                        "rps": round(result.rps, 1),
                        "server_cpu_s": round(cpu, 3),
                        "server_cpu_us_per_request": round(1e6 * cpu / max(1, result.requests), 1),
                        "client_cpu_s": round(time.process_time() - client0, 3),
                    }
                )
                if result.errors:
                    raise BenchError(f"{label}: {result.errors} requests failed: {result.first_error}")
                if label == "daemon":
                    drains.append(await self.wait_idle(idle_s))

            for _ in range(z.rounds):
                for label in ("bare", "daemon", "daemon", "bare"):
                    await measure(label)
        daemon = statistics.fmean(r["rps"] for r in runs["daemon"])
        ceiling = statistics.fmean(r["rps"] for r in runs["bare"])
        cpu_us = statistics.fmean(r["server_cpu_us_per_request"] for r in runs["daemon"])
        bare_cpu_us = statistics.fmean(r["server_cpu_us_per_request"] for r in runs["bare"])
        self.values["trigger_rps"] = daemon
        self.values["ceiling_rps"] = ceiling
        self.values["trigger_ratio"] = daemon / ceiling
        shown = {label: " and ".join(f"{r['rps']:,.0f}" for r in rs) for label, rs in runs.items()}
        self.notes["trigger_rps"] = f"runs {shown['daemon']}; daemon CPU {cpu_us:.0f} us/req"
        self.notes["ceiling_rps"] = f"runs {shown['bare']}; its CPU {bare_cpu_us:.0f} us/req"
        self.notes["trigger_ratio"] = f"runs drained {max(drains):.2f} s after the load"
        self.details["throughput"] = {**runs, "drain_after_load_s": [round(d, 3) for d in drains]}

    @property
    def bare_pid(self) -> int:
        proc = next((p for p in _LIVE if p.name == "bare aiohttp"), None)
        if proc is None:
            raise BenchError("the bare aiohttp server is not running")
        return proc.pid

    async def phase_latency(self) -> None:
        n = self.sizes.latency_n
        url = self.url("/admin/workflows/noop/trigger")
        async with session(self.token, limit=1) as s:
            await self.wait_idle(s)
            for _ in range(50):
                await post_json(s, url, unique_body("lw"))
            times: list[float] = []
            deadline = time.perf_counter() + 120
            for _ in range(n):
                body = unique_body("l")
                t0 = time.perf_counter()
                async with s.post(url, data=body, headers=JSON_HEADERS) as r:
                    raw = await r.read()
                t1 = time.perf_counter()
                if r.status != 200:
                    raise BenchError(f"trigger answered {r.status}: {raw[:200]!r}")
                times.append((t1 - t0) * 1000)
                if t1 > deadline:
                    break
        self.values["trigger_p50_ms"] = pct(times, 50)
        self.values["trigger_p99_ms"] = pct(times, 99)
        self.notes["trigger_p99_ms"] = f"max {max(times):.2f} ms over {len(times)}"
        self.details["latency"] = {
            "n": len(times),
            "p50_ms": round(pct(times, 50), 4),
            "p90_ms": round(pct(times, 90), 4),
            "p99_ms": round(pct(times, 99), 4),
            "max_ms": round(max(times), 4),
            "mean_ms": round(statistics.fmean(times), 4),
        }

    async def phase_completed(self) -> None:
        k = self.sizes.runs_k
        trigger = self.url("/admin/workflows/noop/trigger")
        async with session(self.token) as s:
            await self.wait_idle(s)
            t_wall = time.time()
            with self.window("completed"):
                t0 = time.perf_counter()
                replies = await send_all(s, trigger, k, workers=CONCURRENCY)
                acked = time.perf_counter()
                poll = self.url("/admin/workflows/history?status=RUNNING&workflow=noop&limit=1")
                deadline = acked + 300
                polls = 0
                while True:
                    running, _ = await get_json(s, poll)
                    polls += 1
                    if not running:
                        break
                    if time.perf_counter() > deadline:
                        raise BenchError(f"runs still RUNNING 300 s after {k} triggers")
                    await asyncio.sleep(0.005)
                done = time.perf_counter()
            ours = {r["runId"] for r in replies}
            # Check every one of the K runs really is COMPLETED, and take the server's own span.
            statuses: Counter[str] = Counter()
            first_start, last_end = math.inf, 0.0
            url = self.url(f"/admin/workflows/history?workflow=noop&limit=1000&since={int(t_wall) - 2}")
            for _ in range(k // 1000 + 20):
                page, headers = await get_json(s, url)
                for entry in page:
                    if entry["run_id"] in ours:
                        statuses[entry["status"].removeprefix("WORKFLOW_EXECUTION_STATUS_")] += 1
                        first_start = min(first_start, history_ts(entry["started_at"]))
                        if entry["ended_at"]:
                            last_end = max(last_end, history_ts(entry["ended_at"]))
                cursor = headers.get("X-Next-Cursor")
                if not cursor:
                    break
                url = self.url(f"/admin/workflows/history?workflow=noop&limit=1000&cursor={cursor}")
        if statuses["COMPLETED"] != k:
            raise BenchError(f"of {k} runs, the history shows {dict(statuses)}")
        wall = done - t0
        self.values["completed_rps"] = k / wall
        server_span = last_end - first_start
        self.notes["completed_rps"] = (
            f"K={k}; acked in {acked - t0:.2f} s; server span {k / server_span:,.0f}/s"
        )
        self.details["completed"] = {
            "k": k,
            "wall_s": round(wall, 3),
            "acked_s": round(acked - t0, 3),
            "ack_rate": round(k / (acked - t0), 1),
            "server_span_s": round(server_span, 3),
            "server_runs_per_s": round(k / server_span, 1),
            "history_polls": polls,
        }

    async def phase_chain(self) -> None:
        """Sequential chain40 runs. Polling the run's page loads the daemon, so it is done every 20 ms and
        the end-to-end time runs from just before the trigger to the run's own `ended_at` (same clock)."""
        trigger = self.url("/admin/workflows/chain40/trigger")
        reps: list[dict[str, float]] = []
        async with session(self.token, limit=1) as s:
            await self.wait_idle(s)
            for i in range(self.sizes.chain_reps + 1):  # the first one warms up and is not counted
                sent = time.time()
                run_id = (await post_json(s, trigger, unique_body("c")))["runId"]
                deadline = time.perf_counter() + 60
                while True:
                    await asyncio.sleep(0.02)
                    run, _ = await get_json(s, self.url(f"/admin/runs/{run_id}"))
                    if not run["status"].endswith("RUNNING"):
                        break
                    if time.perf_counter() > deadline:
                        raise BenchError(f"chain40 run {run_id} still RUNNING after 60 s")
                if not run["status"].endswith("COMPLETED") or len(run["tasks"]) != 40:
                    raise BenchError(f"chain40 ended {run['status']} with {len(run['tasks'])} attempts")
                tasks = run["tasks"]
                first = min(iso_ts(a["started_at"]) for a in tasks)
                last = max(iso_ts(a["ended_at"]) for a in tasks)
                in_tasks = sum(iso_ts(a["ended_at"]) - iso_ts(a["started_at"]) for a in tasks)
                if i:
                    reps.append(
                        {
                            "span_ms": (last - first) * 1000,
                            "wall_ms": (history_ts(run["ended_at"]) - sent) * 1000,
                            "inside_tasks_ms": in_tasks * 1000,
                        }
                    )
        spans = [r["span_ms"] / 40 for r in reps]
        walls = [r["wall_ms"] / 40 for r in reps]
        inside = statistics.median(r["inside_tasks_ms"] / 40 for r in reps)
        self.values["chain_step_ms"] = statistics.median(spans)
        self.values["chain_step_e2e_ms"] = statistics.median(walls)
        self.notes["chain_step_ms"] = (
            f"median of {len(reps)}; best {min(spans):.3f} ms; {inside:.3f} ms of it inside the task"
        )
        self.notes["chain_step_e2e_ms"] = "trigger sent -> run ended_at"
        self.details["chain"] = {"reps": reps}

    async def phase_terminate(self) -> None:
        trigger = self.url("/admin/workflows/sleeper/trigger")
        times: list[float] = []
        async with session(self.token, limit=1) as s:
            await self.wait_idle(s)
            for i in range(self.sizes.terminate_n + 3):  # three untimed warm-ups
                reply = await post_json(s, trigger, unique_body("x"))
                deadline = time.perf_counter() + 10
                while True:  # until the task is really running (its attempt is stored)
                    run, _ = await get_json(s, self.url(f"/admin/runs/{reply['runId']}"))
                    if any(a["status"] == "RUNNING" for a in run["tasks"]):
                        break
                    if time.perf_counter() > deadline:
                        raise BenchError(f"sleeper run {reply['runId']} never showed a running task")
                    await asyncio.sleep(0.002)
                t0 = time.perf_counter()
                data = await post_json(s, self.url(f"/admin/workflows/{reply['workflowId']}/terminate"))
                t1 = time.perf_counter()
                if [r["runId"] for r in data["runs"]] != [reply["runId"]]:
                    raise BenchError(f"terminate answered {data}")
                if i >= 3:
                    times.append((t1 - t0) * 1000)
            run, _ = await get_json(s, self.url(f"/admin/runs/{reply['runId']}"))
            if not run["status"].endswith("TERMINATED"):
                raise BenchError(f"a terminated run shows {run['status']}")
        self.values["terminate_p50_ms"] = statistics.median(times)
        self.values["terminate_p99_ms"] = pct(times, 99)
        self.notes["terminate_p99_ms"] = f"n={len(times)}"
        self.details["terminate"] = {"ms": [round(t, 4) for t in times]}

    async def phase_cli(self) -> None:
        n = self.sizes.cli_n
        env = child_env()
        py = str(self.bin / "python")
        cli_times: list[float] = []
        py_times: list[float] = []

        def timed(argv: list[str]) -> float:
            t0 = time.perf_counter()
            done = subprocess.run(argv, cwd=self.project, env=env, capture_output=True, text=True, timeout=60)
            elapsed = time.perf_counter() - t0
            if done.returncode != 0:
                raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[:300]}")
            return elapsed * 1000

        def cli() -> list[str]:
            return [self.moose, "workflow", "run", "noop", "--input", unique_body("cli").decode()]

        bare = [py, "-c", "import http.client, json"]
        timed(cli())  # warm the page cache (and write .pyc files) first
        timed(bare)
        for _ in range(n):  # interleaved, so drift in the machine's load hits both alike
            cli_times.append(timed(cli()))
            py_times.append(timed(bare))
        self.values["cli_ms"] = statistics.median(cli_times)
        self.values["py_import_ms"] = statistics.median(py_times)
        self.values["cli_ratio"] = self.values["cli_ms"] / self.values["py_import_ms"]
        self.notes["cli_ms"] = f"median of {n}, with a unique --input"
        self.details["cli"] = {
            "cli_ms": [round(t, 2) for t in cli_times],
            "python_ms": [round(t, 2) for t in py_times],
        }

    async def phase_history(self) -> None:
        z = self.sizes
        self.stop_daemon()
        db = self.project / ".moose" / "moose.db"
        base_us = time.time_ns() // 1000 - z.history_rows * BULK_STEP_US - 3_600_000_000
        bulk = bulk_insert(db, z.history_rows, base_us)
        print(
            f"bench: inserted {z.history_rows:,} runs in {bulk['total_s']:.1f} s ({bulk['db_bytes'] / 2**20:.0f} MB)",
            file=sys.stderr,
        )
        restart_s = self.start_daemon(f"after inserting {z.history_rows} runs")
        timings: dict[str, dict[str, Any]] = {}
        async with session(self.token, limit=1) as s:
            # Some runs RUNNING, so that ?status=RUNNING has a page to return.
            for _ in range(50):
                await post_json(s, self.url("/admin/workflows/sleeper/trigger"), unique_body("h"))

            async def timed(label: str, url: str) -> None:
                for _ in range(20):
                    await get_json(s, url)
                times: list[float] = []
                sizes: set[int] = set()
                deadline = time.perf_counter() + 20  # a slow query gets fewer samples, not minutes
                with self.window(f"history_{label}"):
                    for _ in range(z.history_n):
                        if time.perf_counter() > deadline:
                            break
                        t0 = time.perf_counter()
                        page, _ = await get_json(s, url)
                        times.append((time.perf_counter() - t0) * 1000)
                        sizes.add(len(page))
                timings[label] = {
                    "url": url.removeprefix(self.daemon_url),
                    "n": len(times),
                    "rows_per_page": sorted(sizes),
                    "p50_ms": round(pct(times, 50), 4),
                    "p99_ms": round(pct(times, 99), 4),
                    "max_ms": round(max(times), 4),
                }
                self.values[f"history_{label}_p99_ms"] = pct(times, 99)
                self.notes[f"history_{label}_p99_ms"] = f"p50 {pct(times, 50):.2f} ms; {sorted(sizes)} rows"

            history = self.url("/admin/workflows/history")
            await timed("running", f"{history}?status=RUNNING&limit=20")
            await timed("latest", f"{history}?limit=20")
            url = f"{history}?limit=20"
            for _ in range(z.deep_pages):
                _, headers = await get_json(s, url)
                cursor = headers.get("X-Next-Cursor")
                if not cursor:
                    raise BenchError("the history ran out of pages before the deep page")
                url = f"{history}?limit=20&cursor={cursor}"
            await timed("deep", url)
            self.notes["history_deep_p99_ms"] = (
                f"{z.deep_pages} pages in; " + self.notes["history_deep_p99_ms"]
            )
            i = z.history_rows // 10  # 90% of the way down, in the format X-Next-Cursor uses
            await timed(
                "oldest", f"{history}?limit=20&cursor={bulk_started_at(base_us, i)}_{bulk_run_id(base_us, i)}"
            )
            await post_json(s, self.url("/admin/workflows/sleeper/terminate"))
        self.notes["history_running_p99_ms"] = (
            f"{z.history_rows:,} rows; " + self.notes["history_running_p99_ms"]
        )
        self.details["history"] = {"bulk": bulk, "restart_ready_s": round(restart_s, 4), "queries": timings}

    async def phase_rss(self) -> None:
        z = self.sizes
        trigger = self.url("/admin/workflows/sleeper/trigger")
        readings: list[dict[str, Any]] = []
        async with session(self.token, timeout_s=600) as s:
            await self.wait_idle(s)
            await asyncio.sleep(0.5)
            readings.append(
                {"live_runs": await self.live_runs(s), "rss": rss_bytes(self.pid), "trigger_s": 0.0}
            )
            for target in (z.rss_first, z.rss_second):
                need = target - readings[-1]["live_runs"]
                with self.window(f"rss_trigger_{target}"):
                    result = await closed_loop(
                        s, trigger, seconds=300, workers=CONCURRENCY, tag="r", max_requests=need
                    )
                if result.requests != need:
                    raise BenchError(f"started {result.requests} of {need} sleepers: {result.first_error}")
                deadline = time.perf_counter() + 60
                while (live := await self.live_runs(s)) < target:
                    if time.perf_counter() > deadline:
                        raise BenchError(f"{live} live runs, expected {target}")
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
                readings.append(
                    {"live_runs": live, "rss": rss_bytes(self.pid), "trigger_s": round(result.seconds, 3)}
                )
            with self.window("rss_terminate_all"):
                t0 = time.perf_counter()
                data = await post_json(s, self.url("/admin/workflows/sleeper/terminate"))
                terminate_s = time.perf_counter() - t0
            if len(data["runs"]) != z.rss_second:
                raise BenchError(f"terminate stopped {len(data['runs'])} runs, expected {z.rss_second}")
            after = {"live_runs": await self.live_runs(s), "rss": rss_bytes(self.pid)}
        base, first, second = readings
        slope = (second["rss"] - first["rss"]) / (second["live_runs"] - first["live_runs"])
        self.values["rss_per_run_b"] = slope
        self.values["terminate_all_s"] = terminate_s
        self.notes["rss_per_run_b"] = (
            f"{first['live_runs']:,}->{second['live_runs']:,} runs; "
            f"from 0: {(first['rss'] - base['rss']) / max(1, first['live_runs'] - base['live_runs']):,.0f} B"
        )
        self.notes["terminate_all_s"] = f"{z.rss_second:,} runs in one request"
        self.details["rss"] = {
            "readings": readings,
            "after_terminate": after,
            "terminate_s": round(terminate_s, 3),
        }

    async def phase_startup(self) -> None:
        project = copy_example_project(self.work / "example")
        times: list[float] = []
        argv = [self.moose, "dev", "--project", str(project), "--port", "0", "--log-level", "warning"]
        for i in range(self.sizes.start_n):
            proc = Proc("example daemon", argv, self.work / "example.log")
            try:
                url, ready_s = proc.wait_ready()
                async with session(None, limit=1) as s:
                    await get_json(s, url + "/health")
            finally:
                proc.stop()
            times.append(ready_s)
            print(f"bench: start {i + 1}: ready in {ready_s:.3f} s", file=sys.stderr)
        self.values["ready_s"] = statistics.median(times)
        self.notes["ready_s"] = f"median of {len(times)} (dev mode); first {times[0]:.3f} s made the database"
        self.details["startup"] = {"ready_s": [round(t, 4) for t in times], "mode": "dev"}

    # ---- output ----

    def print_table(self, total_s: float) -> None:
        lines = []
        header = ("figure", "value", "goal", "", "note")
        table: list[tuple[str, str, str, str, str]] = [header]
        for row in ROWS:
            if row.phase not in self.phases:
                continue
            value = self.values.get(row.key)
            if value is None:
                shown = "ERROR" if row.phase in self.errors else "n/a"
            else:
                shown = fmt_value(value, row.unit)
            table.append((row.label, shown, row.goal_text, verdict(row, value), self.notes.get(row.key, "")))
        widths = [max(len(r[i]) for r in table) for i in range(4)]
        for r in table:
            lines.append(
                "  ".join(
                    cell.ljust(w) if j != 1 else cell.rjust(w)
                    for j, (cell, w) in enumerate(zip(r, widths, strict=False))
                )
                + "  "
                + r[4]
            )
        lines.insert(1, "-" * max(len(line) for line in lines))
        info = self.details["machine"]
        print()
        print(
            f"moose_daemon benchmark ({'quick' if self.args.quick else 'full'}), {info['date']}: "
            f"{info['cpu_model']}, {info['cores']} cores, Python {info['python']}"
        )
        print(f"load at start: {self.details['uptime_start']}")
        print(f"load at end:   {self.details['uptime_end']}")
        print()
        print("\n".join(line.rstrip() for line in lines))
        print()
        for phase, message in self.errors.items():
            print(f"ERROR in {phase}: {message}")
        for phase, prof in self.profiles.items():
            print(
                f"py-spy, {phase}: {prof['busy_samples']} busy of {prof['samples']} samples, "
                f"{prof['busy_in_threads_pct']}% of busy in threads (sqlite, task threads); top self time:"
            )
            for name, share in prof["self_pct"][:10]:
                print(f"  {share:5.1f}%  {name}")
        print(
            f"took {total_s:.1f} s; phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.phase_s.items())
        )

    def write_json(self, total_s: float) -> None:
        figures = []
        for row in ROWS:
            if row.phase not in self.phases:
                continue
            value = self.values.get(row.key)
            figures.append(
                {
                    "key": row.key,
                    "figure": row.label,
                    "value": None if value is None else round(value, 6),
                    "unit": row.unit,
                    "goal": row.goal_text or None,
                    "result": verdict(row, value) or None,
                    "note": self.notes.get(row.key) or None,
                }
            )
        out = {
            "mode": "quick" if self.args.quick else "full",
            "machine": self.details.pop("machine"),
            "load": {
                "uptime_start": self.details.pop("uptime_start"),
                "uptime_end": self.details.pop("uptime_end"),
            },
            "settings": {**asdict(self.sizes), "concurrency": CONCURRENCY, "phases": self.phases},
            "figures": figures,
            "details": self.details,
            "errors": self.errors,
            "profiles": self.profiles,
            "phase_seconds": self.phase_s,
            "total_seconds": round(total_s, 2),
        }
        path = Path(self.args.out)
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="shrink every figure: a smoke run in under 30 s")
    p.add_argument(
        "--seconds",
        type=float,
        help="seconds of load per throughput measurement (default 4, in 2 rounds; quick 1, in 1)",
    )
    p.add_argument("--runs", type=int, help="K, the triggers of the completed-runs/s figure (default 5000)")
    p.add_argument("--history-rows", type=int, help="finished runs inserted before the history queries")
    p.add_argument(
        "--only", type=lambda t: t.split(","), help=f"comma-separated phases out of: {', '.join(PHASES)}"
    )
    p.add_argument(
        "--out", default="bench-results.json", help="where the JSON goes (default bench-results.json)"
    )
    p.add_argument(
        "--profile", metavar="DIR", help="record the daemon with py-spy during each phase, into DIR"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary projects (and the daemon's logs)")
    p.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.only:
        unknown = [x for x in args.only if x not in PHASES]
        if unknown:
            p.error(f"unknown phase(s) {', '.join(unknown)}; choose from {', '.join(PHASES)}")
    for name in ("seconds", "runs", "history_rows"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare:
        return serve_bare(max_lifetime_s=3600)
    sizes = QUICK if args.quick else FULL
    if args.seconds:
        sizes = replace(sizes, seconds=args.seconds)
    if args.runs:
        sizes = replace(sizes, runs_k=args.runs)
    if args.history_rows:
        sizes = replace(sizes, history_rows=args.history_rows)
    atexit.register(kill_all)
    try:
        return asyncio.run(Bench(args, sizes).run())
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        kill_all()


if __name__ == "__main__":
    sys.exit(main())
