"""Auth under attack (issue 5, item 4): the latency of a client with the right token, quiet and during a
flood of wrong tokens from other connections, against the real daemon with an argon2id key.

    scripts/auth_flood [--seconds 5] [--flooders 16] [--samples 400]

Loopback only; bounded in time and count. Prints p50/p99 quiet and under flood, the ratio (goal: the flood
p99 within 10x of the quiet p99), and how the flood was answered (401 while the per-client budget lasts,
then 429)."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiohttp
import chaos  # scripts/chaos.py: the daemon process helpers

from moose_daemon.tokens import generate

MAIN_PY = """\
from moose_daemon import Task, TaskConfig, TaskContext, Workflow, WorkflowConfig

def noop(ctx: TaskContext[dict | None]) -> None:
    return None

Workflow(name="noop", config=WorkflowConfig(starting_task=Task[dict | None, None](name="noop", config=TaskConfig(run=noop))))
"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def good_latencies(session: aiohttp.ClientSession, url: str, token: str, samples: int) -> list[float]:
    out = []
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(samples):
        start = time.perf_counter()
        async with session.get(f"{url}/admin/workflows/history?limit=1", headers=headers) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        out.append((time.perf_counter() - start) * 1000)
    return out


async def flood(url: str, until: float, answers: Counter[int]) -> None:
    async with aiohttp.ClientSession() as session:  # its own connections
        while time.monotonic() < until:
            wrong = (
                f"{secrets.token_hex(16)}.{secrets.token_hex(16)}"  # never seen: each one is worth hashing
            )
            async with session.get(
                f"{url}/admin/workflows/history", headers={"Authorization": f"Bearer {wrong}"}
            ) as resp:
                await resp.read()
                answers[resp.status] += 1


def flood_process(url: str, seconds: float, connections: int) -> dict[int, int]:
    """The flood runs in a process of its own, so it does not slow the measuring client's loop."""

    async def run() -> dict[int, int]:
        answers: Counter[int] = Counter()
        until = time.monotonic() + seconds
        await asyncio.gather(*(flood(url, until, answers) for _ in range(connections)))
        return dict(answers)

    return asyncio.run(run())


async def measure(args: argparse.Namespace) -> int:
    key, token = generate()
    with tempfile.TemporaryDirectory(prefix="moose-authflood-") as tmp:
        project = Path(tmp) / "project"
        (project / "app").mkdir(parents=True)
        (project / "app" / "__init__.py").write_text("")
        (project / "app" / "main.py").write_text(MAIN_PY)
        (project / "moose.config.toml").write_text(f"[authentication]\nadmin_api_key = '{key}'\n")
        daemon = chaos.Daemon(project, Path(tmp) / "daemon.log")
        try:
            await daemon.spawn()
            url = await daemon.wait_ready()
            async with aiohttp.ClientSession() as session:
                await good_latencies(session, url, token, 20)  # warm-up: the token is verified once
                quiet = await good_latencies(session, url, token, args.samples)
                loop = asyncio.get_running_loop()
                with ProcessPoolExecutor(max_workers=1) as pool:
                    flooding = loop.run_in_executor(pool, flood_process, url, args.seconds, args.flooders)
                    await asyncio.sleep(0.5)  # let the flood get going
                    loud: list[float] = []
                    until = time.monotonic() + args.seconds - 1.0
                    while time.monotonic() < until and len(loud) < args.samples * 10:
                        loud += await good_latencies(session, url, token, 10)
                    answers = Counter(await flooding)
        finally:
            await daemon.stop()
            daemon.close()
    q50, q99, l50, l99 = pct(quiet, 50), pct(quiet, 99), pct(loud, 50), pct(loud, 99)
    print(f"right token, quiet        p50 {q50:.2f} ms  p99 {q99:.2f} ms  (n={len(quiet)})")
    print(f"right token, during flood p50 {l50:.2f} ms  p99 {l99:.2f} ms  (n={len(loud)})")
    print(f"flood p99 / quiet p99     {l99 / q99:.1f}x  (goal: within 10x)")
    print(
        f"flood: {args.flooders} connections, {sum(answers.values())} wrong tokens in {args.seconds:.0f} s, answered {dict(sorted(answers.items()))}"
    )
    return 0 if l99 <= 10 * q99 else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--flooders", type=int, default=16)
    parser.add_argument("--samples", type=int, default=400)
    return asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
