"""Soak test of moose_daemon (issue 5, item 7). Run it through `scripts/soak`; not part of CI.

It makes a throwaway project, starts the real daemon (`moose prod`, loopback) and drives a steady mixed load
for `--minutes`: unique triggers of a three-task chain (async, plain `def`, async), of a workflow whose task
fails and is retried, and of a sleeper that the client terminates half a second later, plus history, run and
workflow-list reads. It samples the daemon's RSS (VmRSS), open file descriptors and threads at the start
(idle), every `--interval` seconds under load, and at the end (idle again, once the runs have finished and
the clients have closed their connections), and prints them with their slopes.

It exits 1 when RSS under load grew more than `--rss-growth` (20%) from the end of the warm-up to the end,
when the idle descriptor count at the end is above the one at the start, or when the load failed (more than
1% of requests); 2 on a usage error. Threads are shown, not judged: the task thread pool grows up to its
size as the load asks for it.

    scripts/soak                  # 5 minutes
    scripts/soak --minutes 0.5    # a quick check: samples every 5 s instead of 30
    scripts/soak --minutes 30 --rate 200
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
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import chaos  # scripts/chaos.py, beside this file: the daemon process and the project helpers

MAIN_PY = '''\
"""Workflows for scripts/soak: a short chain, a failing task that is retried, a sleeper to terminate."""

import asyncio
import random
import time

from moose_daemon import Task, TaskConfig, TaskContext, Workflow, WorkflowConfig


async def fetch(ctx: TaskContext[dict]) -> dict:
    await asyncio.sleep(random.uniform(0.0, 0.02))
    return {"seq": ctx.input.get("seq"), "rows": list(range(20))}


def transform(ctx: TaskContext[dict]) -> dict:
    time.sleep(random.uniform(0.0, 0.005))
    return {"seq": ctx.input["seq"], "total": sum(ctx.input["rows"])}


async def load(ctx: TaskContext[dict]) -> str:
    await asyncio.sleep(random.uniform(0.0, 0.01))
    return f"stored {ctx.input['total']}"


def always_fails(ctx: TaskContext[dict]) -> None:
    raise RuntimeError(f"soak failure {ctx.input.get('seq')} on attempt {ctx.attempt}")


async def sleeps(ctx: TaskContext[dict]) -> None:
    await asyncio.sleep(600)


_load = Task[dict, str](name="load", config=TaskConfig(run=load))
_transform = Task[dict, dict](name="transform", config=TaskConfig(run=transform, on_complete=[_load]))
Workflow(
    name="soak-chain",
    config=WorkflowConfig(
        starting_task=Task[dict, dict](name="fetch", config=TaskConfig(run=fetch, on_complete=[_transform])),
        retries=0,
    ),
)
Workflow(
    name="soak-fail",
    config=WorkflowConfig(
        starting_task=Task[dict, None](name="fails", config=TaskConfig(run=always_fails, retries=1)), retries=0
    ),
)
Workflow(
    name="soak-sleep",
    config=WorkflowConfig(starting_task=Task[dict, None](name="sleeps", config=TaskConfig(run=sleeps)), retries=0),
)
'''

TERMINATE_AFTER_S = 0.5
# SQLite starts the WAL over after each complete checkpoint and truncates it to 64 MiB; a WAL far past that
# means the checkpoints stopped catching up (it once grew by gigabytes under steady load).
WAL_LIMIT_BYTES = 256 * 2**20


def make_project(root: Path, admin_key: str) -> Path:
    (root / "app").mkdir(parents=True)
    (root / "moose.config.toml").write_text(
        'source_dir = "app"\n\n[http_server_config]\nhost = "localhost"\nport = 4000\n\n'
        f'[authentication]\nadmin_api_key = "{admin_key}"\n'
    )
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "main.py").write_text(MAIN_PY)
    return root


# ---- samples ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the load started (negative: before it)
    rss_kib: int
    fds: int
    threads: int
    acknowledged: int
    label: str = ""


def sample(pid: int, t: float, acknowledged: int, label: str = "") -> Sample:
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    return Sample(
        t=t,
        rss_kib=int(status["VmRSS"].split()[0]),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(status["Threads"]),
        acknowledged=acknowledged,
        label=label,
    )


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x; 0 with fewer than two distinct x."""
    if len(points) < 2:
        return 0.0
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


# ---- the load --------------------------------------------------------------------------------------------


@dataclass
class SoakStats:
    acknowledged: int = 0
    reads: int = 0
    terminated: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)

    def error(self, what: str, detail: str) -> None:
        self.errors[what] += 1
        if len(self.samples) < 5:
            self.samples.append(f"{what}: {detail[:200]}")


class SoakLoad:
    def __init__(self, url: str, token: str, *, clients: int, rate: float, seed: int) -> None:
        self.url = url
        self.token = token
        self.clients = clients
        self.rate = rate
        self.seed = seed
        self.stats = SoakStats()
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.gather(*self._tasks)

    async def _client(self, index: int) -> None:
        rng = random.Random(f"{self.seed}-{index}")
        loop = asyncio.get_running_loop()
        interval = self.clients / self.rate
        next_at = loop.time() + rng.uniform(0, interval)
        to_terminate: list[tuple[float, str]] = []
        last_run = ""
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        timeout = aiohttp.ClientTimeout(total=chaos.REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1), timeout=timeout, headers=headers
        ) as session:
            for seq in itertools.count():
                delay = next_at - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), delay)
                if self.stopping.is_set():
                    break
                next_at = max(next_at + interval, loop.time())
                while to_terminate and to_terminate[0][0] <= loop.time():
                    _, wid = to_terminate.pop(0)
                    if await self._post(session, f"/admin/workflows/{wid}/terminate", None, (200, 409)):
                        self.stats.terminated += 1
                roll = rng.random()
                name = "soak-sleep" if roll < 0.01 else "soak-fail" if roll < 0.06 else "soak-chain"
                body = await self._post(
                    session, f"/admin/workflows/{name}/trigger", {"client": index, "seq": seq}, (200,)
                )
                if body is not None:
                    self.stats.acknowledged += 1
                    last_run = body["runId"]
                    if name == "soak-sleep":
                        to_terminate.append((loop.time() + TERMINATE_AFTER_S, body["workflowId"]))
                if seq % 10 == 0:
                    for path in ("/admin/workflows/history?limit=20", f"/admin/runs/{last_run}"):
                        if last_run and await self._get(session, path):
                            self.stats.reads += 1
                if seq % 100 == 0 and await self._get(session, "/admin/workflows"):
                    self.stats.reads += 1
            for _, wid in to_terminate:  # nothing is left sleeping for 10 minutes
                if await self._post(session, f"/admin/workflows/{wid}/terminate", None, (200, 409)):
                    self.stats.terminated += 1

    async def _post(
        self, session: aiohttp.ClientSession, path: str, payload: Any, ok: tuple[int, ...]
    ) -> Any | None:
        try:
            data = None if payload is None else json.dumps(payload)
            async with session.post(self.url + path, data=data) as resp:
                raw = await resp.read()
                if resp.status in ok:
                    return json.loads(raw)
                self.stats.error(f"POST {path.split('/')[-1]} {resp.status}", raw.decode(errors="replace"))
        except (aiohttp.ClientError, TimeoutError) as e:
            self.stats.error(f"POST {type(e).__name__}", str(e))
        return None

    async def _get(self, session: aiohttp.ClientSession, path: str) -> bool:
        try:
            async with session.get(self.url + path) as resp:
                raw = await resp.read()
                if resp.status == 200:
                    return True
                self.stats.error(f"GET {resp.status}", f"{path}: {raw.decode(errors='replace')}")
        except (aiohttp.ClientError, TimeoutError) as e:
            self.stats.error(f"GET {type(e).__name__}", str(e))
        return False


# ---- the run ---------------------------------------------------------------------------------------------


@dataclass
class SoakReport:
    minutes: float
    rate: float
    clients: int
    interval_s: float
    warmup_s: float
    rss_growth_limit: float
    samples: list[Sample] = field(default_factory=list)
    warm_index: int = 0  # samples[warm_index] is the baseline after warm-up
    stats: SoakStats = field(default_factory=SoakStats)
    load_s: float = 0.0
    elapsed_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    wal_max_bytes: int = 0  # the largest the SQLite WAL file was at a sample

    def failures(self) -> list[str]:
        out = list(self.problems)
        if self.wal_max_bytes > WAL_LIMIT_BYTES:
            out.append(
                f"the WAL file reached {self.wal_max_bytes / 2**20:.0f} MiB (limit {WAL_LIMIT_BYTES >> 20} MiB)"
            )
        loaded = [s for s in self.samples if s.label != "idle"]
        idle = [s for s in self.samples if s.label == "idle"]
        if len(idle) < 2 or not loaded:
            return [*out, "not enough samples"]
        warm, last = self.samples[self.warm_index], loaded[-1]
        growth = (last.rss_kib - warm.rss_kib) / warm.rss_kib
        if growth > self.rss_growth_limit:
            out.append(f"RSS grew {growth:+.1%} after warm-up (limit {self.rss_growth_limit:+.0%})")
        if idle[-1].fds > idle[0].fds:
            out.append(f"open fds at idle grew from {idle[0].fds} to {idle[-1].fds}")
        if self.stats.acknowledged == 0:
            out.append("no trigger was acknowledged")
        if sum(self.stats.errors.values()) > 0.01 * max(1, self.stats.acknowledged):
            out.append(f"more than 1% of requests failed: {dict(self.stats.errors)}")
        return out

    def format(self) -> str:
        lines = [
            f"soak: {self.minutes:g} min of load at {self.rate:g} triggers/s from {self.clients} clients "
            f"(samples every {self.interval_s:g} s, warm-up {self.warmup_s:g} s), {self.elapsed_s:.1f} s in all",
            "     t (s)   RSS (MiB)    fds  threads  acknowledged",
        ]
        for i, s in enumerate(self.samples):
            note = {"idle": "idle"}.get(s.label, "under load")
            if i == self.warm_index:
                note += ", warm-up baseline"
            lines.append(
                f"  {s.t:8.1f}   {s.rss_kib / 1024:9.1f}  {s.fds:5d}  {s.threads:7d}  {s.acknowledged:12d}   {note}"
            )
        loaded = [s for s in self.samples[self.warm_index :] if s.label != "idle"]
        idle = [s for s in self.samples if s.label == "idle"]
        if loaded and idle:
            warm, last = loaded[0], loaded[-1]
            rss_slope = slope([(s.t / 60, s.rss_kib / 1024) for s in loaded])
            fd_slope = slope([(s.t / 60, s.fds) for s in loaded])
            lines += [
                f"  RSS      {warm.rss_kib / 1024:.1f} MiB after warm-up -> {last.rss_kib / 1024:.1f} MiB at the "
                f"end of the load ({(last.rss_kib - warm.rss_kib) / warm.rss_kib:+.1%}, limit "
                f"{self.rss_growth_limit:+.0%}); slope {rss_slope:+.2f} MiB/min; "
                f"idle {idle[0].rss_kib / 1024:.1f} -> {idle[-1].rss_kib / 1024:.1f} MiB",
                f"  fds      idle {idle[0].fds} -> {idle[-1].fds}; under load "
                f"{min(s.fds for s in loaded)}..{max(s.fds for s in loaded)}, slope {fd_slope:+.2f}/min",
                f"  threads  idle {idle[0].threads} -> {idle[-1].threads}; under load at most "
                f"{max(s.threads for s in loaded)}",
            ]
        lines.append(
            f"  WAL      at most {self.wal_max_bytes / 2**20:.1f} MiB at a sample (limit {WAL_LIMIT_BYTES >> 20} MiB)"
        )
        st = self.stats
        errors = ", ".join(f"{n}x {what}" for what, n in st.errors.most_common()) or "none"
        lines.append(
            f"  load     {st.acknowledged} triggers acknowledged ({st.acknowledged / max(self.load_s, 1e-9):.1f}/s), "
            f"{st.reads} reads, {st.terminated} terminated; errors: {errors}"
        )
        lines += [f"    {s}" for s in st.samples]
        failures = self.failures()
        lines.append("result: " + ("OK" if not failures else "FAILED: " + "; ".join(failures)))
        return "\n".join(lines)


async def _soak(work: Path, report: SoakReport, seed: int, quiet: bool) -> None:
    from moose_daemon.tokens import generate_pbkdf2

    key, token = generate_pbkdf2()
    project = make_project(work / "project", key)
    wal = project / ".moose" / "moose.db-wal"
    daemon = chaos.Daemon(project, work / "daemon.log")
    t_begin = time.monotonic()
    try:
        await daemon.spawn()
        url = await daemon.wait_ready()
        if not quiet:
            print(f"soak: daemon pid {daemon.pid} ready at {url} (work folder {work})", file=sys.stderr)
        await asyncio.sleep(1.0)
        report.samples.append(sample(daemon.pid, 0.0, 0, "idle"))
        load = SoakLoad(url, token, clients=report.clients, rate=report.rate, seed=seed)
        report.stats = load.stats
        load.start()
        t0 = time.monotonic()
        duration = report.minutes * 60
        step = report.interval_s
        marks = [step * k for k in range(1, int(duration / step) + 1) if step * k < duration - 0.5]
        marks.append(duration)
        warm_mark = next(m for m in marks if m >= min(report.warmup_s, duration))
        for mark in marks:
            await asyncio.sleep(max(0.0, t0 + mark - time.monotonic()))
            if not daemon.alive():
                report.problems.append(f"the daemon exited:\n    {daemon.log_tail()}")
                return
            s = sample(daemon.pid, time.monotonic() - t0, load.stats.acknowledged)
            report.samples.append(s)
            with contextlib.suppress(FileNotFoundError):
                report.wal_max_bytes = max(report.wal_max_bytes, wal.stat().st_size)
            if mark == warm_mark:
                report.warm_index = len(report.samples) - 1
            if not quiet:
                print(
                    f"soak: t={s.t:6.1f}s RSS {s.rss_kib / 1024:.1f} MiB, {s.fds} fds, {s.threads} threads, "
                    f"{s.acknowledged} acknowledged",
                    file=sys.stderr,
                    flush=True,
                )
        await load.stop()
        report.load_s = time.monotonic() - t0
        await chaos.wait_terminal(url, token, 60.0)
        await asyncio.sleep(1.0)  # the server closes the clients' connections
        report.samples.append(sample(daemon.pid, time.monotonic() - t0, load.stats.acknowledged, "idle"))
        code = await daemon.stop()
        if code != 0:
            report.problems.append(f"the daemon's clean stop exited with code {code}")
    finally:
        daemon.close()
        report.elapsed_s = time.monotonic() - t_begin
    log = (work / "daemon.log").read_text(errors="replace")
    if "Traceback" in log:
        report.problems.append(f"the daemon log has a traceback: see {work / 'daemon.log'}")


def run_soak(
    *,
    minutes: float = 5.0,
    rate: float = 100.0,
    clients: int = 4,
    interval_s: float | None = None,
    warmup_s: float | None = None,
    rss_growth: float = 0.2,
    seed: int = 1,
    keep: bool | None = None,
    quiet: bool = False,
) -> SoakReport:
    seconds = minutes * 60
    if interval_s is None:
        interval_s = 30.0 if seconds >= 180 else max(1.0, seconds / 6)
    if warmup_s is None:
        warmup_s = min(60.0, max(interval_s, seconds * 0.2))
    report = SoakReport(minutes, rate, clients, interval_s, warmup_s, rss_growth)
    work = Path(tempfile.mkdtemp(prefix="moose-soak-"))
    try:
        asyncio.run(_soak(work, report, seed, quiet))
    except chaos.ChaosError as e:
        report.problems.append(str(e))
    if keep or (keep is None and report.failures()):
        print(f"soak: kept {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/soak", description="Steady load; RSS and fds must stay flat.")
    p.add_argument("--minutes", type=float, default=5.0, help="how long the load runs (5)")
    p.add_argument("--rate", type=float, default=100.0, help="triggers per second, all clients (100)")
    p.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (4)")
    p.add_argument("--interval", type=float, default=None, help="seconds between samples (30; less if short)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before the RSS baseline (20%%, <= 60)")
    p.add_argument("--rss-growth", type=float, default=0.2, help="largest RSS growth after warm-up (0.2)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--quiet", action="store_true", help="print only the report")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.clients < 1:
        p.error("--minutes and --rate must be > 0, --clients >= 1")
    if args.interval is not None and args.interval <= 0:
        p.error("--interval must be > 0")

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    report = run_soak(
        minutes=args.minutes,
        rate=args.rate,
        clients=args.clients,
        interval_s=args.interval,
        warmup_s=args.warmup,
        rss_growth=args.rss_growth,
        seed=args.seed,
        keep=True if args.keep else None,
        quiet=args.quiet,
    )
    print(report.format())
    return 0 if not report.failures() else 1


if __name__ == "__main__":
    sys.exit(main())
