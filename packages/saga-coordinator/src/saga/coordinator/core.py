"""The coordinator's state and decisions, free of gRPC: session table, workers, routing, stealing,
AFS epochs and TTL pins.

Sessions leave the table three ways, so a long-running coordinator forgets every task: an
explicit ``EndSession``; the observation of the task's final call, after ``final_grace_s`` (late
observations of the task still land meanwhile); or ``session_idle_s`` without a call or an
observation (a task abandoned without a final call). The last two run from :meth:`epoch`.

Every decision is delegated to a saga-policy object (``AffinityRouter`` for ``route``,
``WorkStealer`` for stealing, ``AFS`` for fairness, ``ToolCallTTL`` for pins), so the coordinator
and the simulator run the same policy code. Time comes in as ``now`` arguments (the server passes
its monotonic clock), so the core is deterministic and testable without sleeping.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from saga.policy.afs import AFS, EPOCH_S
from saga.policy.errors import SagaError, UnknownSessionError
from saga.policy.routing import THETA, AffinityRouter, RouteRequest
from saga.policy.stealing import Steal, WaitingSession, WorkerState, WorkStealer
from saga.policy.ttl import ToolCallTTL

__all__ = [
    "FINAL_GRACE_S",
    "SESSION_IDLE_S",
    "CoordinatorCore",
    "CoordinatorError",
    "NoWorkerError",
    "RouteDecision",
    "SessionEntry",
    "UnknownWorkerError",
    "WorkerEntry",
]


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
    """What the coordinator knows of one worker (one serving instance)."""

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


@dataclass(frozen=True)
class RouteDecision:
    """Where a call goes and why (``reason`` is one of the proto's RouteReason names)."""

    worker_id: str
    node: str
    reason: str
    pinned_for_s: float


class CoordinatorCore:
    """The session table and the policy objects that act on it.

    Loads are utilisations (1.0 = full). Between two heartbeats of a worker each call routed to it
    adds ``1 / slots`` to its load, so a burst of routes sees the load it creates instead of
    piling onto one worker until the next report.
    """

    def __init__(self, *, theta: float = THETA, stealer: WorkStealer | None = None,
                 afs: AFS | None = None, ttl: ToolCallTTL | None = None,
                 worker_timeout_s: float = 2.0, final_grace_s: float = FINAL_GRACE_S,
                 session_idle_s: float = SESSION_IDLE_S) -> None:
        for name, value in (("worker_timeout_s", worker_timeout_s),
                            ("final_grace_s", final_grace_s), ("session_idle_s", session_idle_s)):
            if not (value > 0 and math.isfinite(value)):
                raise CoordinatorError(f"{name} must be a finite number of seconds > 0, "
                                       f"got {value}")
        self.router = AffinityRouter(theta)
        self.stealer = stealer if stealer is not None else WorkStealer()
        self.afs = afs if afs is not None else AFS(capacity_per_s=1000.0, epoch_s=EPOCH_S)
        self.ttl = ttl if ttl is not None else ToolCallTTL.with_aeg_registry()
        self.worker_timeout_s = worker_timeout_s
        self.final_grace_s = final_grace_s
        self.session_idle_s = session_idle_s
        self.workers: dict[str, WorkerEntry] = {}
        # Least recently active first (``_touch`` moves a row to the end): idle expiry reads
        # only the head.
        self.sessions: OrderedDict[str, SessionEntry] = OrderedDict()
        self.sessions_ended = 0
        self.sessions_expired = 0
        self._moves_counted = 0
        self._finals: OrderedDict[str, float] = OrderedDict()  # session -> final observed at
        self.routes = 0
        self.steals = 0
        self.epochs = 0
        self.observations = 0
        self._loads: dict[str, float] | None = None
        self._ended: OrderedDict[str, float] = OrderedDict()  # session -> dropped at

    ENDED_MEMORY = 65_536
    """Ended sessions remembered at most (each for ``final_grace_s``), so their late
    observations are not mistaken for errors."""

    # -- workers ----------------------------------------------------------------------------
    def register(self, worker_id: str, node: str, slots: int, now: float,
                 claims: Iterable[tuple[str, str, float]] = ()) -> int:
        """Add (or revive) a worker and home its claimed ``(session, tenant, pinned_for_s)``
        sessions on it; returns how many claims were adopted (a session already homed on another
        live worker keeps its home)."""
        before = self.workers.get(worker_id)
        if before is not None and before.node != node:  # the worker came back on another node
            for s in self.sessions.values():
                if s.worker_id == worker_id:
                    s.node = node
        self.workers[worker_id] = WorkerEntry(worker_id, node, slots, last_seen=now)
        self._loads = None
        adopted = 0
        for session_id, tenant, pinned_for in claims:
            entry = self.sessions.get(session_id)
            if entry is not None and entry.worker_id != worker_id and self._usable(entry.worker_id):
                continue
            self.router.route(RouteRequest(session_id, now=now), {worker_id: 0.0})
            self.sessions[session_id] = SessionEntry(
                session_id, tenant, worker_id, node, now + max(pinned_for, 0.0),
                calls=entry.calls if entry else 0, moves=entry.moves if entry else 0,
                in_afs=entry.in_afs if entry else False, last_seen=now)
            self.sessions.move_to_end(session_id)
            self._ended.pop(session_id, None)
            adopted += 1
        return adopted

    def worker(self, worker_id: str) -> WorkerEntry:
        """A registered worker, or :class:`UnknownWorkerError` saying to register."""
        try:
            return self.workers[worker_id]
        except KeyError:
            raise UnknownWorkerError(
                f"worker_id {worker_id!r} is not registered with this coordinator; "
                "call Register first") from None

    def heartbeat(self, worker_id: str, load: float, idle_for_s: float,
                  waiting: tuple[WaitingSession, ...], step_time_s: float, now: float
                  ) -> tuple[list[Steal], list[str]]:
        """Record a load report; returns the steals to tell this worker about and the AFS order
        of its waiting sessions."""
        w = self.worker(worker_id)
        w.load, w.waiting, w.step_time_s = load, waiting, step_time_s
        w.idle_since = now - idle_for_s if idle_for_s >= 0 else None
        w.last_seen, w.alive, w.avoided = now, True, False
        self._loads = None
        out, w.steals_out = w.steals_out, []
        return out, self.afs_order([s.session_id for s in waiting], now)

    def deregister(self, worker_id: str) -> int:
        """Drop a worker; returns how many sessions were homed on it (they re-home lazily)."""
        self.worker(worker_id)
        del self.workers[worker_id]
        self._loads = None
        return sum(1 for s in self.sessions.values() if s.worker_id == worker_id)

    def expire_workers(self, now: float) -> list[str]:
        """Mark workers silent for longer than ``worker_timeout_s`` dead; returns them."""
        dead = [w.worker_id for w in self.workers.values()
                if w.alive and now - w.last_seen > self.worker_timeout_s]
        for wid in dead:
            self.workers[wid].alive = False
        if dead:
            self._loads = None
        return dead

    def _usable(self, worker_id: str) -> bool:
        w = self.workers.get(worker_id)
        return w is not None and w.alive and not w.avoided

    def loads(self) -> dict[str, float]:
        """Current loads of the routable workers (cached until something changes)."""
        if self._loads is None:
            self._loads = {w.worker_id: w.load for w in self.workers.values()
                           if w.alive and not w.avoided}
        return self._loads

    # -- routing ----------------------------------------------------------------------------
    def route(self, session_id: str, tenant_id: str, now: float, *, prompt_tokens: int = 0,
              deadline_s: float = 0.0, work_tokens: float = 0.0,
              avoid_worker: str = "") -> RouteDecision:
        """Route one call with :class:`AffinityRouter` (the spec's ``route``) and update the
        session table; enrols the task in AFS when it has a deadline and a work estimate."""
        if avoid_worker:
            w = self.workers.get(avoid_worker)
            if w is not None and not w.avoided:
                w.avoided = True
                self._loads = None
        loads = self.loads()
        if not loads:
            raise NoWorkerError(
                "no live worker is registered; start workers (saga cluster up) and retry")
        entry = self.sessions.get(session_id)
        old = entry.worker_id if entry is not None else None
        dst = self.router.route(RouteRequest(session_id, prompt_tokens=prompt_tokens, now=now),
                                loads)
        w = self.workers[dst]
        self._ended.pop(session_id, None)
        if entry is None:
            reason = "NEW_SESSION"
            entry = SessionEntry(session_id, tenant_id or "default", dst, w.node)
            self.sessions[session_id] = entry
        elif old == dst:
            reason = "HOME"
        else:
            reason = "REHOMED" if old not in loads else "OVERLOADED"
            entry.worker_id, entry.node = dst, w.node
            entry.moves += 1
            entry.pinned_until = 0.0
            if old is not None and old in self.workers:
                # Its next heartbeat tells the old home to stop claiming the session.
                self.workers[old].steals_out.append(Steal(session_id, old, dst, 0.0, 0.0))
        entry.calls += 1
        self._touch(entry, now)
        if entry.final_at is not None:  # the task goes on after all
            entry.final_at = None
            self._finals.pop(session_id, None)
        w.load += 1.0 / w.slots
        self._loads = None
        if deadline_s > 0 and work_tokens > 0 and not entry.in_afs:
            self.afs.add_task(session_id, entry.tenant_id, work_tokens, now + deadline_s)
            entry.in_afs = True
        self.routes += 1
        return RouteDecision(dst, w.node, reason, max(entry.pinned_until - now, 0.0))

    def end_session(self, session_id: str, now: float | None = None) -> None:
        """Drop a finished task from the table, the router and AFS (``now``: when, for how
        long its late observations are still expected; default the last time it was seen)."""
        entry = self.session(session_id)
        self._drop(entry, entry.last_seen if now is None else now)
        self.sessions_ended += 1

    def _drop(self, entry: SessionEntry, now: float) -> None:
        session_id = entry.session_id
        del self.sessions[session_id]
        self._finals.pop(session_id, None)
        self.router.forget(session_id)
        if entry.in_afs:
            self.afs.finish(session_id)
        self._ended[session_id] = now
        self._ended.move_to_end(session_id)
        if len(self._ended) > self.ENDED_MEMORY:
            self._ended.popitem(last=False)

    def _touch(self, entry: SessionEntry, now: float) -> None:
        """The session was active at ``now`` (a call or an observation)."""
        if now > entry.last_seen:
            entry.last_seen = now
        self.sessions.move_to_end(entry.session_id)

    def seen(self, session_id: str, now: float) -> None:
        """An observation of the session arrived at ``now`` (it is not idle)."""
        entry = self.sessions.get(session_id)
        if entry is not None:
            self._touch(entry, now)

    def expire_sessions(self, now: float) -> tuple[int, int]:
        """Drop sessions whose final call was observed ``final_grace_s`` ago and sessions idle
        for ``session_idle_s``; forget ended ids after ``final_grace_s``. Returns
        ``(ended, expired)``."""
        ended = 0
        while self._finals:
            session_id, at = next(iter(self._finals.items()))
            if now - at < self.final_grace_s:
                break
            del self._finals[session_id]
            entry = self.sessions.get(session_id)
            if entry is not None and entry.final_at == at:
                self._drop(entry, now)
                ended += 1
        expired = 0
        while self.sessions:
            entry = next(iter(self.sessions.values()))
            if now - entry.last_seen < self.session_idle_s:
                break
            self._drop(entry, now)
            expired += 1
        while self._ended and now - next(iter(self._ended.values())) >= self.final_grace_s:
            self._ended.popitem(last=False)
        self.sessions_ended += ended
        self.sessions_expired += expired
        return ended, expired

    def recently_ended(self, session_id: str) -> bool:
        """True for a session ended lately (its workers' last observations may still arrive)."""
        return session_id in self._ended

    def session(self, session_id: str) -> SessionEntry:
        """A session's row, or :class:`UnknownSessionError` naming it."""
        try:
            return self.sessions[session_id]
        except KeyError:
            raise UnknownSessionError(
                f"session_id {session_id!r} is not in the session table (never routed, or "
                "ended)") from None

    # -- observations -----------------------------------------------------------------------
    def tool_started(self, session_id: str, tool: str, pressure: float, now: float) -> float:
        """Pin the session's KV for the TTL of ``tool`` (:class:`ToolCallTTL`); returns it."""
        entry = self.session(session_id)
        ttl = self.ttl.ttl(tool, pressure)
        entry.pinned_until = now + ttl
        return ttl

    def tool_finished(self, session_id: str, tool: str, latency_s: float) -> None:
        """The tool returned: its latency trains the TTL model, the pin ends."""
        entry = self.session(session_id)
        entry.pinned_until = 0.0
        if latency_s > 0:
            self.ttl.observe(tool, latency_s)

    def call_finished(self, session_id: str, prompt_tokens: int, output_tokens: int,
                      cached_tokens: int, worker_id: str | None = None, *,
                      final: bool = False, now: float | None = None) -> None:
        """Account the call's computed tokens as AFS service of its task, and take the call off
        the load of the worker that ran it (until its next heartbeat reports afresh).
        ``final``: it was the task's last call; the session leaves the table ``final_grace_s``
        after ``now`` (default: when it was last seen)."""
        entry = self.session(session_id)
        if final:
            at = entry.last_seen if now is None else now
            entry.final_at = at
            self._finals[session_id] = at
            self._finals.move_to_end(session_id)
        w = self.workers.get(worker_id) if worker_id is not None else None
        if w is not None:
            w.load = max(w.load - 1.0 / w.slots, 0.0)
            self._loads = None
        if entry.in_afs:
            self.afs.record_service(session_id, max(prompt_tokens - cached_tokens, 0)
                                    + output_tokens)

    # -- periodic work ----------------------------------------------------------------------
    def epoch(self, now: float) -> dict[str, float]:
        """One AFS epoch (``AFS.step_epoch``), then plan steals; returns the tenant shares.
        Sessions ended by a final call or idle leave the table first."""
        self.expire_workers(now)
        self.expire_sessions(now)
        # The router logs every move; a long-running coordinator keeps only the count.
        self._moves_counted += len(self.router.moves)
        self.router.moves.clear()
        shares = self.afs.step_epoch(now)
        self.epochs += 1
        self.plan_steals(now)
        return shares

    def plan_steals(self, now: float) -> list[Steal]:
        """Ask :class:`WorkStealer` for this instant's steals, re-home each stolen session and
        queue the order for its source worker's next heartbeat reply."""
        states = [WorkerState(w.worker_id, w.load, w.idle_since, w.waiting, w.step_time_s, w.node)
                  for w in self.workers.values() if w.alive]
        steals = self.stealer.plan(now, states)
        for s in steals:
            entry = self.sessions.get(s.session_id)
            if entry is None:
                continue
            self.router.reassign(s.session_id, s.dst, now)
            dst = self.workers[s.dst]
            entry.worker_id, entry.node = s.dst, dst.node
            entry.moves += 1
            self.workers[s.src].steals_out.append(s)
            # The thief is no longer idle and the victim has one fewer waiting session.
            dst.idle_since = None
            src = self.workers[s.src]
            src.waiting = tuple(x for x in src.waiting if x.session_id != s.session_id)
            self.steals += 1
        if steals:
            self._loads = None
        return steals

    def afs_order(self, session_ids: list[str], now: float) -> list[str]:
        """Sessions in AFS service order; those not enrolled in AFS follow in the given order."""
        enrolled = [s for s in session_ids if (e := self.sessions.get(s)) is not None and e.in_afs]
        rest = [s for s in session_ids if s not in set(enrolled)]
        return self.afs.order(enrolled, now) + rest

    def shares(self) -> Mapping[str, float]:
        """Each tenant's AFS share of the current epoch."""
        tenants = {e.tenant_id for e in self.sessions.values() if e.in_afs}
        return {t: self.afs.share(t) for t in sorted(tenants)}

    @property
    def moves(self) -> int:
        """Sessions re-homed so far (overload, dead home, steals)."""
        return self._moves_counted + len(self.router.moves)

    def sessions_on(self, worker_id: str) -> int:
        """Sessions homed on a worker."""
        return sum(1 for s in self.sessions.values() if s.worker_id == worker_id)

    def check_invariants(self) -> list[str]:
        """What is wrong with the table (empty when nothing is): tests call it after every
        request, so a bad input that corrupts state shows up where it happened.

        Every number finite and counts non-negative; the router's session map equal to the
        table's (a session homed on a worker that left keeps that home until its next call
        re-homes it, in both); AFS tracking exactly the sessions marked ``in_afs``.
        """
        bad: list[str] = []
        for name in ("routes", "steals", "epochs", "observations", "sessions_ended",
                     "sessions_expired"):
            if getattr(self, name) < 0:
                bad.append(f"counter {name} is negative")
        for w in self.workers.values():
            numbers = (w.load, w.last_seen, w.step_time_s,
                       0.0 if w.idle_since is None else w.idle_since,
                       *(x.kv_bytes for x in w.waiting))
            if not all(math.isfinite(x) for x in numbers) or w.load < 0 or w.slots < 1:
                bad.append(f"worker {w.worker_id!r}: load/time not finite or negative ({w})")
        homes = dict(self.router.homes())
        for sid, e in self.sessions.items():
            if not all(math.isfinite(x) for x in (e.pinned_until, e.last_seen)):
                bad.append(f"session {sid!r}: pinned_until/last_seen not finite")
            if e.calls < 0 or e.moves < 0:
                bad.append(f"session {sid!r}: negative calls/moves")
            if homes.get(sid) != e.worker_id:
                bad.append(f"session {sid!r}: router home {homes.get(sid)!r} != table "
                           f"{e.worker_id!r}")
        if set(homes) != set(self.sessions):
            bad.append(f"router knows sessions the table does not: "
                       f"{sorted(set(homes) ^ set(self.sessions))[:5]}")
        tracked = set(self.afs.tasks())
        in_afs = {sid for sid, e in self.sessions.items() if e.in_afs}
        if tracked != in_afs:
            bad.append(f"AFS tasks != sessions in AFS: {sorted(tracked ^ in_afs)[:5]}")
        for t in self.afs.tasks().values():
            if not all(math.isfinite(x) for x in (t.work, t.service, t.deadline_s)):
                bad.append(f"AFS task {t.task_id!r}: work/service/deadline not finite")
        if not all(math.isfinite(x) for x in self.shares().values()):
            bad.append("an AFS share is not finite")
        return bad
