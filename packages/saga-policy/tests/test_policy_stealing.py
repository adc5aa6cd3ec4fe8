"""Work stealing: the decision rule and a pure plan over a snapshot."""

from __future__ import annotations

import pytest

from saga.policy.errors import SagaConfigError
from saga.policy.stealing import (
    WaitingSession,
    WorkerState,
    WorkStealer,
    kv_transfer_time,
    queueing_delay_saved,
    should_steal,
)

GB = 1e9


def test_transfer_and_saved_formulas() -> None:
    assert kv_transfer_time(10 * GB, 25 * GB, 5e-6) == pytest.approx(5e-6 + 0.4)
    assert kv_transfer_time(0, 25 * GB, 5e-6) == 0.0
    assert queueing_delay_saved(5, 0.2) == pytest.approx(1.0)
    with pytest.raises(SagaConfigError):
        kv_transfer_time(1.0, 0.0, 0.0)
    with pytest.raises(SagaConfigError):
        queueing_delay_saved(-1, 0.1)


@pytest.mark.parametrize(
    ("idle", "thief", "victim", "transfer", "saved", "expected"),
    [
        (0.1, 0.1, 0.3, 0.4, 1.0, True),     # 0.3 > 2 * 0.1, transfer < saved
        (0.09, 0.1, 0.3, 0.4, 1.0, False),   # not idle long enough
        (0.1, 0.1, 0.2, 0.4, 1.0, False),    # 0.2 is not > 2 * 0.1
        (0.1, 0.0, 0.5, 1.0, 1.0, False),    # transfer == saved: no gain
        (0.5, 0.0, 0.5, 0.9, 1.0, True),
    ],
)
def test_should_steal(idle: float, thief: float, victim: float, transfer: float, saved: float,
                      expected: bool) -> None:
    assert should_steal(idle, thief, victim, transfer, saved, t_idle=0.1, r_max=2.0) is expected


def test_plan_steals_largest_gain_from_most_loaded() -> None:
    stealer = WorkStealer(t_idle=0.1, r_max=2.0)
    waiting = (WaitingSession("s0", 0.0), WaitingSession("s1", 10 * GB),
               WaitingSession("s2", 1 * GB), WaitingSession("s3", 50 * GB))
    workers = [
        WorkerState("idle", load=0.0, idle_since=9.8, node="n1"),
        WorkerState("busy", load=0.9, waiting=waiting, step_time_s=0.5, node="n0"),
        WorkerState("mid", load=0.5, waiting=(WaitingSession("m0"), WaitingSession("m1")),
                    step_time_s=0.1, node="n1"),
    ]
    plan = stealer.plan(10.0, workers)
    # From "busy": gains over IB 25 GB/s: s1 = 0.5 - 0.4 = 0.1, s2 = 1.0 - 0.04 = 0.96,
    # s3 = 1.5 - 2.0 < 0, s0 saves nothing -> s2.
    assert len(plan) == 1
    steal = plan[0]
    assert (steal.session_id, steal.src, steal.dst) == ("s2", "busy", "idle")
    assert steal.saved_s == pytest.approx(1.0)
    assert steal.transfer_s == pytest.approx(5e-6 + 0.04)
    assert steal.gain_s == pytest.approx(1.0 - 0.04 - 5e-6)


def test_plan_needs_idle_time_and_uses_nvlink_on_same_node() -> None:
    stealer = WorkStealer()
    waiting = (WaitingSession("a"), WaitingSession("b", 60 * GB))
    busy = WorkerState("busy", load=1.0, waiting=waiting, step_time_s=0.2, node="n0")
    assert stealer.plan(10.0, [WorkerState("t", 0.0, idle_since=9.95, node="n0"), busy]) == []
    plan = stealer.plan(10.0, [WorkerState("t", 0.0, idle_since=9.0, node="n0"), busy])
    # Same node: 60 GB over NVLink 600 GB/s = 0.1 s < 0.2 s saved (over IB it would be 2.4 s).
    assert [(s.session_id, s.src, s.dst) for s in plan] == [("b", "busy", "t")]
    assert plan[0].transfer_s == pytest.approx(0.1 + 5e-6)
    assert plan[0].saved_s == pytest.approx(0.2)


def test_plan_one_steal_per_victim() -> None:
    stealer = WorkStealer()
    waiting = (WaitingSession("a"), WaitingSession("b"), WaitingSession("c"))
    workers = [WorkerState("t1", 0.0, idle_since=0.0), WorkerState("t2", 0.0, idle_since=0.5),
               WorkerState("v", 1.0, waiting=waiting, step_time_s=1.0)]
    plan = stealer.plan(1.0, workers)
    assert [(s.session_id, s.dst) for s in plan] == [("c", "t1")]


def test_plan_rejects_duplicate_ids_and_bad_params() -> None:
    with pytest.raises(SagaConfigError, match="unique"):
        WorkStealer().plan(0.0, [WorkerState("a", 0.0), WorkerState("a", 1.0)])
    with pytest.raises(SagaConfigError, match="r_max"):
        WorkStealer(r_max=0.5)
    with pytest.raises(SagaConfigError, match="t_idle"):
        WorkStealer(t_idle=-1.0)


def test_for_cluster_uses_reference_links() -> None:
    from saga.policy.spec import REFERENCE_CLUSTER

    s = WorkStealer.for_cluster(REFERENCE_CLUSTER)
    assert s.inter_node_bytes_per_s == 200e9 / 8
    assert s.intra_node_bytes_per_s == 600e9


def test_a_blocked_head_waits_too_so_it_can_be_stolen() -> None:
    stealer = WorkStealer()
    head = (WaitingSession("h", 1 * GB),)
    thief = WorkerState("t", 0.0, idle_since=9.0, node="n0")
    free = WorkerState("v", 1.0, waiting=head, step_time_s=0.5, node="n0")
    assert stealer.plan(10.0, [thief, free]) == []  # the head is served next: nothing saved
    blocked = WorkerState("v", 1.0, waiting=head, step_time_s=0.5, node="n0", head_blocked=True)
    plan = stealer.plan(10.0, [thief, blocked])
    assert [(s.session_id, s.saved_s) for s in plan] == [("h", pytest.approx(0.5))]
