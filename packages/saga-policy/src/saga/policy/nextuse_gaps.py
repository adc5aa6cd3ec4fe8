"""Next use of a block from its own history, for traces without sessions (Mooncake-style).

A plain request trace says only which blocks each request reads. What predicts a block's next
use is then its past: the gaps between its references, the gaps of the prefix it extends (a
conversation's new tail is read again when its parent is, at the next turn), how often it was
read, and how deep it sits. Two estimators share one interface (`GapModel`):

- `GapEWMA`: an exponentially weighted mean of the block's log inter-reference gaps, or, for a
  block never read twice, of its nearest ancestor's in the same request;
- `GapRegressor`: an LRB-style (NSDI '20) online least-squares fit of the log gap from those
  features, trained on every gap the trace has shown so far.

Both turn a predicted gap ``ĝ`` and the block's age ``a`` into the time until its next use by
`remaining_time` and give a reuse probability per reference count (`ReuseByRefs`). Pure and
deterministic: time comes in as ``now``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import numpy as np
import numpy.typing as npt

from saga.policy.errors import SagaConfigError

FloatArray = npt.NDArray[np.float64]
Slots = npt.NDArray[np.int64]

EWMA_WEIGHT = 0.3
"""Weight of the newest log gap in `GapEWMA` (after the first few, which are averaged)."""
REF_CLASSES = 4
"""Reference counts ``1 … REF_CLASSES`` each get their own reuse probability; more share one."""
MIN_GAP_S = 1e-6


def remaining_time(gap_s: FloatArray, age_s: FloatArray) -> FloatArray:
    """Expected seconds until a block's next use, ``r = max(ĝ − a, a)``.

    ``ĝ`` is the predicted gap (0 when unknown), ``a`` the time since the last reference. Before
    half the gap has passed the block is expected when its gap says; after that it is overdue,
    and an overdue block is expected to wait about as long again as it already has (the
    heavy-tailed reading of reuse gaps). With nothing known (``ĝ = 0``) this is ``a``, so the
    ranking falls back to LRU.
    """
    return np.maximum(gap_s - age_s, age_s)


@dataclass(eq=False)
class ReuseByRefs:
    """P(a block read ``k`` times is read again), counted online per class ``k``.

    ``p_k = (reused_k + 1) / (reached_k + 2)`` (Laplace): ``reached_k`` counts blocks that got a
    ``k``-th reference, ``reused_k`` those of them that got another. Blocks still waiting count
    as not reused, which biases every class the same way.
    """

    reached: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(REF_CLASSES + 1, np.int64))
    reused: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(REF_CLASSES + 1, np.int64))

    def referenced(self, refs_before: int) -> None:
        """A block with ``refs_before`` earlier references (0: new) is read again."""
        if refs_before > 0:
            self.reused[min(refs_before, REF_CLASSES)] += 1
        self.reached[min(refs_before + 1, REF_CLASSES)] += 1

    def prob(self, refs: npt.NDArray[np.int64]) -> FloatArray:
        """Reuse probability of blocks with ``refs`` references so far (0: unknown → 1)."""
        k = np.clip(refs, 0, REF_CLASSES)
        p: FloatArray = (self.reused + 1.0) / (self.reached + 2.0)
        return np.where(k == 0, 1.0, p[k])


@dataclass(eq=False)
class SessionArrivals:
    """How often a new session of each agent type starts: an EWMA of the gaps between starts.

    What predicts the next read of a prefix every session of an agent type shares (its system
    prompt, its tool schemas) once all the sessions reading it have ended: the next session of
    that type, expected after the mean gap (arrivals taken as Poisson, so memoryless).
    """

    weight: float = 0.1
    _last: dict[str, float] = field(default_factory=dict)
    _gap: dict[str, float] = field(default_factory=dict)

    def started(self, agent_type: str, now: float) -> None:
        """A session of ``agent_type`` started at ``now``."""
        last = self._last.get(agent_type)
        self._last[agent_type] = now
        if last is None:
            return
        gap = max(now - last, 0.0)
        mean = self._gap.get(agent_type)
        self._gap[agent_type] = gap if mean is None else mean + self.weight * (gap - mean)

    def mean_gap(self, agent_type: str | None) -> float:
        """Expected seconds until the next session of ``agent_type`` (``inf``: not known)."""
        return math.inf if agent_type is None else self._gap.get(agent_type, math.inf)


class GapModel(Protocol):
    """What `saga.policy.nextuse.NextUseEstimator` asks of a block-history estimator."""

    def attach(self, slots: int) -> None: ...

    def observe(self, hashes: Sequence[int], slots: Sequence[int], now: float) -> None: ...

    def bind(self, slot: int, block_hash: int) -> None: ...

    def predict(self, slots: Slots, now: float) -> tuple[FloatArray, FloatArray]: ...


@dataclass(eq=False)
class _History:
    """Per-hash history (kept after eviction, as LRB keeps it) and per-slot copies for
    vectorised prediction."""

    use_reuse_prob: bool = True
    reuse: ReuseByRefs = field(default_factory=ReuseByRefs)
    last_ref: dict[int, float] = field(default_factory=dict)
    refs: dict[int, int] = field(default_factory=dict)
    slot_last: FloatArray = field(default_factory=lambda: np.zeros(0))
    slot_refs: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    def attach(self, slots: int) -> None:
        """Size the per-slot arrays for a cache of ``slots`` slots."""
        self.slot_last = np.zeros(slots)
        self.slot_refs = np.zeros(slots, np.int64)

    def _touch(self, h: int, slot: int, now: float) -> float | None:
        """Count a reference of ``h``; the gap since its last one (None: first)."""
        prev = self.last_ref.get(h)
        n = self.refs.get(h, 0)
        if self.use_reuse_prob:
            self.reuse.referenced(n)
        self.last_ref[h] = now
        self.refs[h] = n + 1
        if slot >= 0:
            self.slot_last[slot] = now
            self.slot_refs[slot] = n + 1
        return None if prev is None else max(now - prev, MIN_GAP_S)

    def _bind(self, slot: int, h: int) -> None:
        self.slot_last[slot] = self.last_ref.get(h, 0.0)
        self.slot_refs[slot] = self.refs.get(h, 0)

    def _finish(self, slots: Slots, now: float, gap: FloatArray) -> tuple[FloatArray, FloatArray]:
        age = np.maximum(now - self.slot_last[slots], 0.0)
        p = self.reuse.prob(self.slot_refs[slots]) if self.use_reuse_prob else np.ones(slots.size)
        return now + remaining_time(gap, age), p


@dataclass(eq=False)
class GapEWMA(_History):
    """The block's EWMA of log gaps (its nearest ancestor's in the request when it has none).

    ``ĝ = exp(m)``, ``m ← m + w·(log gap − m)`` with ``w = max(1/n, EWMA_WEIGHT)`` (a plain mean
    of the first few gaps); `remaining_time` makes it a time until use.
    """

    log_gap: dict[int, float] = field(default_factory=dict)
    n_gaps: dict[int, int] = field(default_factory=dict)
    slot_log_gap: FloatArray = field(default_factory=lambda: np.zeros(0))

    def attach(self, slots: int) -> None:
        super().attach(slots)
        self.slot_log_gap = np.full(slots, np.nan)

    def observe(self, hashes: Sequence[int], slots: Sequence[int], now: float) -> None:
        """A request read ``hashes`` (a chain, head first; ``slots`` -1 where not cached)."""
        carry = math.nan
        for h, s in zip(hashes, slots, strict=True):
            gap = self._touch(h, s, now)
            if gap is not None:
                n = self.n_gaps.get(h, 0) + 1
                m = self.log_gap.get(h, 0.0)
                self.log_gap[h] = m + max(1.0 / n, EWMA_WEIGHT) * (math.log(gap) - m)
                self.n_gaps[h] = n
            own = self.log_gap.get(h, math.nan)
            carry = own if own == own else carry
            if s >= 0:
                self.slot_log_gap[s] = carry

    def bind(self, slot: int, block_hash: int) -> None:
        """``slot`` now holds ``block_hash``: copy its history in."""
        self._bind(slot, block_hash)
        self.slot_log_gap[slot] = self.log_gap.get(block_hash, math.nan)

    def predict(self, slots: Slots, now: float) -> tuple[FloatArray, FloatArray]:
        """Predicted next-use time and reuse probability of each slot."""
        lg = self.slot_log_gap[slots]
        gap = np.where(np.isnan(lg), 0.0, np.exp(np.nan_to_num(lg)))
        return self._finish(slots, now, gap)


FEATURES = 6
"""`GapRegressor`'s features: 1, own mean log gap, has one, ancestor's, has one, log refs."""


@dataclass(eq=False)
class GapRegressor(GapEWMA):
    """LRB-style: ``log ĝ = w · x`` by ridge least squares over the gaps seen so far.

    ``x`` = (1, own EWMA log gap, has own, nearest ancestor's, has ancestor's, log(1 + refs)),
    taken at a block's reference and paired with the log gap to its next one; ``w`` solves
    ``(XᵀX + λI) w = Xᵀy`` with old samples decayed, refitted every ``refit`` samples. Until the
    first fit, ``ĝ = 0`` (LRU order).
    """

    ridge: float = 1.0
    decay: float = 0.9999
    refit: int = 256
    xtx: FloatArray = field(default_factory=lambda: np.zeros((FEATURES, FEATURES)))
    xty: FloatArray = field(default_factory=lambda: np.zeros(FEATURES))
    weights: FloatArray | None = None
    pending: int = 0
    x_at_ref: dict[int, tuple[float, ...]] = field(default_factory=dict)
    slot_x: FloatArray = field(default_factory=lambda: np.zeros((0, FEATURES)))

    def __post_init__(self) -> None:
        if not (self.ridge > 0 and 0 < self.decay <= 1 and self.refit >= 1):
            raise SagaConfigError("GapRegressor needs ridge > 0, decay in (0, 1], refit >= 1")

    def attach(self, slots: int) -> None:
        super().attach(slots)
        self.slot_x = np.zeros((slots, FEATURES))

    def observe(self, hashes: Sequence[int], slots: Sequence[int], now: float) -> None:
        """As `GapEWMA.observe`, and each gap becomes a training sample of the regressor."""
        before = {h: self.last_ref.get(h) for h in hashes}
        super().observe(hashes, slots, now)
        inherited = math.nan
        for h, s in zip(hashes, slots, strict=True):
            prev = before[h]
            x_prev = self.x_at_ref.get(h)
            if prev is not None and x_prev is not None:
                self._learn(np.asarray(x_prev), math.log(max(now - prev, MIN_GAP_S)))
            own = self.log_gap.get(h, math.nan)
            x = _features(own, inherited, self.refs[h])
            inherited = own if own == own else inherited
            self.x_at_ref[h] = x
            if s >= 0:
                self.slot_x[s] = x

    def _learn(self, x: FloatArray, y: float) -> None:
        self.xtx = self.decay * self.xtx + np.outer(x, x)
        self.xty = self.decay * self.xty + x * y
        self.pending += 1
        if self.pending >= self.refit:
            w = np.asarray(np.linalg.solve(self.xtx + self.ridge * np.eye(FEATURES), self.xty),
                           np.float64)
            self.weights = w
            self.pending = 0

    def bind(self, slot: int, block_hash: int) -> None:
        super().bind(slot, block_hash)
        x = self.x_at_ref.get(block_hash)
        self.slot_x[slot] = x if x is not None else 0.0

    def predict(self, slots: Slots, now: float) -> tuple[FloatArray, FloatArray]:
        """Predicted next-use time and reuse probability of each slot."""
        if self.weights is None:
            return self._finish(slots, now, np.zeros(slots.size))
        gap = np.exp(np.clip(self.slot_x[slots] @ self.weights, -30.0, 30.0))
        return self._finish(slots, now, gap)


def _features(own: float, inherited: float, refs: int) -> tuple[float, ...]:
    """The regressor's feature vector of one block at one reference."""
    has_own, has_inh = own == own, inherited == inherited
    return (1.0, own if has_own else 0.0, float(has_own), inherited if has_inh else 0.0,
            float(has_inh), math.log1p(refs))


GAP_MODELS: Mapping[str, type[GapEWMA]] = MappingProxyType(
    {"ewma": GapEWMA, "regressor": GapRegressor})
"""The block-history estimators `NextUseEstimator` can use, by name."""


def make_gap_model(name: str, *, reuse_prob: bool = True) -> GapEWMA:
    """A fresh block-history estimator by name (``ewma`` or ``regressor``)."""
    cls = GAP_MODELS.get(name)
    if cls is None:
        raise SagaConfigError(f"unknown gap model {name!r}; valid: {', '.join(GAP_MODELS)}")
    return cls(use_reuse_prob=reuse_prob)
