"""SAGA's workflow-aware LRU (WA-LRU): recency, predicted reuse and size in one score."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, overload

import numpy as np
import numpy.typing as npt

from saga.policy.block_table import BlockTable
from saga.policy.errors import SagaConfigError
from saga.policy.eviction.base import EvictionPolicy, Slots, SortKeys, _leaves_first

try:  # optional: saga-kernels' native selection, which gives the same victims as the NumPy path
    from saga.kernels import have_native as _have_native
    from saga.kernels import walru_select as _walru_select

    _NATIVE = _have_native()
except ImportError:
    _NATIVE = False

WALRU_ALPHA = 0.3
WALRU_BETA = 0.5
WALRU_GAMMA = 0.2
UNKNOWN_REUSE = 0.5
"""P_reuse of a block with no workflow prediction: a neutral prior (the same for every such
block, so it does not change their order)."""

FloatArray = npt.NDArray[np.float64]


def check_walru_weights(alpha: float, beta: float, gamma: float) -> None:
    """Reject negative or NaN weights, naming the bad one (scores must stay comparable)."""
    for field, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if math.isnan(value) or value < 0:
            raise SagaConfigError(
                f"WA-LRU weight {field} must be a non-negative number, got {value}; "
                f"the spec's defaults are alpha={WALRU_ALPHA}, beta={WALRU_BETA}, "
                f"gamma={WALRU_GAMMA}")


@overload
def walru_score(recency_hat: float, p_reuse: float, size_hat: float, alpha: float = ...,
                beta: float = ..., gamma: float = ...) -> float: ...
@overload
def walru_score(recency_hat: FloatArray, p_reuse: FloatArray | float,
                size_hat: FloatArray | float, alpha: float = ..., beta: float = ...,
                gamma: float = ...) -> FloatArray: ...
def walru_score(recency_hat: FloatArray | float, p_reuse: FloatArray | float,
                size_hat: FloatArray | float, alpha: float = WALRU_ALPHA,
                beta: float = WALRU_BETA, gamma: float = WALRU_GAMMA) -> FloatArray | float:
    """The spec's WA-LRU eviction score, ``P_evict = α·R̂ + β·(1 − P_reuse) + γ·Ŝ``.

    ``R̂`` is the normalised time since last use, ``P_reuse`` the predicted reuse probability,
    ``Ŝ`` the normalised size, each in [0, 1]. The block with the highest score is evicted first.
    Works element-wise on arrays; scalars in give a float out.
    """
    check_walru_weights(alpha, beta, gamma)
    score = (alpha * np.asarray(recency_hat, np.float64)
             + beta * (1.0 - np.asarray(p_reuse, np.float64))
             + gamma * np.asarray(size_hat, np.float64))
    if score.ndim == 0:
        return float(score)
    return score


def _normalise_by_max(x: FloatArray) -> FloatArray:
    """``x / max(x)``; all zeros when the max is 0 (nothing to tell apart)."""
    top = float(np.max(x)) if x.size else 0.0
    if top <= 0.0:
        return np.zeros_like(x)
    return x / top


def walru_top_k(last_access: FloatArray, p_reuse: FloatArray, size_tokens: FloatArray,
                depth: npt.NDArray[np.int64], now: float, k: int, alpha: float = WALRU_ALPHA,
                beta: float = WALRU_BETA, gamma: float = WALRU_GAMMA) -> npt.NDArray[np.int64]:
    """Indices of the ``k`` candidates WA-LRU evicts first, in order: highest
    :func:`walru_score` (age and size normalised by their maxima over the candidates), then
    older access, then deeper, then input order.

    saga-kernels' native kernel when installed (one pass, a bounded heap), else NumPy with
    the same result; every caller that ranks by WA-LRU (the simulator's cache, vLLM's free
    block queue) goes through here.
    """
    k = min(int(k), int(np.size(last_access)))
    if k <= 0:
        return np.empty(0, np.int64)
    if _NATIVE:
        try:
            order: npt.NDArray[np.int64] = _walru_select(
                last_access, p_reuse, size_tokens, depth, now, k, alpha, beta, gamma).order
            return order
        except ValueError:  # non-finite inputs: the NumPy path defines what happens then
            pass
    age = np.maximum(now - last_access, 0.0)
    score = walru_score(_normalise_by_max(age), p_reuse, _normalise_by_max(size_tokens),
                        alpha, beta, gamma)
    idx = np.arange(score.size)
    if k < score.size:  # bound the sort by the k-th score; keep every tie of it
        kth = np.partition(-score, k - 1)[k - 1]
        idx = np.flatnonzero(-score <= kth)
    ranked: npt.NDArray[np.int64] = idx[np.lexsort(
        (idx, -depth[idx], last_access[idx], -score[idx]))][:k].astype(np.int64, copy=False)
    return ranked


@dataclass(frozen=True)
class WALRUPolicy(EvictionPolicy):
    """Evict the highest `walru_score`, leaves first.

    Over the candidate blocks: ``R̂ = (now − last_access) / max`` (0 when every age is 0);
    ``P_reuse`` is the caller's hint — the simulator or engine derives it from the session's AEG
    via ``saga.aeg``'s ``p_reuse``; a block with no hint gets the neutral ``UNKNOWN_REUSE``, so
    without workflow knowledge WA-LRU ranks by recency and size alone. (A hit-count fallback,
    ``hits / (hits + 1)``, was measured and rejected: on the Mooncake trace it behaves like LFU,
    evicting the newest conversation turns — exactly the blocks the next turn reuses — and lost
    to LRU by 6–8 % in misses at 16K–32K blocks.) ``Ŝ = prefix tokens ending at the block (caller
    size hint, else (depth + 1) · block_tokens) / max``, so long, specific tails go before shared
    heads. Leaves first, because evicting an inner block strands its descendants. Ties go least
    recently used, then deepest first.
    """

    alpha: float = WALRU_ALPHA
    beta: float = WALRU_BETA
    gamma: float = WALRU_GAMMA

    name: ClassVar[str] = "walru"
    leaves_only: ClassVar[bool] = True
    reads_hints: ClassVar[bool] = True
    native_order: ClassVar[str | None] = "walru"

    def __post_init__(self) -> None:
        check_walru_weights(self.alpha, self.beta, self.gamma)

    def native_weights(self) -> tuple[float, float, float]:
        return (self.alpha, self.beta, self.gamma)

    def scores(self, table: BlockTable, slots: Slots, now: float) -> FloatArray:
        """WA-LRU score of each slot, normalised over ``slots``."""
        age = np.maximum(now - table.last_access[slots], 0.0)
        hint = table.reuse_prob[slots]
        p_reuse = np.where(np.isnan(hint), UNKNOWN_REUSE, hint)
        size = table.prefix_tokens(slots)
        return walru_score(_normalise_by_max(age), p_reuse, _normalise_by_max(size),
                           self.alpha, self.beta, self.gamma)

    def sort_keys(self, table: BlockTable, slots: Slots, now: float) -> SortKeys:
        return (-table.depth[slots], table.last_access[slots], -self.scores(table, slots, now))

    def select_victims(self, table: BlockTable, candidates: Slots, k: int, now: float) -> Slots:
        """As the base class, but ranked by saga-kernels' native WA-LRU kernel when installed.

        The kernel ranks exactly as `sort_keys` (score, then LRU, then deepest, then input
        order); it returns the best ``2k + 64`` and leaves-first selection widens to the full
        ranking only if that prefix runs out of leaves, as the base class does.
        """
        if not _NATIVE:
            return super().select_victims(table, candidates, k, now)
        candidates = np.asarray(candidates, dtype=np.int64)
        n = int(candidates.size)
        k = min(int(k), n)
        if k <= 0:
            return np.empty(0, np.int64)
        hint = table.reuse_prob[candidates]
        args = (table.last_access[candidates], np.where(np.isnan(hint), UNKNOWN_REUSE, hint),
                table.prefix_tokens(candidates), table.depth[candidates], now)
        weights = (self.alpha, self.beta, self.gamma)
        head = min(n, 2 * k + 64)
        try:
            ranked = candidates[_walru_select(*args, head, *weights).order]
        except ValueError:  # non-finite inputs: the NumPy path defines what happens then
            return super().select_victims(table, candidates, k, now)
        got = _leaves_first(table, ranked, k, complete=head == n)
        if got is None:
            ranked = candidates[_walru_select(*args, n, *weights).order]
            got = _leaves_first(table, ranked, k, complete=True)
            assert got is not None
        return got
