"""Duration parsing and MooseStack's display formats (contract §1.6, §5.3)."""

from __future__ import annotations

import pytest

from moose_daemon.durations import (
    InvalidDuration,
    format_duration,
    format_started_at,
    iso_utc,
    parse_duration,
)

HINT = "use a number with ms, s, m, h, d or w (e.g. 30s, 5m, 1h) or 'never'"
# 2026-12-04 19:25:40.705401 UTC, the contract's started_at example
STARTED = 1796412340.705401


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("2w", 1209600.0),
        ("1.5h", 5400.0),
        ("0.5s", 0.5),
        ("2 hours", 7200.0),
        ("10 minutes", 600.0),
        ("1 second", 1.0),
        ("3 days", 259200.0),
        ("1 week", 604800.0),
        ("250 milliseconds", 0.25),
        ("90 sec", 90.0),
        ("15min", 900.0),
        ("  30s  ", 30.0),
        ("5M", 300.0),
        ("1H", 3600.0),
        ("2 Hours", 7200.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["never", "NEVER", " Never "])
def test_never_means_no_limit(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1x", f"invalid duration '1x': {HINT}"),
        ("", f"invalid duration '': empty; {HINT}"),
        ("   ", f"invalid duration '   ': empty; {HINT}"),
        ("90", f"invalid duration '90': a unit is required; {HINT}"),
        ("1.5", f"invalid duration '1.5': a unit is required; {HINT}"),
        ("0s", f"invalid duration '0s': must be greater than zero; {HINT}"),
        ("0.0h", f"invalid duration '0.0h': must be greater than zero; {HINT}"),
        ("-5s", f"invalid duration '-5s': must be greater than zero; {HINT}"),
        ("1" * 400 + "w", f"invalid duration '{'1' * 400}w': too large; {HINT}"),
        ("1h30m", f"invalid duration '1h30m': {HINT}"),
        ("1h 30m", f"invalid duration '1h 30m': {HINT}"),
        ("h", f"invalid duration 'h': {HINT}"),
        ("1e3s", f"invalid duration '1e3s': {HINT}"),
        ("1,5h", f"invalid duration '1,5h': {HINT}"),
        (".5h", f"invalid duration '.5h': {HINT}"),
        ("1y", f"invalid duration '1y': {HINT}"),
        ("nevermore", f"invalid duration 'nevermore': {HINT}"),
        ("\u0663s", f"invalid duration '\u0663s': {HINT}"),  # a non-ASCII digit
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(InvalidDuration) as caught:
        parse_duration(text)
    assert str(caught.value) == message


def test_invalid_duration_is_a_value_error() -> None:
    assert issubclass(InvalidDuration, ValueError)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0ms"),
        (0.0004, "0ms"),
        (0.095, "95ms"),
        (0.29, "290ms"),
        # float noise from subtracting timestamps (0.000999927...) must not lose the millisecond
        ((STARTED + 0.001) - STARTED, "1ms"),
        ((STARTED + 0.010) - STARTED, "10ms"),
        (0.9999, "999ms"),
        (1, "1s"),
        (1.999, "1s"),
        (59.999, "59s"),
        (60, "1m 0s"),
        (98.7, "1m 38s"),
        (3599.9, "59m 59s"),
        (3600, "1h 0m 0s"),
        (3661, "1h 1m 1s"),
        (90061.5, "25h 1m 1s"),
        (-3, "0ms"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (STARTED, "2026-12-04 19:25:40.705401 UTC"),
        (0, "1970-01-01 00:00:00.000000 UTC"),
        (1796412340, "2026-12-04 19:25:40.000000 UTC"),
        (1796412340.5, "2026-12-04 19:25:40.500000 UTC"),
    ],
)
def test_format_started_at(ts: float, text: str) -> None:
    assert format_started_at(ts) == text


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (STARTED, "2026-12-04T19:25:40.705401Z"),
        (0, "1970-01-01T00:00:00.000000Z"),
        (1796412340, "2026-12-04T19:25:40.000000Z"),
    ],
)
def test_iso_utc(ts: float, text: str) -> None:
    assert iso_utc(ts) == text
