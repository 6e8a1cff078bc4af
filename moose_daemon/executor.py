"""Runs one workflow run: walks the task tree, with per-attempt timeouts, retries and cancellation.

It knows the store and the definitions, not the web layer. Every cancellation carries a reason
(`LiveRun.cancel_reason`: terminate, cancel, shutdown; none means the workflow timed out), and the
final writes are shielded so they survive the cancellation they record.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from .clock import Clock
from .definitions import Task, TaskContext
from .durations import format_duration
from .errors import StoreClosed, StoreError
from .models import AttemptRecord, AttemptStatus, CancelReason, RunRecord, RunStatus, new_run_id, now_us
from .registry import LiveRun
from .store import Store
from .validation import InputError, OutputError, coerce_input, dump_output, load_json

log = logging.getLogger("moose_daemon.executor")

ON_CANCEL_TIMEOUT_S = 30.0
STORE_RETRY_INITIAL_S = 0.05
STORE_RETRY_MAX_S = 5.0
# A task interrupted this many times by daemon crashes fails instead of crashing the daemon forever.
MAX_INTERRUPTIONS = 10


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Temporal's defaults: 1 s, doubling, capped at 100 s."""

    initial_s: float = 1.0
    coefficient: float = 2.0
    maximum_s: float = 100.0

    def delay(self, failures: int) -> float:
        return float(min(self.initial_s * self.coefficient ** (failures - 1), self.maximum_s))


class TaskFailed(Exception):
    """A task used up its attempts (or failed in a way retrying cannot fix: then `retryable` is False,
    and the workflow is not retried either)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class _AttemptFailed(Exception):
    def __init__(self, error_type: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.retryable = retryable


_CANCELLED_ATTEMPT = {
    CancelReason.TERMINATE: AttemptStatus.TERMINATED,
    CancelReason.CANCEL: AttemptStatus.CANCELED,
    CancelReason.SHUTDOWN: AttemptStatus.INTERRUPTED,
}


class Executor:
    def __init__(self, store: Store, clock: Clock, threads: ThreadPoolExecutor, retry: RetryPolicy) -> None:
        self._store = store
        self._clock = clock
        self._threads = threads
        self._retry = retry

    async def run(self, live: LiveRun) -> RunRecord | None:
        """Drive `live` to its end; return the next run when a workflow-level retry is due."""
        workflow = live.workflow
        retryable = True
        try:
            if live.delay_s:
                await self._clock.sleep(live.delay_s)
            first = workflow.tasks.get(live.record.start_task or workflow.starting_task.name)
            if first is None:
                raise TaskFailed(
                    f"cannot resume: workflow '{workflow.name}' has no task '{live.record.start_task}'",
                    retryable=False,
                )
            async with asyncio.timeout(workflow.timeout_s) as run_deadline:
                live.deadline = run_deadline.when()
                await self._run_tree(live, first, live.record.input_json, _last_in_order(first))
            status, error = RunStatus.COMPLETED, None
        except TaskFailed as e:
            status, error = RunStatus.FAILED, str(e)
            retryable = e.retryable
        except TimeoutError:
            status, error = RunStatus.TIMED_OUT, f"Workflow timed out after {_fmt(workflow.timeout_s)}"
        except asyncio.CancelledError:
            if live.cancel_reason is CancelReason.CANCEL:
                await asyncio.shield(self._finish(live, RunStatus.CANCELED, "Cancelled by user request"))
            # terminate wrote its own final status; a shutdown leaves the run RUNNING to resume at start
            raise
        except Exception as e:  # a bug of ours, never the user's: their errors are caught per attempt
            log.exception("run.internal_error run_id=%s", live.run_id)
            status, error = RunStatus.FAILED, f"internal error: {type(e).__name__}: {e}"
        # Not shielded: only a shutdown can cancel a run whose outcome is set, and the final write is
        # queued before the first await, so it commits anyway (a shielded task per run costs ~10 us).
        return await self._finish(live, status, error, retryable=retryable)

    async def _finish(
        self, live: LiveRun, status: RunStatus, error: str | None, *, retryable: bool = True
    ) -> RunRecord | None:
        if live.outcome is not None:  # terminate (or another path) got there first
            return None
        live.outcome = status
        record = live.record
        retry = None
        if (
            retryable
            and status in (RunStatus.FAILED, RunStatus.TIMED_OUT)
            and record.attempt <= live.workflow.retries
        ):
            retry = RunRecord(
                run_id=new_run_id(),
                workflow_id=record.workflow_id,
                workflow=record.workflow,
                status=RunStatus.RUNNING,
                input_json=record.input_json,
                started_at=now_us(),
                attempt=record.attempt + 1,
                start_task=record.start_task,  # a resumed run is retried from where it resumed
                resumed_from=record.resumed_from,
            )
        ended = now_us()
        await self._persist(
            lambda: self._store.finish_run(
                record.run_id, status, ended, error, next_run=retry, last_attempt=live.held_attempt
            )
        )
        record.status, record.ended_at, record.error = status, ended, error
        log.info(
            "run.finished run_id=%s workflow_id=%s status=%s", record.run_id, record.workflow_id, status.short
        )
        return retry

    async def _persist(self, write: Callable[[], Awaitable[None]]) -> None:
        """A run's progress must reach the disk before the run moves on: while the store fails (disk
        full, file locked), wait and retry rather than run ahead of what is recorded."""
        delay = STORE_RETRY_INITIAL_S
        while True:
            try:
                await write()
                return
            except StoreClosed:
                raise
            except StoreError as e:
                log.error("store.write_retry error=%s retry_in=%.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_S)

    async def _run_tree(
        self, live: LiveRun, task: Task[Any, Any], input_json: str | None, last: Task[Any, Any]
    ) -> None:
        """Depth-first, sequential: each child of `on_complete` gets the parent's output."""
        output = live.completed.get(task.name)
        if output is None:
            await self._boundary(live)
            output = await self._run_task(live, task, input_json, last=task is last)
        for child in task.on_complete:
            await self._run_tree(live, child, output, last)

    async def _boundary(self, live: LiveRun) -> None:
        """Between tasks: a paused run records PAUSED and waits here until it is unpaused."""
        if live.unpaused.is_set():
            return
        await self._persist(partial(self._store.set_paused, live.run_id, True))
        live.record.status = RunStatus.PAUSED
        log.info("run.paused run_id=%s", live.run_id)
        await live.unpaused.wait()  # if cancelled here by a shutdown, the run stays PAUSED for the next start
        await asyncio.shield(self._persist(partial(self._store.set_paused, live.run_id, False)))
        live.record.status = RunStatus.RUNNING
        log.info("run.unpaused run_id=%s", live.run_id)

    async def _run_task(
        self, live: LiveRun, task: Task[Any, Any], input_json: str | None, *, last: bool = False
    ) -> str:
        max_attempts = task.retries + 1
        number = live.next_attempt.get(task.name, 1)
        if number - 1 - live.failures.get(task.name, 0) >= MAX_INTERRUPTIONS:
            raise TaskFailed(  # not retried as a new run either: it would likely take the daemon down again
                f"Task '{task.name}' was interrupted {MAX_INTERRUPTIONS} times by daemon restarts",
                retryable=False,
            )
        while True:
            attempt = AttemptRecord(
                live.run_id, task.name, number, AttemptStatus.RUNNING, now_us(), input_json=input_json
            )
            self._store.start_attempt(attempt)
            live.next_attempt[task.name] = number + 1
            try:
                attempt.output_json = await self._attempt(live, task, attempt)
            except _AttemptFailed as e:
                failures = live.failures[task.name] = live.failures.get(task.name, 0) + 1
                attempt.status, attempt.ended_at = AttemptStatus.FAILED, now_us()
                attempt.error_type, attempt.error = e.error_type, e.message
                await self._persist(partial(self._store.end_attempt, attempt))
                log.info(
                    "task.failed run_id=%s task=%s attempt=%d error=%s", live.run_id, task.name, number, e
                )
                if not e.retryable or failures >= max_attempts:
                    raise TaskFailed(
                        f"Task '{task.name}' failed after {failures} attempt(s): {e.error_type}: {e.message}",
                        retryable=e.retryable,
                    ) from None
                await self._clock.sleep(self._retry.delay(failures))
                number += 1
                continue
            attempt.status, attempt.ended_at = AttemptStatus.COMPLETED, now_us()
            if last:  # nothing runs after it: _finish writes it with the run's status, one write fewer
                live.held_attempt = attempt
            else:
                await self._persist(partial(self._store.end_attempt, attempt))
            return attempt.output_json

    async def _attempt(self, live: LiveRun, task: Task[Any, Any], attempt: AttemptRecord) -> str:
        """One attempt; returns the output JSON or raises _AttemptFailed (or CancelledError)."""
        try:
            raw = None if attempt.input_json is None else load_json(attempt.input_json)
            value = coerce_input(task.name, task.input_type, raw)
        except InputError as e:
            raise _AttemptFailed("InputError", str(e), retryable=False) from None
        ctx: TaskContext[Any] = TaskContext(
            state={},
            input=value,
            workflow_id=live.workflow_id,
            run_id=live.run_id,
            task=task.name,
            attempt=attempt.attempt,
        )
        live.context = ctx
        deadline = _task_deadline(task.timeout_s, live.deadline)
        try:
            if deadline is None:
                result = await self._call(task.config.run, ctx)
            else:
                async with deadline:
                    result = await self._call(task.config.run, ctx)
        except asyncio.CancelledError as e:
            current = asyncio.current_task()
            if current is not None and current.cancelling() == 0:
                # Raised by the task's own code (it awaited something that was cancelled), not by us.
                raise _AttemptFailed("CancelledError", str(e) or "the task raised CancelledError") from None
            ctx._cancel_requested = True
            await asyncio.shield(self._cancelled(live, task, ctx, attempt))
            raise
        except TimeoutError as e:
            if deadline is not None and deadline.expired():
                ctx._cancel_requested = True
                raise _AttemptFailed(
                    "TimeoutError", f"Task '{task.name}' timed out after {_fmt(task.timeout_s)}"
                ) from None
            raise _AttemptFailed(type(e).__name__, str(e) or repr(e)) from None
        except (
            Exception,
            SystemExit,
        ) as e:  # user code: anything it raises fails the attempt, never the daemon
            raise _AttemptFailed(type(e).__name__, str(e) or repr(e)) from None
        finally:
            live.context = None
        try:
            return dump_output(result)
        except OutputError as e:
            raise _AttemptFailed("OutputError", f"Task '{task.name}' {e}", retryable=False) from None

    async def _cancelled(
        self, live: LiveRun, task: Task[Any, Any], ctx: TaskContext[Any], attempt: AttemptRecord
    ) -> None:
        reason = live.cancel_reason
        if reason in (CancelReason.CANCEL, CancelReason.SHUTDOWN) and task.config.on_cancel is not None:
            try:
                async with asyncio.timeout(ON_CANCEL_TIMEOUT_S):
                    await self._call(task.config.on_cancel, ctx)
            except (Exception, SystemExit, asyncio.CancelledError) as e:
                log.warning("task.on_cancel_failed run_id=%s task=%s error=%r", live.run_id, task.name, e)
        attempt.status = (
            _CANCELLED_ATTEMPT.get(reason, AttemptStatus.CANCELED) if reason else AttemptStatus.CANCELED
        )
        attempt.ended_at = now_us()
        attempt.error = f"cancelled: {reason.value if reason else 'workflow timed out'}"
        await self._persist(partial(self._store.end_attempt, attempt))

    async def _call(self, fn: Callable[[TaskContext[Any]], Any], ctx: TaskContext[Any]) -> Any:
        """`async def` runs on the loop; a plain `def` runs in a thread so it cannot block the loop."""
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):  # noqa: B004
            return await fn(ctx)
        result = await asyncio.get_running_loop().run_in_executor(self._threads, fn, ctx)
        if inspect.isawaitable(result):
            result = await result
        return result


def _task_deadline(timeout_s: float | None, run_deadline: float | None) -> asyncio.Timeout | None:
    """The attempt's own timeout; None when it could only fire after the run's (with the defaults, one
    hour each, it never can): a timer per attempt saved, and the same outcome."""
    if timeout_s is None:
        return None
    when = asyncio.get_running_loop().time() + timeout_s
    if run_deadline is not None and when >= run_deadline:
        return None
    return asyncio.timeout_at(when)


def _last_in_order(task: Task[Any, Any]) -> Task[Any, Any]:
    """The task a depth-first walk from `task` runs last."""
    while task.on_complete:
        task = task.on_complete[-1]
    return task


def _fmt(seconds: float | None) -> str:
    return "never" if seconds is None else format_duration(seconds)
