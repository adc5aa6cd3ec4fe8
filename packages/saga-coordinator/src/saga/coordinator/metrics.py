"""Prometheus metrics of one coordinator, in a registry of its own (several coordinators may
share a process: tests, a restart)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from saga.coordinator.core import CoordinatorCore

__all__ = ["ROUTE_REASONS", "CoordinatorMetrics"]

ROUTE_REASONS = ("NEW_SESSION", "HOME", "OVERLOADED", "REHOMED")
_LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3)


class CoordinatorMetrics:
    """Counters the handlers bump and gauges synced from the core once per epoch."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        routes = Counter("saga_coordinator_routes", "Calls routed, by reason", ["reason"],
                         registry=r)
        self._routes = {reason: routes.labels(reason) for reason in ROUTE_REASONS}
        self.route_seconds = Histogram(
            "saga_coordinator_route_seconds", "Time to decide one Route inside the server",
            buckets=_LATENCY_BUCKETS, registry=r)
        self._rejected = Counter("saga_coordinator_rejected", "Requests refused, by status",
                                 ["status"], registry=r)
        self._observations = Counter("saga_coordinator_observations",
                                     "Step observations accepted", registry=r)
        self._bad_observations = Counter("saga_coordinator_observations_rejected",
                                         "Step observations rejected", registry=r)
        self._sessions = Gauge("saga_coordinator_sessions", "Sessions in the table", registry=r)
        self._workers = Gauge("saga_coordinator_workers_alive", "Live workers", registry=r)
        self._steals = Gauge("saga_coordinator_steals", "Sessions stolen so far", registry=r)
        self._moves = Gauge("saga_coordinator_moves", "Sessions re-homed so far", registry=r)
        self._epochs = Gauge("saga_coordinator_afs_epochs", "AFS epochs run", registry=r)

    def routed(self, reason: str) -> None:
        self._routes[reason].inc()

    def rejected(self, status: str) -> None:
        self._rejected.labels(status).inc()

    def observed(self, accepted: int, rejected: int) -> None:
        self._observations.inc(accepted)
        if rejected:
            self._bad_observations.inc(rejected)

    def sync(self, core: CoordinatorCore) -> None:
        """Copy the core's totals into the gauges."""
        self._sessions.set(len(core.sessions))
        self._workers.set(sum(1 for w in core.workers.values() if w.alive))
        self._steals.set(core.steals)
        self._moves.set(core.moves)
        self._epochs.set(core.epochs)

    def text(self) -> str:
        """Prometheus text exposition format."""
        text: bytes = generate_latest(self.registry)
        return text.decode()
