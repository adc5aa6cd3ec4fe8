r"""Agent Fair Scheduling (AFS): task-completion-time fairness across tenants.

A user waits for a *task*, not a request, so fairness is judged on whether tasks meet their
deadlines. Each task i carries its estimated total work ``W_i`` (tokens, from the AEG), the
service ``S_i`` it has received and a deadline; its urgency (:func:`afs_urgency`) is the service
rate it needs from now on to finish in time.

Allocation by Lyapunov drift-plus-penalty, once per epoch (default 100 ms). Shares are fractions
of the instance's capacity ``C`` (work units per second) over the epoch.

- Demand of tenant k in an epoch: ``a_k = sum_i min(urgency_i, C) / C`` over its tasks (the share
  it needs to stay on schedule; a task past its deadline needs everything, 1).
- Virtual queue (accumulated SLO shortfall): ``Q_k <- max(Q_k + a_k - b_k, 0)`` where ``b_k``
  is the share it actually received last epoch (from :meth:`AFS.record_service`).
- Lyapunov function ``L = 1/2 sum_k Q_k^2``; one-epoch drift
  ``Delta L <= B + sum_k Q_k (a_k - x_k)`` for a constant B. Drift-plus-penalty with the
  penalty ``-V * U(x)`` and the proportional-fair utility ``U(x) = sum_k w_k log(x_k + eps)``
  gives, each epoch,

      maximise  sum_k Q_k x_k + V sum_k w_k log(x_k + eps)
      s.t.      sum_k x_k <= 1,  0 <= x_k <= d_k

  (``d_k`` = share the tenant's remaining work can use this epoch). The objective is concave and
  separable; the KKT conditions give ``x_k = clip(V w_k / (lam - Q_k) - eps, 0, d_k)`` with one
  multiplier ``lam``, found by bisection (monotone in ``lam``), so the result is deterministic.

A tenant that fell short of its SLO grows ``Q_k`` and gets a larger share next epoch; ``V`` trades
that push against proportional fairness (large V: closer to weighted-fair shares).

Inside an epoch, tasks are picked tenant by tenant: the tenant with the most unspent credit
(share x capacity x epoch, less service recorded) goes first; within a tenant, the most urgent
task (then earliest deadline, then id).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from saga.policy.errors import SagaConfigError, UnknownSessionError

EPOCH_S = 0.1
_EPS = 1e-6


def afs_urgency(W: float, S: float, deadline: float, t: float) -> float:
    """The spec's AFS urgency: ``(W - S) / (deadline - t)``, the service rate still needed.

    Edge cases, stated rather than left to arithmetic: remaining work ``W - S`` is clipped at 0
    (an underestimated W must not make a task *less* than idle-urgent); with no work left the
    urgency is 0; at or past the deadline with work left it is ``+inf`` (most urgent; such tasks
    are then ordered by remaining work by :class:`AFS`).
    """
    for name, value in (("W", W), ("S", S), ("deadline", deadline), ("t", t)):
        if math.isnan(value):
            raise SagaConfigError(f"afs_urgency: {name} is NaN")
    if W < 0 or S < 0:
        raise SagaConfigError(f"afs_urgency: W and S must be >= 0, got W={W}, S={S}")
    remaining = max(W - S, 0.0)
    if remaining == 0.0:
        return 0.0
    if deadline <= t:
        return math.inf
    return remaining / (deadline - t)


@dataclass
class TaskState:
    """What AFS tracks per task."""

    task_id: str
    tenant: str
    work: float
    deadline_s: float
    service: float = 0.0

    @property
    def remaining(self) -> float:
        """Estimated work left, ``max(W - S, 0)``."""
        return max(self.work - self.service, 0.0)


class AFS:
    """Agent Fair Scheduling with per-epoch drift-plus-penalty shares (see the module docstring).

    ``capacity_per_s`` is in the same units as task work (e.g. tokens/s of the instance);
    ``tenant_weights`` default to 1. Time enters only through ``now`` arguments.
    """

    def __init__(self, capacity_per_s: float = 1.0, epoch_s: float = EPOCH_S, V: float = 1.0,
                 tenant_weights: Mapping[str, float] | None = None) -> None:
        if not (capacity_per_s > 0 and math.isfinite(capacity_per_s)):
            raise SagaConfigError(
                f"AFS.capacity_per_s must be finite and > 0, got {capacity_per_s}")
        if not (epoch_s > 0 and math.isfinite(epoch_s)):
            raise SagaConfigError(f"AFS.epoch_s must be finite and > 0, got {epoch_s}")
        if not (V > 0 and math.isfinite(V)):
            raise SagaConfigError(f"AFS.V must be finite and > 0, got {V}")
        weights = dict(tenant_weights or {})
        for tenant, w in weights.items():
            if not w > 0:
                raise SagaConfigError(f"AFS weight of tenant {tenant!r} must be > 0, got {w}")
        self.capacity_per_s = capacity_per_s
        self.epoch_s = epoch_s
        self.V = V
        self._weights = weights
        self._tasks: dict[str, TaskState] = {}
        self._queue: dict[str, float] = {}       # Q_k
        self._share: dict[str, float] = {}       # x_k of the current epoch
        self._credit: dict[str, float] = {}      # unspent work of the current epoch
        self._served: dict[str, float] = {}      # work served since the last epoch

    # -- task bookkeeping -------------------------------------------------------------------
    def add_task(self, task_id: str, tenant: str, work: float, deadline_s: float) -> None:
        """Start tracking a task with estimated total work ``work`` and its deadline."""
        if task_id in self._tasks:
            raise SagaConfigError(f"task {task_id!r} is already tracked")
        if not (work >= 0 and math.isfinite(work)) or math.isnan(deadline_s):
            raise SagaConfigError(
                f"task {task_id!r}: work must be finite and >= 0 and deadline a number, "
                f"got work={work}, deadline_s={deadline_s}")
        self._tasks[task_id] = TaskState(task_id, tenant, work, deadline_s)
        self._queue.setdefault(tenant, 0.0)

    def tasks(self) -> Mapping[str, TaskState]:
        """Every tracked task's state (a read-only view)."""
        return MappingProxyType(self._tasks)

    def task(self, task_id: str) -> TaskState:
        """The tracked state of a task."""
        try:
            return self._tasks[task_id]
        except KeyError:
            raise UnknownSessionError(f"AFS does not track task {task_id!r}") from None

    def update_estimate(self, task_id: str, work: float) -> None:
        """Replace W_i with a fresher estimate (e.g. S_i + the AEG's expected remaining work)."""
        if not (work >= 0 and math.isfinite(work)):
            raise SagaConfigError(f"work must be finite and >= 0, got {work}")
        self.task(task_id).work = work

    def record_service(self, task_id: str, amount: float) -> None:
        """Account ``amount`` units of service to a task (S_i) and spend its tenant's credit."""
        if amount < 0:
            raise SagaConfigError(f"service amount must be >= 0, got {amount}")
        state = self.task(task_id)
        state.service += amount
        self._served[state.tenant] = self._served.get(state.tenant, 0.0) + amount
        self._credit[state.tenant] = self._credit.get(state.tenant, 0.0) - amount

    def finish(self, task_id: str) -> None:
        """Stop tracking a finished task."""
        self.task(task_id)
        del self._tasks[task_id]

    def urgency(self, task_id: str, now: float) -> float:
        """:func:`afs_urgency` of a task at ``now``."""
        s = self.task(task_id)
        return afs_urgency(s.work, s.service, s.deadline_s, now)

    # -- allocation -------------------------------------------------------------------------
    def virtual_queue(self, tenant: str) -> float:
        """Q_k, the tenant's accumulated SLO shortfall (in epoch shares)."""
        return self._queue.get(tenant, 0.0)

    def share(self, tenant: str) -> float:
        """x_k, the tenant's share of capacity this epoch."""
        return self._share.get(tenant, 0.0)

    def demand(self, now: float) -> dict[str, float]:
        """a_k: the share each tenant needs this epoch to keep its tasks on schedule."""
        out: dict[str, float] = dict.fromkeys(self._queue, 0.0)
        for s in self._tasks.values():
            u = afs_urgency(s.work, s.service, s.deadline_s, now)
            need = min(u, self.capacity_per_s) / self.capacity_per_s
            out[s.tenant] = out.get(s.tenant, 0.0) + need
        return out

    def step_epoch(self, now: float) -> dict[str, float]:
        """Close the epoch: update the virtual queues, solve for new shares, reset credits."""
        budget = self.capacity_per_s * self.epoch_s
        demand = self.demand(now)
        for tenant, a in demand.items():
            served = self._served.get(tenant, 0.0) / budget
            self._queue[tenant] = max(self._queue.get(tenant, 0.0) + a - served, 0.0)
        self._served = {}
        tenants = sorted(t for t in self._queue if self._remaining_of(t) > 0)
        caps = {t: min(self._remaining_of(t) / budget, 1.0) for t in tenants}
        self._share = self._solve(tenants, caps)
        self._credit = {t: x * budget for t, x in self._share.items()}
        return dict(self._share)

    def _remaining_of(self, tenant: str) -> float:
        return sum(s.remaining for s in self._tasks.values() if s.tenant == tenant)

    def _solve(self, tenants: list[str], caps: Mapping[str, float]) -> dict[str, float]:
        """Water-filling for ``max sum Q x + V sum w log(x + eps)``, ``sum x <= 1``, ``x <= d``."""
        if not tenants:
            return {}
        q = np.array([self._queue[t] for t in tenants])
        w = np.array([self._weights.get(t, 1.0) for t in tenants])
        d = np.array([caps[t] for t in tenants])
        if d.sum() <= 1.0:
            return {t: float(x) for t, x in zip(tenants, d, strict=True)}

        def alloc(lam: float) -> np.ndarray:
            gap = np.maximum(lam - q, 1e-300)
            shares: np.ndarray = np.clip(self.V * w / gap - _EPS, 0.0, d)
            return shares

        lo = float(q.min())                        # lam <= every Q: x = d, sum > 1
        hi = float((q + self.V * w / _EPS).max())  # x = 0 for every tenant
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if alloc(mid).sum() > 1.0:
                lo = mid
            else:
                hi = mid
        x = alloc(hi)
        return {t: float(v) for t, v in zip(tenants, x, strict=True)}

    # -- ordering ---------------------------------------------------------------------------
    def priority(self, task_id: str, now: float) -> tuple[float, float, float, float, str]:
        """Sort key (smaller first): tenant credit, urgency, remaining work, deadline, id."""
        s = self.task(task_id)
        u = afs_urgency(s.work, s.service, s.deadline_s, now)
        late_remaining = s.remaining if math.isinf(u) else 0.0
        return (-self._credit.get(s.tenant, 0.0), -u, -late_remaining, s.deadline_s, task_id)

    def order(self, task_ids: Iterable[str], now: float) -> list[str]:
        """Task ids in the order AFS serves them."""
        return sorted(task_ids, key=lambda t: self.priority(t, now))

    def pick(self, task_ids: Iterable[str], now: float) -> str:
        """The task to serve next among ``task_ids`` (those with a waiting call)."""
        ids = list(task_ids)
        if not ids:
            raise SagaConfigError("AFS.pick needs at least one candidate task")
        return min(ids, key=lambda t: self.priority(t, now))


__all__ = ["AFS", "EPOCH_S", "TaskState", "afs_urgency"]
