"""Argument checks shared by the twins, so both backends reject bad input the same way."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def f64(x: Any, name: str) -> FloatArray:
    """``x`` as a contiguous 1-D float64 array (no copy when it already is one)."""
    a = np.ascontiguousarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    return a


def i64(x: Any, name: str) -> IntArray:
    """``x`` as a contiguous 1-D int64 array (no copy when it already is one)."""
    a = np.ascontiguousarray(x, dtype=np.int64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    return a


def check_weights(who: str, **weights: float) -> None:
    """Weights must be non-negative numbers (NaN would make every score NaN)."""
    for name, w in weights.items():
        if math.isnan(w) or w < 0:
            raise ValueError(f"{who}: weight {name} must be a non-negative number, got {w}")


def check_offsets(who: str, offsets: IntArray, total: int) -> None:
    """CSR offsets: start at 0, never decrease, end at the number of flat entries."""
    if offsets.size < 1 or offsets[0] != 0:
        raise ValueError(f"{who}: offsets must start with 0 (CSR row starts plus the end)")
    if offsets.size > 1 and bool(np.any(np.diff(offsets) < 0)):
        at = int(np.flatnonzero(np.diff(offsets) < 0)[0]) + 1
        raise ValueError(f"{who}: offsets must be non-decreasing (at {at})")
    if int(offsets[-1]) != total:
        raise ValueError(f"{who}: offsets[-1] must equal the number of flat entries ({total})")


def csr(rows: Any) -> tuple[IntArray, IntArray]:
    """Rows of ints as (flat, offsets); raises TypeError when a value is not an int64 integer."""
    lengths = [len(r) for r in rows]
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    try:
        flat = np.fromiter((b for r in rows for b in r), dtype=np.int64, count=total)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"block ids must be int64 integers: {exc}") from None
    # fromiter also accepts 2.5 and "7"; only values that equal their int64 form are the same key.
    if flat.tolist() != [b for r in rows for b in r]:
        raise TypeError("block ids must be int64 integers (found a float or string id)")
    return flat, offsets
