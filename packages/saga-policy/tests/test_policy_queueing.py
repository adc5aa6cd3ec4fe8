"""Waiting-queue orders: FCFS, BFS, DFS, SAGA's hybrid and program-level FCFS."""

from __future__ import annotations

import pytest

from saga.policy.errors import SagaConfigError, UnknownSessionError
from saga.policy.queueing import (
    BFSQueue,
    DFSQueue,
    EmptyQueueError,
    FCFSQueue,
    HybridQueue,
    ProgramFCFSQueue,
    QueuedRequest,
    RequestQueue,
)


def q(rid: str, sid: str, t: float, steps: int = 0, start: float | None = None) -> QueuedRequest:
    return QueuedRequest(rid, sid, arrival_s=t, steps_done=steps, task_start_s=start)


REQS = [q("r1", "A", 1.0, steps=5), q("r2", "B", 2.0, steps=0), q("r3", "C", 3.0, steps=9),
        q("r4", "D", 4.0, steps=0)]


def drain(queue: RequestQueue) -> list[str]:
    out = []
    while len(queue):
        out.append(queue.pop().request_id)
    return out


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (FCFSQueue, ["r1", "r2", "r3", "r4"]),
        (BFSQueue, ["r2", "r4", "r1", "r3"]),
        (DFSQueue, ["r3", "r1", "r2", "r4"]),
    ],
)
def test_orders(cls: type[RequestQueue], expected: list[str]) -> None:
    queue = cls()
    for r in reversed(REQS):
        queue.push(r)
    assert queue.peek().request_id == expected[0]
    assert drain(queue) == expected


def test_program_fcfs_orders_by_task_start() -> None:
    queue = ProgramFCFSQueue()
    queue.push(q("late-call-old-task", "A", 10.0, start=0.0))
    queue.push(q("early-call-new-task", "B", 5.0, start=4.0))
    queue.push(q("first-call", "C", 4.5))
    assert drain(queue) == ["late-call-old-task", "early-call-new-task", "first-call"]


def test_remove_session_and_errors() -> None:
    queue = FCFSQueue()
    for r in REQS:
        queue.push(r)
    queue.push(q("r5", "A", 5.0))
    removed = queue.remove("A")
    assert sorted(r.request_id for r in removed) == ["r1", "r5"]
    assert len(queue) == 3
    assert drain(queue) == ["r2", "r3", "r4"]
    with pytest.raises(UnknownSessionError):
        queue.remove("A")
    with pytest.raises(EmptyQueueError):
        queue.pop()
    with pytest.raises(EmptyQueueError):
        queue.peek()


def test_request_validation() -> None:
    with pytest.raises(SagaConfigError, match="steps_done"):
        q("r", "s", 0.0, steps=-1)
    with pytest.raises(SagaConfigError, match="arrival_s"):
        q("r", "s", float("nan"))


def test_hybrid_dfs_inside_active_set_bfs_admission() -> None:
    queue = HybridQueue(max_active=2)
    queue.push(q("a0", "A", 0.0, steps=0))
    queue.push(q("b0", "B", 1.0, steps=0))
    queue.push(q("c0", "C", 2.0, steps=0))
    # Admission in BFS order: A then B fill the two active slots.
    assert queue.pop().request_id == "a0"
    assert queue.pop().request_id == "b0"
    assert queue.active_tasks == {"A", "B"}
    # A returns from its tool call with a deeper step: served before the waiting new task C.
    queue.push(q("a1", "A", 3.0, steps=1))
    assert queue.pop().request_id == "a1"
    # Both active tasks in tool calls, set full: C is served (work-conserving) but not admitted.
    assert queue.pop().request_id == "c0"
    assert queue.active_tasks == {"A", "B"}
    # B deeper than A: DFS among active.
    queue.push(q("a2", "A", 4.0, steps=2))
    queue.push(q("b1", "B", 5.0, steps=7))
    queue.push(q("d0", "D", 3.5, steps=0))
    assert queue.pop().request_id == "b1"
    assert queue.pop().request_id == "a2"
    # A finishes: D is admitted into the free slot.
    queue.on_task_done("A")
    assert queue.pop().request_id == "d0"
    assert queue.active_tasks == {"B", "D"}
    assert len(queue) == 0


def test_hybrid_remove_releases_slot() -> None:
    queue = HybridQueue(max_active=1)
    queue.push(q("a0", "A", 0.0))
    queue.pop()
    queue.push(q("a1", "A", 1.0, steps=1))
    assert [r.request_id for r in queue.remove("A")] == ["a1"]
    assert queue.active_tasks == frozenset()
    with pytest.raises(UnknownSessionError):
        queue.remove("A")
    with pytest.raises(SagaConfigError):
        HybridQueue(max_active=0)
    with pytest.raises(EmptyQueueError):
        queue.pop()
