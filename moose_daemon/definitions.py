"""The workflow definition API, shaped like MooseStack's `moose_lib` so a port changes one import.

Constructing a `Workflow` registers it in `_registry`, the one piece of module-level state: the
loader clears it, imports the user's `main.py`, and takes what was registered.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .durations import InvalidDuration, parse_duration
from .errors import DefinitionError
from .schedules import InvalidSchedule, Schedule

T = TypeVar("T")
U = TypeVar("U")

DEFAULT_RETRIES = 3
DEFAULT_TASK_TIMEOUT = "60m"
DEFAULT_WORKFLOW_TIMEOUT = "1h"


@dataclass
class TaskContext(Generic[T]):
    """What a task's `run` and `on_cancel` receive. `state` is shared by both within one attempt."""

    state: dict[str, Any]
    input: T
    workflow_id: str = ""
    run_id: str = ""
    task: str = ""
    attempt: int = 1
    # A plain flag, set by the daemon's thread and read by the task's: assigning a bool is atomic in
    # CPython, and a threading.Event per attempt costs more than the rest of the context.
    _cancel_requested: bool = field(default=False, repr=False, compare=False)

    @property
    def cancelled(self) -> bool:
        """True once the run was cancelled or terminated: a `def` task should check it and return."""
        return self._cancel_requested


TaskRun = Callable[[TaskContext[Any]], Any | Awaitable[Any]]
TaskCancel = Callable[[TaskContext[Any]], Awaitable[None] | None]


@dataclass
class TaskConfig(Generic[T, U]):
    run: Callable[[TaskContext[T]], U | Awaitable[U]]
    on_complete: list[Task[Any, Any]] | None = None
    on_cancel: Callable[[TaskContext[T]], Awaitable[None] | None] | None = None
    timeout: str | None = None
    retries: int | None = None


class Task(Generic[T, U]):
    """One step. Write `Task[In, Out](name=..., config=TaskConfig(...))`; `In` validates the input."""

    def __init__(self, name: str, config: TaskConfig[T, U]) -> None:
        if not isinstance(name, str) or not name:
            raise DefinitionError(f"task name must be a non-empty string, got {name!r}")
        self.name = name
        self.config = config
        where = f"task '{name}'"
        if not callable(config.run):
            raise DefinitionError(f"{where}: config.run must be callable")
        if config.on_cancel is not None and not callable(config.on_cancel):
            raise DefinitionError(f"{where}: config.on_cancel must be callable")
        # A bad value is reported by the workflow that uses the task, so the message names both.
        self.problem: str | None = None
        try:
            self.retries = _check_retries(config.retries, where)
            self.timeout_s = _check_timeout(config.timeout, DEFAULT_TASK_TIMEOUT, where)
        except DefinitionError as e:
            self.problem = str(e)
            self.retries, self.timeout_s = DEFAULT_RETRIES, None
        self.on_complete: list[Task[Any, Any]] = list(config.on_complete or [])
        for child in self.on_complete:
            if not isinstance(child, Task):
                raise DefinitionError(f"{where}: on_complete must hold Task objects, got {child!r}")

    @property
    def input_type(self) -> Any:
        """`T` from `Task[T, U]`; `Any` when the task was built without type parameters."""
        orig = getattr(self, "__orig_class__", None)
        args = typing.get_args(orig) if orig is not None else ()
        return args[0] if args else Any

    def __repr__(self) -> str:
        return f"Task(name={self.name!r})"


@dataclass
class WorkflowConfig:
    starting_task: Task[Any, Any]
    retries: int | None = None
    timeout: str | None = None
    schedule: str | None = None


class Workflow:
    """A named chain of tasks. Constructing one registers it for the daemon."""

    def __init__(self, name: str, config: WorkflowConfig) -> None:
        if not isinstance(name, str) or not name:
            raise DefinitionError(f"workflow name must be a non-empty string, got {name!r}")
        if "/" in name or name != name.strip():
            raise DefinitionError(f"workflow '{name}': a name cannot contain '/' or surrounding spaces")
        where = f"workflow '{name}'"
        if not isinstance(config.starting_task, Task):
            raise DefinitionError(f"{where}: starting_task must be a Task")
        self.name = name
        self.config = config
        self.starting_task = config.starting_task
        self.retries = _check_retries(config.retries, where)
        self.timeout_s = _check_timeout(config.timeout, DEFAULT_WORKFLOW_TIMEOUT, where)
        self.schedule: Schedule | None = None
        if config.schedule:
            try:
                self.schedule = Schedule.parse(config.schedule)
            except InvalidSchedule as e:
                raise DefinitionError(f"{where}: schedule: {e}") from None
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._index_tasks(self.starting_task, ())
        frame = sys._getframe(1)
        self.defined_at = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        _register(self)

    def _index_tasks(self, task: Task[Any, Any], path: tuple[str, ...]) -> None:
        if task.problem is not None:
            raise DefinitionError(f"workflow '{self.name}': {task.problem}")
        if task.name in path:
            raise DefinitionError(
                f"workflow '{self.name}': task '{task.name}' completes into itself (a cycle)"
            )
        if task.name in self.tasks and self.tasks[task.name] is not task:
            raise DefinitionError(f"workflow '{self.name}': two different tasks are named '{task.name}'")
        self.tasks[task.name] = task
        for child in task.on_complete:
            self._index_tasks(child, (*path, task.name))

    def get_task_names(self) -> list[str]:
        return list(self.tasks)

    def get_task(self, name: str) -> Task[Any, Any] | None:
        return self.tasks.get(name)

    def __repr__(self) -> str:
        return f"Workflow(name={self.name!r})"


def _check_retries(value: int | None, where: str) -> int:
    if value is None:
        return DEFAULT_RETRIES
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DefinitionError(f"{where}: retries must be a whole number >= 0, got {value!r}")
    return value


def _check_timeout(value: str | None, default: str, where: str) -> float | None:
    if value is None or value == "":
        value = default
    if not isinstance(value, str):
        raise DefinitionError(
            f"{where}: timeout must be a string such as '30s', '5m' or 'never', got {value!r}"
        )
    try:
        return parse_duration(value)
    except InvalidDuration as e:
        raise DefinitionError(f"{where}: timeout: {e}") from None


# The definitions registry: filled by Workflow(...) while the loader imports the user's code.
_registry: dict[str, Workflow] = {}


def _register(workflow: Workflow) -> None:
    existing = _registry.get(workflow.name)
    if existing is not None:
        raise DefinitionError(
            f"two workflows are named '{workflow.name}': {existing.defined_at} and {workflow.defined_at}"
        )
    _registry[workflow.name] = workflow


def take_registered() -> dict[str, Workflow]:
    """Return what was registered since the last call and start a new, empty registry."""
    found = dict(_registry)
    _registry.clear()
    return found


def get_workflows() -> dict[str, Workflow]:
    return dict(_registry)


def get_workflow(name: str) -> Workflow | None:
    return _registry.get(name)
