"""Eviction by predicted next use: the lowest `saga.policy.nextuse.block_value` goes first."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from saga.policy.block_table import NO_PARENT, BlockTable
from saga.policy.eviction.base import EvictionPolicy, Slots, SortKeys
from saga.policy.nextuse import MIN_UNTIL_S, NextUseEstimator, block_value, recompute_flops
from saga.policy.nextuse_gaps import FloatArray
from saga.policy.spec import LLAMA3_70B, ModelSpec

try:  # optional: saga-kernels' value ranking (native, else its NumPy twin): the same victims
    from saga.kernels.value_rank import eta_select as _eta_select

    _KERNEL = True
except ImportError:
    _KERNEL = False


@dataclass(eq=False)
class ETAPolicy(EvictionPolicy):
    """Evict the block worth least per byte and second until its predicted next use.

    ``v = P_reuse · recompute_flops(depth) / (size · (next_use − now))`` (`block_value`). The
    next use and ``P_reuse`` come from ``estimator`` (sessions' tool calls and workflow ends,
    else each block's own reuse gaps), fed by the serving path through
    `EvictionPolicy.next_use_model`; with ``estimator=None`` they are read from the block
    table's ``next_use`` (absolute time, +inf = never) and ``reuse_prob`` (NaN = 1) hints, so
    exact next uses make it Bélády's MIN. Leaves first, as WA-LRU; ties go deepest first, then
    least recently used. Blocks are taken as equal in bytes (one paged block each).
    """

    estimator: NextUseEstimator | None = field(default_factory=NextUseEstimator)
    model: ModelSpec = LLAMA3_70B
    depth_cost: bool = True

    name: ClassVar[str] = "eta"
    leaves_only: ClassVar[bool] = True
    reads_hints: ClassVar[bool] = True
    observes: ClassVar[bool] = True

    def next_use_model(self) -> NextUseEstimator | None:
        return self.estimator

    def attach(self, slots: int, capacity: int) -> None:
        if self.estimator is not None:
            self.estimator.attach(slots)

    def on_admit(self, slots: Slots, hashes: Sequence[int]) -> None:
        if self.estimator is not None:
            self.estimator.bind(slots, hashes)

    def on_evict(self, slots: Slots, hashes: Sequence[int]) -> None:
        if self.estimator is not None:
            self.estimator.unbind(hashes)

    def _inputs(self, table: BlockTable, slots: Slots, now: float
                ) -> tuple[FloatArray, FloatArray]:
        """Predicted next use and reuse probability of each slot (the estimator's, else the
        table's hints)."""
        if self.estimator is not None:
            return self.estimator.predict(slots, now)
        hint = table.reuse_prob[slots]
        return table.next_use[slots], np.where(np.isnan(hint), 1.0, hint)

    def values(self, table: BlockTable, slots: Slots, now: float) -> np.ndarray:
        """`block_value` of each slot at ``now``."""
        next_use, p = self._inputs(table, slots, now)
        depth = table.depth[slots] if self.depth_cost else np.zeros(slots.size, np.int64)
        saved = recompute_flops(depth, table.block_tokens, self.model)
        size = float(self.model.kv_bytes_per_token * table.block_tokens)
        return block_value(p, saved, size, next_use - now)

    def sort_keys(self, table: BlockTable, slots: Slots, now: float) -> SortKeys:
        return (table.last_access[slots], -table.depth[slots], self.values(table, slots, now))

    def select_victims(self, table: BlockTable, candidates: Slots, k: int, now: float) -> Slots:
        """The base class's victims, found faster: ranked by saga-kernels' value ranking when
        it is installed, leaves first by a heap.

        ``eta_select`` computes the same values (`block_value` of `recompute_flops`, term by
        term) and the same order (value, then deepest, then least recently used, then input
        order); it returns the best ``2k + 64`` and leaves-first selection widens to the full
        ranking only if that prefix runs out of leaves, as the base class does. Leaves first is
        the same greedy as the base class's (`greedy_leaves`), one victim at a time: values
        rise with depth here, so a parent often outranks its children and the base class's
        vectorised rounds would take one block each.
        """
        if not (_KERNEL and self.depth_cost):
            return super().select_victims(table, candidates, k, now)
        candidates = np.asarray(candidates, dtype=np.int64)
        n = int(candidates.size)
        k = min(int(k), n)
        if k <= 0:
            return np.empty(0, np.int64)
        next_use, p = self._inputs(table, candidates, now)
        m = self.model
        depth, last = table.depth[candidates], table.last_access[candidates]

        def ranked(best: int) -> Slots:
            order: Slots = _eta_select(
                next_use, p, depth, last, now, best, block_tokens=float(table.block_tokens),
                dense_flops=2.0 * m.params, attn_flops=4.0 * m.layers * m.heads * m.head_dim,
                size_bytes=float(m.kv_bytes_per_token * table.block_tokens),
                min_until=MIN_UNTIL_S).order
            return candidates[order]

        head = min(n, 2 * k + 64)
        try:
            got = greedy_leaves(table, ranked(head), k, complete=head == n)
        except ValueError:  # inputs the kernel rejects: the Python path defines the outcome
            return super().select_victims(table, candidates, k, now)
        if got is None:
            got = greedy_leaves(table, ranked(n), k, complete=True)
            assert got is not None
        return got


def greedy_leaves(table: BlockTable, ranked: Slots, k: int, *, complete: bool) -> Slots | None:
    """Evict the best-ranked current leaf, ``k`` times, over candidates sorted best first: a
    block is a leaf once none of its children blocks it (`BlockTable.blocking_children`), and
    a parent among the candidates joins when its last blocking child is taken. With no leaf
    left, the best-ranked remaining candidate goes anyway (its children are in use).

    ``complete=False``: ``ranked`` is only the best-ranked part of the candidates; None when it
    runs out of leaves, since a better choice may lie outside it. What the base class's
    vectorised `select_victims` computes, in ``O(n + k log n)``.
    """
    n = int(ranked.size)
    rank = np.full(table.slots, -1, np.int64)
    rank[ranked] = np.arange(n)
    parent = table.parent[ranked]
    up = np.full(n, -1, np.int64)
    linked = parent != NO_PARENT
    up[linked] = rank[parent[linked]]
    blocking = table.blocking_children(ranked)
    need, up_of = blocking.tolist(), up.tolist()
    heap: list[int] = np.flatnonzero(blocking == 0).tolist()  # ascending: already a heap
    taken = [False] * n
    out: list[int] = []
    rest = 0
    while len(out) < k:
        if heap:
            i = heapq.heappop(heap)
        else:
            if not complete:
                return None
            while rest < n and taken[rest]:
                rest += 1
            if rest == n:
                break
            i = rest
        taken[i] = True
        out.append(i)
        j = up_of[i]
        if j >= 0 and not taken[j]:
            need[j] -= 1
            if need[j] == 0:
                heapq.heappush(heap, j)
    got: Slots = ranked[np.asarray(out, np.int64)]
    return got
