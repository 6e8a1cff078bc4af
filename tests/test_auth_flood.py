"""A flood of wrong tokens: bounded hashing, 429 with Retry-After for the flooder, the right token stays fast."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import TOKEN, Harness, make_harness

from moose_daemon import auth
from moose_daemon.auth import INVALID, Authenticator
from moose_daemon.errors import TooManyRequests
from moose_daemon.tokens import AdminKey, generate


@pytest.fixture
async def argon2_harness(aiohttp_client: Any, project: Path) -> Any:
    key, token = generate()
    h, authenticator = await make_harness(
        aiohttp_client, project, project / ".moose" / "moose.db", admin_key=key
    )
    h.headers = {"Authorization": f"Bearer {token}"}
    yield h
    await h.engine.stop(1.0)
    authenticator.close()
    await h.store.close()


async def test_repeated_wrong_tokens_from_one_client_get_429_with_retry_after(
    argon2_harness: Harness,
) -> None:
    h = argon2_harness
    assert (await h.client.get("/admin/workflows/history", headers=h.headers)).status == 200  # verified once
    statuses = []
    for _ in range(auth.MAX_FAILURES + 3):
        _, wrong = generate()  # a new wrong token each time, so none is known already
        resp = await h.client.get("/admin/workflows/history", headers={"Authorization": f"Bearer {wrong}"})
        statuses.append(resp.status)
        if resp.status == 429:
            body = await resp.json()
            assert body["error"] == "Too many requests" and "retry in" in body["details"]
            assert 1 <= int(resp.headers["Retry-After"]) <= auth.FAILURE_WINDOW_S + 1
    assert statuses[: auth.MAX_FAILURES] == [401] * auth.MAX_FAILURES
    assert statuses[auth.MAX_FAILURES :] == [429] * 3
    good = await h.client.get("/admin/workflows/history", headers=h.headers)
    assert good.status == 200  # a token that verified before still works from the same address


async def test_the_right_token_stays_fast_during_a_flood(argon2_harness: Harness) -> None:
    h = argon2_harness
    assert (await h.client.get("/admin/workflows/history", headers=h.headers)).status == 200  # now cached

    async def good_latency() -> float:
        start = time.perf_counter()
        resp = await h.client.get("/admin/workflows/history?limit=1", headers=h.headers)
        assert resp.status == 200
        return time.perf_counter() - start

    quiet = sorted([await good_latency() for _ in range(30)])
    stop = asyncio.Event()

    async def flood() -> None:
        while not stop.is_set():
            _, wrong = generate()
            await h.client.get("/admin/workflows/history", headers={"Authorization": f"Bearer {wrong}"})

    flooders = [asyncio.create_task(flood()) for _ in range(8)]
    try:
        loud = sorted([await good_latency() for _ in range(30)])
    finally:
        stop.set()
        await asyncio.gather(*flooders)
    # A generous bound (shared, noisy machines); the point is "not queued behind argon2", which is 20 ms+ each.
    assert loud[len(loud) // 2] < max(10 * quiet[len(quiet) // 2], 0.02), (quiet, loud)


async def test_pending_hashes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    key, _ = generate()
    authenticator = Authenticator(AdminKey.parse(key), None)
    monkeypatch.setattr(auth, "MAX_PENDING_HASHES", 2)
    try:
        tokens = [generate()[1] for _ in range(6)]
        results = await asyncio.gather(
            *(authenticator.check(f"Bearer {t}", f"10.0.0.{i}") for i, t in enumerate(tokens)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, TooManyRequests) for r in results) == 4
        assert [r for r in results if not isinstance(r, TooManyRequests)] == [INVALID, INVALID]
    finally:
        authenticator.close()


async def test_a_known_good_token_skips_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    authenticator = Authenticator(AdminKey.parse("f4d2103456c63793d3e7571f52d3e250b387b061"), None)
    try:
        assert await authenticator.check(f"Bearer {TOKEN}", "c") is None
        monkeypatch.setattr(auth, "MAX_PENDING_HASHES", 0)  # nothing may be hashed any more
        assert await authenticator.check(f"Bearer {TOKEN}", "c") is None
        with pytest.raises(TooManyRequests):
            await authenticator.check(f"Bearer {generate()[1]}", "c")
    finally:
        authenticator.close()


async def test_a_burst_of_first_requests_with_one_token_hashes_it_once() -> None:
    key, token = generate()
    calls = []
    real = AdminKey.parse(key)

    class Counting:
        def verify(self, t: str) -> bool:
            calls.append(t)
            return real.verify(t)

    authenticator = Authenticator(Counting(), None)  # type: ignore[arg-type]
    try:
        results = await asyncio.gather(*(authenticator.check(f"Bearer {token}", "c") for _ in range(40)))
        assert results == [None] * 40
        assert calls == [token]
    finally:
        authenticator.close()
