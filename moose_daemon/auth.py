"""The admin bearer-token check. Hashing runs off the event loop and is bounded; good tokens are
remembered, so a client with the right token never waits behind a flood of wrong ones."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor

from .errors import TooManyRequests
from .tokens import AdminKey

NOT_CONFIGURED = "Unauthorized: Admin API key not configured"
INVALID = "Unauthorized: Invalid or missing token"
_PREFIX = "Bearer "
_CACHE_SIZE = 256
# A client (by address) that sends this many wrong tokens within the window gets 429 until the oldest
# of them leaves the window. Tokens already known to be wrong cost nothing and do not count.
MAX_FAILURES = 10
FAILURE_WINDOW_S = 60.0
# Hashes waiting for a thread at most; past that, unknown tokens get 429 at once (a flood from many addresses).
MAX_PENDING_HASHES = 16


class Authenticator:
    """`local_token` is the daemon's own credential for the CLI, kept in `.moose/` (mode 0600)."""

    def __init__(self, admin_key: AdminKey | None, local_token: str | None, *, hash_threads: int = 2) -> None:
        self._key = admin_key
        self._local = local_token.encode() if local_token else None
        self._threads = ThreadPoolExecutor(max_workers=hash_threads, thread_name_prefix="moose-auth")
        # SHA-256 digests of tokens already hashed: a hit costs one SHA-256, not argon2's ~20 ms.
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._rejected: OrderedDict[bytes, None] = OrderedDict()
        self._failures: dict[str, deque[float]] = {}
        self._pending = 0
        self._in_flight: dict[bytes, asyncio.Future[bool]] = {}

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def check(self, header: str | None, client: str = "") -> str | None:
        """None when the request may pass, else the 401 message; raises TooManyRequests for a flood."""
        token = header[len(_PREFIX) :] if header is not None and header.startswith(_PREFIX) else None
        if token is not None and not token.isascii():
            token = ""  # a token is hex and dots: anything else is wrong, whatever the key
        if token and self._local is not None and hmac.compare_digest(token.encode(), self._local):
            return None
        if self._key is None:
            return NOT_CONFIGURED
        if not token:
            return INVALID
        digest = hashlib.sha256(token.encode()).digest()
        if _hit(self._verified, digest):
            return None
        if _hit(self._rejected, digest):
            return INVALID
        in_flight = self._in_flight.get(digest)
        if in_flight is not None:  # the same token is being hashed for another request: share the answer
            ok = await asyncio.shield(in_flight)
        else:
            self._refuse_if_flooding(client)
            ok = await self._hash(token, digest)
        if not ok:
            self._failures.setdefault(client, deque()).append(time.monotonic())
            return INVALID
        return None

    async def _hash(self, token: str, digest: bytes) -> bool:
        assert self._key is not None
        future = asyncio.get_running_loop().run_in_executor(self._threads, self._key.verify, token)
        self._in_flight[digest] = future
        self._pending += 1
        try:
            ok = await asyncio.shield(future)
        finally:
            self._pending -= 1
            del self._in_flight[digest]
        _remember(self._verified if ok else self._rejected, digest)
        return ok

    def _refuse_if_flooding(self, client: str) -> None:
        now = time.monotonic()
        failures = self._failures.get(client)
        if failures is not None:
            while failures and now - failures[0] > FAILURE_WINDOW_S:
                failures.popleft()
            if not failures:
                del self._failures[client]
            elif len(failures) >= MAX_FAILURES:
                wait = int(FAILURE_WINDOW_S - (now - failures[0])) + 1
                raise TooManyRequests(
                    f"{len(failures)} wrong tokens from this client; retry in {wait} s", wait
                )
        if self._pending >= MAX_PENDING_HASHES:
            raise TooManyRequests("too many token checks in progress; retry shortly", 1)
        if len(self._failures) > 10_000:  # many addresses: forget the oldest rather than grow without end
            del self._failures[next(iter(self._failures))]


def _hit(cache: OrderedDict[bytes, None], digest: bytes) -> bool:
    if digest in cache:
        cache.move_to_end(digest)
        return True
    return False


def _remember(cache: OrderedDict[bytes, None], digest: bytes) -> None:
    cache[digest] = None
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
