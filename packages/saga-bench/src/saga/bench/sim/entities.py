"""The simulator's entities: a task in flight, one LLM call of it, and a call being served."""

from __future__ import annotations

from dataclasses import dataclass, field

from saga.bench.workload import Task
from saga.policy.queueing import QueuedRequest


@dataclass(eq=False)
class TaskState:
    """A task (session) in flight: where its context stands and what it has cost so far."""

    task: Task
    index: int
    context: int = 0
    """Tokens of the session's context before its next call (prompts + outputs so far)."""
    next_call: int = 0
    done_s: float | None = None
    ideal_s: float = 0.0
    home: int = -1
    """The instance that served the session's last call (-1 before its first)."""

    @property
    def task_id(self) -> str:
        return self.task.task_id


@dataclass(eq=False)
class Request:
    """One LLM call on its way through an instance."""

    state: TaskState
    call_index: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    reusable_tokens: int
    hashes: list[int]
    """Chained block hashes of prompt + output (full blocks only), reserved at admission."""
    queued: QueuedRequest | None = None
    instance: int = -1
    admitted_s: float = 0.0
    hit_tokens: int = 0
    hbm_hit_tokens: int = 0
    resident: list[int] = field(default_factory=list)
    prefill_left: float = 0.0

    @property
    def request_id(self) -> str:
        return f"{self.state.task_id}:{self.call_index}"


__all__ = ["Request", "TaskState"]
