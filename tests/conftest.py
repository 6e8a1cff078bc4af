"""Shared test harness: a real SQLite file, a real aiohttp server on an ephemeral loopback port,
and (for the smoke tests) the real `moose` command in a subprocess."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient

from moose_daemon.auth import Authenticator
from moose_daemon.engine import Engine
from moose_daemon.loader import load_workflows
from moose_daemon.store import Store
from moose_daemon.tokens import AdminKey
from moose_daemon.web import build_app

FIXTURE_PROJECT = Path(__file__).parent / "fixture_project"
REPO = Path(__file__).resolve().parent.parent
MOOSE = Path(sys.executable).parent / "moose"

# A real pair made by MooseStack's own `moose generate hash-token` (reference §2.2).
KEY = "f4d2103456c63793d3e7571f52d3e250b387b061"
TOKEN = "430f0a069188d45e51871da8a782a758.a76e57c17106cb7e7a7bd9dbdfa0ccea"
AUTH_HEADERS = {"Authorization": f"Bearer {TOKEN}"}

# Contract §2.2: (ENV API Key, Bearer token) pairs produced by real moose-cli 0.6.533.
REAL_PAIRS = [
    (
        "f4d2103456c63793d3e7571f52d3e250b387b061",
        "430f0a069188d45e51871da8a782a758.a76e57c17106cb7e7a7bd9dbdfa0ccea",
    ),
    (
        "5991fbff6ce9c99aaa7ac106e6b50518f18355d2",
        "ee76895e8ceeb194a4adbd53c88a8a2a.03ba1e9b0d046da4aa637366dbe639e3",
    ),
    (
        "b1258926ef4b9c80e21a4011c9118f694725ad01",
        "6c6cf76c4156c802be41e2f8adcc86ad.f6f45138103c3ba906a41cd38e2e89a4",
    ),
    (
        "3edaee4f2c14e87e92bcd2e9206a9c0f03d5f101",
        "3f89933f2ff9f35f81627f32b70da716.63b8c8cd7cb37731a56c355187c3c547",
    ),
    (
        "b27d264c0c8e29cde009cb3f28871ec0ad69b2af",
        "173a78ca9870d249a3e490a9c9813bf8.c05d84dee8bcea4ce3fb951184c86461",
    ),
    (
        "b677f563b3f74a47182365ae4335b04eb9102b94",
        "909f96e78124342e6865443d018e2627.e2a7fde397ae3ab962e5a2ce3cf2e665",
    ),
    (
        "445fd4696cfc5c49e28995c4aba05de44303a112",
        "deadbeefdeadbeefdeadbeefdeadbeef.0123456789abcdef0123456789abcdef",
    ),
]


def http_request(
    url: str, method: str, path: str, token: str | None = None, body: bytes | None = None
) -> tuple[int, Any]:
    """One request with the standard library (for subprocess daemons): the status and the decoded JSON, or text."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read().decode()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw


class FakeClock:
    """Real wall time, but `sleep` returns at once and remembers what was asked (retry backoff)."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    target = tmp_path / "project"
    shutil.copytree(FIXTURE_PROJECT, target, ignore=shutil.ignore_patterns("__pycache__", ".moose", "*.log"))
    return target


def executions(project: Path) -> list[str]:
    log = project / "executions.log"
    return log.read_text().splitlines() if log.exists() else []


@dataclass
class Harness:
    client: TestClient[Any, Any]
    engine: Engine
    store: Store
    clock: FakeClock
    project: Path
    db_path: Path
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH_HEADERS))

    async def trigger(self, name: str, body: bytes | str | None = None) -> dict[str, Any]:
        resp = await self.client.post(f"/admin/workflows/{name}/trigger", data=body, headers=self.headers)
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data

    async def run(self, run_id: str) -> dict[str, Any]:
        resp = await self.client.get(f"/admin/runs/{run_id}", headers=self.headers)
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data

    async def wait_status(self, run_id: str, status: str, within_s: float = 10.0) -> dict[str, Any]:
        """Poll until the run reaches `status` (short form, e.g. COMPLETED); fail after `within_s`."""
        deadline = time.monotonic() + within_s
        while True:
            run = await self.run(run_id)
            if run["status"].endswith(status):
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} is {run['status']}, not {status}: {run}")
            await asyncio.sleep(0.02)


async def make_harness(
    aiohttp_client: Any, project: Path, db_path: Path, *, admin_key: str | None = KEY, dev: bool = True
) -> tuple[Harness, Authenticator]:
    store = await Store.open(db_path)
    clock = FakeClock()
    engine = Engine(store, load_workflows(project, "app"), clock=clock)
    await engine.start()
    auth = Authenticator(AdminKey.parse(admin_key) if admin_key else None, None)
    app = build_app(engine, auth, dashboard_base="http://localhost:4000" if dev else "", max_body=1024 * 1024)
    client = await aiohttp_client(app)
    return Harness(client, engine, store, clock, project, db_path), auth


@pytest.fixture
async def harness(aiohttp_client: Any, project: Path) -> AsyncIterator[Harness]:
    h, auth = await make_harness(aiohttp_client, project, project / ".moose" / "moose.db")
    yield h
    await h.engine.stop(2.0)
    auth.close()
    await h.store.close()


class DaemonProcess:
    """The real `moose dev` in a subprocess, on a port the OS picks."""

    def __init__(self, project: Path, *, env: dict[str, str] | None = None, mode: str = "dev") -> None:
        self.project = project
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [str(MOOSE), mode, "--project", str(project), "--port", "0", "--log-level", "warning"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        if "ready at" not in line:
            self.proc.kill()
            raise AssertionError(
                f"daemon did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}"
            )
        self.url = line.split("ready at ", 1)[1].split()[0]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def daemon_factory() -> Iterator[Any]:
    started: list[DaemonProcess] = []

    def start(project: Path, **kwargs: Any) -> DaemonProcess:
        d = DaemonProcess(project, **kwargs)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


class ManualClock:
    """Virtual time: `sleep` waits until a test calls `advance` past its deadline."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time forward step by step, waking every sleeper whose deadline passed, and let them run."""
        target = self.now + seconds
        for _ in range(20):  # tasks that were just started get to reach their first sleep
            await asyncio.sleep(0)
        while True:
            due = [deadline for deadline, f in self._sleepers if not f.done() and deadline <= target]
            self.now = min(due) if due else target
            await self._wake(settle=not due)
            if not due:
                return

    async def _wake(self, settle: bool = False) -> None:
        woke = settle
        for deadline, future in list(self._sleepers):
            if deadline <= self.now and not future.done():
                future.set_result(None)
                woke = True
        self._sleepers = [(d, f) for d, f in self._sleepers if not f.done()]
        if woke:  # let the woken tasks run, and the store's thread commit what they wrote
            for _ in range(3):
                for _ in range(20):
                    await asyncio.sleep(0)
                await asyncio.sleep(0.005)


def write_project(root: Path, main_py: str) -> Path:
    """A throwaway project: moose.config.toml and app/main.py with the given source."""
    (root / "app").mkdir(parents=True, exist_ok=True)
    (root / "moose.config.toml").write_text('[http_server_config]\nhost = "localhost"\nport = 4000\n')
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "main.py").write_text(main_py)
    return root
