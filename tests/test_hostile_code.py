"""User code that raises, exits, blocks the loop, prints megabytes or returns what JSON cannot hold:
the daemon lives on and the run records a clear error."""

from __future__ import annotations

import logging

import pytest
from conftest import Harness

from moose_daemon.watchdog import LoopWatchdog


async def alive(h: Harness) -> None:
    resp = await h.client.get("/health")
    assert resp.status == 200


@pytest.mark.parametrize(
    ("workflow", "error_type", "text"),
    [
        ("exits", "SystemExit", "3"),
        ("exits-sync", "SystemExit", "4"),
        ("failing", "RuntimeError", "kaboom"),
        ("bad-output", "OutputError", "JSON cannot hold"),
        ("task-timeout", "TimeoutError", "timed out after 200ms"),
    ],
)
async def test_the_run_fails_with_a_clear_error_and_the_daemon_lives(
    harness: Harness, workflow: str, error_type: str, text: str
) -> None:
    run = await harness.trigger(workflow)
    done = await harness.wait_status(run["runId"], "FAILED")
    last = done["tasks"][-1]
    assert last["error_type"] == error_type and text in last["error"]
    assert error_type in done["error"]
    await alive(harness)


async def test_megabytes_of_output_do_not_hurt(harness: Harness, capfd: pytest.CaptureFixture[str]) -> None:
    run = await harness.trigger("chatty")
    done = await harness.wait_status(run["runId"], "COMPLETED")
    assert done["tasks"][0]["output"] == 4096
    assert len(capfd.readouterr().out) >= 4 * 1024 * 1024
    await alive(harness)


async def test_a_task_blocking_the_loop_is_detected_and_named(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    watchdog = LoopWatchdog(harness.engine.registry, threshold_s=0.3, interval_s=0.05)
    watchdog.start()
    try:
        with caplog.at_level(logging.WARNING, logger="moose_daemon.watchdog"):
            run = await harness.trigger("loop-blocker")
            await harness.wait_status(run["runId"], "COMPLETED")
    finally:
        await watchdog.stop()
    assert len(watchdog.stalls) == 1
    stall = watchdog.stalls[0]
    assert stall.task == "loop-blocker/hog" and stall.run_id == run["runId"]
    assert "/app/main.py:" in stall.where and stall.seconds >= 0.3
    assert "loop.stalled" in caplog.text and "loop-blocker/hog" in caplog.text
    await alive(harness)


async def test_no_stall_is_reported_for_well_behaved_tasks(harness: Harness) -> None:
    watchdog = LoopWatchdog(harness.engine.registry, threshold_s=0.3, interval_s=0.05)
    watchdog.start()
    try:
        run = await harness.trigger("blocking")  # a plain def that sleeps: it runs in a thread
        await harness.client.post("/admin/workflows/blocking/terminate", headers=harness.headers)
        chain = await harness.trigger("chain")
        await harness.wait_status(chain["runId"], "COMPLETED")
    finally:
        await watchdog.stop()
    assert watchdog.stalls == []
    assert run["runId"]
