"""Admin keys and bearer tokens (contract §2)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import pytest
from conftest import REAL_PAIRS

from moose_daemon.tokens import AdminKey, InvalidKey, generate, generate_pbkdf2

KEY, TOKEN = REAL_PAIRS[0]
TOKEN_SHAPE = re.compile(r"[0-9a-f]{32}\.[0-9a-f]{32}")


@pytest.fixture(scope="module")
def argon2_pair() -> tuple[str, str]:
    return generate()


@pytest.mark.parametrize(("key", "token"), REAL_PAIRS)
def test_real_moosestack_pairs_verify(key: str, token: str) -> None:
    admin = AdminKey.parse(key)
    assert admin.kind == "pbkdf2"
    assert admin.verify(token)


@pytest.mark.parametrize(("key", "token"), REAL_PAIRS)
def test_upper_case_key_verifies_the_same_token(key: str, token: str) -> None:
    assert AdminKey.parse(key.upper()).verify(token)


@pytest.mark.parametrize("key_index", range(len(REAL_PAIRS)))
def test_real_pairs_cross_reject(key_index: int) -> None:
    admin = AdminKey.parse(REAL_PAIRS[key_index][0])
    others = [token for i, (_, token) in enumerate(REAL_PAIRS) if i != key_index]
    assert not any(admin.verify(token) for token in others)


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        TOKEN.replace(".", ""),  # zero dots
        TOKEN + ".",  # two dots
        TOKEN + ".00",
        "." + TOKEN,
        TOKEN.upper(),  # the hex *strings* are hashed, so case matters in the token
        ".".join(reversed(TOKEN.split("."))),
        TOKEN + " ",
        " " + TOKEN,
        TOKEN[:-1] + "b",
        TOKEN[:-1] + "é",
        TOKEN + "0" * 2000,
    ],
)
def test_pbkdf2_rejects_wrong_tokens(token: str) -> None:
    assert not AdminKey.parse(KEY).verify(token)


def test_pbkdf2_token_parts_need_not_be_hex() -> None:
    # hex(PBKDF2-HMAC-SHA256("hello", "world", 1000, 20)) computed with hashlib
    assert AdminKey.parse("1ffbe4766e52268259deecaef5d304cfa1af4545").verify("hello.world")


def test_generate_pbkdf2_round_trip() -> None:
    key, token = generate_pbkdf2()
    assert re.fullmatch(r"[0-9a-f]{40}", key)
    assert TOKEN_SHAPE.fullmatch(token)
    admin = AdminKey.parse(key)
    assert admin.kind == "pbkdf2"
    assert admin.verify(token)
    assert not admin.verify(generate_pbkdf2()[1])


def test_generate_round_trip(argon2_pair: tuple[str, str]) -> None:
    key, token = argon2_pair
    assert TOKEN_SHAPE.fullmatch(token)
    assert key.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    admin = AdminKey.parse(key)
    assert admin.kind == "argon2id"
    assert admin.verify(token)


def test_generate_gives_fresh_secrets(argon2_pair: tuple[str, str]) -> None:
    key, token = generate()
    assert token != argon2_pair[1]
    assert key != argon2_pair[0]
    assert not AdminKey.parse(key).verify(argon2_pair[1])


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: "",
        lambda t: t.upper(),
        lambda t: t + " ",
        lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"),
        lambda t: t.replace(".", ""),
        lambda t: t + "é",
        lambda t: t + "0" * 2000,
        lambda t: TOKEN,
    ],
)
def test_argon2_rejects_wrong_tokens(argon2_pair: tuple[str, str], mangle: Callable[[str], str]) -> None:
    key, token = argon2_pair
    assert not AdminKey.parse(key).verify(mangle(token))


def test_formats_cross_reject(argon2_pair: tuple[str, str]) -> None:
    argon2_key, argon2_token = argon2_pair
    assert not AdminKey.parse(KEY).verify(argon2_token)
    assert not AdminKey.parse(argon2_key).verify(TOKEN)


GOOD_ARGON2 = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$" + "A" * 43


@pytest.mark.parametrize(
    "text",
    [
        "",
        "zz",
        KEY[:-1],  # 39 hex
        KEY + "0",  # 41 hex
        KEY[:-1] + "g",
        f" {KEY}",
        f"{KEY}\n",
        "$argon2i$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$" + "A" * 43,
        "$argon2id$",
        "$argon2id$garbage",
        "$argon2id$v=19$m=19456,t=2,p=1$$",  # empty salt and hash
        GOOD_ARGON2[:-10],  # truncated hash
        GOOD_ARGON2[:-1] + "!",  # not base64
        "$argon2id$v=19$m=1,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$" + "A" * 43,  # memory below argon2's minimum
        "$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$" + "A" * 43,  # 4 GiB per verify
        "$argon2id$v=19$m=19456,t=1000,p=1$c29tZXNhbHRzb21lc2FsdA$" + "A" * 43,
    ],
)
def test_parse_rejects_unusable_keys_without_echoing_them(text: str) -> None:
    with pytest.raises(InvalidKey) as caught:
        AdminKey.parse(text)
    message = str(caught.value)
    assert "\n" not in message
    assert "admin_api_key" in message
    if len(text.strip()) > len("$argon2id$"):
        assert text.strip() not in message


def test_parse_accepts_a_well_formed_argon2_hash_of_another_token() -> None:
    admin = AdminKey.parse(GOOD_ARGON2)
    assert admin.kind == "argon2id"
    assert not admin.verify(TOKEN)


def test_invalid_key_is_a_value_error() -> None:
    assert issubclass(InvalidKey, ValueError)


def test_repr_hides_the_key(argon2_pair: tuple[str, str]) -> None:
    for text in (KEY, KEY.upper(), argon2_pair[0]):
        admin = AdminKey.parse(text)
        shown = f"{admin!r} {admin}"
        assert text.lower() not in shown.lower()
        assert admin.kind in shown


def test_admin_key_is_immutable() -> None:
    admin = AdminKey.parse(KEY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        admin.kind = "argon2id"  # type: ignore[misc]
