"""Run ids: UUIDv7 text, time-ordered."""

from __future__ import annotations

import time
import uuid

from moose_daemon.models import new_run_id


def test_a_run_id_is_a_uuid7_carrying_the_current_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    text = new_run_id()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(text)
    assert str(parsed) == text  # canonical: lower-case, hyphenated
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert before <= parsed.int >> 80 <= after


def test_run_ids_sort_by_time_and_do_not_repeat() -> None:
    ids = []
    for _ in range(5):
        ids.append(new_run_id())
        time.sleep(0.002)
    assert ids == sorted(ids)
    assert len({new_run_id() for _ in range(10_000)}) == 10_000
