"""WA-LRU victim selection: every candidate's score and the k best victims in one call.

Meaning (the twins below): ``R̂ = max(now − last_access, 0) / max`` and ``Ŝ = size_tokens / max``
over the candidates (all zeros when the max is ≤ 0), ``score = α·R̂ + β·(1 − reuse_prob) + γ·Ŝ``
evaluated in that order, then the candidates ranked best victim first: highest score, then least
recently used, then deepest, then input order — ``numpy.lexsort((-depth, last_access, -score))``.
This is saga-policy's ``WALRUPolicy`` ranking; the policy owns the formula and its defaults, so
the weights here are required arguments.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from saga.kernels import _native
from saga.kernels._arrays import FloatArray, IntArray, check_weights, f64, i64

Backend = Literal["auto", "native", "numpy"]


@dataclass(frozen=True)
class Selection:
    """``scores[i]`` of candidate ``i``; ``order``: the k best candidates' indices, best first."""

    scores: FloatArray
    order: IntArray


def _check(la: FloatArray, rp: FloatArray, sz: FloatArray, dp: IntArray, now: float, k: int,
           alpha: float, beta: float, gamma: float) -> None:
    n = la.size
    if not rp.size == sz.size == dp.size == n:
        raise ValueError("walru_select: last_access, reuse_prob, size_tokens and depth must have "
                         f"one length, got {la.size}, {rp.size}, {sz.size}, {dp.size}")
    if math.isnan(now):
        raise ValueError("walru_select: now is NaN; pass the current time in seconds")
    if k < 0:
        raise ValueError(f"walru_select: k must be >= 0, got {k}")
    check_weights("walru_select", alpha=alpha, beta=beta, gamma=gamma)


def _bad_at(la: FloatArray, rp: FloatArray, sz: FloatArray, dp: IntArray, now: float) -> int:
    with np.errstate(invalid="ignore"):
        bad = np.isnan(la) | np.isnan(rp) | np.isnan(sz) | (dp < 0) | np.isnan(now - la)
    return int(np.flatnonzero(bad)[0]) if bool(bad.any()) else -1


def _reject(at: int) -> None:
    raise ValueError(f"walru_select: NaN or negative depth at candidate {at} (last_access, "
                     "reuse_prob and size_tokens must be numbers, depth >= 0; map an unknown "
                     "reuse hint to a prior before calling)")


def walru_select_numpy(last_access: Any, reuse_prob: Any, size_tokens: Any, depth: Any,
                       now: float, k: int, alpha: float, beta: float,
                       gamma: float) -> Selection:
    """The vectorised NumPy twin: scores, then a partition and a lexsort of the best part."""
    la, rp = f64(last_access, "last_access"), f64(reuse_prob, "reuse_prob")
    sz, dp = f64(size_tokens, "size_tokens"), i64(depth, "depth")
    _check(la, rp, sz, dp, now, k, alpha, beta, gamma)
    at = _bad_at(la, rp, sz, dp, now)
    if at >= 0:
        _reject(at)
    age = np.maximum(now - la, 0.0)
    top_age = float(age.max()) if age.size else 0.0
    top_size = float(sz.max()) if sz.size else 0.0
    with np.errstate(invalid="ignore"):
        r = age / top_age if top_age > 0.0 else np.zeros_like(age)
        s = sz / top_size if top_size > 0.0 else np.zeros_like(sz)
    with np.errstate(invalid="ignore"):
        scores = alpha * r + beta * (1.0 - rp) + gamma * s
    if bool(np.isnan(scores).any()):
        raise ValueError("walru_select: a score is NaN (infinite last_access or size_tokens?)")
    kk = min(k, la.size)
    if kk == 0:
        return Selection(scores, np.empty(0, np.int64))
    neg = -scores
    threshold = np.partition(neg, kk - 1)[kk - 1]
    sub = np.flatnonzero(neg <= threshold)
    order = sub[np.lexsort((-dp[sub], la[sub], neg[sub]))][:kk]
    return Selection(scores, order.astype(np.int64, copy=False))


def walru_select_python(last_access: Sequence[float], reuse_prob: Sequence[float],
                        size_tokens: Sequence[float], depth: Sequence[int], now: float, k: int,
                        alpha: float, beta: float, gamma: float) -> tuple[list[float], list[int]]:
    """The plain-Python twin (lists in, lists out): the meaning, written as loops."""
    n = len(last_access)
    if not len(reuse_prob) == len(size_tokens) == len(depth) == n:
        raise ValueError("walru_select: last_access, reuse_prob, size_tokens and depth must have "
                         "one length")
    if math.isnan(now):
        raise ValueError("walru_select: now is NaN; pass the current time in seconds")
    if k < 0:
        raise ValueError(f"walru_select: k must be >= 0, got {k}")
    check_weights("walru_select", alpha=alpha, beta=beta, gamma=gamma)
    ages = []
    for i in range(n):
        age = max(now - last_access[i], 0.0)
        if (math.isnan(last_access[i]) or math.isnan(reuse_prob[i]) or math.isnan(size_tokens[i])
                or math.isnan(age) or depth[i] < 0):
            _reject(i)
        ages.append(age)
    top_age = max(ages, default=0.0)
    top_size = max(size_tokens, default=0.0)
    scores = []
    for i in range(n):
        r = ages[i] / top_age if top_age > 0.0 else 0.0
        s = size_tokens[i] / top_size if top_size > 0.0 else 0.0
        score = alpha * r + beta * (1.0 - reuse_prob[i]) + gamma * s
        if math.isnan(score):
            raise ValueError("walru_select: a score is NaN (infinite last_access or size_tokens?)")
        scores.append(score)
    order = heapq.nsmallest(min(k, n), range(n),
                            key=lambda i: (-scores[i], last_access[i], -depth[i], i))
    return scores, order


def walru_select(last_access: Any, reuse_prob: Any, size_tokens: Any, depth: Any, now: float,
                 k: int, alpha: float, beta: float, gamma: float, *,
                 backend: Backend = "auto") -> Selection:
    """WA-LRU scores of n candidates and the ``min(k, n)`` best victims, best first.

    ``backend="auto"`` runs the native kernel when it is built, else the NumPy twin; both give
    identical scores and order. Float64/int64 contiguous arrays pass through without a copy.
    """
    if backend == "numpy" or (backend == "auto" and not _native.HAVE_EXT):
        return walru_select_numpy(last_access, reuse_prob, size_tokens, depth, now, k, alpha,
                                  beta, gamma)
    if not _native.HAVE_EXT:
        raise RuntimeError(f"native kernels unavailable: {_native.EXT_REASON}")
    la, rp = f64(last_access, "last_access"), f64(reuse_prob, "reuse_prob")
    sz, dp = f64(size_tokens, "size_tokens"), i64(depth, "depth")
    scores, order = _native._ext.walru_select(la, rp, sz, dp, float(now), int(k), float(alpha),
                                              float(beta), float(gamma))
    return Selection(scores, order)
