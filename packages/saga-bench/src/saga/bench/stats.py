"""Statistics over seeds: mean ± std, geometric-mean speedups, Welch's t-test (scipy)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value); NaNs are dropped."""
    x = np.asarray([v for v in values if not math.isnan(v)], np.float64)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def geomean(values: Sequence[float]) -> float:
    """Geometric mean of positive values (speedups); NaN when empty or a value is <= 0."""
    x = np.asarray(values, np.float64)
    if x.size == 0 or (x <= 0).any():
        return math.nan
    return float(np.exp(np.log(x).mean()))


def speedup(baseline: Sequence[float], ours: Sequence[float]) -> float:
    """Geometric mean over paired seeds of ``baseline / ours`` (> 1: ours is faster)."""
    if len(baseline) != len(ours):
        raise ValueError("speedup needs the same seeds on both sides")
    return geomean([b / o for b, o in zip(baseline, ours, strict=True) if o > 0])


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances); NaN when it is undefined
    (fewer than two values a side, or both sides constant)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.std(a) == 0 and np.std(b) == 0:
        return 0.0 if np.mean(a) != np.mean(b) else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def fmt_mean_std(values: Sequence[float], digits: int = 1, scale: float = 1.0) -> str:
    """``"m ± s"`` for a table cell."""
    m, s = mean_std([v * scale for v in values])
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def fmt_p(p: float) -> str:
    """A p-value for a table cell."""
    if math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 1e-3 else f"{p:.3f}"


__all__ = ["fmt_mean_std", "fmt_p", "geomean", "mean_std", "speedup", "welch_p"]
