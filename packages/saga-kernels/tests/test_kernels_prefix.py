"""Batched prefix overlap: native, NumPy and Python twins agree."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga.kernels import _native
from saga.kernels._arrays import csr
from saga.kernels.experimental import (
    prefix_overlap,
    prefix_overlap_numpy,
    prefix_overlap_python,
)

needs_native = pytest.mark.skipif(not _native.HAVE_EXT, reason=_native.EXT_REASON)
blocks = st.lists(st.integers(0, 3), max_size=10)


@settings(max_examples=200, deadline=None)
@given(query=blocks, sessions=st.lists(blocks, max_size=20))
def test_backends_agree(query: list[int], sessions: list[list[int]]) -> None:
    ref = prefix_overlap_python(query, sessions)
    flat, off = csr(sessions)
    q = np.array(query, np.int64)
    assert prefix_overlap_numpy(q, flat, off).tolist() == ref
    if _native.HAVE_EXT:
        assert prefix_overlap(q, flat, off, backend="native").tolist() == ref


def test_meaning() -> None:
    flat, off = csr([[1, 2, 3], [1, 2], [], [9, 2, 3], [1, 2, 3, 4, 5]])
    assert prefix_overlap([1, 2, 3, 4], flat, off).tolist() == [3, 2, 0, 0, 4]
    assert prefix_overlap([], flat, off).tolist() == [0, 0, 0, 0, 0]
    assert prefix_overlap([1], *csr([])).tolist() == []


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_bad_offsets(backend: str) -> None:
    if backend == "native" and not _native.HAVE_EXT:
        pytest.skip("native kernels not loaded")
    with pytest.raises(ValueError, match="offsets"):
        prefix_overlap(np.zeros(2, np.int64), np.zeros(3, np.int64), np.array([0, 2], np.int64),
                       backend=backend)  # type: ignore[arg-type]


@needs_native
def test_many_sessions_agree() -> None:
    rng = np.random.default_rng(3)
    query = rng.integers(0, 2, 64).astype(np.int64)
    rows = [np.concatenate([query[: rng.integers(0, 64)], rng.integers(0, 2, rng.integers(0, 30))])
            for _ in range(4_000)]
    flat, off = csr([r.tolist() for r in rows])
    assert np.array_equal(prefix_overlap(query, flat, off, backend="native"),
                          prefix_overlap_numpy(query, flat, off))
