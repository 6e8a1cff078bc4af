"""Live runs only: each one's asyncio task, owned here so nothing is fire-and-forget."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from .definitions import TaskContext, Workflow
from .models import AttemptRecord, CancelReason, RunRecord, RunStatus


def _open_gate() -> asyncio.Event:
    gate = asyncio.Event()
    gate.set()
    return gate


@dataclass(eq=False, slots=True)
class LiveRun:
    record: RunRecord
    workflow: Workflow
    completed: dict[str, str] = field(default_factory=dict)  # task -> output JSON, from before a restart
    next_attempt: dict[str, int] = field(default_factory=dict)  # task -> attempt number to use next
    failures: dict[str, int] = field(default_factory=dict)  # task -> failed attempts so far
    delay_s: float = 0.0  # wait before the first task (a workflow-level retry's backoff)
    deadline: float | None = None  # loop time at which the workflow times out (None: never)
    # Set exactly once, synchronously, by whoever decides how the run ends: the conditional
    # transition that makes terminate-versus-complete races harmless.
    outcome: RunStatus | None = None
    cancel_reason: CancelReason | None = None
    context: TaskContext[Any] | None = None  # the attempt in flight
    task: asyncio.Task[None] | None = None
    # The run's last task's COMPLETED attempt: written with the run's final status, in one transaction.
    held_attempt: AttemptRecord | None = None
    # Cleared while the run is paused: the executor waits on it at the next task boundary.
    unpaused: asyncio.Event = field(default_factory=_open_gate)

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def workflow_id(self) -> str:
        return self.record.workflow_id


class Registry:
    def __init__(self) -> None:
        self._by_run: dict[str, LiveRun] = {}
        self._by_workflow_id: dict[str, LiveRun] = {}

    def __len__(self) -> int:
        return len(self._by_run)

    def __iter__(self) -> Iterator[LiveRun]:
        return iter(list(self._by_run.values()))

    def by_workflow_id(self, workflow_id: str) -> LiveRun | None:
        return self._by_workflow_id.get(workflow_id)

    def by_run_id(self, run_id: str) -> LiveRun | None:
        return self._by_run.get(run_id)

    def of_workflow(self, workflow: str) -> list[LiveRun]:
        return [live for live in self._by_run.values() if live.record.workflow == workflow]

    def reserve(self, live: LiveRun) -> None:
        """Claim the workflowId before any await, so a concurrent trigger of the same id sees it."""
        self._by_run[live.run_id] = live
        self._by_workflow_id[live.workflow_id] = live

    def release(self, live: LiveRun) -> None:
        if self._by_run.get(live.run_id) is live:
            del self._by_run[live.run_id]
        if self._by_workflow_id.get(live.workflow_id) is live:
            del self._by_workflow_id[live.workflow_id]

    def start(self, live: LiveRun, coro: Coroutine[Any, Any, None]) -> None:
        live.task = asyncio.create_task(coro, name=f"run-{live.run_id}")

    def cancel(self, live: LiveRun, reason: CancelReason) -> bool:
        """Ask the run's task to stop; False if it was already stopping."""
        if live.cancel_reason is not None or (live.task is not None and live.task.done()):
            return False
        live.cancel_reason = reason  # a run still being stored has no task yet: its launch reads this
        if live.context is not None:
            live.context._cancel_requested = True
        if live.task is not None:
            live.task.cancel(reason.value)
        return True

    async def wait(self, runs: list[LiveRun], grace_s: float | None) -> None:
        tasks = [live.task for live in runs if live.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
