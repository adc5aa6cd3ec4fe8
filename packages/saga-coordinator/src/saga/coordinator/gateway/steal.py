"""Work stealing with real engines: what waits where, and what moving it costs.

The spec's rule (an engine idle for ``T_idle`` takes a waiting call from one loaded more than
``R_max`` times as much, when moving its KV costs less than the queueing it saves) is the
preset's :class:`~saga.policy.stealing.WorkStealer`, run by the coordinator core; the gateway
only describes each engine's queue to it (:func:`engine_queue`) and carries the steals out.

A call waits in one of two places: the gateway's own per-engine queue (past ``queue_at`` in
flight), or inside vLLM's waiting queue (forwarded, no byte back yet). vLLM does not say which of
its requests wait, so the gateway takes the calls it forwarded last, as many as the engine holds
beyond its running slots (or as its ``num_requests_waiting`` gauge says, if more), among those
that have not answered a byte.

Transfer cost: the engines of one gateway share a node KV store, so a move costs loading the
call's context from it: ``move_s + tokens x load_s_per_token``. The per-token time is the
engines' own measurement (``vllm:saga_kv_store_load_s`` over the loaded blocks) once they have
loaded something, else the configured one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from saga.coordinator.gateway.engines import EngineState
from saga.policy.errors import SagaError
from saga.policy.stealing import WaitingSession

__all__ = ["BLOCK_TOKENS", "KV_LOAD_S_PER_TOKEN", "KV_MOVE_S", "EngineQueue", "Queued",
           "Stolen", "UpstreamFailed", "engine_queue", "in_engine_waiting",
           "measured_load_s_per_token", "race"]

KV_LOAD_S_PER_TOKEN = 1e-4
"""Seconds to load one token's KV from the node store until the engines have measured it
(``python -m saga.vllm.kv_move_bench`` on CPU: small model 80 us, tiny 9 us)."""
KV_MOVE_S = 0.005
"""Fixed cost of a move: cancelling the call at its engine and sending it to the thief."""
BLOCK_TOKENS = 32
"""Tokens per KV block of the engines ``saga.vllm.serve`` starts."""
SERVICE_EWMA = 0.2
"""Weight of the newest call in an engine's mean service time."""
_Q = TypeVar("_Q")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Queued:
    """One waiting call: its session, its context in tokens, its request id."""

    session_id: str
    tokens: int
    request_id: str = ""


@dataclass(frozen=True)
class EngineQueue:
    """One engine as the stealer sees it: waiting sessions in queue order, idle time (-1:
    busy), time per queued call served, and whether its head call is blocked too."""

    waiting: tuple[WaitingSession, ...] = ()
    idle_for_s: float = -1.0
    step_time_s: float = 0.0
    head_blocked: bool = False


def in_engine_waiting(engine: EngineState, unanswered: Sequence[_Q]) -> list[_Q]:
    """The forwarded calls taken to wait inside vLLM: the last forwarded of those without a
    byte back, as many as the engine holds beyond its slots (or its waiting gauge says)."""
    n = max(engine.in_flight - engine.slots, round(engine.waiting))
    n = min(max(n, 0), len(unanswered))
    return list(unanswered[len(unanswered) - n:]) if n else []


def engine_queue(engine: EngineState, unanswered: Sequence[Queued], queued: Iterable[Queued],
                 now: float, oldest_running_s: float) -> EngineQueue:
    """Describe ``engine``'s queue: calls waiting inside vLLM first (they are ahead), then the
    gateway's queue in its service order.

    ``step_time_s``: the engine's mean service time per slot, or, when longer, the age of its
    oldest running call per slot (a call that has run for ``e`` seconds is expected to run
    about as long again; the gateway cannot see its remaining tokens).
    """
    waiting = [*in_engine_waiting(engine, unanswered), *queued]
    idle = now - engine.idle_since if engine.idle_since is not None and not engine.in_flight \
        else -1.0
    step = max(engine.service_s, oldest_running_s) / max(engine.slots, 1)
    return EngineQueue(tuple(WaitingSession(q.session_id, float(q.tokens)) for q in waiting),
                       idle, step, engine.in_flight >= engine.slots)


def measured_load_s_per_token(engines: Iterable[EngineState]) -> float | None:
    """Seconds per token the engines spent loading KV from the store, or None before any
    load."""
    blocks = seconds = 0.0
    for e in engines:
        blocks += e.kv_loaded_blocks
        seconds += e.kv_load_s
    if blocks <= 0 or seconds <= 0:
        return None
    return seconds / (blocks * BLOCK_TOKENS)


class Stolen(SagaError):
    """A steal moved the waiting call to engine ``dst``."""

    def __init__(self, dst: str) -> None:
        super().__init__(dst)
        self.dst = dst


class UpstreamFailed(SagaError):
    """The engine refused, reset or timed out before the call's first byte."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


async def race(work: Awaitable[_T], steal: asyncio.Future[str]) -> _T:
    """``work``'s result, unless ``steal`` is set first: then ``work`` is cancelled (closing
    its connection) and :class:`Stolen` raised. An answer that arrives as the steal does
    wins: the call is never lost."""
    task = asyncio.ensure_future(work)
    both: set[asyncio.Future[Any]] = {task, steal}
    try:
        await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            return await task
        raise Stolen(steal.result())
    return task.result()
