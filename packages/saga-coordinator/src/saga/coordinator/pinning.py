"""The session table's TTL pins: granting one when a tool starts, ending it when the tool
returns, and what a lapsed pin leaves of the session's KV on its home.

Kept apart from :mod:`saga.coordinator.core`, whose :class:`~saga.coordinator.core.CoordinatorCore`
delegates its pin methods here; these functions act only on the rows they are given.
"""

from __future__ import annotations

from saga.coordinator.table import SessionEntry, WorkerEntry
from saga.policy.routing import expected_home_held
from saga.policy.ttl import TTLPolicy

__all__ = ["MAX_PIN_COST_S", "finish_pin", "home_held", "pin_costs", "start_pin"]

MAX_PIN_COST_S = 1e6
"""Bound on the queueing and reload seconds handed to a TTL policy (finite whatever a worker
reports; far past any ``TTL_max``, so the bound never changes a TTL)."""


def home_held(entry: SessionEntry, now: float, residence_s: float) -> float | None:
    """Share of the session's KV its home is expected to hold at ``now``: None while no pin
    was granted since its last call or the pin outlived its tool (the home holds it), else
    from when the pin ended (still running: 1)."""
    if entry.pin_lapsed_at is not None:
        until = entry.pin_lapsed_at
    elif entry.pin_ttl_s is not None:
        until = entry.pinned_until
    else:
        return None
    return expected_home_held(now, until, residence_s=residence_s)


def pin_costs(w: WorkerEntry | None) -> tuple[float, float]:
    """``(queue_delay_s, reload_s)`` a dropped pin costs on the session's worker ``w`` (zeros
    when it is gone)."""
    if w is None:
        return 0.0, 0.0
    queued = max(float(len(w.waiting)), (w.load - 1.0) * w.slots, 0.0)
    return (min(queued * w.step_time_s, MAX_PIN_COST_S),
            min(w.step_time_s, MAX_PIN_COST_S))


def start_pin(entry: SessionEntry, ttl_policy: TTLPolicy | None, tool: str, pressure: float,
              now: float, worker: WorkerEntry | None) -> float:
    """Pin ``entry``'s KV for the policy's TTL of ``tool`` and return it (0, no pin, without a
    policy); ``worker`` (the session's) prices the pin for policies that weigh it."""
    if ttl_policy is None:
        entry.pinned_until = 0.0
        return 0.0
    queue_delay_s, reload_s = pin_costs(worker)
    ttl = ttl_policy.ttl(tool, pressure, queue_delay_s=queue_delay_s, reload_s=reload_s)
    entry.pinned_until = now + ttl
    entry.pin_ttl_s, entry.pin_lapsed_at = ttl, None
    return ttl


def finish_pin(entry: SessionEntry, ttl_policy: TTLPolicy | None, tool: str,
               latency_s: float) -> None:
    """End ``entry``'s pin (remembering when it lapsed if the tool outran it) and train the
    policy on the tool's latency."""
    if entry.pin_ttl_s is not None and latency_s > entry.pin_ttl_s:
        entry.pin_lapsed_at = entry.pinned_until
    entry.pinned_until, entry.pin_ttl_s = 0.0, None
    if latency_s > 0 and ttl_policy is not None:
        ttl_policy.observe(tool, latency_s)
