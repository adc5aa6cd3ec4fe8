"""A drop-in ``FreeKVCacheBlockQueue`` whose victims are chosen by WA-LRU or KVFlow's order.

vLLM picks eviction victims in exactly one place: ``BlockPool.get_new_blocks`` takes the first
``n`` blocks of ``free_block_queue`` (``popleft_n``). Everything else (hash bookkeeping, touch on
a prefix hit, freeing in tail-first order) only inserts into or removes from that queue. So the
queue is the narrowest seam for an eviction policy: this subclass keeps vLLM's doubly linked list
(every method and attribute vLLM or its connectors use keeps working, e.g. ``iter_blocks_after``)
and only changes *which* blocks ``popleft``/``popleft_n`` hand out.

Per-block state lives in numpy arrays indexed by block id (last-free time, reuse probability,
prefix tokens, whether the block carries a hash), plus a dense array of the free block ids with
O(1) swap-removal. A ``popleft_n`` call scores the free set once, vectorised, and takes the top
``n`` with ``argpartition``: O(free) numpy work per call, no Python loop over the free blocks.

Order of victims (``walru=True``): blocks without a hash first (they can never produce a prefix
hit; vLLM also reuses them first), most recently freed first as vLLM does; then hashed blocks by
descending ``walru_score(R̂, P_reuse, Ŝ)``, ties by older free time, then longer prefix (the tail
of a chain before its head). With ``steps=True`` (KVFlow) hashed blocks go by descending
steps-to-execution hint instead (unknown counts as infinitely far), same ties. With a ``ranker``
(:class:`~saga.vllm.eta_rank.ValueRanker`, the ``eta`` policy) hashed blocks go by ascending
predicted-next-use value, leaves of a cached chain only. With none of them the queue behaves
exactly like vLLM's and only counts evictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from saga.policy.eviction.walru import (
    UNKNOWN_REUSE,
    WALRU_ALPHA,
    WALRU_BETA,
    WALRU_GAMMA,
    check_walru_weights,
    walru_score,
    walru_top_k,
)
from saga.vllm.eta_rank import ValueRanker
from vllm.v1.core.kv_cache_utils import FreeKVCacheBlockQueue

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _normalise_by_max(x: FloatArray) -> FloatArray:
    """``x / max(x)`` (all zeros when the max is 0), as WA-LRU normalises ``R̂`` and ``Ŝ``."""
    if x.size == 0:
        return x
    top = float(x.max())
    if top <= 0.0:
        return np.zeros_like(x)
    out: FloatArray = x / top
    return out


class WALRUFreeBlockQueue(FreeKVCacheBlockQueue):  # type: ignore[misc]
    """vLLM's free-block queue with WA-LRU (or KVFlow) victim choice (see the module docstring).

    ``num_blocks`` is the pool size (block ids are ``0..num_blocks-1``); ``clock`` gives the
    time stamped on freed blocks. ``on_evict(n)`` is called with the number of cached (hashed)
    blocks handed out per allocation, i.e. prefix-cache evictions. ``walru`` and ``steps`` are
    exclusive, and so is ``ranker`` (attached here to the pool's size);
    :func:`saga.vllm.policies.eviction_enactment` gives them for a policy object.
    """

    def __init__(self, blocks: list[Any], num_blocks: int, clock: Callable[[], float], *,
                 walru: bool = True, alpha: float = WALRU_ALPHA, beta: float = WALRU_BETA,
                 gamma: float = WALRU_GAMMA, block_size: int = 1, steps: bool = False,
                 ranker: ValueRanker | None = None,
                 on_evict: Callable[[int], None] | None = None) -> None:
        check_walru_weights(alpha, beta, gamma)
        if walru + steps + (ranker is not None) > 1:
            raise ValueError("a free-block queue ranks by one of WA-LRU, steps or a value ranker, "
                             "not both (or all three)")
        self.walru = walru
        self.steps = steps
        self.ranker = ranker
        if ranker is not None:
            ranker.attach(num_blocks, block_size)
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.clock = clock
        self.block_size = block_size
        self.on_evict = on_evict
        self._last_free: FloatArray = np.zeros(num_blocks, np.float64)
        self._reuse: FloatArray = np.full(num_blocks, np.nan, np.float64)
        self._steps: FloatArray = np.full(num_blocks, np.nan, np.float64)
        self._prefix: FloatArray = np.zeros(num_blocks, np.float64)
        self._hashed = np.zeros(num_blocks, np.bool_)
        self._seq: IntArray = np.zeros(num_blocks, np.int64)  # insertion order, for ties
        self._pos: IntArray = np.full(num_blocks, -1, np.int64)
        self._ids: IntArray = np.zeros(num_blocks, np.int64)
        self._n = 0
        self._counter = 0
        self.block_by_id: dict[int, Any] = {}
        super().__init__(blocks)
        now = clock()
        for block in blocks:
            self._track(block, now, first=False)

    # -- construction helpers ------------------------------------------------------------------
    @classmethod
    def replace_in(cls, block_pool: Any, clock: Callable[[], float], **kwargs: Any
                   ) -> WALRUFreeBlockQueue:
        """Swap ``block_pool.free_block_queue`` for a WA-LRU queue holding the same free blocks
        in the same order (the null block stays out), and return it."""
        old = block_pool.free_block_queue
        free = old.get_all_free_blocks()
        queue = cls(free, len(block_pool.blocks), clock, **kwargs)
        for block in block_pool.blocks:
            queue.block_by_id[block.block_id] = block
        block_pool.free_block_queue = queue
        return queue

    # -- per-block state -----------------------------------------------------------------------
    def set_reuse(self, block_ids: Iterable[int], p_reuse: float) -> None:
        """Predicted reuse probability of these blocks (kept until the block is reallocated)."""
        if math.isnan(p_reuse) or not 0.0 <= p_reuse <= 1.0:
            raise ValueError(f"p_reuse must be in [0, 1], got {p_reuse}")
        ids = np.fromiter(block_ids, np.int64)
        if ids.size:
            self._reuse[ids] = p_reuse

    def set_steps(self, block_ids: Iterable[int], steps_to_exec: float) -> None:
        """Steps until these blocks' session runs its next LLM call (KVFlow's hint; NaN or
        +inf: unknown or never), kept until the block is reallocated."""
        if steps_to_exec < 0:
            raise ValueError(f"steps_to_exec must be >= 0, got {steps_to_exec}")
        ids = np.fromiter(block_ids, np.int64)
        if ids.size:
            self._steps[ids] = steps_to_exec

    @property
    def ranked(self) -> bool:
        """Victims are chosen by a policy's ranking, not vLLM's list order."""
        return self.walru or self.steps or self.ranker is not None

    def reuse_prob(self, block_id: int) -> float:
        """The reuse probability WA-LRU uses for a block (``UNKNOWN_REUSE`` when none was set)."""
        value = float(self._reuse[block_id])
        return UNKNOWN_REUSE if math.isnan(value) else value

    def _track(self, block: Any, now: float, *, first: bool) -> None:
        bid = int(block.block_id)
        if self._pos[bid] >= 0:
            raise RuntimeError(f"block {bid} is already in the free queue")
        self._pos[bid] = self._n
        self._ids[self._n] = bid
        self._n += 1
        self._counter += 1
        # Prepended blocks (vLLM: hash-less, reuse first) sort as the newest.
        self._seq[bid] = self._counter
        self._last_free[bid] = now
        hashed = block.block_hash is not None and not first
        self._hashed[bid] = hashed
        tokens = block.block_hash_num_tokens
        self._prefix[bid] = float(tokens) if tokens is not None else float(self.block_size)

    def _untrack(self, bid: int) -> None:
        pos = int(self._pos[bid])
        if pos < 0:
            raise RuntimeError(f"block {bid} is not in the free queue")
        last = int(self._ids[self._n - 1])
        self._ids[pos] = last
        self._pos[last] = pos
        self._pos[bid] = -1
        self._n -= 1

    # -- vLLM's interface ----------------------------------------------------------------------
    def append(self, block: Any) -> None:
        """Free one block (end of the LRU order)."""
        super().append(block)
        self._track(block, self.clock(), first=False)

    def append_n(self, blocks: list[Any]) -> None:
        """Free blocks (vLLM passes them tail first, so the tail is the older one)."""
        if not blocks:
            return
        super().append_n(blocks)
        now = self.clock()
        for block in blocks:
            self._track(block, now, first=False)

    def prepend_n(self, blocks: list[Any]) -> None:
        """Free hash-less blocks that vLLM wants reused first."""
        if not blocks:
            return
        super().prepend_n(blocks)
        now = self.clock()
        for block in blocks:
            self._track(block, now, first=True)

    def remove(self, block: Any) -> None:
        """Take a free block out (a prefix hit touched it)."""
        super().remove(block)
        self._untrack(int(block.block_id))

    def popleft(self) -> Any:
        """Hand out one block, chosen like :meth:`popleft_n` with ``n=1``."""
        if not self.ranked or self.num_free_blocks == 0:
            block = super().popleft()
            self._untrack(int(block.block_id))
            self._forget_hints(np.array([block.block_id], np.int64))
            self._count_evictions([block])
            return block
        return self.popleft_n(1)[0]

    def popleft_n(self, n: int) -> list[Any]:
        """Hand out ``n`` blocks: vLLM's head-of-queue order, or the ranking's victims."""
        if n == 0:
            return []
        if not self.ranked:
            out: list[Any] = super().popleft_n(n)
            for block in out:
                self._untrack(int(block.block_id))
            self._forget_hints(np.fromiter((b.block_id for b in out), np.int64))
            self._count_evictions(out)
            return out
        if n > self._n:
            raise ValueError(f"cannot pop {n} blocks from a queue of {self._n}")
        victims = self.choose_victims(n)
        out = [self.block_by_id[int(bid)] for bid in victims]
        for block in out:
            super().remove(block)
            self._untrack(int(block.block_id))
        self._forget_hints(victims)
        if self.ranker is not None:
            self.ranker.released(victims)
        self._count_evictions(out)
        return out

    def _forget_hints(self, ids: IntArray) -> None:
        """A reallocated block starts without hints."""
        self._reuse[ids] = np.nan
        self._steps[ids] = np.nan

    def get_all_free_blocks(self) -> list[Any]:
        """Free blocks in the linked list's order (vLLM uses this in tests and at start)."""
        out: list[Any] = super().get_all_free_blocks()
        return out

    # -- the policy ----------------------------------------------------------------------------
    def free_block_ids(self) -> IntArray:
        """Ids of the free blocks (unordered copy)."""
        return self._ids[: self._n].copy()

    def scores(self, ids: IntArray, now: float | None = None) -> FloatArray:
        """``walru_score`` of free blocks ``ids`` at ``now``, normalised over ``ids``."""
        t = self.clock() if now is None else now
        age = np.maximum(t - self._last_free[ids], 0.0)
        hint = self._reuse[ids]
        p_reuse = np.where(np.isnan(hint), UNKNOWN_REUSE, hint)
        return walru_score(_normalise_by_max(age), p_reuse,
                           _normalise_by_max(self._prefix[ids]),
                           self.alpha, self.beta, self.gamma)

    def choose_victims(self, n: int) -> IntArray:
        """The ``n`` block ids the ranking evicts next, in eviction order (does not remove
        them)."""
        ids = self._ids[: self._n]
        hashed = self._hashed[ids]
        plain = ids[~hashed]
        cached = ids[hashed]
        chosen: list[IntArray] = []
        if plain.size:
            take = min(n, int(plain.size))
            # Most recently freed hash-less block first (vLLM's LIFO reuse of such blocks).
            key = -self._seq[plain].astype(np.float64)
            chosen.append(_smallest(plain, key, take, self._seq[plain], self._prefix[plain]))
            n -= take
        if n > 0 and self.ranker is not None:
            # Predicted next use: the lowest value first, leaves of a cached chain only.
            chosen.append(self.ranker.choose(cached, n, self.clock(), self._last_free[cached]))
        elif n > 0 and self.steps:
            # KVFlow: the furthest from running first (unknown: infinitely far), then LRU, then
            # the longer prefix.
            steps = self._steps[cached]
            key = -np.where(np.isnan(steps), np.inf, steps)
            chosen.append(_smallest(cached, key, n, self._last_free[cached],
                                    -self._prefix[cached]))
        elif n > 0:
            # saga-policy's ranking (native when saga-kernels is installed). Ties: older free
            # first, then the longer prefix (a chain's tail before its head).
            hint = self._reuse[cached]
            prefix = self._prefix[cached]
            order = walru_top_k(self._last_free[cached],
                                np.where(np.isnan(hint), UNKNOWN_REUSE, hint),
                                prefix.astype(np.float64), prefix.astype(np.int64),
                                self.clock(), n, self.alpha, self.beta, self.gamma)
            chosen.append(cached[order])
        return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)

    def _count_evictions(self, blocks: Sequence[Any]) -> None:
        if self.on_evict is None:
            return
        evicted = sum(1 for b in blocks if b.block_hash is not None)
        if evicted:
            self.on_evict(evicted)


def _smallest(ids: IntArray, key: FloatArray, k: int, tie1: npt.NDArray[Any],
              tie2: npt.NDArray[Any]) -> IntArray:
    """The ``k`` ids with the smallest ``key`` (ties by ``tie1`` then ``tie2``), sorted.

    ``argpartition`` selects a superset bounded by the k-th key in O(len), then only the
    selected few are sorted: all blocks tied with the k-th key are included before sorting so
    the choice among ties is by the tie-break keys, not by array position.
    """
    if k >= ids.size:
        sel = np.arange(ids.size)
    else:
        part = np.argpartition(key, k - 1)[:k]
        kth = key[part].max()
        sel = np.flatnonzero(key <= kth)
    order = np.lexsort((tie2[sel], tie1[sel], key[sel]))[:k]
    out: IntArray = ids[sel[order]]
    return out


__all__ = ["WALRUFreeBlockQueue"]
