"""CUDA kernels against their twins (skipped without a GPU); the twins themselves always run."""

from __future__ import annotations

import numpy as np
import pytest

from saga.kernels import _native, walru_select_numpy
from saga.kernels._arrays import csr
from saga.kernels.experimental import cuda, prefix_overlap_numpy

READY, WHY = cuda.cuda_ready()
needs_gpu = pytest.mark.skipif(not READY, reason=WHY)
W = (0.3, 0.5, 0.2)


def _pools(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (12, 40), dtype=np.uint8),
            rng.integers(0, 256, (9, 40), dtype=np.uint8))


def test_twins() -> None:
    src, dst = _pools(1)
    expect = dst.copy()
    expect[[4, 0]] = src[[2, 11]]
    cuda.kv_migrate_numpy(src, dst, [2, 11], [4, 0])
    assert np.array_equal(dst, expect)
    pool = src.copy()
    index = cuda.compact_numpy(pool, [i % 3 == 0 for i in range(12)])
    assert index.tolist() == [0, -1, -1, 1, -1, -1, 2, -1, -1, 3, -1, -1]
    assert np.array_equal(pool[:4], src[[0, 3, 6, 9]]) and not pool[4:].any()
    assert np.array_equal(cuda.prefetch_numpy(src, [5, 1]), src[[5, 1]])
    best = cuda.walru_best_numpy([3.0, 1.0], [0.5, 0.5], [1.0, 1.0], [0, 0], 4.0, *W)
    assert best.best == 1
    assert cuda.walru_best_numpy([], [], [], [], 4.0, *W).best == -1


def test_twin_argument_checks() -> None:
    src, dst = _pools(2)
    with pytest.raises(ValueError, match="dst_idx out of range"):
        cuda.kv_migrate_numpy(src, dst, [0], [9])
    with pytest.raises(ValueError, match="repeats"):
        cuda.kv_migrate_numpy(src, dst, [0, 1], [3, 3])
    with pytest.raises(TypeError, match="uint8"):
        cuda.kv_migrate_numpy(src.astype(np.int16), dst, [0], [0])
    with pytest.raises(ValueError, match="one flag per block"):
        cuda.compact_numpy(src, [True])


@pytest.mark.skipif(READY, reason="a GPU is present")
def test_without_gpu_cuda_calls_say_why() -> None:
    src, dst = _pools(3)
    with pytest.raises(cuda.CudaUnavailable, match=r"GPU|CUDA"):
        cuda.kv_migrate(src, dst, [0], [0])
    if _native.HAVE_CUDA_MODULE:  # built here: the module loads and counts no device
        assert _native.cuda_devices() == 0


@needs_gpu
def test_walru_best_matches_host() -> None:
    rng = np.random.default_rng(4)
    for n in (1, 1000, 70_000):
        la, rp = rng.integers(0, 50, n).astype(np.float64), rng.choice([0.0, 0.5, 1.0], n)
        dp = rng.integers(0, 4, n).astype(np.int64)
        sz = (dp + 1) * 16.0
        ref = walru_select_numpy(la, rp, sz, dp, 60.0, 1, *W)
        got = cuda.walru_best(la, rp, sz, dp, 60.0, *W)
        assert np.array_equal(got.scores, ref.scores) and got.best == int(ref.order[0])


@needs_gpu
def test_prefix_overlap_matches_host() -> None:
    rng = np.random.default_rng(5)
    query = rng.integers(0, 2, 100).astype(np.int64)
    rows = [np.concatenate([query[: rng.integers(0, 100)], rng.integers(0, 2, 20)]).tolist()
            for _ in range(3000)]
    flat, off = csr(rows)
    assert np.array_equal(cuda.prefix_overlap_cuda(query, flat, off),
                          prefix_overlap_numpy(query, flat, off))


@needs_gpu
def test_migrate_compact_prefetch_match_twins() -> None:
    src, dst = _pools(6)
    want = dst.copy()
    cuda.kv_migrate_numpy(src, want, [1, 5, 7], [8, 0, 3])
    cuda.kv_migrate(src, dst, [1, 5, 7], [8, 0, 3])
    assert np.array_equal(dst, want)
    live = np.arange(12) % 2 == 1
    a, b = src.copy(), src.copy()
    assert np.array_equal(cuda.compact(a, live), cuda.compact_numpy(b, live))
    assert np.array_equal(a, b)
    assert np.array_equal(cuda.prefetch(src, [3, 3, 0]), cuda.prefetch_numpy(src, [3, 3, 0]))
    bw = cuda.bandwidth(16 << 20, 3)
    assert bw.pinned_gbps > 0 and bw.overlapped_gbps > 0 and bw.pageable_gbps > 0
