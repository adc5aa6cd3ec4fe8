"""The coordinator's state and decisions, free of gRPC: session table, workers, routing, stealing,
fairness epochs and TTL pins.

Sessions leave the table three ways, so a long-running coordinator forgets every task: an
explicit ``EndSession``; the observation of the task's final call, after ``final_grace_s`` (late
observations of the task still land meanwhile); or ``session_idle_s`` without a call or an
observation (a task abandoned without a final call). The last two run from :meth:`epoch`.

Every decision is delegated to the policy objects of a preset's bundle
(``saga.policy.presets``): its router for ``route``, its stealer (or none), its TTL policy for
pins (or none) and its fairness layer (or none), so the coordinator and the simulator run the
same policy code for every preset. The session table is the coordinator's own record of where
each session is: route reasons and move counts come from it, never from a router's internals.
Time comes in as ``now`` arguments (the server passes its monotonic clock), so the core is
deterministic and testable without sleeping.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from saga.coordinator import pinning
from saga.coordinator.invariants import problems
from saga.coordinator.table import (
    DEFAULT_PRESET,
    FINAL_GRACE_S,
    LOAD_SIGNALS,
    SESSION_IDLE_S,
    CoordinatorError,
    NoWorkerError,
    RouteDecision,
    SessionEntry,
    UnknownWorkerError,
    WorkerEntry,
)
from saga.policy.afs import AFS, EPOCH_S
from saga.policy.errors import UnknownSessionError
from saga.policy.presets import PolicyBundle, Preset, get_preset
from saga.policy.routing import Router, RouteRequest
from saga.policy.stealing import Steal, WaitingSession, WorkerState, WorkStealer
from saga.policy.ttl import TTLPolicy

__all__ = [
    "AFS_CAPACITY_PER_S",
    "DEFAULT_PRESET",
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

AFS_CAPACITY_PER_S = 1000.0
"""Work (computed tokens) per second AFS divides among tenants, unless the preset's fairness
spec names its own ``capacity_per_s``."""

def _fairness(preset: Preset, capacity_per_s: float, epoch_s: float) -> AFS | None:
    """The deployment's fairness layer from the preset's spec (None: the preset has none).

    ``epoch_s`` is the coordinator's: AFS's budget per epoch is capacity x the time between two
    :meth:`CoordinatorCore.epoch` calls. ``capacity_per_s`` applies unless the spec sets it.
    """
    spec = preset.fairness
    if spec is None:
        return None
    kwargs: dict[str, Any] = {"capacity_per_s": capacity_per_s, **spec.kwargs, "epoch_s": epoch_s}
    return spec.build(**kwargs)


class CoordinatorCore:
    """The session table and the policy objects of one preset's bundle that act on it.

    ``bundle`` (default: a fresh ``saga`` bundle) is owned by this core from now on: its router,
    stealer and TTL policy keep state, so two cores never share one. ``bundle.stealer`` None: no
    stealing; ``bundle.ttl`` None: no pins (every ``pinned_for_s`` is 0); the preset's fairness
    None: no AFS (no task is enrolled, the heartbeat reply keeps the worker's own order, no
    shares).

    Loads come from the workers' heartbeats; each router gets the signal its ``load_kind`` says
    (:data:`~saga.coordinator.table.LOAD_SIGNALS`). Between two heartbeats of a worker each call
    routed to it adds ``1 / slots`` to its load (one request), so a burst of routes sees the load
    it creates instead of piling onto one worker until the next report.

    Routers see ``RouteRequest(session_id, prompt_tokens=..., now=...)`` without block hashes:
    the coordinator is not sent the prompt, so prefix-aware routers (``prefix_affinity``,
    ``cache_aware``) find no cached prefix anywhere and route by load alone here.

    A session whose pin ran out before its tool returned is routed with ``home_held``, the share
    of its KV its home still holds (`saga.policy.routing.expected_home_held`, with unpinned KV
    surviving ``kv_residence_s`` on average; 0: evicted at once), so SAGA's affinity router moves
    it as cheaply as a new session once its home has dropped the KV. A session still pinned, or
    whose tool returned in time, is routed without it (by the spec rule).
    """

    def __init__(self, *, bundle: PolicyBundle | None = None,
                 afs_capacity_per_s: float = AFS_CAPACITY_PER_S, epoch_s: float = EPOCH_S,
                 worker_timeout_s: float = 2.0, final_grace_s: float = FINAL_GRACE_S,
                 session_idle_s: float = SESSION_IDLE_S, kv_residence_s: float = 0.0) -> None:
        for name, value in (("worker_timeout_s", worker_timeout_s), ("epoch_s", epoch_s),
                            ("final_grace_s", final_grace_s), ("session_idle_s", session_idle_s)):
            if not (value > 0 and math.isfinite(value)):
                raise CoordinatorError(f"{name} must be a finite number of seconds > 0, "
                                       f"got {value}")
        if not (kv_residence_s >= 0 and math.isfinite(kv_residence_s)):
            raise CoordinatorError("kv_residence_s must be a finite number of seconds >= 0, "
                                   f"got {kv_residence_s}")
        self.kv_residence_s = kv_residence_s
        self.bundle = bundle if bundle is not None else get_preset(DEFAULT_PRESET).build()
        self.router: Router = self.bundle.router
        self.stealer: WorkStealer | None = self.bundle.stealer
        self.ttl: TTLPolicy | None = self.bundle.ttl
        self.afs = _fairness(self.bundle.preset, afs_capacity_per_s, epoch_s)
        self._load_of = LOAD_SIGNALS[self.router.load_kind]
        self.worker_timeout_s = worker_timeout_s
        self.final_grace_s = final_grace_s
        self.session_idle_s = session_idle_s
        self.workers: dict[str, WorkerEntry] = {}
        # Least recently active first (``_touch`` moves a row to the end): idle expiry reads
        # only the head.
        self.sessions: OrderedDict[str, SessionEntry] = OrderedDict()
        self.sessions_ended = 0
        self.sessions_expired = 0
        self.moves = 0
        self._finals: OrderedDict[str, float] = OrderedDict()  # session -> final observed at
        self.routes = 0
        self.steals = 0
        self.epochs = 0
        self.observations = 0
        self._loads: dict[str, float] | None = None
        self._ended: OrderedDict[str, float] = OrderedDict()  # session -> dropped at

    @classmethod
    def from_preset(cls, name: str = DEFAULT_PRESET, **kwargs: Any) -> CoordinatorCore:
        """A core running a fresh bundle of the preset called ``name`` (an unknown name is a
        ``SagaConfigError`` listing the valid ones); ``kwargs`` as for the constructor."""
        return cls(bundle=get_preset(name).build(), **kwargs)

    @property
    def preset(self) -> str:
        """The name of the preset this core runs."""
        return self.bundle.name

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
        if before is not None:
            # The same id registers again: the worker restarted, so whatever the router knew
            # of its cache is gone; it may also be back on another node.
            self.router.forget_worker(worker_id)
            if before.node != node:
                for s in self.sessions.values():
                    if s.worker_id == worker_id:
                        s.node = node
        self.workers[worker_id] = WorkerEntry(worker_id, node, slots, last_seen=now)
        self._loads = None
        return sum(self._adopt(session_id, tenant, pinned_for, self.workers[worker_id], now)
                   for session_id, tenant, pinned_for in claims)

    def _adopt(self, session_id: str, tenant: str, pinned_for: float, w: WorkerEntry,
               now: float) -> bool:
        """Home a claimed session on ``w`` unless another live worker is its home."""
        entry = self.sessions.get(session_id)
        if entry is not None and entry.worker_id != w.worker_id and self._usable(entry.worker_id):
            return False
        # A route among this one worker makes it the session's home for every router.
        self.router.route(RouteRequest(session_id, now=now), {w.worker_id: 0.0})
        moved = entry is not None and entry.worker_id != w.worker_id
        self.moves += moved
        self.sessions[session_id] = SessionEntry(
            session_id, tenant, w.worker_id, w.node,
            now + max(pinned_for, 0.0) if self.ttl is not None else 0.0,
            calls=entry.calls if entry else 0, moves=entry.moves + moved if entry else 0,
            in_afs=entry.in_afs if entry else False, last_seen=now)
        self.sessions.move_to_end(session_id)
        self._ended.pop(session_id, None)
        return True

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
        self.router.forget_worker(worker_id)
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
        """Current loads of the routable workers, in the router's ``load_kind`` (cached until
        something changes)."""
        if self._loads is None:
            self._loads = {w.worker_id: self._load_of(w) for w in self.workers.values()
                           if w.alive and not w.avoided}
        return self._loads

    # -- routing ----------------------------------------------------------------------------
    def route(self, session_id: str, tenant_id: str, now: float, *, prompt_tokens: int = 0,
              deadline_s: float = 0.0, work_tokens: float = 0.0,
              avoid_worker: str = "", block_hashes: tuple[int, ...] = ()) -> RouteDecision:
        """Route one call with the bundle's router and update the session table; enrols the
        task in AFS (when the preset has it) if it has a deadline and a work estimate.

        The reason comes from the table: ``NEW_SESSION`` (no row), ``HOME`` (the router kept
        the row's worker), ``REHOMED`` (the row's worker is not routable: dead, left or
        avoided), ``OVERLOADED`` (the router moved the session off a routable worker; for
        SAGA's affinity router, a home at or above theta, or a lighter worker once the home's
        KV lapsed). ``block_hashes`` (the gateway, which
        sees the prompt, sends them) let prefix-aware routers find where a prefix is cached."""
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
        held = self.home_held(entry, now) if entry is not None else None
        dst = self.router.route(RouteRequest(session_id, block_hashes, prompt_tokens, now,
                                             home_held=held), loads)
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
            self._rehome(entry, w)
            entry.pinned_until = 0.0
            if old is not None and old in self.workers:
                # Its next heartbeat tells the old home to stop claiming the session.
                self.workers[old].steals_out.append(Steal(session_id, old, dst, 0.0, 0.0))
        entry.calls += 1
        entry.pin_ttl_s = entry.pin_lapsed_at = None  # this call reads (or rebuilds) the KV
        self._touch(entry, now)
        if entry.final_at is not None:  # the task goes on after all
            entry.final_at = None
            self._finals.pop(session_id, None)
        w.load += 1.0 / w.slots
        self._loads = None
        if self.afs is not None and deadline_s > 0 and work_tokens > 0 and not entry.in_afs:
            self.afs.add_task(session_id, entry.tenant_id, work_tokens, now + deadline_s)
            entry.in_afs = True
        self.routes += 1
        return RouteDecision(dst, w.node, reason, max(entry.pinned_until - now, 0.0))

    def home_held(self, entry: SessionEntry, now: float) -> float | None:
        """Share of the session's KV its home is expected to hold at ``now``: None while no pin
        was granted since its last call or the pin outlived its tool (the home holds it), else
        from when the pin ended (still running: 1)."""
        return pinning.home_held(entry, now, self.kv_residence_s)

    def _rehome(self, entry: SessionEntry, w: WorkerEntry) -> None:
        """The session's home is now ``w`` (routing or stealing moved it)."""
        entry.worker_id, entry.node = w.worker_id, w.node
        entry.moves += 1
        self.moves += 1

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
        if entry.in_afs and self.afs is not None:
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
        """Pin the session's KV for the bundle's TTL of ``tool``; returns it (0 when the preset
        has no TTL policy).

        A TTL policy that weighs a pin against its alternative (Continuum's) is given the
        queueing delay on the session's worker (queued calls x its time per call) and, as the
        cost of rebuilding the KV, that time per call (the coordinator knows no KV sizes)."""
        entry = self.session(session_id)
        return pinning.start_pin(entry, self.ttl, tool, pressure, now,
                                 self.workers.get(entry.worker_id))

    def tool_finished(self, session_id: str, tool: str, latency_s: float) -> None:
        """The tool returned: its latency trains the TTL model, the pin ends. A tool that ran
        past its pin left the session's KV unprotected from when the pin ran out."""
        pinning.finish_pin(self.session(session_id), self.ttl, tool, latency_s)

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
        if entry.in_afs and self.afs is not None:
            self.afs.record_service(session_id, max(prompt_tokens - cached_tokens, 0)
                                    + output_tokens)

    # -- periodic work ----------------------------------------------------------------------
    def epoch(self, now: float) -> dict[str, float]:
        """Expire silent workers and finished or idle sessions, run one AFS epoch
        (``AFS.step_epoch``; counted in ``epochs``) when the preset has fairness, then plan
        steals; returns the tenant shares (empty without AFS)."""
        self.expire_workers(now)
        self.expire_sessions(now)
        shares: dict[str, float] = {}
        if self.afs is not None:
            shares = self.afs.step_epoch(now)
            self.epochs += 1
        self.plan_steals(now)
        return shares

    def plan_steals(self, now: float) -> list[Steal]:
        """Ask the bundle's stealer (none: no steals) for this instant's steals, re-home each
        stolen session and queue the order for its source worker's next heartbeat reply."""
        if self.stealer is None:
            return []
        states = [WorkerState(w.worker_id, w.load, w.idle_since, w.waiting, w.step_time_s, w.node)
                  for w in self.workers.values() if w.alive]
        steals = self.stealer.plan(now, states)
        for s in steals:
            entry = self.sessions.get(s.session_id)
            if entry is None:
                continue
            self.router.reassign(s.session_id, s.dst, now)
            dst = self.workers[s.dst]
            self._rehome(entry, dst)
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
        """Sessions in AFS service order; those not enrolled in AFS follow in the given order
        (all of them, in the given order, without AFS)."""
        if self.afs is None:
            return list(session_ids)
        enrolled = [s for s in session_ids if (e := self.sessions.get(s)) is not None and e.in_afs]
        rest = [s for s in session_ids if s not in set(enrolled)]
        return self.afs.order(enrolled, now) + rest

    def shares(self) -> Mapping[str, float]:
        """Each tenant's AFS share of the current epoch (empty without AFS)."""
        if self.afs is None:
            return {}
        tenants = {e.tenant_id for e in self.sessions.values() if e.in_afs}
        return {t: self.afs.share(t) for t in sorted(tenants)}

    def check_invariants(self) -> list[str]:
        """What is wrong with the table (empty when nothing is): tests call it after every
        request, so a bad input that corrupts state shows up where it happened
        (:func:`saga.coordinator.invariants.problems` lists what is checked)."""
        return problems(self)
