"""Workflow schedules: 5-field cron (via croniter), `@every <duration>` and MooseStack's `5m`/`2h` shorthands."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import croniter

from .durations import InvalidDuration, parse_duration

_SHORTHAND = re.compile(r"^(\d+)([mh])$")


class InvalidSchedule(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Schedule:
    """`text` is what the user wrote; exactly one of `cron` and `every_s` is set."""

    text: str
    cron: str | None = None
    every_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> Schedule:
        if not isinstance(text, str) or not text.strip():
            raise InvalidSchedule(f"expected a cron expression or '@every <duration>', got {text!r}")
        spec = text.strip()
        if spec.startswith("@every"):
            try:
                seconds = parse_duration(spec.removeprefix("@every").strip())
            except InvalidDuration as e:
                raise InvalidSchedule(f"'{text}': {e}") from None
            if seconds is None:
                raise InvalidSchedule(f"'{text}': '@every never' never fires; remove the schedule instead")
            return cls(text=text, every_s=seconds)
        shorthand = _SHORTHAND.match(spec)
        if shorthand:
            n, unit = int(shorthand.group(1)), shorthand.group(2)
            spec = f"*/{n} * * * *" if unit == "m" else f"0 */{n} * * *"
        if not croniter.is_valid(spec) or len(spec.split()) not in (1, 5):
            raise InvalidSchedule(
                f"'{text}' is not a valid schedule: use 5-field cron ('0 12 * * *'), "
                "'@every 30s', or the shorthands '5m' and '2h'"
            )
        return cls(text=text, cron=spec)

    def next_after(self, ts: float) -> float:
        """The first firing strictly after unix time `ts` (cron is evaluated in UTC)."""
        if self.every_s is not None:
            return ts + self.every_s
        assert self.cron is not None
        start = datetime.fromtimestamp(ts, tz=UTC)
        return float(croniter(self.cron, start).get_next(float))
