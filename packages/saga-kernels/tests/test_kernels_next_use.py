"""Bélády next use: native, NumPy and dict twins agree; bad traces are rejected clearly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga.kernels import _native, next_use, next_use_lists, next_use_numpy, next_use_python
from saga.kernels._arrays import csr

needs_native = pytest.mark.skipif(not _native.HAVE_EXT, reason=_native.EXT_REASON)
traces = st.lists(st.lists(st.integers(-5, 12), max_size=8), max_size=30)


@settings(max_examples=200, deadline=None)
@given(trace=traces)
def test_backends_agree(trace: list[list[int]]) -> None:
    ref = next_use_python(trace)
    flat, off = csr(trace)
    assert [x for r in ref for x in r] == next_use_numpy(flat, off).tolist()
    assert next_use_lists(trace, backend="numpy") == ref
    if _native.HAVE_EXT:
        assert next_use_lists(trace, backend="native") == ref


def test_meaning_on_a_small_trace() -> None:
    # a block twice in one request gets the same next use for both references
    trace = [[1, 2, 1], [3], [], [2, 1], [2]]
    inf = math.inf
    assert next_use_lists(trace) == [[3.0, 3.0, 3.0], [inf], [], [4.0, inf], [inf]]


@pytest.mark.parametrize("trace", [[], [[]], [[7]], [[-2**63, 2**63 - 1]]])
def test_edges(trace: list[list[int]]) -> None:
    assert next_use_lists(trace) == next_use_python(trace)


@pytest.mark.parametrize("bad", [[[1, 2.5]], [[1, "7"]], [[2**63]], [[None]]])
def test_non_integer_ids_are_type_errors(bad: list[list[object]]) -> None:
    with pytest.raises(TypeError, match="int64"):
        next_use_lists(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_bad_offsets(backend: str) -> None:
    if backend == "native" and not _native.HAVE_EXT:
        pytest.skip("native kernels not loaded")
    flat = np.arange(4, dtype=np.int64)
    for off, msg in (([1, 4], "0"), ([0, 3, 2, 4], "non-decreasing"), ([0, 3], "offsets\\[-1\\]"),
                     ([], "0")):
        with pytest.raises(ValueError, match=msg):
            next_use(flat, np.array(off, np.int64), backend=backend)  # type: ignore[arg-type]


@needs_native
def test_long_trace_agrees() -> None:
    rng = np.random.default_rng(7)
    lengths = rng.integers(0, 40, 5_000)
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = rng.integers(0, 20_000, int(off[-1])).astype(np.int64)
    assert np.array_equal(next_use(flat, off, backend="native"), next_use_numpy(flat, off))
