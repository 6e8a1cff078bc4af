"""The facade the web layer talks to. It owns the live runs, the executor, the scheduler and the store.

A second engine (Temporal) can sit behind the same methods later without touching the web layer.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from .clock import Clock, SystemClock
from .definitions import Workflow
from .errors import Conflict, InvalidRequest, MooseError, NotFound, StoreError, Unavailable
from .executor import Executor, RetryPolicy
from .jsonbody import JsonInput, workflow_id
from .models import AttemptRecord, AttemptStatus, CancelReason, RunRecord, RunStatus, new_run_id, now_us
from .registry import LiveRun, Registry
from .scheduler import Firing, Scheduler
from .store import HistoryQuery, Store

log = logging.getLogger("moose_daemon.engine")

START_ERROR = "Failed to start workflow"


class ConflictPolicy(enum.StrEnum):
    """What a trigger does when its workflowId is already running (Temporal's conflict policies)."""

    FAIL = "fail"
    USE_EXISTING = "use_existing"
    TERMINATE_EXISTING = "terminate_existing"


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    workflow: Workflow
    paused: bool
    next_fire_at: float | None
    last_run: RunRecord | None


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
        self.paused: set[str] = set()  # workflow names
        self.reload_error: str | None = None  # the last failed dev reload, shown by `workflow list`
        self._threads = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="moose-task")
        self._executor = Executor(store, self.clock, self._threads, self.retry)
        self._scheduler = Scheduler(store, self.clock, self._fire)
        self._keys_in_flight: dict[str, asyncio.Future[RunRecord]] = {}
        self._accepting = False

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> int:
        """Resume every run a crash or a stop left open, start the schedules; return how many runs resumed."""
        await self.store.mark_interrupted_attempts(now_us())
        self.paused = {name for name, state in (await self.store.workflow_states()).items() if state.paused}
        resumed = 0
        for record in await self.store.running_runs():
            workflow = self.workflows.get(record.workflow)
            if workflow is None:
                reason = f"workflow '{record.workflow}' no longer exists in the project"
                await self.store.finish_run(record.run_id, RunStatus.FAILED, now_us(), reason)
                log.warning("run.orphaned run_id=%s workflow=%s", record.run_id, record.workflow)
                continue
            live = LiveRun(record, workflow)
            if record.status is RunStatus.PAUSED:
                live.unpaused.clear()
            _restore_progress(live, await self.store.attempts(record.run_id))
            self._launch(live)
            resumed += 1
        self._accepting = True
        await self._scheduler.sync(self.workflows)
        if resumed:
            log.info("engine.resumed runs=%d", resumed)
        return resumed

    async def stop(self, grace_s: float = 10.0) -> None:
        """Cancel live runs with reason `shutdown` (their on_cancel runs); they resume at the next start."""
        self._accepting = False
        await self._scheduler.stop()
        runs = list(self.registry)
        for live in runs:
            self.registry.cancel(live, CancelReason.SHUTDOWN)
        await self.registry.wait(runs, grace_s=grace_s)
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def replace_workflows(self, workflows: dict[str, Workflow]) -> None:
        """Dev reload: new runs use the new definitions; runs in flight finish on the code they started with."""
        self.workflows = workflows
        self.reload_error = None
        await self._scheduler.sync(workflows)

    # ---- starting runs ------------------------------------------------------------------------

    async def trigger(
        self,
        name: str,
        payload: JsonInput | None,
        *,
        idempotency_key: str | None = None,
        conflict: ConflictPolicy = ConflictPolicy.FAIL,
    ) -> RunRecord:
        """Start a run; return only once it is stored. A repeated Idempotency-Key returns the first run."""
        if idempotency_key is None:
            return await self._trigger(name, payload, conflict, None)
        waiting = self._keys_in_flight.get(idempotency_key)
        if waiting is not None:
            return _same_workflow(await asyncio.shield(waiting), name, idempotency_key)
        future: asyncio.Future[RunRecord] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._keys_in_flight[idempotency_key] = future
        try:
            found = await self.store.run_for_key(idempotency_key)
            if found is not None:
                record = await self.store.get_run(found[1])
                if record is None:  # pragma: no cover - the key and its run are written together
                    raise NotFound(
                        f"the run of Idempotency-Key '{idempotency_key}' is gone", error=START_ERROR
                    )
                record = _same_workflow(self._current(record), name, idempotency_key)
            else:
                record = await self._trigger(name, payload, conflict, idempotency_key)
            future.set_result(record)
            return record
        except BaseException as e:
            future.set_exception(e)
            raise
        finally:
            del self._keys_in_flight[idempotency_key]

    async def _trigger(
        self, name: str, payload: JsonInput | None, conflict: ConflictPolicy, key: str | None
    ) -> RunRecord:
        if not self._accepting:
            raise Unavailable("the daemon is starting or stopping; try again", error=START_ERROR)
        workflow = self.workflows.get(name)
        if workflow is None:
            raise NotFound(f"Could not find workflow '{name}'", error=START_ERROR)
        wid = workflow_id(name, payload)
        running = self.registry.by_workflow_id(wid)
        if running is not None:
            if conflict is ConflictPolicy.USE_EXISTING:
                return running.record
            if conflict is ConflictPolicy.TERMINATE_EXISTING:
                await self.terminate(wid)
            else:
                raise Conflict(
                    f"Workflow '{wid}' is already running (runId {running.run_id})", error=START_ERROR
                )
        record = RunRecord(
            run_id=new_run_id(),
            workflow_id=wid,
            workflow=name,
            status=RunStatus.RUNNING,
            input_json=None if payload is None else payload.compact,
            started_at=now_us(),
        )
        await self._store_and_launch(LiveRun(record, workflow), key)
        log.info("run.started run_id=%s workflow_id=%s", record.run_id, wid)
        return record

    async def resume(self, target: str, from_task: str, run_id: str | None = None) -> RunRecord:
        """A new run of an ended run from `from_task`, with the input that task received then."""
        error = "Failed to resume workflow"
        if run_id is not None:
            old = await self.store.get_run(run_id)
            if old is None or target not in (old.workflow, old.workflow_id):
                raise NotFound(f"No run '{run_id}' of workflow '{target}'", error=error)
            if not old.status.is_final or old.status is RunStatus.COMPLETED:
                raise Conflict(
                    f"Run '{run_id}' is {old.status.short}: only ended, unsuccessful runs resume", error=error
                )
        else:
            found = await self.store.latest_closed_run(target)
            if found is None:
                raise NotFound(
                    f"No failed, cancelled, terminated or timed-out run of '{target}'", error=error
                )
            old = found
        workflow = self.workflows.get(old.workflow)
        if workflow is None:
            raise NotFound(f"Could not find workflow '{old.workflow}'", error=error)
        if from_task not in workflow.tasks:
            names = ", ".join(workflow.tasks)
            raise InvalidRequest(
                f"Workflow '{workflow.name}' has no task '{from_task}' (its tasks: {names})", error=error
            )
        input_json = await self._input_of(old, from_task, workflow)
        if self.registry.by_workflow_id(old.workflow_id) is not None:
            raise Conflict(f"Workflow '{old.workflow_id}' is already running", error=error)
        record = RunRecord(
            run_id=new_run_id(),
            workflow_id=old.workflow_id,
            workflow=old.workflow,
            status=RunStatus.RUNNING,
            input_json=input_json,
            started_at=now_us(),
            start_task=from_task,
            resumed_from=old.run_id,
        )
        await self._store_and_launch(LiveRun(record, workflow), None)
        log.info("run.resumed run_id=%s from_run=%s task=%s", record.run_id, old.run_id, from_task)
        return record

    async def _input_of(self, run: RunRecord, task: str, workflow: Workflow) -> str | None:
        """The input `task` received in `run` (or in the runs it resumed)."""
        current: RunRecord | None = run
        for _ in range(100):
            if current is None:
                break
            attempts = [a for a in await self.store.attempts(current.run_id) if a.task == task]
            if attempts:
                return attempts[-1].input_json
            if (current.start_task or workflow.starting_task.name) == task:
                return current.input_json
            current = await self.store.get_run(current.resumed_from) if current.resumed_from else None
        raise InvalidRequest(
            f"Task '{task}' never ran in run '{run.run_id}', so the input it would get is unknown",
            error="Failed to resume workflow",
        )

    async def _store_and_launch(self, live: LiveRun, key: str | None) -> None:
        self.registry.reserve(live)
        try:
            if key is None:
                await self.store.insert_run(live.record)
            else:
                await self.store.insert_run_with_key(live.record, key)
        except sqlite3.IntegrityError:
            self.registry.release(live)
            raise Conflict(f"Workflow '{live.workflow_id}' is already running", error=START_ERROR) from None
        except StoreError as e:
            self.registry.release(live)
            raise Unavailable(f"the run could not be stored: {e}", error=START_ERROR) from None
        except BaseException:
            self.registry.release(live)
            raise
        if live.outcome is not None or live.cancel_reason is CancelReason.SHUTDOWN:
            return  # terminated while being stored, or the daemon is stopping: the next start resumes it
        if live.cancel_reason is CancelReason.CANCEL:
            live.outcome = RunStatus.CANCELED
            ended = now_us()
            await self.store.finish_run(live.run_id, RunStatus.CANCELED, ended, "Cancelled by user request")
            live.record.status, live.record.ended_at = RunStatus.CANCELED, ended
            self.registry.release(live)
            return
        if live.record.workflow in self.paused:
            live.unpaused.clear()
        self._launch(live)

    async def _fire(self, name: str) -> Firing:
        """One scheduled firing: no input, so the workflowId is the name, as in MooseStack."""
        if name in self.paused:
            return Firing("SKIPPED", reason="the workflow is paused")
        running = self.registry.by_workflow_id(name)
        if running is not None:
            return Firing("SKIPPED", reason=f"the previous run {running.run_id} is still running")
        try:
            record = await self.trigger(name, None)
        except MooseError as e:
            return Firing("FAILED", reason=e.details)
        return Firing("FIRED", run_id=record.run_id)

    # ---- stopping runs ------------------------------------------------------------------------

    async def terminate(self, target: str) -> list[RunRecord]:
        """Stop at once, running no user code. `target` is a workflowId or a workflow name."""
        error = "Failed to terminate workflow"
        runs = self._find_live(target)
        if not runs:
            await self._explain_not_running(target, error)
        ended = now_us()
        stopped: list[LiveRun] = []
        for live in runs:
            if live.outcome is None:
                live.outcome = RunStatus.TERMINATED
                stopped.append(live)
        try:
            if stopped:
                await self.store.finish_runs(
                    [live.run_id for live in stopped],
                    RunStatus.TERMINATED,
                    ended,
                    "Terminated by user request",
                )
        except StoreError as e:
            raise Unavailable(f"the termination could not be stored: {e}", error=error) from None
        for live in stopped:
            live.record.status, live.record.ended_at = RunStatus.TERMINATED, ended
            live.record.error = "Terminated by user request"
            self.registry.release(live)  # the workflowId is free again at once
            self.registry.cancel(live, CancelReason.TERMINATE)
            log.info("run.terminated run_id=%s workflow_id=%s", live.run_id, live.workflow_id)
        if not stopped:
            raise Conflict(f"Workflow '{target}' has already completed", error=error)
        return [live.record for live in stopped]

    async def cancel(self, target: str, wait_s: float = 5.0) -> list[RunRecord]:
        """Cooperative stop: the running task is cancelled and its on_cancel runs; the run ends CANCELED."""
        error = "Failed to cancel workflow"
        runs = [live for live in self._find_live(target) if live.outcome is None]
        if not runs:
            await self._explain_not_running(target, error)
            raise Conflict(f"Workflow '{target}' has already completed", error=error)
        for live in runs:
            self.registry.cancel(live, CancelReason.CANCEL)
        await self.registry.wait(runs, grace_s=wait_s)
        return [live.record for live in runs]

    # ---- pausing ------------------------------------------------------------------------------

    async def pause(self, target: str) -> list[RunRecord]:
        """A workflow name: no new scheduled firings, and its runs stop at the next task boundary.
        A workflowId: that run alone stops at its next task boundary."""
        return await self._set_paused(target, True)

    async def unpause(self, target: str) -> list[RunRecord]:
        return await self._set_paused(target, False)

    async def _set_paused(self, target: str, paused: bool) -> list[RunRecord]:
        error = f"Failed to {'pause' if paused else 'unpause'} workflow"
        if target in self.workflows:
            try:
                await self.store.set_workflow_paused(target, paused)
            except StoreError as e:
                raise Unavailable(str(e), error=error) from None
            (self.paused.add if paused else self.paused.discard)(target)
            runs = self.registry.of_workflow(target)
        else:
            live = self.registry.by_workflow_id(target)
            if live is None:
                await self._explain_not_running(target, error)
                raise Conflict(f"Workflow '{target}' has already completed", error=error)
            if not paused and live.record.workflow in self.paused:
                raise Conflict(
                    f"Workflow '{live.record.workflow}' is paused as a whole: unpause '{live.record.workflow}'",
                    error=error,
                )
            runs = [live]
        for live in runs:
            (live.unpaused.clear if paused else live.unpaused.set)()
        log.info("workflow.%s target=%s runs=%d", "paused" if paused else "unpaused", target, len(runs))
        return [live.record for live in runs]

    # ---- queries ------------------------------------------------------------------------------

    async def history(self, query: HistoryQuery) -> list[RunRecord]:
        try:
            return await self.store.history(query)
        except StoreError as e:
            raise Unavailable(str(e), error="Failed to retrieve workflow list") from None

    async def run_detail(self, run_id: str) -> tuple[RunRecord, list[AttemptRecord]]:
        live = self.registry.by_run_id(run_id)
        # A copy: the live record changes while the attempts are read.
        record = replace(live.record) if live is not None else await self.store.get_run(run_id)
        if record is None:
            raise NotFound(f"No run with id '{run_id}'", error="Run not found")
        return record, await self.store.attempts(run_id)

    async def status(self, target: str, run_id: str | None = None) -> tuple[RunRecord, list[AttemptRecord]]:
        """The given run, else the latest run of a workflowId, else of a workflow name."""
        if run_id is not None:
            record, attempts = await self.run_detail(run_id)
            if target not in (record.workflow, record.workflow_id):
                raise NotFound(f"Run '{run_id}' is not a run of '{target}'", error="Run not found")
            return record, attempts
        live = self.registry.by_workflow_id(target)
        found = live.record if live is not None else await self.store.latest_run(target)
        if found is None:
            found = await self.store.latest_run_of_workflow(target)
        if found is None:
            raise NotFound(f"No executions found for workflow '{target}'", error="Run not found")
        return replace(self._current(found)), await self.store.attempts(found.run_id)

    async def list_workflows(self) -> list[WorkflowInfo]:
        infos = []
        for name in sorted(self.workflows):
            last = await self.store.latest_run_of_workflow(name)
            infos.append(
                WorkflowInfo(
                    workflow=self.workflows[name],
                    paused=name in self.paused,
                    next_fire_at=self._scheduler.next_fire_at(name),
                    last_run=self._current(last) if last is not None else None,
                )
            )
        return infos

    # ---- internals ----------------------------------------------------------------------------

    def _current(self, record: RunRecord) -> RunRecord:
        """The in-memory record of a live run (fresher than the row), else the row."""
        live = self.registry.by_run_id(record.run_id)
        return live.record if live is not None else record

    def _find_live(self, target: str) -> list[LiveRun]:
        """A workflow name means every live run of it (inputs or not); anything else is a workflowId."""
        if target in self.workflows:
            return self.registry.of_workflow(target)
        live = self.registry.by_workflow_id(target)
        return [live] if live is not None else []

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
            if retry.workflow in self.paused:
                nxt.unpaused.clear()
            self._launch(nxt)
            log.info("run.retrying run_id=%s attempt=%d", retry.run_id, retry.attempt)


def _same_workflow(record: RunRecord, name: str, key: str) -> RunRecord:
    if record.workflow != name:
        raise Conflict(
            f"Idempotency-Key '{key}' was already used to start workflow '{record.workflow}'",
            error=START_ERROR,
        )
    return record


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
