"""Fires scheduled workflows. One owned task per scheduled workflow; the next firing time is stored,
so a restart neither loses the schedule nor bursts: a firing missed while the daemon was down is
made up once, at start, and the ones before it are dropped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .clock import Clock
from .definitions import Workflow
from .schedules import Schedule
from .store import Store

log = logging.getLogger("moose_daemon.scheduler")

# Sleep at most this long before looking at the wall clock again (it may jump).
MAX_NAP_S = 30.0


@dataclass(frozen=True, slots=True)
class Firing:
    outcome: str  # FIRED, SKIPPED or FAILED
    run_id: str | None = None
    reason: str | None = None


Fire = Callable[[str], Awaitable[Firing]]


class Scheduler:
    def __init__(self, store: Store, clock: Clock, fire: Fire) -> None:
        self._store = store
        self._clock = clock
        self._fire = fire
        self._loops: dict[str, tuple[Schedule, asyncio.Task[None]]] = {}
        self._next: dict[str, float] = {}  # unix seconds of each workflow's next firing

    async def sync(self, workflows: dict[str, Workflow]) -> None:
        """Run one loop per scheduled workflow: start new ones, stop removed or changed ones."""
        states = await self._store.workflow_states()
        wanted = {name: wf.schedule for name, wf in workflows.items() if wf.schedule is not None}
        for name, (schedule, task) in list(self._loops.items()):
            if wanted.get(name) != schedule:
                task.cancel()
                del self._loops[name]
        for name, schedule in wanted.items():
            if name in self._loops:
                continue
            state = states.get(name)
            now = self._clock.time()
            if state is None or state.next_fire_at is None or state.schedule != schedule.text:
                first = schedule.next_after(now)  # the first firing is at the next tick
            else:
                first = max(state.next_fire_at / 1e6, now)  # missed while down: one catch-up now
            await self._store.set_next_fire(name, int(first * 1e6), schedule.text)
            task = asyncio.create_task(self._loop(name, schedule, first), name=f"schedule-{name}")
            self._loops[name] = (schedule, task)

    async def stop(self) -> None:
        tasks = [task for _, task in self._loops.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._loops.clear()

    def next_fire_at(self, name: str) -> float | None:
        return self._next.get(name) if name in self._loops else None

    async def _loop(self, name: str, schedule: Schedule, due: float) -> None:
        self._next[name] = due
        while True:
            while (left := due - self._clock.time()) > 0:
                await self._clock.sleep(min(left, MAX_NAP_S))
            at = self._clock.time()
            try:
                firing = await self._fire(name)
            except Exception as e:  # a firing that fails must not stop the schedule
                log.exception("schedule.fire_failed workflow=%s", name)
                firing = Firing("FAILED", reason=f"{type(e).__name__}: {e}")
            due = schedule.next_after(at)
            self._next[name] = due
            log.info(
                "schedule.%s workflow=%s run_id=%s reason=%s",
                firing.outcome.lower(),
                name,
                firing.run_id,
                firing.reason,
            )
            try:
                await self._store.record_firing(
                    name, int(at * 1e6), firing.outcome, firing.run_id, firing.reason, int(due * 1e6)
                )
            except Exception:
                log.exception("schedule.record_failed workflow=%s", name)
