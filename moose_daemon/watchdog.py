"""Notices when user code blocks the event loop (`time.sleep` inside `async def`, a CPU-bound loop) and
logs which task did it. A thread watches a heartbeat the loop keeps; when the beat is late it reads the
loop thread's stack and finds the workflow task whose code is on it."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from dataclasses import dataclass
from types import CodeType

from .registry import Registry

log = logging.getLogger("moose_daemon.watchdog")


@dataclass(frozen=True, slots=True)
class Stall:
    seconds: float
    task: str | None  # "<workflow>/<task>" when a workflow task was on the stack
    run_id: str | None
    where: str  # file:line of the innermost frame


class LoopWatchdog:
    def __init__(self, registry: Registry, *, threshold_s: float = 0.5, interval_s: float = 0.1) -> None:
        self._registry = registry
        self._threshold_s = threshold_s
        self._interval_s = interval_s
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heart: asyncio.Task[None] | None = None
        self.stalls: list[Stall] = []

    def start(self) -> None:
        loop_thread = threading.get_ident()
        self._heart = asyncio.create_task(self._heartbeat(), name="loop-heartbeat")
        self._thread = threading.Thread(
            target=self._watch, args=(loop_thread,), name="loop-watchdog", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._heart is not None:
            self._heart.cancel()
            await asyncio.gather(self._heart, return_exceptions=True)
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(self._interval_s)

    def _watch(self, loop_thread: int) -> None:
        reported_beat = None
        while not self._stop.wait(self._interval_s):
            beat = self._beat
            late = time.monotonic() - beat
            if late < self._threshold_s or beat == reported_beat:
                continue
            reported_beat = beat  # one report per stall
            stall = self._diagnose(loop_thread, late)
            self.stalls.append(stall)
            log.warning(
                "loop.stalled seconds=%.2f task=%s run_id=%s at=%s: a task is blocking the event loop "
                "(use `await asyncio.sleep`, or a plain `def` task, which runs in a thread)",
                stall.seconds,
                stall.task,
                stall.run_id,
                stall.where,
            )

    def _diagnose(self, loop_thread: int, late: float) -> Stall:
        frame = sys._current_frames().get(loop_thread)
        where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"
        codes: set[CodeType] = set()
        while frame is not None:
            codes.add(frame.f_code)
            frame = frame.f_back
        try:
            for live in self._registry:
                ctx = live.context
                task = live.workflow.tasks.get(ctx.task) if ctx is not None else None
                run_code = getattr(task.config.run, "__code__", None) if task is not None else None
                if run_code is not None and run_code in codes:
                    return Stall(late, f"{live.workflow.name}/{task.name}", live.run_id, where)  # type: ignore[union-attr]
        except RuntimeError:  # the registry changed under us: the loop is turning again
            pass
        return Stall(late, None, None, where)
