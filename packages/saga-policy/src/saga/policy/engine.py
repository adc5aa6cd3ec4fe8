"""The interface between a deployment's coordinator and its serving engines.

A worker hosts one engine and does not care whether it is vLLM or a model of one: it submits an
:class:`EngineCall` with the session's metadata and gets back an :class:`EngineResult` (the tokens
and how many prompt tokens came from the prefix cache); an :class:`EngineReport` is the engine's
state for a heartbeat. These plain types live here, below both the coordinator (saga-coordinator)
and the engines (saga-vllm), so neither needs to import the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from saga.policy.errors import SagaError

__all__ = ["CallMoved", "Engine", "EngineCall", "EngineReport", "EngineResult"]


class CallMoved(SagaError):
    """A waiting call was handed to another worker (work stealing); route it again."""


@dataclass(frozen=True)
class EngineCall:
    """One LLM call of an agent session, with the metadata SAGA's scheduler reads."""

    session_id: str
    tenant_id: str
    agent_type: str
    prompt_token_ids: Sequence[int]
    max_tokens: int
    pending_tool: str | None = None
    tool_latency_s: float | None = None
    final: bool = False
    deadline_s: float | None = None


@dataclass(frozen=True)
class EngineResult:
    """What the call produced and what it cost on the engine's clock."""

    output_token_ids: list[int]
    num_cached_tokens: int
    prompt_tokens: int
    latency_s: float


@dataclass(frozen=True)
class EngineReport:
    """The engine's state for a heartbeat."""

    load: float
    idle_for_s: float
    waiting: tuple[tuple[str, float], ...] = ()
    step_time_s: float = 0.0
    pressure: float = 0.0


class Engine(Protocol):
    """An engine a worker can host.

    ``call`` runs one call (a call still waiting when ``cancel_waiting`` hands it back raises
    :class:`CallMoved`); ``report`` is read for every heartbeat; ``set_order`` gives the order
    in which to serve waiting sessions (AFS); ``shutdown`` frees the engine.
    """

    slots: int

    async def call(self, call: EngineCall) -> EngineResult: ...

    def report(self) -> EngineReport: ...

    def cancel_waiting(self, session_id: str) -> bool: ...

    def set_order(self, order: Sequence[str]) -> None: ...

    def shutdown(self) -> None: ...
