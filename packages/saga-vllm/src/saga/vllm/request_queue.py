"""`SagaRequestQueue`: vLLM's waiting queue in the order of a saga-policy queue, with AFS.

vLLM's scheduler reads its waiting requests through the ``RequestQueue`` interface only, so any
order of ``saga.policy`` (FCFS, BFS, DFS, hybrid, program-level FCFS, Autellix's PLAS and ATLAS)
runs behind it unchanged. Fairness works as in the simulator: when requests of several tenants
wait, AFS picks the session to serve (tenant credit, then urgency) and that session's first call
goes next; otherwise the queue's order decides.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from saga.policy.afs import AFS
from saga.policy.errors import UnknownSessionError
from saga.policy.queueing import EmptyQueueError, HybridQueue, QueuedRequest
from saga.policy.queueing import RequestQueue as PolicyQueue
from vllm.v1.core.sched.request_queue import RequestQueue


class SagaRequestQueue(RequestQueue):  # type: ignore[misc]
    """vLLM's waiting queue ordered by a saga-policy queue, and by AFS across tenants.

    vLLM expects ``pop_request`` to return what ``peek_request`` just showed, so the peeked
    request (and the time it was peeked at: PLAS/ATLAS promote starving calls by time) is
    remembered until the queue changes. Requests vLLM puts back at the front (preempted or
    skipped ones) stay ahead of the policy order, as in vLLM's FCFS deque. Single requests are
    removed lazily (the policy queues remove by session). Iteration yields the front, then the
    rest by arrival (the policy order is only defined by popping).

    ``describe`` gives the policy's view of a request; ``clock`` is AFS's (the scheduler's),
    ``order_clock`` the queue's, on the clock of ``QueuedRequest.arrival_s`` (vLLM stamps
    ``arrival_time`` with ``time.time``). A popped request's description is kept until
    :meth:`on_finished` feeds its service time back (what PLAS and ATLAS rank by).
    """

    def __init__(self, order: PolicyQueue, describe: Callable[[Any], QueuedRequest],
                 afs: AFS | None = None, clock: Callable[[], float] = time.monotonic,
                 order_clock: Callable[[], float] = time.time) -> None:
        self._order = order
        self._afs = afs
        self._describe = describe
        self._clock = clock
        self._order_clock = order_clock
        self._front: collections.deque[Any] = collections.deque()
        self._live: dict[str, Any] = {}
        self._queued: dict[str, QueuedRequest] = {}
        self._tenants: collections.Counter[str] = collections.Counter()
        self._served: dict[str, QueuedRequest] = {}
        self._peeked: Any = None
        self._peeked_at = 0.0
        self._peeked_by_afs = False

    @property
    def order(self) -> PolicyQueue:
        """The policy queue giving the order."""
        return self._order

    # -- vLLM's RequestQueue interface -----------------------------------------------------------
    def add_request(self, request: Any) -> None:
        """Queue a request in policy order."""
        self._peeked = None
        q = self._describe(request)
        self._live[request.request_id] = request
        self._queued[request.request_id] = q
        self._tenants[q.tenant] += 1
        self._order.push(q)

    def _next(self) -> Any:
        if self._peeked is not None:
            return self._peeked
        if self._front:
            self._peeked, self._peeked_by_afs = self._front[0], False
            return self._peeked
        if not self._live:
            raise IndexError("peek from an empty queue")
        self._peeked_at = self._order_clock()
        picked = self._afs_next() if self._afs is not None and len(self._tenants) > 1 else None
        self._peeked_by_afs = picked is not None
        self._peeked = picked if picked is not None else self._order_next()
        return self._peeked

    def _order_next(self) -> Any:
        while True:
            try:
                q = self._order.peek(self._peeked_at)
            except EmptyQueueError:
                raise IndexError("peek from an empty queue") from None
            req = self._live.get(q.request_id)
            if req is not None:
                return req
            self._order.pop(self._peeked_at)  # a tombstone of a removed request

    def _afs_next(self) -> Any | None:
        """The first call (by arrival) of the session AFS picks among the waiting sessions it
        tracks (None when it tracks none of them: the order decides)."""
        assert self._afs is not None
        first: dict[str, Any] = {}
        for rid, req in self._live.items():
            session = self._queued[rid].session_id
            if session not in first or req.arrival_time < first[session].arrival_time:
                first[session] = req
        known = [s for s in sorted(first) if _tracks(self._afs, s)]
        return first[self._afs.pick(known, self._clock())] if known else None

    def peek_request(self) -> Any:
        """The request ``pop_request`` returns next."""
        return self._next()

    def pop_request(self) -> Any:
        """Take the next request out."""
        req = self._next()
        self._peeked = None
        if self._front and self._front[0] is req:
            self._front.popleft()
            return req
        rid = req.request_id
        if self._peeked_by_afs:
            self._take_session_call(rid)
        else:
            popped = self._order.pop(self._peeked_at)
            assert popped.request_id == rid
        self._forget(rid, served=True)
        return req

    def _take_session_call(self, rid: str) -> None:
        """Take one call out of the policy queue, which removes by session: remove the
        session's calls and push the others back (as the simulator's AFS does)."""
        q = self._queued[rid]
        for other in self._order.remove(q.session_id):
            if other.request_id != rid and other.request_id in self._live:
                self._order.push(other)

    def _forget(self, rid: str, served: bool) -> None:
        self._live.pop(rid, None)
        q = self._queued.pop(rid)
        self._tenants[q.tenant] -= 1
        if not self._tenants[q.tenant]:
            del self._tenants[q.tenant]
        if served:
            self._served[rid] = q

    def prepend_request(self, request: Any) -> None:
        """Put a request back at the very front (vLLM: preempted)."""
        self._peeked = None
        self._front.appendleft(request)

    def prepend_requests(self, requests: Iterable[Any]) -> None:
        """Put requests back at the front (reversed, like ``deque.extendleft``)."""
        self._peeked = None
        self._front.extendleft(requests)

    def remove_request(self, request: Any) -> None:
        """Drop one request (aborted or finished while waiting)."""
        self.remove_requests([request])

    def remove_requests(self, requests: Iterable[Any]) -> None:
        """Drop requests; ones in the policy order leave tombstones skipped on peek."""
        self._peeked = None
        drop = {r.request_id for r in requests}
        if self._front:
            kept = [r for r in self._front if r.request_id not in drop]
            if len(kept) != len(self._front):
                self._front = collections.deque(kept)
        for rid in drop:
            if rid in self._live:
                self._forget(rid, served=False)

    def __bool__(self) -> bool:
        return bool(self._front) or bool(self._live)

    def __len__(self) -> int:
        return len(self._front) + len(self._live)

    def __iter__(self) -> Iterator[Any]:
        yield from list(self._front)
        yield from sorted(self._live.values(), key=lambda r: r.arrival_time)

    # -- saga hooks ------------------------------------------------------------------------------
    def on_finished(self, request_id: str, service_s: float | None) -> None:
        """A request left the engine: feed the order the engine seconds it was served
        (``on_service``; None: it never ran) and forget it."""
        q = self._served.pop(request_id, None)
        if q is not None and service_s is not None:
            self._order.on_service(q, max(service_s, 0.0))

    def session_count(self) -> int:
        """Sessions this queue tracks a waiting request of (zero when it is empty)."""
        return len({q.session_id for q in self._queued.values()})

    def served_count(self) -> int:
        """Requests taken out and not yet finished (zero on an idle engine)."""
        return len(self._served)

    def active_task_count(self) -> int:
        """Tasks holding a hybrid slot (zero for the other orders): a task that never ends
        holds its slot for good, which is why tasks must be ended."""
        return len(self._order.active_tasks) if isinstance(self._order, HybridQueue) else 0

    def on_task_done(self, session_id: str) -> None:
        """The session's task ended (its hybrid slot frees up, PLAS/ATLAS forget it)."""
        self._order.on_task_done(session_id)


def _tracks(afs: AFS, session: str) -> bool:
    """Whether AFS tracks ``session`` (a prefetch of an ended task may still wait)."""
    try:
        afs.task(session)
    except UnknownSessionError:
        return False
    return True


__all__ = ["SagaRequestQueue"]
