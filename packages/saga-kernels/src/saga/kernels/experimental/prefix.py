"""Prefix overlap: how many leading blocks a request shares with each of many sessions.

Meaning: ``out[i]`` = length of the longest common prefix of ``query`` and session ``i``'s block
hashes (``flat[offsets[i]:offsets[i + 1]]``) — the batched input of reuse prediction and
prefix-affinity routing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from saga.kernels import _native
from saga.kernels._arrays import IntArray, check_offsets, i64

Backend = Literal["auto", "native", "numpy"]


def prefix_overlap_numpy(query: Any, flat: Any, offsets: Any) -> IntArray:
    """The vectorised twin: compare every stored block with the query's block at its position;
    the first mismatch (or the shorter length) of each session is its overlap."""
    q, b, off = i64(query, "query"), i64(flat, "flat"), i64(offsets, "offsets")
    check_offsets("prefix_overlap", off, b.size)
    lengths = np.diff(off)
    limit = np.minimum(lengths, q.size)
    if b.size == 0 or q.size == 0:
        return np.zeros(lengths.size, np.int64)
    pos = np.arange(b.size, dtype=np.int64) - np.repeat(off[:-1], lengths)
    inside = pos < q.size
    miss = inside.copy()
    miss[inside] = b[inside] != q[pos[inside]]
    miss_pos = np.where(miss, pos, np.iinfo(np.int64).max)
    first = np.full(lengths.size, np.iinfo(np.int64).max)
    rows = np.flatnonzero(lengths > 0)
    first[rows] = np.minimum.reduceat(miss_pos, off[rows])
    out: IntArray = np.minimum(first, limit).astype(np.int64)
    return out


def prefix_overlap_python(query: Sequence[int], sessions: Sequence[Sequence[int]]) -> list[int]:
    """The plain-Python twin."""
    out = []
    for row in sessions:
        n = min(len(row), len(query))
        j = 0
        while j < n and row[j] == query[j]:
            j += 1
        out.append(j)
    return out


def prefix_overlap(query: Any, flat: Any, offsets: Any, *, backend: Backend = "auto") -> IntArray:
    """Common-prefix length of ``query`` with each CSR session (native when built)."""
    if backend == "numpy" or (backend == "auto" and not _native.HAVE_EXT):
        return prefix_overlap_numpy(query, flat, offsets)
    if not _native.HAVE_EXT:
        raise RuntimeError(f"native kernels unavailable: {_native.EXT_REASON}")
    return _native._ext.prefix_overlap(i64(query, "query"), i64(flat, "flat"),
                                       i64(offsets, "offsets"))
