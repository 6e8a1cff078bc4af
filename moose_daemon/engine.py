"""The facade the web layer talks to. It owns the live runs, the executor and the store.

A second engine (Temporal) can sit behind the same methods later without touching the web layer.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from .clock import Clock, SystemClock
from .definitions import Workflow
from .errors import Conflict, NotFound, StoreError, Unavailable
from .executor import Executor, RetryPolicy
from .jsonbody import JsonInput, workflow_id
from .models import AttemptRecord, AttemptStatus, CancelReason, RunRecord, RunStatus, new_run_id, now_us
from .registry import LiveRun, Registry
from .store import HistoryQuery, Store

log = logging.getLogger("moose_daemon.engine")


class Engine:
    def __init__(
        self,
        store: Store,
        workflows: dict[str, Workflow],
        *,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        max_threads: int = 64,
    ) -> None:
        self.store = store
        self.workflows = workflows
        self.clock = clock or SystemClock()
        self.retry = retry or RetryPolicy()
        self.registry = Registry()
        self._threads = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="moose-task")
        self._executor = Executor(store, self.clock, self._threads, self.retry)
        self._accepting = False

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> int:
        """Resume every run a crash or a stop left RUNNING; return how many were resumed."""
        await self.store.mark_interrupted_attempts(now_us())
        resumed = 0
        for record in await self.store.running_runs():
            workflow = self.workflows.get(record.workflow)
            if workflow is None:
                reason = f"workflow '{record.workflow}' no longer exists in the project"
                await self.store.finish_run(record.run_id, RunStatus.FAILED, now_us(), reason)
                log.warning("run.orphaned run_id=%s workflow=%s", record.run_id, record.workflow)
                continue
            live = LiveRun(record, workflow)
            _restore_progress(live, await self.store.attempts(record.run_id))
            self._launch(live)
            resumed += 1
        self._accepting = True
        if resumed:
            log.info("engine.resumed runs=%d", resumed)
        return resumed

    async def stop(self, grace_s: float = 10.0) -> None:
        """Cancel live runs with reason `shutdown` (their on_cancel runs); they resume at the next start."""
        self._accepting = False
        runs = list(self.registry)
        for live in runs:
            self.registry.cancel(live, CancelReason.SHUTDOWN)
        await self.registry.wait(runs, grace_s=grace_s)
        self._threads.shutdown(wait=False, cancel_futures=True)

    # ---- commands -----------------------------------------------------------------------------

    async def trigger(self, name: str, payload: JsonInput | None) -> RunRecord:
        """Start a run; return only once it is stored."""
        if not self._accepting:
            raise Unavailable(
                "the daemon is starting or stopping; try again", error="Failed to start workflow"
            )
        workflow = self.workflows.get(name)
        if workflow is None:
            raise NotFound(f"Could not find workflow '{name}'", error="Failed to start workflow")
        wid = workflow_id(name, payload)
        running = self.registry.by_workflow_id(wid)
        if running is not None:
            raise Conflict(
                f"Workflow '{wid}' is already running (runId {running.run_id})",
                error="Failed to start workflow",
            )
        record = RunRecord(
            run_id=new_run_id(),
            workflow_id=wid,
            workflow=name,
            status=RunStatus.RUNNING,
            input_json=None if payload is None else payload.compact,
            started_at=now_us(),
        )
        live = LiveRun(record, workflow)
        self.registry.reserve(live)
        try:
            await self.store.insert_run(record)
        except sqlite3.IntegrityError:
            self.registry.release(live)
            raise Conflict(f"Workflow '{wid}' is already running", error="Failed to start workflow") from None
        except StoreError as e:
            self.registry.release(live)
            raise Unavailable(f"the run could not be stored: {e}", error="Failed to start workflow") from None
        except BaseException:
            self.registry.release(live)
            raise
        self._launch(live)
        log.info("run.started run_id=%s workflow_id=%s", record.run_id, wid)
        return record

    async def terminate(self, target: str) -> list[RunRecord]:
        """Stop at once, running no user code. `target` is a workflowId or a workflow name."""
        runs = self._find_live(target)
        if not runs:
            await self._explain_not_running(target, "Failed to terminate workflow")
        ended = now_us()
        stopped: list[LiveRun] = []
        for live in runs:
            if live.outcome is None:
                live.outcome = RunStatus.TERMINATED
                stopped.append(live)
        try:
            for live in stopped:
                await self.store.finish_run(
                    live.run_id, RunStatus.TERMINATED, ended, "Terminated by user request"
                )
        except StoreError as e:
            raise Unavailable(
                f"the termination could not be stored: {e}", error="Failed to terminate workflow"
            ) from None
        for live in stopped:
            live.record.status, live.record.ended_at = RunStatus.TERMINATED, ended
            live.record.error = "Terminated by user request"
            self.registry.release(live)  # the workflowId is free again at once
            self.registry.cancel(live, CancelReason.TERMINATE)
            log.info("run.terminated run_id=%s workflow_id=%s", live.run_id, live.workflow_id)
        if not stopped:
            raise Conflict(f"Workflow '{target}' has already completed", error="Failed to terminate workflow")
        return [live.record for live in stopped]

    async def cancel(self, target: str, wait_s: float = 5.0) -> list[RunRecord]:
        """Cooperative stop: the running task is cancelled and its on_cancel runs; the run ends CANCELED."""
        runs = [live for live in self._find_live(target) if live.outcome is None]
        if not runs:
            await self._explain_not_running(target, "Failed to cancel workflow")
            raise Conflict(f"Workflow '{target}' has already completed", error="Failed to cancel workflow")
        for live in runs:
            self.registry.cancel(live, CancelReason.CANCEL)
        await self.registry.wait(runs, grace_s=wait_s)
        return [live.record for live in runs]

    # ---- queries ------------------------------------------------------------------------------

    async def history(self, query: HistoryQuery) -> list[RunRecord]:
        try:
            return await self.store.history(query)
        except StoreError as e:
            raise Unavailable(str(e), error="Failed to retrieve workflow list") from None

    async def run_detail(self, run_id: str) -> tuple[RunRecord, list[AttemptRecord]]:
        live = self.registry.by_run_id(run_id)
        record = live.record if live is not None else await self.store.get_run(run_id)
        if record is None:
            raise NotFound(f"No run with id '{run_id}'", error="Run not found")
        return record, await self.store.attempts(run_id)

    # ---- internals ----------------------------------------------------------------------------

    def _find_live(self, target: str) -> list[LiveRun]:
        live = self.registry.by_workflow_id(target)
        if live is not None:
            return [live]
        return self.registry.of_workflow(target)

    async def _explain_not_running(self, target: str, error: str) -> None:
        """Raise 409 if `target` ran before (it finished), else 404."""
        if await self.store.latest_run(target) is not None or (
            await self.store.latest_run_of_workflow(target) is not None
        ):
            raise Conflict(f"Workflow '{target}' has already completed", error=error)
        raise NotFound(f"Could not find a running workflow '{target}'", error=error)

    def _launch(self, live: LiveRun) -> None:
        self.registry.reserve(live)
        self.registry.start(live, self._drive(live))

    async def _drive(self, live: LiveRun) -> None:
        try:
            retry = await self._executor.run(live)
        except asyncio.CancelledError:
            return
        finally:
            self.registry.release(live)
        if retry is not None:
            nxt = LiveRun(retry, live.workflow, delay_s=self.retry.delay(live.record.attempt))
            self._launch(nxt)
            log.info("run.retrying run_id=%s attempt=%d", retry.run_id, retry.attempt)


def _restore_progress(live: LiveRun, attempts: list[AttemptRecord]) -> None:
    """Rebuild what a restarted run already did: finished tasks and attempt counts."""
    failures: Counter[str] = Counter()
    for a in attempts:
        if a.status is AttemptStatus.COMPLETED and a.output_json is not None:
            live.completed[a.task] = a.output_json
        elif a.status is AttemptStatus.FAILED:
            failures[a.task] += 1
        live.next_attempt[a.task] = max(live.next_attempt.get(a.task, 1), a.attempt + 1)
    live.failures = dict(failures)
