"""Records shared by the store, the engine and the web layer. Standard library only."""

from __future__ import annotations

import enum
import random
import time
from dataclasses import dataclass

STATUS_PREFIX = "WORKFLOW_EXECUTION_STATUS_"


class RunStatus(enum.StrEnum):
    """A run's status, spelled as MooseStack (Temporal) spells it on the wire."""

    RUNNING = "WORKFLOW_EXECUTION_STATUS_RUNNING"
    COMPLETED = "WORKFLOW_EXECUTION_STATUS_COMPLETED"
    FAILED = "WORKFLOW_EXECUTION_STATUS_FAILED"
    CANCELED = "WORKFLOW_EXECUTION_STATUS_CANCELED"
    TERMINATED = "WORKFLOW_EXECUTION_STATUS_TERMINATED"
    TIMED_OUT = "WORKFLOW_EXECUTION_STATUS_TIMED_OUT"
    # Not a Temporal status: MooseStack's pause did nothing. A paused run waits at a task boundary.
    PAUSED = "WORKFLOW_EXECUTION_STATUS_PAUSED"

    @property
    def short(self) -> str:
        return self.value.removeprefix(STATUS_PREFIX)

    @property
    def is_final(self) -> bool:
        return self not in (RunStatus.RUNNING, RunStatus.PAUSED)

    @classmethod
    def parse(cls, text: str) -> RunStatus:
        """Accept `running`, `RUNNING` or `WORKFLOW_EXECUTION_STATUS_RUNNING`; `CANCELLED` too."""
        short = text.strip().upper().removeprefix(STATUS_PREFIX)
        if short == "CANCELLED":
            short = "CANCELED"
        try:
            return cls[short]
        except KeyError:
            names = ", ".join(s.short for s in cls)
            raise ValueError(f"unknown status '{text}': use one of {names}") from None


class AttemptStatus(enum.StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    TERMINATED = "TERMINATED"
    # The daemon stopped (crash or shutdown) while the attempt ran; it does not count against retries.
    INTERRUPTED = "INTERRUPTED"


class CancelReason(enum.StrEnum):
    TERMINATE = "terminate"
    CANCEL = "cancel"
    SHUTDOWN = "shutdown"


@dataclass(slots=True)
class RunRecord:
    run_id: str
    workflow_id: str
    workflow: str
    status: RunStatus
    input_json: str | None
    started_at: int  # microseconds since the epoch
    ended_at: int | None = None
    error: str | None = None
    attempt: int = 1  # workflow-level attempt, 1-based
    start_task: str | None = None  # a resumed run starts from this task
    resumed_from: str | None = None  # ... of this earlier run


@dataclass(slots=True)
class AttemptRecord:
    run_id: str
    task: str
    attempt: int
    status: AttemptStatus
    started_at: int
    ended_at: int | None = None
    input_json: str | None = None
    output_json: str | None = None
    error_type: str | None = None
    error: str | None = None


def now_us() -> int:
    return time.time_ns() // 1000


def new_run_id() -> str:
    """A UUIDv7: time-ordered, so new rows land at the end of the primary-key index."""
    ms = time.time_ns() // 1_000_000
    # Unique, not secret (every route that takes one needs the admin token): the Mersenne Twister, seeded
    # from the OS, costs no system call and does not hand the GIL to the SQLite thread mid-trigger.
    rand = random.getrandbits(80)
    value = (
        (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62 | (rand & ((1 << 62) - 1))
    )
    h = f"{value:032x}"  # what str(uuid.UUID(int=value)) gives, at half the cost
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
