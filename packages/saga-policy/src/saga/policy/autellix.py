"""Autellix (arXiv 2502.13965): program-level attained-service scheduling, as a peer baseline.

Autellix treats an agent program, not a call, as the unit of scheduling and is non-clairvoyant:
a call's priority comes from the service its *program* has already received, so short programs
overtake long ones (least attained service, like Linux's MLFQ but per program).

- PLAS (single-threaded programs): a call's priority is its program's total attained service,
  the sum of the service of all its calls so far (:func:`plas_priority`).
- ATLAS (multi-threaded / DAG programs): a call's priority is the attained service along the
  critical path that leads to it, ``max over parents (priority(parent) + service(parent))``
  (:func:`atlas_priority`); with no explicit parents, the program's critical path so far.

Priorities are discretised into ``levels`` queues (multi-level feedback queue): level 0 holds
calls whose priority is below ``quantum``, level i ``[quantum * ratio**(i-1), quantum * ratio**i)``,
the last level everything above. A call enters the queue its program's service dictates (not
always the top one, unlike classic MLFQ); a preempted call pushed again is re-levelled with the
service it gained, which is the demotion. Within a level, calls are served in arrival order.
Anti-starvation: a program whose calls have waited ``W`` in total while receiving ``T`` service is
promoted to the front once ``W >= starvation_ratio * max(T, quantum)``.

Unclear in the paper (as we could check it): the number of queues, their boundaries and the
starvation threshold. We take 8 exponentially growing levels from ``quantum = 2 s`` (doubling)
and ``starvation_ratio = 2``; the service unit is engine seconds. Autellix's load balancer sends
short calls to the least loaded engine and keeps long programs' calls where their KV is
(:class:`AutellixRouter`); its 2048-token cut-off is our default.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from typing import ClassVar

from saga.policy.errors import SagaConfigError, UnknownSessionError
from saga.policy.queueing import EmptyQueueError, QueuedRequest, RequestQueue, _LazyHeap
from saga.policy.routing import LoadKind, RouteRequest, RouterEvents, least_loaded


def plas_priority(call_services: Iterable[float]) -> float:
    """PLAS: a program's attained service, ``sum of the service of its calls so far``."""
    return float(sum(call_services))


def atlas_priority(parents: Iterable[tuple[float, float]]) -> float:
    """ATLAS: ``max over parents (priority(parent) + service(parent))``, 0 for a root call."""
    return max((p + s for p, s in parents), default=0.0)


def mlfq_level(priority: float, quantum: float, ratio: float, levels: int) -> int:
    """The queue a priority falls in: 0 below ``quantum``, then ranges growing by ``ratio``."""
    if priority < 0:
        raise SagaConfigError(f"priority must be >= 0, got {priority}")
    bound = quantum
    for level in range(levels - 1):
        if priority < bound:
            return level
        bound *= ratio
    return levels - 1


class _AttainedServiceQueue(RequestQueue):
    """Shared machinery of PLAS and ATLAS: MLFQ levels plus anti-starvation promotion."""

    def __init__(self, levels: int = 8, quantum: float = 2.0, ratio: float = 2.0,
                 starvation_ratio: float = 2.0) -> None:
        if levels < 1:
            raise SagaConfigError(f"levels must be >= 1, got {levels}")
        if not (quantum > 0 and math.isfinite(quantum)):
            raise SagaConfigError(f"quantum must be finite and > 0, got {quantum}")
        if not ratio > 1:
            raise SagaConfigError(f"ratio must be > 1, got {ratio}")
        if not starvation_ratio > 0:
            raise SagaConfigError(f"starvation_ratio must be > 0, got {starvation_ratio}")
        self.levels = levels
        self.quantum = quantum
        self.ratio = ratio
        self.starvation_ratio = starvation_ratio
        self._main = _LazyHeap()
        self._starve = _LazyHeap()
        self._twin: dict[tuple[str, int], int] = {}  # (heap, seq) -> seq in the other heap
        self._wait: dict[str, float] = {}  # program -> total waiting of its served calls
        self._calls: dict[str, set[str]] = {}  # program -> its call ids

    @abstractmethod
    def call_priority(self, req: QueuedRequest) -> float:
        """The call's attained-service priority (smaller is served first)."""

    @abstractmethod
    def program_service(self, program: str) -> float:
        """The program's attained service so far."""

    def level(self, req: QueuedRequest) -> int:
        """The MLFQ level of a call now."""
        return mlfq_level(self.call_priority(req), self.quantum, self.ratio, self.levels)

    def push(self, req: QueuedRequest) -> None:
        """Enqueue at the level its priority dictates, and arm its starvation deadline."""
        self._calls.setdefault(req.session_id, set()).add(req.request_id)
        lvl = self.level(req)
        served = max(self.program_service(req.session_id), self.quantum)
        starve_at = req.arrival_s + self.starvation_ratio * served - self._wait.get(
            req.session_id, 0.0)
        a = self._main.push((lvl, req.arrival_s), req)
        b = self._starve.push((starve_at, req.arrival_s), req)
        self._twin[("main", a)] = b
        self._twin[("starve", b)] = a

    def _take(self, now: float, pop: bool) -> QueuedRequest:
        top = self._starve.peek_entry()
        use_starve = top is not None and float(top[0][0]) <= now  # type: ignore[arg-type]
        heap, other, name, other_name = (
            (self._starve, self._main, "starve", "main") if use_starve
            else (self._main, self._starve, "main", "starve"))
        entry = heap.peek_entry()
        if entry is None:
            raise EmptyQueueError(f"{'pop from' if pop else 'peek into'} an empty "
                                  f"{type(self).__name__}")
        _, seq, req = entry
        if pop:
            heap.pop_entry()
            twin = self._twin.pop((name, seq))
            self._twin.pop((other_name, twin), None)
            other.remove_seq(twin, req.session_id)
            self._wait[req.session_id] = self._wait.get(req.session_id, 0.0) + max(
                now - req.arrival_s, 0.0)
        return req

    def pop(self, now: float = 0.0) -> QueuedRequest:
        """The starving call with the earliest starvation time, else the first of the top
        non-empty level."""
        return self._take(now, pop=True)

    def peek(self, now: float = 0.0) -> QueuedRequest:
        """The call :meth:`pop` would return at ``now``."""
        return self._take(now, pop=False)

    def remove(self, session_id: str) -> list[QueuedRequest]:
        """Remove a program's waiting calls."""
        if not self._main.has_session(session_id):
            raise UnknownSessionError(f"program {session_id!r} has no waiting call here")
        self._starve.remove_session(session_id)
        return self._main.remove_session(session_id)

    def __len__(self) -> int:
        return len(self._main)

    def on_task_done(self, session_id: str) -> None:
        """Forget a finished program's service and waiting history."""
        self._wait.pop(session_id, None)
        self._calls.pop(session_id, None)


class PLAS(_AttainedServiceQueue):
    """Program-Level Attained Service for single-threaded programs (Autellix)."""

    def __init__(self, levels: int = 8, quantum: float = 2.0, ratio: float = 2.0,
                 starvation_ratio: float = 2.0) -> None:
        super().__init__(levels, quantum, ratio, starvation_ratio)
        self._service: dict[str, list[float]] = {}

    def program_service(self, program: str) -> float:
        """:func:`plas_priority` of the program."""
        return plas_priority(self._service.get(program, ()))

    def call_priority(self, req: QueuedRequest) -> float:
        """A call inherits its program's attained service."""
        return self.program_service(req.session_id)

    def on_service(self, req: QueuedRequest, service: float) -> None:
        """Add ``service`` seconds to the program's attained service."""
        if service < 0:
            raise SagaConfigError(f"service must be >= 0, got {service}")
        self._service.setdefault(req.session_id, []).append(service)

    def on_task_done(self, session_id: str) -> None:
        """Forget a finished program."""
        super().on_task_done(session_id)
        self._service.pop(session_id, None)


class ATLAS(_AttainedServiceQueue):
    """Adaptive Thread-Level Attained Service for multi-threaded / DAG programs (Autellix)."""

    def __init__(self, levels: int = 8, quantum: float = 2.0, ratio: float = 2.0,
                 starvation_ratio: float = 2.0) -> None:
        super().__init__(levels, quantum, ratio, starvation_ratio)
        self._prio: dict[str, float] = {}     # call -> priority at arrival
        self._own: dict[str, float] = {}      # call -> its own attained service
        self._critical: dict[str, float] = {}  # program -> critical-path service so far

    def program_service(self, program: str) -> float:
        """The program's critical-path attained service so far."""
        return self._critical.get(program, 0.0)

    def _arrival_priority(self, req: QueuedRequest) -> float:
        known = self._prio.get(req.request_id)
        if known is not None:
            return known
        if not req.parents:
            prio = self.program_service(req.session_id)
        else:
            missing = [p for p in req.parents if p not in self._prio]
            if missing:
                raise SagaConfigError(
                    f"call {req.request_id!r} names unknown parent calls {missing}; push the "
                    "parents first (or leave parents empty to follow the program's last call)")
            prio = atlas_priority((self._prio[p], self._own.get(p, 0.0)) for p in req.parents)
        self._prio[req.request_id] = prio
        return prio

    def call_priority(self, req: QueuedRequest) -> float:
        """Critical-path service up to the call plus what the call itself has received."""
        return self._arrival_priority(req) + self._own.get(req.request_id, 0.0)

    def on_service(self, req: QueuedRequest, service: float) -> None:
        """Add ``service`` to the call and extend its program's critical path."""
        if service < 0:
            raise SagaConfigError(f"service must be >= 0, got {service}")
        prio = self._arrival_priority(req)
        own = self._own.get(req.request_id, 0.0) + service
        self._own[req.request_id] = own
        self._calls.setdefault(req.session_id, set()).add(req.request_id)
        self._critical[req.session_id] = max(self.program_service(req.session_id), prio + own)

    def on_task_done(self, session_id: str) -> None:
        """Forget a finished program and its calls."""
        for call in self._calls.get(session_id, ()):
            self._prio.pop(call, None)
            self._own.pop(call, None)
        self._critical.pop(session_id, None)
        super().on_task_done(session_id)


class AutellixRouter(RouterEvents):
    """Autellix's data-locality-aware load balancer.

    Calls of at most ``short_tokens`` prompt tokens go to the least loaded engine (their prefill
    is cheap to redo); longer calls go to the engine that served the program before, where its KV
    is. The program's engine is the last one it was sent to.
    """

    load_kind: ClassVar[LoadKind] = "utilisation"

    def __init__(self, short_tokens: int = 2048) -> None:
        if short_tokens < 0:
            raise SagaConfigError(f"AutellixRouter.short_tokens must be >= 0, got {short_tokens}")
        self.short_tokens = short_tokens
        self._engine: dict[str, str] = {}

    def route(self, request: RouteRequest, loads: Mapping[str, float]) -> str:
        """Least loaded for short calls or new programs, the program's engine otherwise."""
        dst = least_loaded(loads)  # also validates loads
        home = self._engine.get(request.session_id)
        if request.prompt_tokens > self.short_tokens and home is not None and home in loads:
            dst = home
        self._engine[request.session_id] = dst
        return dst

    def reassign(self, session_id: str, worker: str, now: float = 0.0) -> None:
        """The program moved with its KV (work stealing): that engine is its engine now."""
        if session_id in self._engine:
            self._engine[session_id] = worker

    def forget(self, session_id: str) -> None:
        """Drop a finished program."""
        if self._engine.pop(session_id, None) is None:
            raise UnknownSessionError(f"program {session_id!r} is unknown to the router")


__all__ = [
    "ATLAS",
    "PLAS",
    "AutellixRouter",
    "atlas_priority",
    "mlfq_level",
    "plas_priority",
]
