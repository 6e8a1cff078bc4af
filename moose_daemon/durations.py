"""Duration strings in, MooseStack's display formats out (contract §1.6, §5.3)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

NEVER = "never"

_UNIT_SECONDS = {
    "ms": 0.001, "msec": 0.001, "millisecond": 0.001, "milliseconds": 0.001,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}  # fmt: skip
_DURATION = re.compile(r"(?P<sign>-?)(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[a-zA-Z]*)")
_HINT = "use a number with ms, s, m, h, d or w (e.g. 30s, 5m, 1h) or 'never'"


class InvalidDuration(ValueError):
    """A duration string that parse_duration refuses; the message says why and what is accepted."""


def parse_duration(text: str) -> float | None:
    """Seconds for `30s`, `1.5h`, `500ms`, `2 hours`, ...; None for `never`.

    Units and `never` are case-insensitive; whitespace is allowed around the value and before the unit.
    Refused: empty, bare numbers, unknown units, compound forms (`1h 30m`), and zero or negative values,
    because every caller uses a duration as a timeout or an interval.
    """
    stripped = text.strip()
    if stripped.lower() == NEVER:
        return None
    match = _DURATION.fullmatch(stripped)
    if match is None:
        raise _invalid(text, "empty" if not stripped else None)
    unit = match["unit"].lower()
    if not unit:
        raise _invalid(text, "a unit is required")
    if unit not in _UNIT_SECONDS:
        raise _invalid(text)
    seconds = float(match["number"]) * _UNIT_SECONDS[unit]
    if match["sign"] == "-" or seconds <= 0:
        raise _invalid(text, "must be greater than zero")
    if not math.isfinite(seconds):
        raise _invalid(text, "too large")
    return seconds


def _invalid(text: str, reason: str | None = None) -> InvalidDuration:
    prefix = f"{reason}; " if reason else ""
    return InvalidDuration(f"invalid duration {text!r}: {prefix}{_HINT}")


def format_duration(seconds: float) -> str:
    """MooseStack's history format: `95ms`, `42s`, `1m 38s`, `2h 0m 5s`.

    Each unit truncates, as chrono's num_seconds() does; a negative duration (clock step) shows as `0ms`.
    """
    # Whole microseconds first, so float noise such as 0.29 * 1000 == 289.99... cannot lose a millisecond.
    micros = max(0, round(seconds * 1_000_000))
    whole = micros // 1_000_000
    if whole < 1:
        return f"{micros // 1000}ms"
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m {secs}s"


def format_started_at(ts: float) -> str:
    """Unix seconds as `2026-12-04 19:25:40.705401 UTC` (always six fraction digits)."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def iso_utc(ts: float) -> str:
    """Unix seconds as RFC 3339 with microseconds and `Z`, e.g. `2026-12-04T19:25:40.705401Z`."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
