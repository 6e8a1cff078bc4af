"""`data-processing`: extract, transform and load records in batches.

There is no network here, so extract does not fetch `sourceUrl`: it makes a deterministic set of
simulated records from it, as an API page would give.
"""

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

from moose_daemon import Task, TaskConfig, TaskContext, Workflow, WorkflowConfig

RECORDS_PER_SOURCE = 1000


@dataclass
class Source:
    sourceUrl: str = "https://api.example.com/data"
    batchSize: int = 100


async def extract(ctx: TaskContext[Source | None]) -> dict[str, Any]:
    source = ctx.input or Source()
    if source.batchSize < 1:
        raise ValueError(f"batchSize must be at least 1, got {source.batchSize}")
    seed = hashlib.sha256(source.sourceUrl.encode()).digest()
    records = [{"id": i, "value": (seed[i % len(seed)] * (i + 1)) % 997} for i in range(RECORDS_PER_SOURCE)]
    await asyncio.sleep(0.05)  # stands in for the request
    return {"source": source.sourceUrl, "batch_size": source.batchSize, "records": records}


async def transform(ctx: TaskContext[dict[str, Any]]) -> dict[str, Any]:
    records, size = ctx.input["records"], ctx.input["batch_size"]
    ctx.state["batches_done"] = 0
    batches = []
    for start in range(0, len(records), size):
        batch = records[start : start + size]
        batches.append(
            {"first_id": batch[0]["id"], "count": len(batch), "sum": sum(r["value"] for r in batch)}
        )
        ctx.state["batches_done"] += 1
        await asyncio.sleep(0.01)  # stands in for per-batch work
    return {"source": ctx.input["source"], "batches": batches}


def on_transform_cancel(ctx: TaskContext[dict[str, Any]]) -> None:
    print(f"[data-processing] cancelled after {ctx.state.get('batches_done', 0)} batches", flush=True)


def load(ctx: TaskContext[dict[str, Any]]) -> dict[str, Any]:
    batches = ctx.input["batches"]
    return {
        "source": ctx.input["source"],
        "batches": len(batches),
        "records": sum(b["count"] for b in batches),
        "total": sum(b["sum"] for b in batches),
    }


load_task = Task[dict, dict](name="load", config=TaskConfig(run=load))
transform_task = Task[dict, dict](
    name="transform",
    config=TaskConfig(run=transform, on_complete=[load_task], on_cancel=on_transform_cancel, timeout="5m"),
)
extract_task = Task[Source | None, dict](
    name="extract", config=TaskConfig(run=extract, on_complete=[transform_task], timeout="1m", retries=3)
)
data_processing = Workflow(
    name="data-processing", config=WorkflowConfig(starting_task=extract_task, retries=2, timeout="30m")
)
