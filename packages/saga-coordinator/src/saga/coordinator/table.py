"""The rows the coordinator keeps (workers, sessions), its typed errors, and the load signals
its routers read.

Split from :mod:`saga.coordinator.core` so the core holds only decisions; the core re-exports
the rows, the errors and the constants.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from saga.policy.errors import SagaError
from saga.policy.routing import LoadKind
from saga.policy.stealing import Steal, WaitingSession

__all__ = [
    "DEFAULT_PRESET",
    "FINAL_GRACE_S",
    "LOAD_SIGNALS",
    "SESSION_IDLE_S",
    "CoordinatorError",
    "NoWorkerError",
    "RouteDecision",
    "SessionEntry",
    "UnknownWorkerError",
    "WorkerEntry",
]

DEFAULT_PRESET = "saga"
"""The preset a coordinator runs unless told otherwise."""

FINAL_GRACE_S = 10.0
"""Seconds a session stays after its final call was observed: its workers' last observations
(batched, re-sent after a reconnect) still land, and a call routed meanwhile revives it."""

SESSION_IDLE_S = 600.0
"""Seconds without a call or an observation after which an abandoned session is dropped: well
past the longest tool call SAGA pins for (``TTL_max`` = 300 s)."""


class CoordinatorError(SagaError):
    """A request the coordinator cannot serve; the message names the field and the fix."""


class UnknownWorkerError(CoordinatorError, KeyError):
    """A worker id that never registered (or was dropped): it must call Register first."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown worker"


class NoWorkerError(CoordinatorError):
    """No live worker to route to."""


@dataclass
class WorkerEntry:
    """What the coordinator knows of one worker (one serving instance).

    ``load`` is what the worker's heartbeat reports, ``(running + waiting) / slots`` (both SAGA
    workers, the simulated engine and the vLLM adapter, count their queued calls), plus
    ``1 / slots`` per call routed to it since.
    """

    worker_id: str
    node: str
    slots: int
    load: float = 0.0
    last_seen: float = 0.0
    idle_since: float | None = None
    waiting: tuple[WaitingSession, ...] = ()
    step_time_s: float = 0.0
    alive: bool = True
    avoided: bool = False
    steals_out: list[Steal] = field(default_factory=list)


LOAD_SIGNALS: Mapping[LoadKind, Callable[[WorkerEntry], float]] = MappingProxyType({
    "utilisation": lambda w: w.load,
    # Running plus waiting requests: the reported load is already (running + waiting) / slots.
    # The report's waiting list is what may be stolen, not the queue (the vLLM adapter lists
    # none), so its length is not the count.
    "requests": lambda w: w.load * w.slots,
})
"""The load a router of each ``load_kind`` is given, from a worker's entry."""


@dataclass
class SessionEntry:
    """One row of the session table: session → worker, node, pinned until."""

    session_id: str
    tenant_id: str
    worker_id: str
    node: str
    pinned_until: float = 0.0
    calls: int = 0
    moves: int = 0
    in_afs: bool = False
    last_seen: float = 0.0
    final_at: float | None = None
    pin_ttl_s: float | None = None
    """Seconds of the pin granted since the session's last routed call (None: none granted)."""
    pin_lapsed_at: float | None = None
    """When that pin ended before its tool returned (None: it did not, or no pin)."""


@dataclass(frozen=True)
class RouteDecision:
    """Where a call goes and why (``reason`` is one of the proto's RouteReason names)."""

    worker_id: str
    node: str
    reason: str
    pinned_for_s: float
