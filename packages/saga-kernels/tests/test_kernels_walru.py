"""WA-LRU selection: native, NumPy and plain-Python twins agree bit for bit, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga.kernels import _native, walru_select, walru_select_numpy, walru_select_python

needs_native = pytest.mark.skipif(not _native.HAVE_EXT, reason=_native.EXT_REASON)

W = (0.3, 0.5, 0.2)


def _inputs(seed: int, n: int, ties: bool) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: equal scores, equal recency, equal depth
        la = rng.integers(0, 4, n).astype(np.float64)
        rp = rng.choice([0.0, 0.5, 1.0], n)
        dp = rng.integers(0, 3, n)
        sz = (dp + 1) * 16.0
    else:
        la = rng.random(n) * 100.0
        rp = rng.random(n)
        dp = rng.integers(0, 64, n)
        sz = rng.random(n) * 4096.0
    return la, rp, sz, dp.astype(np.int64)


def _all_three(la: np.ndarray, rp: np.ndarray, sz: np.ndarray, dp: np.ndarray, now: float,
               k: int, w: tuple[float, float, float] = W) -> None:
    ref = walru_select_numpy(la, rp, sz, dp, now, k, *w)
    py_scores, py_order = walru_select_python(la.tolist(), rp.tolist(), sz.tolist(), dp.tolist(),
                                              now, k, *w)
    assert ref.scores.tolist() == py_scores
    assert ref.order.tolist() == py_order
    if _native.HAVE_EXT:
        got = walru_select(la, rp, sz, dp, now, k, *w, backend="native")
        assert np.array_equal(got.scores, ref.scores)
        assert got.order.tolist() == ref.order.tolist()


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), k=st.integers(0, 320),
       ties=st.booleans(), now=st.sampled_from([0.0, 2.0, 50.0, 150.0]),
       w=st.tuples(*[st.sampled_from([0.0, 0.2, 0.3, 0.5, 1.0])] * 3))
def test_backends_agree_on_random_inputs(seed: int, n: int, k: int, ties: bool, now: float,
                                         w: tuple[float, float, float]) -> None:
    la, rp, sz, dp = _inputs(seed, n, ties)
    _all_three(la, rp, sz, dp, now, k, w)


def test_order_is_highest_score_then_lru_then_deepest_then_input_order() -> None:
    # equal scores everywhere (weights only on reuse, all equal): the tie-breaks decide
    la = np.array([5.0, 1.0, 1.0, 1.0, 3.0])
    dp = np.array([0, 2, 7, 7, 9], np.int64)
    sel = walru_select_numpy(la, np.full(5, 0.5), np.ones(5), dp, 10.0, 5, 0.0, 1.0, 0.0)
    assert sel.order.tolist() == [2, 3, 1, 4, 0]
    _all_three(la, np.full(5, 0.5), np.ones(5), dp, 10.0, 5, (0.0, 1.0, 0.0))


@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("k", [0, 1, 5])
def test_empty_and_single(n: int, k: int) -> None:
    la, rp, sz, dp = _inputs(1, n, False)
    _all_three(la, rp, sz, dp, 1.0, k)
    sel = walru_select(la, rp, sz, dp, 1.0, k, *W)
    assert sel.order.size == min(n, k) and sel.scores.size == n


def test_zero_ages_and_sizes_normalise_to_zero() -> None:
    la, rp = np.full(4, 7.0), np.array([0.0, 1.0, 0.5, 0.25])
    sel = walru_select(la, rp, np.zeros(4), np.zeros(4, np.int64), 7.0, 4, *W)
    assert np.allclose(sel.scores, 0.5 * (1.0 - rp))
    assert sel.order.tolist() == [0, 3, 2, 1]


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("field", ["last_access", "reuse_prob", "size_tokens"])
def test_nan_is_rejected_naming_the_candidate(backend: str, field: str) -> None:
    if backend == "native" and not _native.HAVE_EXT:
        pytest.skip("native kernels not loaded")
    arrays = dict(zip(["last_access", "reuse_prob", "size_tokens", "depth"],
                      _inputs(3, 10, False), strict=True))
    arrays[field] = arrays[field].copy()
    arrays[field][6] = np.nan
    with pytest.raises(ValueError, match=r"NaN .*candidate 6"):
        walru_select(**arrays, now=200.0, k=3, alpha=0.3, beta=0.5, gamma=0.2,
                     backend=backend)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_bad_arguments_are_value_errors(backend: str) -> None:
    if backend == "native" and not _native.HAVE_EXT:
        pytest.skip("native kernels not loaded")
    la, rp, sz, dp = _inputs(4, 8, False)
    b = {"backend": backend}
    with pytest.raises(ValueError, match="NaN"):
        walru_select(la, rp, sz, dp, float("nan"), 2, *W, **b)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one length"):
        walru_select(la[:7], rp, sz, dp, 1.0, 2, *W, **b)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be"):
        walru_select(la, rp, sz, dp, 1.0, -1, *W, **b)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta"):
        walru_select(la, rp, sz, dp, 1.0, 2, 0.3, -0.5, 0.2, **b)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="depth"):
        walru_select(la, rp, sz, -dp - 1, 1.0, 2, *W, **b)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="score is NaN"):
        walru_select(la[:2], rp[:2], np.array([np.inf, 1.0]), dp[:2], 1.0, 1, *W,
                     **b)  # type: ignore[arg-type]


def test_python_twin_rejects_nan() -> None:
    with pytest.raises(ValueError, match="candidate 1"):
        walru_select_python([0.0, 1.0], [0.5, float("nan")], [1.0, 1.0], [0, 0], 2.0, 1, *W)


@needs_native
def test_native_takes_exact_dtypes_only() -> None:
    la, rp, sz, dp = _inputs(5, 8, False)
    with pytest.raises(TypeError):
        _native._ext.walru_select(la.astype(np.float32), rp, sz, dp, 1.0, 2, *W)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _native._ext.walru_select(la, rp, sz, dp.astype(np.int32), 1.0, 2, *W)  # type: ignore[arg-type]


@needs_native
@pytest.mark.parametrize("ties", [False, True])
def test_parallel_path_agrees(ties: bool) -> None:
    """Above the parallel threshold the per-thread heaps are merged: same answer."""
    la, rp, sz, dp = _inputs(6, 200_000, ties)
    for k in (1, 100, 5_000):
        ref = walru_select_numpy(la, rp, sz, dp, 101.0, k, *W)
        got = walru_select(la, rp, sz, dp, 101.0, k, *W, backend="native")
        assert np.array_equal(got.scores, ref.scores)
        assert np.array_equal(got.order, ref.order)
