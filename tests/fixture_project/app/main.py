"""Workflows for the test suite. Tasks append to executions.log beside the project so tests (and
the crash test's fresh process) can count what ran."""

import asyncio
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moose_daemon import Task, TaskConfig, TaskContext, Workflow, WorkflowConfig

LOG = Path(__file__).resolve().parent.parent / "executions.log"
_lock = threading.Lock()


def record(line: str) -> None:
    with _lock, LOG.open("a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@dataclass
class Person:
    name: str
    email: str | None = None


# hello: one task, any object input or none.
def hello_run(ctx: TaskContext[dict | None]) -> dict[str, Any]:
    return {"hello": (ctx.input or {}).get("name", "world")}


Workflow(
    name="hello",
    config=WorkflowConfig(
        starting_task=Task[dict | None, dict](name="hello", config=TaskConfig(run=hello_run))
    ),
)


# typed: input must be a Person (dataclass).
def typed_run(ctx: TaskContext[Person]) -> str:
    return f"hi {ctx.input.name}"


Workflow(
    name="typed",
    config=WorkflowConfig(
        starting_task=Task[Person, str](name="greet", config=TaskConfig(run=typed_run)), retries=0
    ),
)


# chain: a -> b -> c, each adds one to its input and records that it ran.
async def step(ctx: TaskContext[int | None]) -> int:
    record(f"{ctx.run_id} {ctx.task}")
    return (ctx.input or 0) + 1


_c = Task[int, int](name="c", config=TaskConfig(run=step))
_b = Task[int, int](name="b", config=TaskConfig(run=step, on_complete=[_c]))
_a = Task[int | None, int](name="a", config=TaskConfig(run=step, on_complete=[_b]))
Workflow(name="chain", config=WorkflowConfig(starting_task=_a))


# slow: sleeps until cancelled; on_cancel sees the same state.
async def slow_run(ctx: TaskContext[Any]) -> str:
    ctx.state["started"] = True
    record(f"{ctx.run_id} slow started")
    await asyncio.sleep(3600)
    return "woke"


async def slow_cancel(ctx: TaskContext[Any]) -> None:
    record(f"{ctx.run_id} slow on_cancel state={sorted(ctx.state)}")


Workflow(
    name="slow",
    config=WorkflowConfig(
        starting_task=Task[Any, str](
            name="sleepy", config=TaskConfig(run=slow_run, on_cancel=slow_cancel, timeout="never")
        ),
        timeout="never",
    ),
)


# blocking: a plain def that polls ctx.cancelled; its late result must never be recorded.
def blocking_run(ctx: TaskContext[Any]) -> str:
    record(f"{ctx.run_id} blocking started")
    deadline = time.monotonic() + 30
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # keeps going a little after cancellation, as a thread would
    record(f"{ctx.run_id} blocking returned cancelled={ctx.cancelled}")
    return "late"


Workflow(
    name="blocking",
    config=WorkflowConfig(starting_task=Task[Any, str](name="block", config=TaskConfig(run=blocking_run))),
)


# failing: always raises; one task retry, no workflow retry.
def failing_run(ctx: TaskContext[Any]) -> None:
    record(f"{ctx.run_id} failing attempt={ctx.attempt}")
    raise RuntimeError("kaboom")


Workflow(
    name="failing",
    config=WorkflowConfig(
        starting_task=Task[Any, None](name="boom", config=TaskConfig(run=failing_run, retries=1)), retries=0
    ),
)


# flaky: fails on the first attempt of each run, then succeeds.
def flaky_run(ctx: TaskContext[Any]) -> str:
    if ctx.attempt == 1:
        raise ValueError("first attempt fails")
    return f"ok on attempt {ctx.attempt}"


Workflow(
    name="flaky",
    config=WorkflowConfig(
        starting_task=Task[Any, str](name="flaky", config=TaskConfig(run=flaky_run, retries=2))
    ),
)


# wf-retry: the task fails; the workflow retries twice as new runs of the same workflowId.
def wf_retry_run(ctx: TaskContext[Any]) -> None:
    record(f"{ctx.run_id} wf-retry")
    raise RuntimeError("always")


Workflow(
    name="wf-retry",
    config=WorkflowConfig(
        starting_task=Task[Any, None](name="once", config=TaskConfig(run=wf_retry_run, retries=0)), retries=2
    ),
)


# task-timeout: each attempt sleeps past its 200ms timeout; no retries.
async def too_slow(ctx: TaskContext[Any]) -> None:
    await asyncio.sleep(30)


Workflow(
    name="task-timeout",
    config=WorkflowConfig(
        starting_task=Task[Any, None](
            name="nap", config=TaskConfig(run=too_slow, timeout="200ms", retries=0)
        ),
        retries=0,
    ),
)


# wf-timeout: the workflow runs out of time while its task sleeps.
Workflow(
    name="wf-timeout",
    config=WorkflowConfig(
        starting_task=Task[Any, None](name="nap", config=TaskConfig(run=too_slow)), timeout="300ms", retries=0
    ),
)


# bad-output: returns something JSON cannot hold.
def bad_output(ctx: TaskContext[Any]) -> object:
    return object()


Workflow(
    name="bad-output",
    config=WorkflowConfig(
        starting_task=Task[Any, object](name="bad", config=TaskConfig(run=bad_output)), retries=0
    ),
)


# crashy: three steps of about 0.4 s each, for the SIGKILL test; each records start and finish.
async def crash_step(ctx: TaskContext[int | None]) -> int:
    record(f"{ctx.run_id} {ctx.task} start")
    await asyncio.sleep(0.4)
    record(f"{ctx.run_id} {ctx.task} done")
    return (ctx.input or 0) + 1


_z = Task[int, int](name="z", config=TaskConfig(run=crash_step))
_y = Task[int, int](name="y", config=TaskConfig(run=crash_step, on_complete=[_z]))
_x = Task[int | None, int](name="x", config=TaskConfig(run=crash_step, on_complete=[_y]))
Workflow(name="crashy", config=WorkflowConfig(starting_task=_x))


# two-step: p1 takes 0.3 s, then p2; for pausing at the boundary between them.
async def p_step(ctx: TaskContext[Any]) -> str:
    record(f"{ctx.run_id} {ctx.task} start")
    if ctx.task == "p1":
        await asyncio.sleep(0.3)
    return ctx.task


_p2 = Task[Any, str](name="p2", config=TaskConfig(run=p_step))
Workflow(
    name="two-step",
    config=WorkflowConfig(
        starting_task=Task[Any, str](name="p1", config=TaskConfig(run=p_step, on_complete=[_p2]))
    ),
)


# resumable: r1 -> r2 -> r3; r2 fails until the file `allow-r2` exists beside the project's app folder.
ALLOW = Path(__file__).resolve().parent.parent / "allow-r2"


def r_step(ctx: TaskContext[Any]) -> dict[str, Any]:
    record(f"{ctx.run_id} {ctx.task}")
    if ctx.task == "r2" and not ALLOW.exists():
        raise RuntimeError("r2 is not allowed yet")
    return {"after": ctx.task, "got": ctx.input}


_r3 = Task[Any, dict](name="r3", config=TaskConfig(run=r_step))
_r2 = Task[Any, dict](name="r2", config=TaskConfig(run=r_step, on_complete=[_r3], retries=0))
Workflow(
    name="resumable",
    config=WorkflowConfig(
        starting_task=Task[Any, dict](name="r1", config=TaskConfig(run=r_step, on_complete=[_r2])), retries=0
    ),
)


# Hostile user code: the daemon must survive each and record a clear error.
async def loop_blocker(ctx: TaskContext[Any]) -> str:
    time.sleep(0.8)  # noqa: ASYNC251 - blocks the event loop on purpose: the watchdog must name this task
    return "blocked"


Workflow(
    name="loop-blocker",
    config=WorkflowConfig(starting_task=Task[Any, str](name="hog", config=TaskConfig(run=loop_blocker))),
)


async def exits_async(ctx: TaskContext[Any]) -> None:
    raise SystemExit(3)


def exits_sync(ctx: TaskContext[Any]) -> None:
    import sys

    sys.exit(4)


_exit_sync = Task[Any, None](name="exit-sync", config=TaskConfig(run=exits_sync, retries=0))
Workflow(
    name="exits",
    config=WorkflowConfig(
        starting_task=Task[Any, None](name="exit-async", config=TaskConfig(run=exits_async, retries=0)),
        retries=0,
    ),
)
Workflow(name="exits-sync", config=WorkflowConfig(starting_task=_exit_sync, retries=0))


def chatty(ctx: TaskContext[Any]) -> int:
    chunk = "x" * 1023 + "\n"
    for _ in range(4096):  # 4 MiB on stdout
        print(chunk, end="")
    return 4096


Workflow(
    name="chatty",
    config=WorkflowConfig(starting_task=Task[Any, int](name="talk", config=TaskConfig(run=chatty))),
)
