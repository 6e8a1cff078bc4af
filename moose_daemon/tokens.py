"""Admin API keys and bearer tokens (contract §2).

Two stored-key formats are accepted: MooseStack's 40-hex PBKDF2 key, and an argon2id hash of the whole
bearer token (what `generate()` produces). Verification is synchronous and CPU-bound; run it in a thread.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Literal

from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

KeyKind = Literal["pbkdf2", "argon2id"]

# MooseStack's `moose generate hash-token`: PBKDF2-HMAC-SHA256 over the hex strings, 1000 rounds, 20 bytes.
PBKDF2_ITERATIONS = 1000
PBKDF2_LENGTH = 20
# OWASP's minimum argon2id profile; about 20 ms per verify on a 2-core machine.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 19456
ARGON2_PARALLELISM = 1
# Tokens longer than this are refused without hashing, so a huge header cannot buy CPU time.
MAX_TOKEN_LENGTH = 1024
# A stored hash asking for more than this would make every request (or the process) pay for a typo.
MAX_ARGON2_MEMORY_KIB = 1 << 20
MAX_ARGON2_TIME_COST = 100

_PBKDF2_KEY = re.compile(r"[0-9a-fA-F]{40}")
_ARGON2_PREFIX = "$argon2id$"
_HASHER = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_PARALLELISM,
    hash_len=32,
    salt_len=16,
    type=Type.ID,
)


class InvalidKey(ValueError):
    """The configured admin key is unusable. The message never contains the key."""


def generate() -> tuple[str, str]:
    """Return `(env_api_key, bearer_token)`: an argon2id hash of a fresh MooseStack-shaped token."""
    token = _new_token()
    return _HASHER.hash(token), token


def generate_pbkdf2() -> tuple[str, str]:
    """Return `(env_api_key, bearer_token)` in MooseStack's legacy format: a 40-hex key and `hex.hex`."""
    token = _new_token()
    password, salt = token.split(".")
    return _pbkdf2(password, salt).hex(), token


@dataclass(frozen=True, slots=True, eq=False)
class AdminKey:
    """A parsed `admin_api_key`. Build it with `AdminKey.parse`; its repr shows only the kind."""

    kind: KeyKind
    _stored: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> AdminKey:
        """Accept a 40-hex PBKDF2 key (any case) or a verifiable `$argon2id$` hash; else raise InvalidKey."""
        if text != text.strip():
            raise InvalidKey("admin_api_key has leading or trailing whitespace")
        if _PBKDF2_KEY.fullmatch(text):
            return cls("pbkdf2", text.lower())
        if text.startswith(_ARGON2_PREFIX):
            _check_argon2(text)
            return cls("argon2id", text)
        raise InvalidKey("admin_api_key is neither a 40-hex MooseStack key nor an $argon2id$ hash")

    def verify(self, token: str) -> bool:
        """True if `token` is the bearer token for this key. Never raises on bad input."""
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            return False
        if self.kind == "pbkdf2":
            return _verify_pbkdf2(self._stored, token)
        return _verify_argon2(self._stored, token)


def _new_token() -> str:
    return f"{secrets.token_bytes(16).hex()}.{secrets.token_bytes(16).hex()}"


def _pbkdf2(password: str, salt: str) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), PBKDF2_ITERATIONS, PBKDF2_LENGTH)


def _verify_pbkdf2(key_hex: str, token: str) -> bool:
    parts = token.split(".")
    if len(parts) != 2:
        return False
    return hmac.compare_digest(_pbkdf2(parts[0], parts[1]), bytes.fromhex(key_hex))


def _verify_argon2(encoded: str, token: str) -> bool:
    try:
        return _HASHER.verify(encoded, token)
    except (VerificationError, InvalidHashError):
        return False


def _check_argon2(encoded: str) -> None:
    """extract_parameters alone accepts truncated or empty hashes, so also run one throwaway verify."""
    try:
        params = extract_parameters(encoded)
    except InvalidHashError:
        raise InvalidKey("admin_api_key starts with $argon2id$ but is not a valid argon2 hash") from None
    if params.memory_cost > MAX_ARGON2_MEMORY_KIB or params.time_cost > MAX_ARGON2_TIME_COST:
        raise InvalidKey(
            f"admin_api_key argon2id cost is too high (m={params.memory_cost} KiB, t={params.time_cost}); "
            f"the limits are m<={MAX_ARGON2_MEMORY_KIB}, t<={MAX_ARGON2_TIME_COST}"
        )
    try:
        _HASHER.verify(encoded, "")
    except VerifyMismatchError:
        return
    except (VerificationError, InvalidHashError) as exc:
        raise InvalidKey(f"admin_api_key argon2id hash is unusable: {exc}") from None
