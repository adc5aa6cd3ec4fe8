"""Autellix's PLAS / ATLAS program-level attained-service queues and its router."""

from __future__ import annotations

import pytest

from saga.policy.autellix import (
    ATLAS,
    PLAS,
    AutellixRouter,
    atlas_priority,
    mlfq_level,
    plas_priority,
)
from saga.policy.errors import SagaConfigError, UnknownSessionError
from saga.policy.queueing import EmptyQueueError, QueuedRequest
from saga.policy.routing import RouteRequest


def q(rid: str, program: str, t: float, parents: tuple[str, ...] = ()) -> QueuedRequest:
    return QueuedRequest(rid, program, arrival_s=t, parents=parents)


def test_priority_formulas() -> None:
    assert plas_priority([1.0, 2.5, 0.5]) == 4.0
    assert plas_priority([]) == 0.0
    assert atlas_priority([(3.0, 1.0), (1.0, 5.0)]) == 6.0
    assert atlas_priority([]) == 0.0


@pytest.mark.parametrize(
    ("prio", "level"),
    [(0.0, 0), (1.99, 0), (2.0, 1), (3.99, 1), (4.0, 2), (255.0, 7), (1e9, 7)],
)
def test_mlfq_levels(prio: float, level: int) -> None:
    # quantum 2, ratio 2, 8 levels: [0,2) [2,4) [4,8) ... [128,256) is level 7 = last.
    assert mlfq_level(prio, 2.0, 2.0, 8) == level


def test_plas_serves_least_attained_program_first() -> None:
    plas = PLAS()
    long_call = q("L1", "long", 0.0)
    plas.on_service(long_call, 10.0)           # program "long" has 10 s: level 3
    plas.push(q("L2", "long", 1.0))
    plas.push(q("S1", "short", 2.0))           # new program: level 0
    plas.push(q("M1", "mid", 3.0))
    plas.on_service(q("M0", "mid", 0.0), 2.5)  # mid: level 1, but M1 was levelled at push (0)
    assert [plas.pop(3.0).request_id for _ in range(3)] == ["S1", "M1", "L2"]
    assert plas.program_service("long") == 10.0


def test_plas_anti_starvation_promotes_long_waiting_program() -> None:
    plas = PLAS(starvation_ratio=2.0)
    plas.on_service(q("x", "big", 0.0), 100.0)   # level 6
    plas.push(q("B", "big", 0.0))                # starves at 0 + 2 * 100 = 200
    plas.push(q("N", "new", 199.0))            # starves at 199 + 2 * max(0, quantum 2) = 203
    plas.push(q("N2", "new2", 199.5))
    assert plas.peek(199.9).request_id == "N"  # level 0 first while nobody starves
    # At t = 200 "big" has waited 200 >= 2 * 100: promoted ahead of level-0 work.
    assert plas.pop(200.0).request_id == "B"
    assert plas.pop(200.0).request_id == "N"
    # At t = 300 both new programs starve; the one that starved first (N2 at 203.5) goes.
    assert plas.pop(300.0).request_id == "N2"
    assert len(plas) == 0


def test_atlas_uses_critical_path_of_parents() -> None:
    atlas = ATLAS()
    root = q("r", "p", 0.0)
    atlas.push(root)
    assert atlas.pop(0.0) is root
    atlas.on_service(root, 3.0)
    left, right = q("a", "p", 1.0, ("r",)), q("b", "p", 1.0, ("r",))
    atlas.push(left)
    atlas.push(right)
    atlas.pop(1.0)
    atlas.pop(1.0)
    atlas.on_service(left, 1.0)    # path r->a = 4
    atlas.on_service(right, 6.0)   # path r->b = 9
    join = q("j", "p", 2.0, ("a", "b"))
    assert atlas.call_priority(join) == 9.0
    assert atlas.program_service("p") == 9.0
    # A single-threaded program: ATLAS equals PLAS.
    atlas.on_service(q("s0", "chain", 0.0), 1.5)
    atlas.on_service(q("s1", "chain", 0.0), 2.0)
    assert atlas.call_priority(q("s2", "chain", 0.0)) == 3.5
    with pytest.raises(SagaConfigError, match="unknown parent"):
        atlas.push(q("orphan", "p", 0.0, ("nope",)))


def test_remove_and_task_done() -> None:
    plas = PLAS()
    plas.push(q("a", "A", 0.0))
    plas.push(q("b", "B", 1.0))
    assert [r.request_id for r in plas.remove("A")] == ["a"]
    with pytest.raises(UnknownSessionError):
        plas.remove("A")
    assert plas.pop(5.0).request_id == "b"
    with pytest.raises(EmptyQueueError):
        plas.pop(5.0)
    plas.on_service(q("b", "B", 1.0), 4.0)
    plas.on_task_done("B")
    assert plas.program_service("B") == 0.0
    with pytest.raises(SagaConfigError):
        PLAS(levels=0)


def test_autellix_router_locality_for_long_calls() -> None:
    router = AutellixRouter(short_tokens=2048)
    assert router.route(RouteRequest("p", prompt_tokens=100), {"a": 0.2, "b": 0.1}) == "b"
    # Long call: stays on the program's engine even if it is more loaded now.
    assert router.route(RouteRequest("p", prompt_tokens=4096), {"a": 0.1, "b": 0.9}) == "b"
    # Short call: least loaded.
    assert router.route(RouteRequest("p", prompt_tokens=1000), {"a": 0.1, "b": 0.9}) == "a"
    router.forget("p")
    with pytest.raises(UnknownSessionError):
        router.forget("p")
