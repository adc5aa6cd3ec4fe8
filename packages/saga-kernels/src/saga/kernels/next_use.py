"""Bélády next-use lookup over a whole trace, for the offline oracle on long traces.

Meaning: the trace is requests of block ids in CSR form (``flat``, ``offsets``: request ``i`` is
``flat[offsets[i]:offsets[i + 1]]``). For every reference, the index of the next *later* request
that uses the same block, ``inf`` if none — saga-policy's ``next_use_positions`` (a block twice in
one request gets the same next use for both references).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from saga.kernels import _native
from saga.kernels._arrays import FloatArray, check_offsets, csr, i64

Backend = Literal["auto", "native", "numpy"]


def next_use_numpy(flat: Any, offsets: Any) -> FloatArray:
    """The vectorised twin: a stable sort by block id groups each block's references in trace
    order; each run of one request takes the request index of the next run of the same block."""
    b, off = i64(flat, "flat"), i64(offsets, "offsets")
    check_offsets("next_use", off, b.size)
    out = np.full(b.size, np.inf)
    if b.size == 0:
        return out
    req = np.repeat(np.arange(off.size - 1, dtype=np.int64), np.diff(off))
    order = np.argsort(b, kind="stable")
    bs, rs = b[order], req[order]
    start = np.ones(b.size, bool)
    start[1:] = (bs[1:] != bs[:-1]) | (rs[1:] != rs[:-1])
    run = np.cumsum(start) - 1
    first = np.flatnonzero(start)
    nxt = np.full(first.size, np.inf)
    same_block = bs[first[1:]] == bs[first[:-1]]
    nxt[:-1] = np.where(same_block, rs[first[1:]].astype(np.float64), np.inf)
    out[order] = nxt[run]
    return out


def next_use_python(rows: Sequence[Sequence[int]]) -> list[list[float]]:
    """The plain-Python twin: one reverse scan with a dict."""
    upcoming: dict[int, float] = {}
    out: list[list[float]] = [[] for _ in rows]
    for i in range(len(rows) - 1, -1, -1):
        out[i] = [upcoming.get(x, math.inf) for x in rows[i]]
        for x in rows[i]:
            upcoming[x] = float(i)
    return out


def next_use(flat: Any, offsets: Any, *, backend: Backend = "auto") -> FloatArray:
    """Next-use request index of every reference of a CSR trace (``inf`` = never again)."""
    if backend == "numpy" or (backend == "auto" and not _native.HAVE_EXT):
        return next_use_numpy(flat, offsets)
    if not _native.HAVE_EXT:
        raise RuntimeError(f"native kernels unavailable: {_native.EXT_REASON}")
    return _native._ext.next_use(i64(flat, "flat"), i64(offsets, "offsets"))


def next_use_lists(trace: Sequence[Sequence[int]], *,
                   backend: Backend = "auto") -> list[list[float]]:
    """`next_use` for a trace given as lists of block ids, answered in the same shape.

    Raises TypeError when an id is not an int64 integer (a dict-based caller then keeps its own
    loop, which accepts any hashable).
    """
    flat, offsets = csr(trace)
    nxt = next_use(flat, offsets, backend=backend).tolist()
    bounds = offsets.tolist()
    return [nxt[bounds[i]:bounds[i + 1]] for i in range(len(trace))]
