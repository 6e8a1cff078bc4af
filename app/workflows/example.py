"""`example`: greets a person. Works with `{"name": ..., "email": ...}` or with no input at all."""

from dataclasses import dataclass

from moose_daemon import Task, TaskConfig, TaskContext, Workflow, WorkflowConfig


@dataclass
class Person:
    name: str = "world"
    email: str | None = None


@dataclass
class Greeting:
    message: str
    email: str | None


def greet(ctx: TaskContext[Person | None]) -> Greeting:
    person = ctx.input or Person()
    return Greeting(message=f"Hello, {person.name}!", email=person.email)


async def deliver(ctx: TaskContext[Greeting]) -> dict[str, str]:
    # No mail server here: "delivering" is recording where the greeting would go.
    to = ctx.input.email or "stdout"
    print(f"[example] {ctx.input.message} (to {to})", flush=True)
    return {"delivered_to": to, "message": ctx.input.message}


deliver_task = Task[Greeting, dict](name="deliver", config=TaskConfig(run=deliver, timeout="30s"))
greet_task = Task[Person | None, Greeting](
    name="greet", config=TaskConfig(run=greet, on_complete=[deliver_task], timeout="30s", retries=2)
)
example = Workflow(name="example", config=WorkflowConfig(starting_task=greet_task, retries=1, timeout="5m"))
