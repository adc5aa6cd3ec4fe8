"""Waiting-queue orders over the calls of agent tasks.

A stock engine serves waiting requests first come, first served. With agent tasks the order
decides how many tasks are in flight at once, and so how much KV competes for HBM:

- :class:`FCFSQueue`: arrival order (vLLM, SGLang, TensorRT-LLM defaults).
- :class:`BFSQueue`: breadth first, the task with the fewest steps served goes first, so all
  tasks advance together (round robin over tasks).
- :class:`DFSQueue`: depth first, the deepest task goes first, so started tasks finish.
- :class:`HybridQueue`: SAGA's hybrid, DFS inside a bounded set of active tasks, BFS admission.
- :class:`ProgramFCFSQueue`: calls ordered by their task's start (Continuum's program-level FCFS).

All are heaps with lazy deletion (O(log n) push/pop, O(k) removal of a task's k calls); ties are
broken by arrival then push order, so the order is deterministic.
"""

from __future__ import annotations

import heapq
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass

from saga.policy.errors import SagaConfigError, SagaError, UnknownSessionError


class EmptyQueueError(SagaError, IndexError):
    """pop/peek on an empty queue."""


@dataclass(frozen=True)
class QueuedRequest:
    """One waiting LLM call of an agent task (session).

    ``steps_done`` is the task's progress (LLM calls already served), ``remaining_work`` its
    expected remaining work (tokens, from the AEG), ``task_start_s`` when the task's first call
    arrived (defaults to this call's arrival), ``parents`` the calls this one depends on (for DAG
    programs; empty means the task's previous call).
    """

    request_id: str
    session_id: str
    arrival_s: float
    steps_done: int = 0
    remaining_work: float = 0.0
    tenant: str = "default"
    task_start_s: float | None = None
    parents: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not math.isfinite(self.arrival_s):
            raise SagaConfigError(f"QueuedRequest.arrival_s must be finite, got {self.arrival_s}")
        if self.steps_done < 0:
            raise SagaConfigError(
                f"QueuedRequest.steps_done must be >= 0, got {self.steps_done}")
        if self.remaining_work < 0:
            raise SagaConfigError(
                f"QueuedRequest.remaining_work must be >= 0, got {self.remaining_work}")

    @property
    def task_start(self) -> float:
        """Arrival of the task's first call."""
        return self.arrival_s if self.task_start_s is None else self.task_start_s


class _LazyHeap:
    """A min-heap of requests by key, with removal by session via tombstones."""

    def __init__(self) -> None:
        self._heap: list[tuple[tuple[Hashable, ...], int, QueuedRequest]] = []
        self._alive: dict[int, QueuedRequest] = {}
        self._by_session: dict[str, set[int]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._alive)

    def push(self, key: tuple[Hashable, ...], req: QueuedRequest) -> int:
        seq = next(self._seq)
        heapq.heappush(self._heap, (key, seq, req))
        self._alive[seq] = req
        self._by_session.setdefault(req.session_id, set()).add(seq)
        return seq

    def _prune(self) -> None:
        while self._heap and self._heap[0][1] not in self._alive:
            heapq.heappop(self._heap)

    def peek_entry(self) -> tuple[tuple[Hashable, ...], int, QueuedRequest] | None:
        self._prune()
        return self._heap[0] if self._heap else None

    def peek(self) -> QueuedRequest | None:
        entry = self.peek_entry()
        return None if entry is None else entry[2]

    def pop_entry(self) -> tuple[int, QueuedRequest] | None:
        self._prune()
        if not self._heap:
            return None
        _, seq, req = heapq.heappop(self._heap)
        self._kill(seq, req.session_id)
        return seq, req

    def pop(self) -> QueuedRequest | None:
        entry = self.pop_entry()
        return None if entry is None else entry[1]

    def _kill(self, seq: int, session_id: str) -> None:
        self._alive.pop(seq, None)
        seqs = self._by_session.get(session_id)
        if seqs is not None:
            seqs.discard(seq)
            if not seqs:
                del self._by_session[session_id]

    def has_session(self, session_id: str) -> bool:
        return session_id in self._by_session

    def remove_session(self, session_id: str) -> list[QueuedRequest]:
        seqs = self._by_session.pop(session_id, set())
        return [self._alive.pop(seq) for seq in sorted(seqs)]

    def remove_seq(self, seq: int, session_id: str) -> None:
        self._kill(seq, session_id)


class RequestQueue(ABC):
    """The waiting-queue interface every order implements.

    ``pop``/``peek`` take ``now`` so that time-dependent orders (anti-starvation) share the
    signature; the hooks :meth:`on_service` and :meth:`on_task_done` are no-ops unless an order
    needs them.
    """

    @abstractmethod
    def push(self, req: QueuedRequest) -> None:
        """Enqueue a call."""

    @abstractmethod
    def pop(self, now: float = 0.0) -> QueuedRequest:
        """Dequeue the next call (:class:`EmptyQueueError` when empty)."""

    @abstractmethod
    def peek(self, now: float = 0.0) -> QueuedRequest:
        """The call :meth:`pop` would return at ``now``."""

    @abstractmethod
    def remove(self, session_id: str) -> list[QueuedRequest]:
        """Remove a session's waiting calls (:class:`UnknownSessionError` if it has none)."""

    @abstractmethod
    def __len__(self) -> int:
        """Waiting calls."""

    def on_service(self, req: QueuedRequest, service: float) -> None:
        """The engine served ``service`` units (seconds or tokens) of ``req``; no-op here."""
        return None

    def on_task_done(self, session_id: str) -> None:
        """The task finished; drop any per-task state (none here)."""
        return None


class _KeyedQueue(RequestQueue):
    """A single heap ordered by :meth:`key`."""

    def __init__(self) -> None:
        self._heap = _LazyHeap()

    @abstractmethod
    def key(self, req: QueuedRequest) -> tuple[Hashable, ...]:
        """Sort key of a call (smaller first)."""

    def push(self, req: QueuedRequest) -> None:
        """Enqueue a call."""
        self._heap.push(self.key(req), req)

    def pop(self, now: float = 0.0) -> QueuedRequest:
        """Dequeue the first call in this order."""
        req = self._heap.pop()
        if req is None:
            raise EmptyQueueError(f"pop from an empty {type(self).__name__}")
        return req

    def peek(self, now: float = 0.0) -> QueuedRequest:
        """The call :meth:`pop` would return."""
        req = self._heap.peek()
        if req is None:
            raise EmptyQueueError(f"peek into an empty {type(self).__name__}")
        return req

    def remove(self, session_id: str) -> list[QueuedRequest]:
        """Remove every waiting call of a session (it was cancelled, stolen or migrated)."""
        if not self._heap.has_session(session_id):
            raise UnknownSessionError(f"session {session_id!r} has no waiting call here")
        return self._heap.remove_session(session_id)

    def __len__(self) -> int:
        return len(self._heap)


class FCFSQueue(_KeyedQueue):
    """First come, first served over calls."""

    def key(self, req: QueuedRequest) -> tuple[Hashable, ...]:
        """``(arrival,)``."""
        return (req.arrival_s,)


class BFSQueue(_KeyedQueue):
    """Breadth first: the task with the fewest steps served goes first (then arrival)."""

    def key(self, req: QueuedRequest) -> tuple[Hashable, ...]:
        """``(steps_done, arrival)``."""
        return (req.steps_done, req.arrival_s)


class DFSQueue(_KeyedQueue):
    """Depth first: the task with the most steps served goes first (then arrival)."""

    def key(self, req: QueuedRequest) -> tuple[Hashable, ...]:
        """``(-steps_done, arrival)``."""
        return (-req.steps_done, req.arrival_s)


class ProgramFCFSQueue(_KeyedQueue):
    """Program-level FCFS: calls ordered by their task's start, as Continuum schedules."""

    def key(self, req: QueuedRequest) -> tuple[Hashable, ...]:
        """``(task_start, arrival)``."""
        return (req.task_start, req.arrival_s)


class HybridQueue(RequestQueue):
    """SAGA's hybrid order: DFS inside at most ``max_active`` active tasks, BFS admission.

    The rule, exactly:

    1. If a waiting call belongs to an active task, serve the deepest such call (most steps done,
       then arrival): started tasks run to completion, keeping their KV hot.
    2. Otherwise, if fewer than ``max_active`` tasks are active, admit the waiting task with the
       fewest steps done (then arrival), mark it active, and serve its call.
    3. Otherwise (every active task is in a tool call and the set is full) serve the BFS-first
       waiting call without admitting its task, so the instance never idles with work waiting.

    A task stays active until :meth:`on_task_done` (or :meth:`remove`) — also while it waits on a
    tool, since its KV is pinned then. ``max_active`` bounds the working set of KV: DFS alone
    starves new tasks, BFS alone thrashes the cache; the default 32 is about the number of
    sequences a TP4 70B instance batches at once.
    """

    def __init__(self, max_active: int = 32) -> None:
        if max_active < 1:
            raise SagaConfigError(f"HybridQueue.max_active must be >= 1, got {max_active}")
        self.max_active = max_active
        self._active: set[str] = set()
        self._deep = _LazyHeap()  # calls of active tasks, DFS order
        self._wide = _LazyHeap()  # calls of other tasks, BFS order

    @property
    def active_tasks(self) -> frozenset[str]:
        """Tasks currently admitted."""
        return frozenset(self._active)

    def push(self, req: QueuedRequest) -> None:
        """Enqueue a call into the DFS heap if its task is active, else the BFS heap."""
        if req.session_id in self._active:
            self._deep.push((-req.steps_done, req.arrival_s), req)
        else:
            self._wide.push((req.steps_done, req.arrival_s), req)

    def _admit(self, session_id: str) -> None:
        self._active.add(session_id)
        for other in self._wide.remove_session(session_id):
            self._deep.push((-other.steps_done, other.arrival_s), other)

    def _choose(self) -> tuple[QueuedRequest, bool]:
        """The next call and whether it comes from the BFS side."""
        deep = self._deep.peek()
        if deep is not None:
            return deep, False
        wide = self._wide.peek()
        if wide is None:
            raise EmptyQueueError("pop from an empty HybridQueue")
        return wide, True

    def peek(self, now: float = 0.0) -> QueuedRequest:
        """The call :meth:`pop` would return."""
        return self._choose()[0]

    def pop(self, now: float = 0.0) -> QueuedRequest:
        """Dequeue by the hybrid rule (see the class docstring)."""
        req, from_wide = self._choose()
        if not from_wide:
            popped = self._deep.pop()
        elif len(self._active) < self.max_active:
            self._admit(req.session_id)
            popped = self._deep.pop()
        else:
            popped = self._wide.pop()
        assert popped is not None
        return popped

    def remove(self, session_id: str) -> list[QueuedRequest]:
        """Remove a task's waiting calls and release its active slot."""
        if not (self._deep.has_session(session_id) or self._wide.has_session(session_id)
                or session_id in self._active):
            raise UnknownSessionError(f"session {session_id!r} is unknown to this HybridQueue")
        self._active.discard(session_id)
        return self._deep.remove_session(session_id) + self._wide.remove_session(session_id)

    def on_task_done(self, session_id: str) -> None:
        """Free the task's active slot (its queued calls, if any, stay queued on the BFS side)."""
        if session_id in self._active:
            self._active.discard(session_id)
            for req in self._deep.remove_session(session_id):
                self._wide.push((req.steps_done, req.arrival_s), req)

    def __len__(self) -> int:
        return len(self._deep) + len(self._wide)


__all__ = [
    "BFSQueue",
    "DFSQueue",
    "EmptyQueueError",
    "FCFSQueue",
    "HybridQueue",
    "ProgramFCFSQueue",
    "QueuedRequest",
    "RequestQueue",
]
