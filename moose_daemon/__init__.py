"""moose_daemon: MooseStack-compatible workflows in one local asyncio process.

`from moose_daemon import Task, TaskConfig, TaskContext, Workflow, WorkflowConfig` is all a workflow
file needs. The names are loaded on first use so that the `moose` CLI, which lives in this package,
does not pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Task", "TaskConfig", "TaskContext", "Workflow", "WorkflowConfig", "get_workflow", "get_workflows"]

if TYPE_CHECKING:
    from .definitions import (
        Task,
        TaskConfig,
        TaskContext,
        Workflow,
        WorkflowConfig,
        get_workflow,
        get_workflows,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import definitions

        return getattr(definitions, name)
    raise AttributeError(f"module 'moose_daemon' has no attribute '{name}'")
