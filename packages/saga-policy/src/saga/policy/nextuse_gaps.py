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
from collections.abc import Container, Mapping, Sequence
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
        self.referenced_many(np.array([refs_before], np.int64))

    def referenced_many(self, refs_before: npt.NDArray[np.int64]) -> None:
        """`referenced` for each block of a request at once."""
        np.add.at(self.reused, np.minimum(refs_before[refs_before > 0], REF_CLASSES), 1)
        np.add.at(self.reached, np.minimum(refs_before + 1, REF_CLASSES), 1)

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

    def bind_many(self, slots: Slots, hashes: Sequence[int]) -> None: ...

    def predict(self, slots: Slots, now: float) -> tuple[FloatArray, FloatArray]: ...

    def forget(self, cap: int, resident: Container[int]) -> int: ...


FEATURES = 6
"""`GapRegressor`'s features: 1, own mean log gap, has one, ancestor's, has one, log refs."""


def _logs(x: FloatArray) -> FloatArray:
    """``math.log`` of each element (the C library's, so results match scalar code exactly)."""
    return np.fromiter(map(math.log, x.tolist()), np.float64, x.size)


def _ffill(v: FloatArray, before: float) -> FloatArray:
    """Each position's latest non-NaN value of ``v`` up to it (``before`` where none yet)."""
    at = np.where(np.isnan(v), -1, np.arange(v.size))
    np.maximum.accumulate(at, out=at)
    return np.where(at >= 0, v[np.maximum(at, 0)], before)


def _segments(hashes: Sequence[int]) -> list[tuple[int, int]]:
    """``hashes`` cut into runs without a repeated hash (one run for a prefix chain), so each
    run can be updated at once and repeats still see their earlier occurrence's update."""
    n = len(hashes)
    if len(set(hashes)) == n:
        return [(0, n)]
    out: list[tuple[int, int]] = []
    seen: set[int] = set()
    start = 0
    for i, h in enumerate(hashes):
        if h in seen:
            out.append((start, i))
            seen, start = set(), i
        seen.add(h)
    out.append((start, n))
    return out


@dataclass(eq=False)
class _History:
    """Per-hash history in rows of arrays (kept after eviction, as LRB keeps it, up to a cap:
    `forget`), and per-slot copies for vectorised prediction. A request's chain updates all
    its rows at once."""

    use_reuse_prob: bool = True
    reuse: ReuseByRefs = field(default_factory=ReuseByRefs)
    slot_last: FloatArray = field(default_factory=lambda: np.zeros(0))
    slot_refs: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    _row: dict[int, int] = field(default_factory=dict, repr=False)
    _free: list[int] = field(default_factory=list, repr=False)
    _clock: int = 0
    last: FloatArray = field(default_factory=lambda: np.zeros(0), repr=False)
    refs: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64),
                                        repr=False)
    seq: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64),
                                       repr=False)

    def attach(self, slots: int) -> None:
        """Size the per-slot arrays for a cache of ``slots`` slots."""
        self.slot_last = np.zeros(slots)
        self.slot_refs = np.zeros(slots, np.int64)

    def known(self) -> int:
        """How many hashes have a history."""
        return len(self._row)

    def remembers(self, block_hash: int) -> bool:
        """Whether ``block_hash`` has a history."""
        return block_hash in self._row

    def _grow(self, rows: int) -> None:
        """Room for ``rows`` rows in every per-hash array."""
        n = rows - self.last.size
        self.last = np.concatenate([self.last, np.zeros(n)])
        self.refs = np.concatenate([self.refs, np.zeros(n, np.int64)])
        self.seq = np.concatenate([self.seq, np.zeros(n, np.int64)])

    def _reset(self, row: int) -> None:
        """A row given to a new hash: no history."""
        self.refs[row] = 0

    def _rows(self, hashes: Sequence[int]) -> npt.NDArray[np.int64]:
        """Each hash's row, new hashes getting one."""
        index = self._row
        rows = list(map(index.get, hashes))
        if None in rows:
            for i, r in enumerate(rows):
                if r is None:
                    h = hashes[i]
                    got = index.get(h)
                    if got is None:
                        got = self._free.pop() if self._free else len(index)
                        if got >= self.last.size:
                            self._grow(max(64, 2 * self.last.size))
                        index[h] = got
                        self._reset(got)
                    rows[i] = got
        return np.array(rows, np.int64)

    def forget(self, cap: int, resident: Container[int]) -> int:
        """Drop the history of the hashes referenced longest ago, skipping ``resident`` ones,
        down to ``cap - cap // 8`` hashes once more than ``cap`` have one (the slack spares a
        scan per request); returns how many were dropped.

        A block gone that long is a new block if it ever comes back, which bounds the history
        of a long-running engine by the cache's size rather than by everything it ever held.
        """
        n = len(self._row)
        if n <= cap:
            return 0
        hashes = list(self._row)
        rows = np.fromiter(self._row.values(), np.int64, n)
        gone = np.flatnonzero(~np.fromiter((h in resident for h in hashes), np.bool_, n))
        drop = min(int(gone.size), n - (cap - cap // 8))
        if drop <= 0:
            return 0
        if drop < gone.size:
            gone = gone[np.argpartition(self.seq[rows[gone]], drop - 1)[:drop]]
        for j in gone.tolist():
            del self._row[hashes[j]]
        self._free.extend(rows[gone].tolist())
        return drop

    def _touch(self, rows: npt.NDArray[np.int64], slots: npt.NDArray[np.int64],
               now: float) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """Count a reference of each row (no repeats); their earlier reference counts and
        times. Held slots get the new count and time."""
        n, prev = self.refs[rows], self.last[rows]
        if self.use_reuse_prob:
            self.reuse.referenced_many(n)
        self.last[rows] = now
        self.refs[rows] = n + 1
        self.seq[rows] = self._clock + np.arange(rows.size)
        self._clock += int(rows.size)
        held = slots >= 0
        self.slot_last[slots[held]] = now
        self.slot_refs[slots[held]] = n[held] + 1
        return n, prev

    def bind(self, slot: int, block_hash: int) -> None:
        """``slot`` now holds ``block_hash``: copy its history in."""
        self.bind_many(np.array([slot], np.int64), [block_hash])

    def bind_many(self, slots: Slots, hashes: Sequence[int]) -> None:
        """Each of ``slots`` (distinct) now holds its hash: copy their histories in."""
        get = self._row.get
        rows = np.fromiter((get(h, -1) for h in hashes), np.int64, len(hashes))
        known = rows >= 0
        self._bind(slots[known], rows[known], slots[~known])

    def _bind(self, slots: Slots, rows: npt.NDArray[np.int64], unknown: Slots) -> None:
        """Copy rows into ``slots``; ``unknown`` slots get no history."""
        self.slot_last[slots], self.slot_refs[slots] = self.last[rows], self.refs[rows]
        self.slot_last[unknown], self.slot_refs[unknown] = 0.0, 0

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

    slot_log_gap: FloatArray = field(default_factory=lambda: np.zeros(0))
    log_gap: FloatArray = field(default_factory=lambda: np.zeros(0), repr=False)
    n_gaps: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64),
                                          repr=False)

    def attach(self, slots: int) -> None:
        super().attach(slots)
        self.slot_log_gap = np.full(slots, np.nan)

    def _grow(self, rows: int) -> None:
        n = rows - self.log_gap.size
        super()._grow(rows)
        self.log_gap = np.concatenate([self.log_gap, np.full(n, np.nan)])
        self.n_gaps = np.concatenate([self.n_gaps, np.zeros(n, np.int64)])

    def _reset(self, row: int) -> None:
        super()._reset(row)
        self.log_gap[row] = np.nan
        self.n_gaps[row] = 0

    def observe(self, hashes: Sequence[int], slots: Sequence[int], now: float) -> None:
        """A request read ``hashes`` (a chain, head first; ``slots`` -1 where not cached)."""
        rows = self._rows(hashes)
        self._observe(rows, np.asarray(slots, np.int64).reshape(-1), _segments(hashes), now)

    def _observe(self, rows: npt.NDArray[np.int64], slots: npt.NDArray[np.int64],
                 segments: list[tuple[int, int]], now: float) -> None:
        carry = math.nan
        for a, b in segments:
            carry = self._ewma(rows[a:b], slots[a:b], now, carry)

    def _ewma(self, rows: npt.NDArray[np.int64], slots: npt.NDArray[np.int64], now: float,
              carry: float) -> float:
        """Update the rows' mean log gap; the held slots get it, or the nearest ancestor's."""
        n, prev = self._touch(rows, slots, now)
        seen = n > 0
        if seen.any():
            r = rows[seen]
            lg = _logs(np.maximum(now - prev[seen], MIN_GAP_S))
            k = self.n_gaps[r] + 1
            m = self.log_gap[r]
            m = np.where(np.isnan(m), 0.0, m)
            self.log_gap[r] = m + np.maximum(1.0 / k, EWMA_WEIGHT) * (lg - m)
            self.n_gaps[r] = k
        fill = _ffill(self.log_gap[rows], carry)
        held = slots >= 0
        self.slot_log_gap[slots[held]] = fill[held]
        return float(fill[-1]) if fill.size else carry

    def _bind(self, slots: Slots, rows: npt.NDArray[np.int64], unknown: Slots) -> None:
        super()._bind(slots, rows, unknown)
        self.slot_log_gap[slots], self.slot_log_gap[unknown] = self.log_gap[rows], np.nan

    def predict(self, slots: Slots, now: float) -> tuple[FloatArray, FloatArray]:
        """Predicted next-use time and reuse probability of each slot."""
        lg = self.slot_log_gap[slots]
        gap = np.where(np.isnan(lg), 0.0, np.exp(np.nan_to_num(lg)))
        return self._finish(slots, now, gap)


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
    slot_x: FloatArray = field(default_factory=lambda: np.zeros((0, FEATURES)))
    x_at_ref: FloatArray = field(default_factory=lambda: np.zeros((0, FEATURES)), repr=False)
    has_x: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, np.bool_),
                                         repr=False)

    def __post_init__(self) -> None:
        if not (self.ridge > 0 and 0 < self.decay <= 1 and self.refit >= 1):
            raise SagaConfigError("GapRegressor needs ridge > 0, decay in (0, 1], refit >= 1")

    def attach(self, slots: int) -> None:
        super().attach(slots)
        self.slot_x = np.zeros((slots, FEATURES))

    def _grow(self, rows: int) -> None:
        n = rows - self.has_x.size
        super()._grow(rows)
        self.x_at_ref = np.concatenate([self.x_at_ref, np.zeros((n, FEATURES))])
        self.has_x = np.concatenate([self.has_x, np.zeros(n, np.bool_)])

    def _reset(self, row: int) -> None:
        super()._reset(row)
        self.has_x[row] = False

    def _observe(self, rows: npt.NDArray[np.int64], slots: npt.NDArray[np.int64],
                 segments: list[tuple[int, int]], now: float) -> None:
        """As `GapEWMA`, and each gap becomes a training sample of the regressor."""
        seen, before = self.refs[rows] > 0, self.last[rows]
        super()._observe(rows, slots, segments, now)
        xs: list[FloatArray] = []
        ys: list[FloatArray] = []
        inherited = math.nan
        for a, b in segments:
            r = rows[a:b]
            learn = seen[a:b] & self.has_x[r]
            if learn.any():
                xs.append(self.x_at_ref[r[learn]])
                ys.append(_logs(np.maximum(now - before[a:b][learn], MIN_GAP_S)))
            inherited = self._features(r, slots[a:b], inherited)
        if xs:
            self._learn(np.concatenate(xs), np.concatenate(ys))

    def _features(self, rows: npt.NDArray[np.int64], slots: npt.NDArray[np.int64],
                  inherited: float) -> float:
        """The rows' feature vectors at this reference (copied to held slots); returns the
        ancestor log gap a following run inherits."""
        own = self.log_gap[rows]
        fill = _ffill(own, inherited)
        inh = np.concatenate([[inherited], fill[:-1]])
        has_own, has_inh = ~np.isnan(own), ~np.isnan(inh)
        x = np.empty((rows.size, FEATURES))
        x[:, 0] = 1.0
        x[:, 1] = np.where(has_own, own, 0.0)
        x[:, 2] = has_own
        x[:, 3] = np.where(has_inh, inh, 0.0)
        x[:, 4] = has_inh
        x[:, 5] = np.fromiter(map(math.log1p, self.refs[rows].tolist()), np.float64, rows.size)
        self.x_at_ref[rows] = x
        self.has_x[rows] = True
        held = slots >= 0
        self.slot_x[slots[held]] = x[held]
        return float(fill[-1]) if fill.size else inherited

    def _learn(self, x: FloatArray, y: FloatArray) -> None:
        """Add the samples (rows of ``x``, targets ``y``) in order: ``XᵀX ← decay·XᵀX + x xᵀ``
        and ``Xᵀy ← decay·Xᵀy + x y`` each, refitting every ``refit`` samples. One array holds
        both sums, so each sample costs two in-place operations."""
        f = FEATURES
        add = np.empty((y.size, f, f + 1))
        add[:, :, :f] = x[:, :, None] * x[:, None, :]
        add[:, :, f] = x * y[:, None]
        acc = np.empty((f, f + 1))
        acc[:, :f], acc[:, f] = self.xtx, self.xty
        decay = self.decay
        for row in add:
            np.multiply(acc, decay, out=acc)
            np.add(acc, row, out=acc)
            self.pending += 1
            if self.pending >= self.refit:
                self.weights = np.asarray(np.linalg.solve(
                    acc[:, :f] + self.ridge * np.eye(f), acc[:, f].copy()), np.float64)
                self.pending = 0
        self.xtx, self.xty = acc[:, :f].copy(), acc[:, f].copy()

    def _bind(self, slots: Slots, rows: npt.NDArray[np.int64], unknown: Slots) -> None:
        super()._bind(slots, rows, unknown)
        self.slot_x[slots] = np.where(self.has_x[rows][:, None], self.x_at_ref[rows], 0.0)
        self.slot_x[unknown] = 0.0

    def predict(self, slots: Slots, now: float) -> tuple[FloatArray, FloatArray]:
        """Predicted next-use time and reuse probability of each slot."""
        if self.weights is None:
            return self._finish(slots, now, np.zeros(slots.size))
        gap = np.exp(np.clip(self.slot_x[slots] @ self.weights, -30.0, 30.0))
        return self._finish(slots, now, gap)


GAP_MODELS: Mapping[str, type[GapEWMA]] = MappingProxyType(
    {"ewma": GapEWMA, "regressor": GapRegressor})
"""The block-history estimators `NextUseEstimator` can use, by name."""


def make_gap_model(name: str, *, reuse_prob: bool = True) -> GapEWMA:
    """A fresh block-history estimator by name (``ewma`` or ``regressor``)."""
    cls = GAP_MODELS.get(name)
    if cls is None:
        raise SagaConfigError(f"unknown gap model {name!r}; valid: {', '.join(GAP_MODELS)}")
    return cls(use_reuse_prob=reuse_prob)
