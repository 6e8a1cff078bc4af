"""The admin bearer-token check. Hashing runs off the event loop, bounded; good tokens are remembered."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from .tokens import AdminKey

NOT_CONFIGURED = "Unauthorized: Admin API key not configured"
INVALID = "Unauthorized: Invalid or missing token"
_PREFIX = "Bearer "
_CACHE_SIZE = 256


class Authenticator:
    """`local_token` is the daemon's own credential for the CLI, kept in `.moose/` (mode 0600)."""

    def __init__(self, admin_key: AdminKey | None, local_token: str | None, *, hash_threads: int = 2) -> None:
        self._key = admin_key
        self._local = local_token.encode() if local_token else None
        self._threads = ThreadPoolExecutor(max_workers=hash_threads, thread_name_prefix="moose-auth")
        # Keys are SHA-256 digests of tokens that verified: a hit costs one hash, not argon2's.
        self._verified: OrderedDict[bytes, None] = OrderedDict()

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def check(self, header: str | None) -> str | None:
        """None when the request may pass, else the 401 message."""
        token = header[len(_PREFIX) :] if header is not None and header.startswith(_PREFIX) else None
        if token is not None and self._local is not None and hmac.compare_digest(token.encode(), self._local):
            return None
        if self._key is None:
            return NOT_CONFIGURED
        if not token or not token.isascii():
            return INVALID
        digest = hashlib.sha256(token.encode()).digest()
        if digest in self._verified:
            self._verified.move_to_end(digest)
            return None
        ok = await asyncio.get_running_loop().run_in_executor(self._threads, self._key.verify, token)
        if not ok:
            return INVALID
        self._verified[digest] = None
        if len(self._verified) > _CACHE_SIZE:
            self._verified.popitem(last=False)
        return None
