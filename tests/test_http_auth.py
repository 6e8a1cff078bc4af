"""The admin bearer-token gate over real HTTP (issue #2 §4-§5, contract §1.3, §2)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import KEY, REAL_PAIRS, TOKEN, FakeClock, Harness, make_harness

from moose_daemon.auth import INVALID, NOT_CONFIGURED, Authenticator
from moose_daemon.engine import Engine
from moose_daemon.loader import load_workflows
from moose_daemon.store import Store
from moose_daemon.tokens import AdminKey, generate, generate_pbkdf2
from moose_daemon.web import build_app

OTHER_TOKEN = REAL_PAIRS[1][1]

# Every /admin route: id -> (method, path, the status it answers past the gate with a good token).
ROUTES = {
    "trigger": ("POST", "/admin/workflows/hello/trigger", 200),
    "terminate": ("POST", "/admin/workflows/hello/terminate", 404),
    "cancel": ("POST", "/admin/workflows/hello/cancel", 404),
    "history": ("GET", "/admin/workflows/history", 200),
    "run": ("GET", "/admin/runs/00000000-0000-7000-8000-000000000000", 404),
    # routes added after issue #2, behind the same gate
    "pause": ("POST", "/admin/workflows/hello/pause", 200),
    "unpause": ("POST", "/admin/workflows/hello/unpause", 200),
    "resume": ("POST", "/admin/workflows/hello/resume", 400),
    "status": ("GET", "/admin/workflows/hello/status", 404),
    "list": ("GET", "/admin/workflows", 200),
}
ADMIN_ROUTES = [(method, path) for method, path, _ in ROUTES.values()]
ROUTE_IDS = list(ROUTES)

# Authorization headers that must all be refused with the INVALID message.
BAD_HEADERS: dict[str, dict[str, str]] = {
    "missing": {},
    "empty": {"Authorization": ""},
    "bearer-only": {"Authorization": "Bearer"},
    "bearer-space-only": {"Authorization": "Bearer "},
    "wrong-token": {"Authorization": f"Bearer {OTHER_TOKEN}"},
    "lower-case-bearer": {"Authorization": f"bearer {TOKEN}"},
    "upper-case-bearer": {"Authorization": f"BEARER {TOKEN}"},
    "two-spaces": {"Authorization": f"Bearer  {TOKEN}"},
    "no-scheme": {"Authorization": TOKEN},
    "basic-scheme": {"Authorization": f"Basic {TOKEN}"},
    "no-dot": {"Authorization": f"Bearer {TOKEN.replace('.', '')}"},
    "two-dots": {"Authorization": f"Bearer {TOKEN}.00"},
    "only-dot": {"Authorization": "Bearer ."},
    "halves-swapped": {"Authorization": "Bearer " + ".".join(reversed(TOKEN.split(".")))},
    "key-as-token": {"Authorization": f"Bearer {KEY}"},
    "upper-case-token": {"Authorization": f"Bearer {TOKEN.upper()}"},
    # over tokens.MAX_TOKEN_LENGTH, under aiohttp's 8190-byte header line limit
    "very-long": {"Authorization": "Bearer " + "a" * 5000 + ".b"},
}


async def request(h: Harness, method: str, path: str, headers: dict[str, str]) -> tuple[int, str, str]:
    resp = await h.client.request(
        method, path, headers=headers, data=b'{"name": "x"}' if method == "POST" else None
    )
    return resp.status, resp.content_type, await resp.text()


def run_count(db_path: Path) -> int:
    with sqlite3.connect(db_path) as db:
        count: int = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    return count


@pytest.fixture
async def harness_factory(
    aiohttp_client: Any, tmp_path: Path, project: Path
) -> AsyncIterator[Callable[..., Any]]:
    """Build extra harnesses (another key, no key, prod); all are closed at teardown."""
    made: list[tuple[Harness, Authenticator]] = []

    async def make(**kwargs: Any) -> Harness:
        h, auth = await make_harness(aiohttp_client, project, tmp_path / f"h{len(made)}.db", **kwargs)
        made.append((h, auth))
        return h

    yield make
    for h, auth in made:
        await h.engine.stop(2.0)
        auth.close()
        await h.store.close()


# ---- refused ------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", list(BAD_HEADERS.values()), ids=list(BAD_HEADERS))
async def test_bad_or_missing_token_is_401_on_every_admin_route(
    harness: Harness, header: dict[str, str]
) -> None:
    for method, path in ADMIN_ROUTES:
        status, ctype, text = await request(harness, method, path, header)
        assert (status, ctype, text) == (401, "text/plain", INVALID), (method, path)
    assert INVALID == "Unauthorized: Invalid or missing token"
    assert run_count(harness.db_path) == 0  # nothing was triggered
    assert harness.engine.paused == set()  # nothing was paused


@pytest.mark.parametrize("path", ["/admin", "/admin/", "/admin/nope", "/admin/workflows/hello"])
async def test_unknown_admin_paths_are_also_behind_the_gate(harness: Harness, path: str) -> None:
    assert await request(harness, "GET", path, {}) == (401, "text/plain", INVALID)


@pytest.mark.parametrize(
    "header",
    [
        {},
        {"Authorization": f"Bearer {TOKEN}"},
        {"Authorization": f"Bearer {OTHER_TOKEN}"},
        {"Authorization": "junk"},
    ],
    ids=["missing", "token-of-the-old-key", "other-token", "junk"],
)
async def test_no_key_configured_refuses_everything(
    harness_factory: Callable[..., Any], header: dict[str, str]
) -> None:
    h = await harness_factory(admin_key=None)
    for method, path in ADMIN_ROUTES:
        status, ctype, text = await request(h, method, path, header)
        assert (status, ctype, text) == (401, "text/plain", NOT_CONFIGURED), (method, path)
    assert NOT_CONFIGURED == "Unauthorized: Admin API key not configured"
    assert run_count(h.db_path) == 0


@pytest.mark.parametrize("path", ["/health", "/liveness", "/ready"])
@pytest.mark.parametrize("admin_key", [KEY, None], ids=["key", "no-key"])
async def test_health_is_open(harness_factory: Callable[..., Any], path: str, admin_key: str | None) -> None:
    h = await harness_factory(admin_key=admin_key)
    resp = await h.client.get(path)
    assert resp.status == 200
    assert await resp.json() == {"status": "healthy"}


# ---- accepted -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "expected"), list(ROUTES.values()), ids=ROUTE_IDS)
async def test_good_token_passes_the_gate_on_every_route(
    harness: Harness, method: str, path: str, expected: int
) -> None:
    # past the gate each route answers for itself: JSON, never the 401 text
    status, ctype, text = await request(harness, method, path, {"Authorization": f"Bearer {TOKEN}"})
    assert (status, ctype) == (expected, "application/json"), text
    assert "Unauthorized" not in text


@pytest.mark.parametrize(("key", "token"), REAL_PAIRS, ids=[k[:8] for k, _ in REAL_PAIRS])
async def test_every_real_moosestack_pair_is_accepted_and_cross_rejected(key: str, token: str) -> None:
    auth = Authenticator(AdminKey.parse(key), None)
    try:
        assert await auth.check(f"Bearer {token}") is None
        for other_key, other_token in REAL_PAIRS:
            if other_key != key:
                assert await auth.check(f"Bearer {other_token}") == INVALID, other_key
        assert await auth.check(f"bearer {token}") == INVALID
    finally:
        auth.close()


@pytest.mark.parametrize("index", [1, 6], ids=["moose-prod-pair", "e2e-constant"])
async def test_real_pair_over_http(harness_factory: Callable[..., Any], index: int) -> None:
    key, token = REAL_PAIRS[index]
    h = await harness_factory(admin_key=key)
    h.headers = {"Authorization": f"Bearer {token}"}
    data = await h.trigger("hello")
    assert data["workflowId"] == "hello"
    # the default harness token (another real pair) is refused by this key
    assert await request(h, "GET", "/admin/workflows/history", {"Authorization": f"Bearer {TOKEN}"}) == (
        401,
        "text/plain",
        INVALID,
    )


async def test_upper_case_hex_key_is_accepted(harness_factory: Callable[..., Any]) -> None:
    h = await harness_factory(admin_key=KEY.upper())
    assert (await h.trigger("hello"))["workflowId"] == "hello"
    assert (await request(h, "GET", "/admin/workflows/history", {"Authorization": f"Bearer {OTHER_TOKEN}"}))[
        0
    ] == 401


async def test_generated_pbkdf2_key_works(harness_factory: Callable[..., Any]) -> None:
    key, token = generate_pbkdf2()
    h = await harness_factory(admin_key=key)
    h.headers = {"Authorization": f"Bearer {token}"}
    assert (await h.trigger("hello"))["workflowId"] == "hello"


async def test_generated_argon2id_key_works_and_rejects_others(harness_factory: Callable[..., Any]) -> None:
    key, token = generate()
    assert key.startswith("$argon2id$")
    h = await harness_factory(admin_key=key)
    h.headers = {"Authorization": f"Bearer {token}"}
    data = await h.trigger("hello", b'{"name": "argon"}')
    await h.wait_status(data["runId"], "COMPLETED")
    _, other = generate()
    for bad in (other, TOKEN, token + "x", token.split(".")[0]):
        assert await request(h, "GET", "/admin/workflows/history", {"Authorization": f"Bearer {bad}"}) == (
            401,
            "text/plain",
            INVALID,
        )


# ---- the argon2 cost is paid once per good token ----------------------------------------------------


class CountingKey:
    """Stands in for AdminKey: Authenticator only calls `.verify(token)`."""

    def __init__(self, key: AdminKey) -> None:
        self.key = key
        self.calls: list[str] = []
        self.threads: set[str] = set()

    def verify(self, token: str) -> bool:
        self.calls.append(token)
        self.threads.add(threading.current_thread().name)
        return self.key.verify(token)


@pytest.fixture
async def counted(
    aiohttp_client: Any, tmp_path: Path, project: Path
) -> AsyncIterator[tuple[Harness, CountingKey, str]]:
    key, token = generate()
    counting = CountingKey(AdminKey.parse(key))
    store = await Store.open(tmp_path / "counted.db")
    engine = Engine(store, load_workflows(project, "app"), clock=FakeClock())
    await engine.start()
    auth = Authenticator(counting, None)  # type: ignore[arg-type]
    app = build_app(engine, auth, dashboard_base="", max_body=1024 * 1024)
    client = await aiohttp_client(app)
    h = Harness(
        client,
        engine,
        store,
        FakeClock(),
        project,
        tmp_path / "counted.db",
        {"Authorization": f"Bearer {token}"},
    )
    yield h, counting, token
    await engine.stop(2.0)
    auth.close()
    await store.close()


async def test_known_good_argon2_token_is_verified_once(counted: tuple[Harness, CountingKey, str]) -> None:
    h, counting, token = counted
    for _ in range(5):
        assert (await request(h, "GET", "/admin/workflows/history", h.headers))[0] == 200
    await h.trigger("hello")
    assert counting.calls == [token]
    # hashing ran on the authenticator's threads, not on the event loop's thread
    assert counting.threads
    assert all(name.startswith("moose-auth") for name in counting.threads), counting.threads
    assert threading.main_thread().name not in counting.threads


async def test_a_wrong_token_is_hashed_once(counted: tuple[Harness, CountingKey, str]) -> None:
    """A token that failed stays wrong for the daemon's life: repeating it costs no hashing."""
    h, counting, _ = counted
    _, wrong = generate()
    for _ in range(3):
        assert await request(h, "GET", "/admin/workflows/history", {"Authorization": f"Bearer {wrong}"}) == (
            401,
            "text/plain",
            INVALID,
        )
    assert counting.calls == [wrong]


async def test_no_token_or_key_is_logged(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await harness.trigger("hello")
    await request(harness, "GET", "/admin/workflows/history", {"Authorization": f"Bearer {OTHER_TOKEN}"})
    await request(harness, "GET", "/admin/workflows/history", {"Authorization": f"bearer {TOKEN}"})
    secrets = [KEY, *TOKEN.split("."), *OTHER_TOKEN.split(".")]
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        for secret in secrets:
            assert secret not in text, record
