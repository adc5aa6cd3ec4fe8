"""Predicted next use of each cached block, and the value that ranks blocks by it.

What SAGA knows says when a block is read again:

- a session with a call in flight (or queued) reads its prefix now;
- a session in a tool call reads it when the tool returns: the tool's conditional median
  remaining time given how long it has run (`saga.policy.ttl.pin_return_eta` of the per-tool
  log-normal, learnt online from the gaps between a session's calls), plus the queueing delay
  the returning call will wait (the serving instance's, given as a number);
- a session whose workflow ends (its last call, or the AEG's terminal probability) reads it
  never, weighted by that probability;
- a block several sessions read (a shared system prompt, a parent agent's context) is read by
  the earliest of its users, or, once they all ended, by the next new session of their agent
  type (its arrival rate) or when its own history says it recurs, whichever comes first;
- a block no session claims (plain request traces) is read when its own history says
  (`saga.policy.nextuse_gaps`).

`block_value` turns a prediction into one number per block: eviction drops the lowest first.
Pure and deterministic: time comes in as ``now``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import overload

import numpy as np
import numpy.typing as npt

from saga.policy.errors import SagaConfigError
from saga.policy.nextuse_claims import NO_OWNER, Claims
from saga.policy.nextuse_gaps import FloatArray, GapEWMA, GapRegressor, SessionArrivals, Slots
from saga.policy.spec import LLAMA3_70B, ModelSpec
from saga.policy.ttl import HasQuantile, LatencySource, aeg_latency_source, pin_return_eta

MIN_UNTIL_S = 1e-6
"""Floor of the time until use in `block_value`: a block wanted now is worth the most, finitely."""


def recompute_flops(depth: npt.NDArray[np.int64], block_tokens: int,
                    model: ModelSpec = LLAMA3_70B) -> FloatArray:
    """Prefill FLOPs to recompute a block at ``depth`` (0-based) of its chain:
    ``B · (2·params + 4·layers·heads·head_dim·(d·B + B/2))`` for ``B`` tokens per block.

    The dense layers cost ``2·params`` per token; attention costs ``4·layers·heads·head_dim``
    per (query, earlier token) pair, so a block deeper in the context costs more to recompute
    (the cost model of saga-bench's roofline). Seconds are these FLOPs over the engine's rate,
    the same for every block, so the ranking needs only the FLOPs.
    """
    b = float(block_tokens)
    attn = 4.0 * model.layers * model.heads * model.head_dim
    ctx = depth.astype(np.float64) * b + b / 2.0
    out: FloatArray = b * (2.0 * model.params + attn * ctx)
    return out


@overload
def block_value(p_reuse: float, saved: float, size: float, until_s: float) -> float: ...
@overload
def block_value(p_reuse: FloatArray, saved: FloatArray, size: FloatArray | float,
                until_s: FloatArray) -> FloatArray: ...
def block_value(p_reuse: FloatArray | float, saved: FloatArray | float,
                size: FloatArray | float, until_s: FloatArray | float) -> FloatArray | float:
    """Value of keeping a block, per byte and second: ``v = P_reuse · saved / (size · Δt)``.

    ``P_reuse``: probability the block is read again before it would be evicted; ``saved``: the
    recompute (or reload) work a hit saves (`recompute_flops`); ``size``: the block's bytes;
    ``Δt``: time until that use, floored at ``MIN_UNTIL_S`` (``inf``: never, value 0). Evict the
    lowest first. With exact next uses and equal blocks this ranks as Bélády's MIN.
    """
    until = np.maximum(np.asarray(until_s, np.float64), MIN_UNTIL_S)
    v: FloatArray = np.asarray(p_reuse, np.float64) * np.asarray(saved, np.float64) / (
        np.asarray(size, np.float64) * until)
    if v.ndim == 0:
        return float(v)
    return v


class Phase(IntEnum):
    """Where a session is: its next use is now, after a tool, or never."""

    IN_FLIGHT = 0
    TOOL = 1
    ENDED = 2


@dataclass
class _Session:
    name: str
    last_call: float
    tool: str | None
    p_reuse: float
    phase: Phase
    agent_type: str | None = None


HISTORY_PER_SLOT = 8
"""Hashes whose reuse history an estimator keeps, per slot of its cache (`NextUseEstimator`)."""
MIN_HISTORY = 1024
"""... and at least this many, however small the cache."""


@dataclass(eq=False)
class NextUseEstimator:
    """Per-block next-use predictions for one cache, fed what the serving path sees.

    ``bind`` / ``unbind``: blocks enter or leave the tier (the eviction policy's hooks).
    ``call_started``: a session's call arrives (the gap since its previous call teaches the
    previous tool's latency). ``observe_request``: a request was served; its blocks' history is
    updated and, for a session, the blocks are claimed by it with its pending tool and reuse
    probability. ``session_ended``: a session is over without a call. ``predict``: next-use
    time and reuse probability of slots at ``now``. ``queue_delay_s``: the queueing delay a
    returning call waits before it reads its KV (the serving instance's average, set by the
    serving path; 0 by default).

    Bounded for a long-running engine: a session that ended for good (its ``final`` call, or
    ``session_ended``) is forgotten at once (what it read keeps only its agent type,
    `saga.policy.nextuse_claims`), one that ended otherwise (no pending tool) once it holds no
    slot; block histories are kept for ``history_cap`` hashes (default ``HISTORY_PER_SLOT`` per
    slot, at least ``MIN_HISTORY``), those referenced longest ago and no longer held going first.
    A session forgotten and heard of again is a new session.
    """

    gaps: GapEWMA = field(default_factory=GapRegressor, repr=False)
    latency: LatencySource = field(default_factory=aeg_latency_source, repr=False)
    _slot_of: dict[int, int] = field(default_factory=dict, repr=False)
    claims: Claims = field(default_factory=Claims, repr=False)
    _sessions: dict[int, _Session] = field(default_factory=dict, repr=False)
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _next_id: int = 0
    _models: dict[str, HasQuantile] = field(default_factory=dict, repr=False)
    arrivals: SessionArrivals = field(default_factory=SessionArrivals, repr=False)
    queue_delay_s: float = 0.0
    history_cap: int | None = None
    sessions_ended: int = 0
    _sweep_at: int = 64
    _attached: bool = False

    def attach(self, slots: int) -> None:
        """Serve one cache of ``slots`` slots (an estimator serves one cache only)."""
        if self._attached:
            raise SagaConfigError("a NextUseEstimator keeps per-cache state and already serves "
                                  "a cache; build one per CacheManager")
        if self.history_cap is not None and self.history_cap < 0:
            raise SagaConfigError(f"history_cap must be >= 0 (or None), got {self.history_cap}")
        self._attached = True
        self.claims.attach(slots)
        self.gaps.attach(slots)
        if self.history_cap is None:
            self.history_cap = max(HISTORY_PER_SLOT * slots, MIN_HISTORY)

    def bind(self, slots: Slots, hashes: Sequence[int]) -> None:
        """Blocks entered the tier in ``slots``."""
        slots = np.asarray(slots, np.int64)
        self._slot_of.update(zip(hashes, slots.tolist(), strict=True))
        self.gaps.bind_many(slots, hashes)
        self.claims.release(slots)

    def unbind(self, hashes: Sequence[int]) -> None:
        """Blocks left the tier."""
        for h in hashes:
            self._slot_of.pop(h, None)

    def call_started(self, session_id: str, now: float) -> None:
        """A call of ``session_id`` arrived: its KV is wanted now."""
        i = self._index.get(session_id)
        if i is None:
            return
        s = self._sessions[i]
        if s.phase == Phase.TOOL and s.tool is not None:
            self.latency.observe(s.tool, max(now - s.last_call, 1e-3))
            self._models.pop(s.tool, None)
        s.phase = Phase.IN_FLIGHT

    def set_queue_delay(self, seconds: float) -> None:
        """The queueing delay a returning call now waits (the serving path's measured average)."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise SagaConfigError(f"queue delay must be a finite number >= 0, got {seconds}")
        self.queue_delay_s = seconds

    def observe_request(self, hashes: Sequence[int], now: float, *,
                        session_id: str | None = None, pending_tool: str | None = None,
                        reuse_prob: float = 1.0, final: bool = False,
                        agent_type: str | None = None) -> None:
        """A request that read ``hashes`` (a chain, head first) was served at ``now``.

        With a session: it now waits on ``pending_tool`` (None, or ``final``: it ended) and its
        prefix is reused with probability ``reuse_prob`` (the AEG's); its blocks are claimed.
        ``agent_type``: the session's agent type (a new session of it counts to its arrival rate).
        """
        slots = [self._slot_of.get(h, -1) for h in hashes]
        self.gaps.observe(hashes, slots, now)
        if self.history_cap is not None and self.gaps.known() > self.history_cap:
            self.gaps.forget(self.history_cap, self._slot_of)
        if session_id is None:
            return
        self.call_started(session_id, now)
        i = self._index.get(session_id)
        ended = final or pending_tool is None
        if i is None:
            i = self._index[session_id] = self._next_id
            self._next_id += 1
            if agent_type is not None:
                self.arrivals.started(agent_type, now)
        elif agent_type is None:
            agent_type = self._sessions[i].agent_type
        self._sessions[i] = _Session(session_id, now, pending_tool, 0.0 if ended else reuse_prob,
                                     Phase.ENDED if ended else Phase.TOOL, agent_type)
        held = np.asarray(slots, np.int64)
        self.claims.claim(held[held >= 0], i)
        if final:
            self._forget(i)
        elif len(self._sessions) > self._sweep_at:
            self._sweep()

    def session_ended(self, session_id: str, now: float) -> None:
        """``session_id``'s task is over without a further call: its blocks are read never
        (unless other sessions read them). Unlike a ``final`` request, the time since its last
        call teaches no tool latency. An unknown session is ignored."""
        i = self._index.get(session_id)
        if i is not None:
            self._forget(i)

    def _forget(self, i: int) -> None:
        s = self._sessions.pop(i)
        del self._index[s.name]
        self.claims.close(i, s.agent_type)
        self.sessions_ended += 1

    def _sweep(self) -> None:
        """Forget sessions that ended without a final call and hold no slot any more."""
        held = self.claims.owners()
        for i in [i for i, s in self._sessions.items()
                  if s.phase == Phase.ENDED and i not in held]:
            s = self._sessions.pop(i)
            del self._index[s.name]
        self._sweep_at = max(64, 2 * len(self._sessions))

    def tool_remaining(self, tool: str, elapsed_s: float) -> float:
        """Median seconds until ``tool`` returns, ``elapsed_s`` into it (`pin_return_eta`)."""
        model = self._models.get(tool)
        if model is None:
            model = self._models[tool] = self.latency.latency(tool)  # type: ignore[assignment]
        assert model is not None
        return pin_return_eta(model, max(elapsed_s, 0.0))

    def phase(self, session_id: str) -> Phase | None:
        """Where the session is as far as this estimator was told (None: never told of it, or
        it ended and was forgotten)."""
        i = self._index.get(session_id)
        return None if i is None else self._sessions[i].phase

    def session_next_use(self, session_id: str, now: float) -> float:
        """When the session reads its prefix next (``inf``: never; unknown session: never)."""
        i = self._index.get(session_id)
        return math.inf if i is None else self._next_of(i, now)

    def state_size(self) -> dict[str, int]:
        """How many entries each part of the state keeps (what bounds are checked on)."""
        return {"sessions": len(self._sessions), "claims": self.claims.size(),
                "hashes": self.gaps.known(), "resident": len(self._slot_of)}

    def _next_of(self, i: int, now: float) -> float:
        s = self._sessions[i]
        if s.phase == Phase.IN_FLIGHT:
            return now
        if s.phase == Phase.ENDED or s.tool is None:
            return math.inf
        return now + self.tool_remaining(s.tool, now - s.last_call) + self.queue_delay_s

    def predict(self, slots: Slots, now: float) -> tuple[FloatArray, FloatArray]:
        """Next-use time (``inf``: never) and reuse probability of each slot at ``now``.

        A slot claimed by sessions: the earliest of its users (read by several whose users all
        ended, e.g. a system prompt: the next new session of their agent types or its own
        history, whichever is sooner); else its history alone. Each session's next use is
        computed once per call; the rest is vectorised over ``slots`` (distinct slots).
        """
        nxt, p = self.gaps.predict(slots, now)
        own = self.claims.owner[slots]
        claimed = np.flatnonzero(own != NO_OWNER)
        if claimed.size == 0:
            return nxt, p
        shared = claimed[self.claims.is_shared[slots[claimed]]]
        hist_t, hist_p = nxt[shared], p[shared]
        live = own[claimed] >= 0
        pairs = _SharedReaders.of(self.claims, slots, shared)
        ids = np.unique(np.concatenate([own[claimed][live], pairs.user]))
        t_of, p_of, g_of = self._session_arrays(ids, now)
        at = claimed[live]
        j = np.searchsorted(ids, own[at])
        nxt[claimed], p[claimed] = math.inf, 0.0  # an ended session's blocks: never
        nxt[at], p[at] = t_of[j], p_of[j]
        if shared.size == 0:
            return nxt, p
        nxt[shared] = math.inf
        if pairs.user.size:
            ju = np.searchsorted(ids, pairs.user)
            tu = t_of[ju]
            order = np.lexsort((pairs.user, tu, pairs.at))
            first = order[np.r_[True, pairs.at[order][1:] != pairs.at[order][:-1]]]
            nxt[shared[pairs.at[first]]] = tu[first]
            p[shared[pairs.at[first]]] = p_of[ju[first]]
        gone = np.flatnonzero(nxt[shared] == math.inf)  # every user ended: new sessions may read
        if gone.size:
            gap = pairs.min_gap(shared.size, g_of[np.searchsorted(ids, pairs.user)],
                                self._type_gaps())
            at_g = shared[gone]
            nxt[at_g], p[at_g] = hist_t[gone], hist_p[gone]
            soon = now + gap[gone]
            better = soon < nxt[at_g]
            nxt[at_g[better]], p[at_g[better]] = soon[better], 1.0
        return nxt, p

    def _session_arrays(self, ids: npt.NDArray[np.int64], now: float
                        ) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]:
        """Next use, reuse probability and agent type number of each session in ``ids``."""
        sess = [self._sessions[i] for i in ids.tolist()]
        t = np.array([self._next_of(i, now) for i in ids.tolist()], np.float64)
        p = np.array([s.p_reuse for s in sess], np.float64)
        g = np.array([self.claims.type_of(s.agent_type) for s in sess], np.int64)
        return t, p, g

    def _type_gaps(self) -> FloatArray:
        """Expected seconds until a new session of each agent type number."""
        return np.array([self.arrivals.mean_gap(n) for n in self.claims.type_names], np.float64)


@dataclass(frozen=True)
class _SharedReaders:
    """The readers of the shared slots among a prediction's slots, by their index ``at`` in
    ``shared``: live sessions (``user``) and ended ones' agent types (``closed``)."""

    at: npt.NDArray[np.int64]
    user: npt.NDArray[np.int64]
    closed_at: npt.NDArray[np.int64]
    closed: npt.NDArray[np.int64]

    @classmethod
    def of(cls, claims: Claims, slots: Slots, shared: npt.NDArray[np.int64]) -> _SharedReaders:
        empty = np.zeros(0, np.int64)
        if shared.size == 0:
            return cls(empty, empty, empty, empty)
        pairs = claims.pairs()
        where = np.full(claims.owner.size, -1, np.int64)
        where[slots[shared]] = np.arange(shared.size)
        at, cat = where[pairs.live_slot], where[pairs.closed_slot]
        keep, ckeep = at >= 0, cat >= 0
        return cls(at[keep], pairs.live_user[keep], cat[ckeep], pairs.closed_type[ckeep])

    def min_gap(self, n: int, user_types: npt.NDArray[np.int64], gaps: FloatArray) -> FloatArray:
        """Per shared slot, the least expected gap until a new session of a reader's type."""
        out = np.full(n, math.inf)
        np.minimum.at(out, self.at, gaps[user_types])
        np.minimum.at(out, self.closed_at, gaps[self.closed])
        return out
