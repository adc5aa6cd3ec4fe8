"""AFS: urgency formula, service accounting, drift-plus-penalty shares."""

from __future__ import annotations

import math

import pytest

from saga.policy.afs import AFS, afs_urgency
from saga.policy.errors import SagaConfigError, UnknownSessionError


def test_afs_urgency_formula() -> None:
    assert afs_urgency(100.0, 40.0, 20.0, 5.0) == pytest.approx((100 - 40) / (20 - 5))
    assert afs_urgency(10.0, 10.0, 20.0, 5.0) == 0.0
    assert afs_urgency(10.0, 12.0, 20.0, 5.0) == 0.0   # overserved estimate: clipped
    assert afs_urgency(10.0, 0.0, 5.0, 5.0) == math.inf  # at the deadline with work left
    assert afs_urgency(10.0, 0.0, 4.0, 5.0) == math.inf  # past it
    assert afs_urgency(0.0, 0.0, 4.0, 5.0) == 0.0
    with pytest.raises(SagaConfigError):
        afs_urgency(-1.0, 0.0, 1.0, 0.0)
    with pytest.raises(SagaConfigError, match="NaN"):
        afs_urgency(1.0, 0.0, math.nan, 0.0)


def test_urgent_task_is_picked_first() -> None:
    afs = AFS(capacity_per_s=100.0)
    afs.add_task("relaxed", "t", work=100.0, deadline_s=100.0)   # 1 unit/s
    afs.add_task("urgent", "t", work=100.0, deadline_s=10.0)     # 10 units/s
    afs.add_task("late", "t", work=5.0, deadline_s=-1.0)         # past deadline
    assert afs.order(["relaxed", "urgent", "late"], now=0.0) == ["late", "urgent", "relaxed"]
    assert afs.pick(["relaxed", "urgent"], now=0.0) == "urgent"


def test_service_accounting_changes_urgency() -> None:
    afs = AFS(capacity_per_s=10.0)
    afs.add_task("x", "t", work=100.0, deadline_s=50.0)
    afs.record_service("x", 30.0)
    assert afs.task("x").service == 30.0
    assert afs.urgency("x", now=10.0) == pytest.approx((100 - 30) / (50 - 10))
    afs.update_estimate("x", 60.0)
    assert afs.urgency("x", now=10.0) == pytest.approx((60 - 30) / 40)
    afs.finish("x")
    with pytest.raises(UnknownSessionError):
        afs.task("x")
    with pytest.raises(SagaConfigError):
        afs.record_service("y", -1.0)


def test_total_demand_below_capacity_gets_what_it_needs() -> None:
    afs = AFS(capacity_per_s=100.0, epoch_s=1.0)
    afs.add_task("a", "A", work=20.0, deadline_s=10.0)
    afs.add_task("b", "B", work=30.0, deadline_s=10.0)
    shares = afs.step_epoch(now=0.0)
    # Remaining work per epoch budget (100): 0.2 and 0.3, total 0.5 <= 1.
    assert shares == {"A": pytest.approx(0.2), "B": pytest.approx(0.3)}


def test_tenant_with_unmet_slo_gets_larger_share_next_epoch() -> None:
    afs = AFS(capacity_per_s=10.0, epoch_s=1.0, V=0.5)
    afs.add_task("a", "A", work=1000.0, deadline_s=100.0)
    afs.add_task("b", "B", work=1000.0, deadline_s=100.0)
    first = afs.step_epoch(now=0.0)
    assert first["A"] == pytest.approx(first["B"])
    assert sum(first.values()) == pytest.approx(1.0, abs=1e-6)
    # A was served its whole budget, B got nothing: B's shortfall queue grows.
    afs.record_service("a", 10.0)
    second = afs.step_epoch(now=1.0)
    assert afs.virtual_queue("B") > afs.virtual_queue("A")
    assert second["B"] > second["A"]
    assert sum(second.values()) == pytest.approx(1.0, abs=1e-6)


def test_credit_orders_tenants_within_epoch() -> None:
    afs = AFS(capacity_per_s=10.0, epoch_s=1.0)
    afs.add_task("a", "A", work=100.0, deadline_s=100.0)
    afs.add_task("b", "B", work=100.0, deadline_s=100.0)
    afs.step_epoch(now=0.0)
    afs.record_service("a", 4.0)   # A spent credit: B goes first
    assert afs.pick(["a", "b"], now=0.5) == "b"


def test_afs_validation() -> None:
    with pytest.raises(SagaConfigError, match="capacity"):
        AFS(capacity_per_s=0.0)
    with pytest.raises(SagaConfigError, match="V"):
        AFS(V=-1.0)
    with pytest.raises(SagaConfigError, match="weight"):
        AFS(tenant_weights={"x": 0.0})
    afs = AFS()
    afs.add_task("a", "A", 1.0, 1.0)
    with pytest.raises(SagaConfigError, match="already"):
        afs.add_task("a", "A", 1.0, 1.0)
    with pytest.raises(SagaConfigError, match="candidate"):
        afs.pick([], now=0.0)
