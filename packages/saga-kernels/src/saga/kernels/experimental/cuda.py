"""The CUDA kernels and the NumPy twin of each.

Each call copies its NumPy inputs to the GPU, runs the kernel and copies the answer back, so it
can be checked against its twin; in an engine the same kernels run on device-resident pools.
Without a GPU (or without the CUDA module) each raises `CudaUnavailable`; the twins always run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from saga.kernels import _native
from saga.kernels._arrays import FloatArray, IntArray, check_offsets, f64, i64
from saga.kernels.walru import walru_select_numpy

Pool = npt.NDArray[np.uint8]


class CudaUnavailable(RuntimeError):
    """No CUDA module in this install, or no GPU visible to it."""


def cuda_ready() -> tuple[bool, str]:
    """Whether the CUDA kernels can run here, and why not."""
    if not _native.HAVE_CUDA_MODULE:
        return False, f"CUDA module not available: {_native.CUDA_REASON}"
    if _native.cuda_devices() == 0:
        return False, f"built ({_native.CUDA_REASON}) but no GPU is visible"
    return True, f"{_native._cuda.device_name()}; {_native.CUDA_REASON}"


def _require() -> None:
    ok, why = cuda_ready()
    if not ok:
        raise CudaUnavailable(why)


@dataclass(frozen=True)
class BestVictim:
    """All scores, the single best victim (-1 when there are no candidates), kernel time."""

    scores: FloatArray
    best: int
    kernel_ms: float


def walru_best_numpy(last_access: Any, reuse_prob: Any, size_tokens: Any, depth: Any, now: float,
                     alpha: float, beta: float, gamma: float) -> BestVictim:
    """Twin of the one-launch WA-LRU kernel: `walru_select` with k = 1."""
    sel = walru_select_numpy(last_access, reuse_prob, size_tokens, depth, now, 1, alpha, beta,
                             gamma)
    return BestVictim(sel.scores, int(sel.order[0]) if sel.order.size else -1, 0.0)


def walru_best(last_access: Any, reuse_prob: Any, size_tokens: Any, depth: Any, now: float,
               alpha: float, beta: float, gamma: float) -> BestVictim:
    """WA-LRU scoring and the arg-best in one kernel launch (same inputs checks as the host)."""
    _require()
    la, rp = f64(last_access, "last_access"), f64(reuse_prob, "reuse_prob")
    sz, dp = f64(size_tokens, "size_tokens"), i64(depth, "depth")
    walru_best_numpy(la[:0], rp[:0], sz[:0], dp[:0], now, alpha, beta, gamma)  # argument checks
    if bool(np.isnan(la).any() | np.isnan(rp).any() | np.isnan(sz).any()) or bool((dp < 0).any()):
        raise ValueError("walru_best: NaN input or negative depth")
    scores, best, ms = _native._cuda.walru_best(la, rp, sz, dp, float(now), float(alpha),
                                                float(beta), float(gamma))
    return BestVictim(scores, best, ms)


def prefix_overlap_cuda(query: Any, flat: Any, offsets: Any) -> IntArray:
    """Batched prefix overlap on the GPU, one warp a session (twin: `prefix_overlap_numpy`)."""
    _require()
    q, b, off = i64(query, "query"), i64(flat, "flat"), i64(offsets, "offsets")
    check_offsets("prefix_overlap", off, b.size)
    return _native._cuda.prefix_overlap(q, b, off)


def _pool(x: Any, name: str) -> Pool:
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2
            and x.flags.c_contiguous):
        raise TypeError(f"{name} must be a C-contiguous uint8 array of shape (blocks, bytes)")
    return x


def _check_moves(src: Pool, dst: Pool, src_idx: IntArray, dst_idx: IntArray) -> None:
    if src.shape[1] != dst.shape[1]:
        raise ValueError("kv_migrate: src and dst blocks differ in size")
    if src_idx.size != dst_idx.size:
        raise ValueError("kv_migrate: src_idx and dst_idx differ in length")
    for idx, pool, name in ((src_idx, src, "src_idx"), (dst_idx, dst, "dst_idx")):
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= pool.shape[0]):
            raise ValueError(f"kv_migrate: {name} out of range [0, {pool.shape[0]})")
    if np.unique(dst_idx).size != dst_idx.size:
        raise ValueError("kv_migrate: dst_idx repeats a block (the result would depend on order)")


def kv_migrate_numpy(src: Any, dst: Any, src_idx: Any, dst_idx: Any) -> None:
    """Twin: ``dst[dst_idx] = src[src_idx]``, in place."""
    s, d = _pool(src, "src"), _pool(dst, "dst")
    si, di = i64(src_idx, "src_idx"), i64(dst_idx, "dst_idx")
    _check_moves(s, d, si, di)
    d[di] = s[si]


def kv_migrate(src: Any, dst: Any, src_idx: Any, dst_idx: Any) -> None:
    """Move KV blocks between two pools on the GPU, in place into ``dst``."""
    _require()
    s, d = _pool(src, "src"), _pool(dst, "dst")
    si, di = i64(src_idx, "src_idx"), i64(dst_idx, "dst_idx")
    _check_moves(s, d, si, di)
    _native._cuda.kv_migrate(s, d, si, di)


def compact_numpy(pool: Any, live: Any) -> IntArray:
    """Twin of paged-pool compaction: live blocks to the front in order, the rest zeroed;
    returns each block's new index (-1 if dead)."""
    p = _pool(pool, "pool")
    alive = np.ascontiguousarray(live, dtype=bool)
    if alive.shape != (p.shape[0],):
        raise ValueError("compact: live must hold one flag per block")
    new_index = np.where(alive, np.cumsum(alive) - 1, -1).astype(np.int64)
    kept = p[alive].copy()
    p[:] = 0
    p[: kept.shape[0]] = kept
    return new_index


def compact(pool: Any, live: Any) -> IntArray:
    """Paged-pool compaction on the GPU, in place; returns each block's new index."""
    _require()
    p = _pool(pool, "pool")
    alive = np.ascontiguousarray(live, dtype=np.uint8)
    if alive.shape != (p.shape[0],):
        raise ValueError("compact: live must hold one flag per block")
    return _native._cuda.compact(p, alive)


def prefetch_numpy(host_pool: Any, idx: Any) -> Pool:
    """Twin of a prefetch: the selected blocks, in order."""
    p, i = _pool(host_pool, "host_pool"), i64(idx, "idx")
    return p[i].copy()


def prefetch(host_pool: Any, idx: Any) -> Pool:
    """Stage blocks ``idx`` in pinned memory and copy them to the GPU on a separate stream while a
    compute kernel runs on another; returns what reached the device."""
    _require()
    p, i = _pool(host_pool, "host_pool"), i64(idx, "idx")
    if i.size and (int(i.min()) < 0 or int(i.max()) >= p.shape[0]):
        raise ValueError(f"prefetch: idx out of range [0, {p.shape[0]})")
    out = np.empty((i.size, p.shape[1]), np.uint8)
    _native._cuda.prefetch(p, i, out)
    return out


@dataclass(frozen=True)
class Bandwidth:
    """Host-to-device GB/s: pinned plain copy, pinned on a side stream under compute, pageable."""

    pinned_gbps: float
    overlapped_gbps: float
    pageable_gbps: float


def bandwidth(nbytes: int = 256 << 20, iters: int = 10) -> Bandwidth:
    """Measures the copy rates the prefetch path is compared against."""
    _require()
    return Bandwidth(*_native._cuda.bandwidth(int(nbytes), int(iters)))
