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
    last_call: float
    tool: str | None
    p_reuse: float
    phase: Phase
    agent_type: str | None = None


@dataclass(eq=False)
class NextUseEstimator:
    """Per-block next-use predictions for one cache, fed what the serving path sees.

    ``bind`` / ``unbind``: blocks enter or leave the tier (the eviction policy's hooks).
    ``call_started``: a session's call arrives (the gap since its previous call teaches the
    previous tool's latency). ``observe_request``: a request was served; its blocks' history is
    updated and, for a session, the blocks are claimed by it with its pending tool and reuse
    probability. ``predict``: next-use time and reuse probability of slots at ``now``.
    ``queue_delay_s``: the queueing delay a returning call waits before it reads its KV (the
    serving instance's average, set by the serving path; 0 by default).
    """

    gaps: GapEWMA = field(default_factory=GapRegressor, repr=False)
    latency: LatencySource = field(default_factory=aeg_latency_source, repr=False)
    _slot_of: dict[int, int] = field(default_factory=dict, repr=False)
    _owner: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64),
                                          repr=False)
    _users: dict[int, set[int]] = field(default_factory=dict, repr=False)
    _sessions: list[_Session] = field(default_factory=list, repr=False)
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _models: dict[str, HasQuantile] = field(default_factory=dict, repr=False)
    arrivals: SessionArrivals = field(default_factory=SessionArrivals, repr=False)
    queue_delay_s: float = 0.0
    _attached: bool = False

    def attach(self, slots: int) -> None:
        """Serve one cache of ``slots`` slots (an estimator serves one cache only)."""
        if self._attached:
            raise SagaConfigError("a NextUseEstimator keeps per-cache state and already serves "
                                  "a cache; build one per CacheManager")
        self._attached = True
        self._owner = np.full(slots, -1, np.int64)
        self.gaps.attach(slots)

    def bind(self, slots: Slots, hashes: Sequence[int]) -> None:
        """Blocks entered the tier in ``slots``."""
        for s, h in zip(slots.tolist(), hashes, strict=True):
            self._slot_of[h] = s
            self._owner[s] = -1
            self._users.pop(s, None)
            self.gaps.bind(s, h)

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
        if session_id is None:
            return
        self.call_started(session_id, now)
        i = self._index.setdefault(session_id, len(self._sessions))
        ended = final or pending_tool is None
        if i == len(self._sessions) and agent_type is not None:
            self.arrivals.started(agent_type, now)
        elif agent_type is None:
            agent_type = self._sessions[i].agent_type if i < len(self._sessions) else None
        sess = _Session(now, pending_tool, 0.0 if ended else reuse_prob,
                        Phase.ENDED if ended else Phase.TOOL, agent_type)
        if i == len(self._sessions):
            self._sessions.append(sess)
        else:
            self._sessions[i] = sess
        owner = self._owner
        for s in slots:
            if s < 0:
                continue
            o = int(owner[s])
            if o >= 0 and o != i:
                self._users.setdefault(s, {o}).add(i)
            owner[s] = i

    def tool_remaining(self, tool: str, elapsed_s: float) -> float:
        """Median seconds until ``tool`` returns, ``elapsed_s`` into it (`pin_return_eta`)."""
        model = self._models.get(tool)
        if model is None:
            model = self._models[tool] = self.latency.latency(tool)  # type: ignore[assignment]
        assert model is not None
        return pin_return_eta(model, max(elapsed_s, 0.0))

    def phase(self, session_id: str) -> Phase | None:
        """Where the session is as far as this estimator was told (None: never told of it)."""
        i = self._index.get(session_id)
        return None if i is None else self._sessions[i].phase

    def session_next_use(self, session_id: str, now: float) -> float:
        """When the session reads its prefix next (``inf``: never; unknown session: never)."""
        i = self._index.get(session_id)
        return math.inf if i is None else self._next_of(i, now)

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
        history, whichever is sooner); else its history alone.
        """
        nxt, p = self.gaps.predict(slots, now)
        own = self._owner[slots]
        claimed = np.flatnonzero(own >= 0)
        if claimed.size == 0:
            return nxt, p
        uniq, inv = np.unique(own[claimed], return_inverse=True)
        t = np.array([self._next_of(int(u), now) for u in uniq.tolist()])
        pr = np.array([self._sessions[int(u)].p_reuse for u in uniq.tolist()])
        hist_t, hist_p = nxt[claimed], p[claimed]
        nxt[claimed], p[claimed] = t[inv], pr[inv]
        if self._users:
            shared = np.isin(slots[claimed], np.fromiter(self._users, np.int64))
            for j in np.flatnonzero(shared).tolist():
                pos = int(claimed[j])
                users = self._users[int(slots[pos])]
                best = min(users, key=lambda u: (self._next_of(u, now), u))
                nxt[pos] = self._next_of(best, now)
                p[pos] = self._sessions[best].p_reuse
                if nxt[pos] == math.inf:  # every user ended: new sessions may read it
                    nxt[pos], p[pos] = hist_t[j], hist_p[j]
                    gap = min(self.arrivals.mean_gap(self._sessions[u].agent_type)
                              for u in users)
                    if now + gap < nxt[pos]:
                        nxt[pos], p[pos] = now + gap, 1.0
        return nxt, p
