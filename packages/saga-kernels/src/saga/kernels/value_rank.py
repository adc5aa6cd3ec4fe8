"""Value ranking (saga-policy's ``eta`` eviction): every candidate's value and the k best victims.

Meaning (the twins below): ``saved = B · (dense_flops + attn_flops · (depth · B + B / 2))``, the
prefill work to recompute a block at ``depth`` of ``B = block_tokens`` tokens;
``value = reuse_prob · saved / (size_bytes · max(next_use − now, min_until))``, evaluated in that
order (``next_use = inf``: never read again, value 0); then the candidates ranked best victim
first: lowest value, then deepest, then least recently used, then input order —
``numpy.lexsort((last_access, -depth, value))``. This is saga-policy's ``ETAPolicy`` ranking
(``nextuse.block_value`` of ``recompute_flops``); the policy owns the model figures, so they are
required arguments here.

The compiled module is ``saga.kernels._value_rank`` (csrc/value_rank.cpp); without it, or with
``SAGA_NATIVE=0``, `eta_select` runs the NumPy twin.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from saga.kernels import _native
from saga.kernels._arrays import f64, i64
from saga.kernels.walru import Selection

__all__ = ["HAVE_VALUE_RANK", "VALUE_RANK_REASON", "eta_select", "eta_select_numpy",
           "eta_select_python"]

Backend = Literal["auto", "native", "numpy"]

try:
    import saga.kernels._value_rank as _vr

    HAVE_VALUE_RANK = not _native._disabled()
    VALUE_RANK_REASON = (f"disabled by {_native.DISABLE_ENV}=0" if _native._disabled()
                         else str(_vr.BUILD_INFO))
except ImportError as exc:
    _vr = None  # type: ignore[assignment]
    HAVE_VALUE_RANK = False
    VALUE_RANK_REASON = ("not built in this install" if exc.name == "saga.kernels._value_rank"
                         else f"failed to load: {exc}")


def _check_model(block_tokens: float, dense_flops: float, attn_flops: float, size_bytes: float,
                 min_until: float) -> None:
    ok = all(math.isfinite(x) for x in (block_tokens, dense_flops, attn_flops, size_bytes,
                                        min_until))
    if not (ok and block_tokens > 0 and size_bytes > 0 and min_until > 0 and dense_flops >= 0
            and attn_flops >= 0):
        raise ValueError("eta_select: block_tokens, size_bytes and min_until must be finite and "
                         "> 0, dense_flops and attn_flops finite and >= 0")


def _reject(at: int) -> None:
    raise ValueError(f"eta_select: bad input at candidate {at} (next_use and last_access must be "
                     "numbers, next_use - now not NaN, reuse_prob in [0, 1], depth >= 0)")


def eta_select_numpy(next_use: Any, reuse_prob: Any, depth: Any, last_access: Any, now: float,
                     k: int, *, block_tokens: float, dense_flops: float, attn_flops: float,
                     size_bytes: float, min_until: float) -> Selection:
    """The vectorised NumPy twin: values, then a partition and a lexsort of the best part."""
    nu, p = f64(next_use, "next_use"), f64(reuse_prob, "reuse_prob")
    d, la = i64(depth, "depth"), f64(last_access, "last_access")
    if not p.size == d.size == la.size == nu.size:
        raise ValueError("eta_select: next_use, reuse_prob, depth and last_access must have one "
                         f"length, got {nu.size}, {p.size}, {d.size}, {la.size}")
    if math.isnan(now):
        raise ValueError("eta_select: now is NaN; pass the current time in seconds")
    if k < 0:
        raise ValueError(f"eta_select: k must be >= 0, got {k}")
    _check_model(block_tokens, dense_flops, attn_flops, size_bytes, min_until)
    with np.errstate(invalid="ignore"):
        until = nu - now
        bad = (np.isnan(nu) | np.isnan(until) | ~((p >= 0.0) & (p <= 1.0)) | (d < 0)
               | np.isnan(la))
    if bool(bad.any()):
        _reject(int(np.flatnonzero(bad)[0]))
    b = float(block_tokens)
    saved = b * (dense_flops + attn_flops * (d.astype(np.float64) * b + b / 2.0))
    values = p * saved / (size_bytes * np.maximum(until, min_until))
    kk = min(k, nu.size)
    if kk == 0:
        return Selection(values, np.empty(0, np.int64))
    threshold = np.partition(values, kk - 1)[kk - 1]
    sub = np.flatnonzero(values <= threshold)
    order = sub[np.lexsort((sub, la[sub], -d[sub], values[sub]))][:kk]
    return Selection(values, order.astype(np.int64, copy=False))


def eta_select_python(next_use: Sequence[float], reuse_prob: Sequence[float],
                      depth: Sequence[int], last_access: Sequence[float], now: float, k: int, *,
                      block_tokens: float, dense_flops: float, attn_flops: float,
                      size_bytes: float, min_until: float) -> tuple[list[float], list[int]]:
    """The plain-Python twin (lists in, lists out): the meaning, written as loops."""
    n = len(next_use)
    if not len(reuse_prob) == len(depth) == len(last_access) == n:
        raise ValueError("eta_select: next_use, reuse_prob, depth and last_access must have one "
                         "length")
    if math.isnan(now):
        raise ValueError("eta_select: now is NaN; pass the current time in seconds")
    if k < 0:
        raise ValueError(f"eta_select: k must be >= 0, got {k}")
    _check_model(block_tokens, dense_flops, attn_flops, size_bytes, min_until)
    b = float(block_tokens)
    values: list[float] = []
    for i in range(n):
        until = next_use[i] - now
        if (math.isnan(next_use[i]) or math.isnan(until) or not 0.0 <= reuse_prob[i] <= 1.0
                or depth[i] < 0 or math.isnan(last_access[i])):
            _reject(i)
        saved = b * (dense_flops + attn_flops * (float(depth[i]) * b + b / 2.0))
        values.append(reuse_prob[i] * saved / (size_bytes * max(until, min_until)))
    order = heapq.nsmallest(min(k, n), range(n),
                            key=lambda i: (values[i], -depth[i], last_access[i], i))
    return values, order


def eta_select(next_use: Any, reuse_prob: Any, depth: Any, last_access: Any, now: float, k: int,
               *, block_tokens: float, dense_flops: float, attn_flops: float, size_bytes: float,
               min_until: float, backend: Backend = "auto") -> Selection:
    """Values of n candidates and the ``min(k, n)`` best victims, best first.

    ``backend="auto"`` runs the native kernel when it is built, else the NumPy twin; both give
    identical values and order.
    """
    model = {"block_tokens": block_tokens, "dense_flops": dense_flops, "attn_flops": attn_flops,
             "size_bytes": size_bytes, "min_until": min_until}
    if backend == "numpy" or (backend == "auto" and not HAVE_VALUE_RANK):
        return eta_select_numpy(next_use, reuse_prob, depth, last_access, now, k, **model)
    if not HAVE_VALUE_RANK:
        raise RuntimeError(f"native value ranking unavailable: {VALUE_RANK_REASON}")
    values, order = _vr.eta_select(
        f64(next_use, "next_use"), f64(reuse_prob, "reuse_prob"), i64(depth, "depth"),
        f64(last_access, "last_access"), float(now), int(k), float(block_tokens),
        float(dense_flops), float(attn_flops), float(size_bytes), float(min_until))
    return Selection(values, order)
