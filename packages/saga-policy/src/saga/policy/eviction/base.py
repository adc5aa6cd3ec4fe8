"""The eviction-policy interface and the shared victim selection.

A policy only says how to *order* candidate blocks (`sort_keys`, for `numpy.lexsort`); the base
class turns that order into victims. For ``leaves_only`` policies it does so exactly as a greedy
"evict the best-ranked current leaf, repeat" would (what SGLang's radix cache does with a heap),
but in vectorised rounds: each round takes the longest run of the current leaves, in rank order,
that no parent freed earlier in the same run would have overtaken.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from saga.policy.block_table import NO_PARENT, BlockTable

Slots = npt.NDArray[np.int64]
SortKeys = tuple[npt.NDArray[np.generic], ...]


class EvictionPolicy(ABC):
    """Chooses which evictable blocks leave a tier first.

    ``leaves_only``: a block with resident children in the tier is taken only after them, since
    evicting an inner block strands its descendants (``longest_prefix`` stops at the gap). When
    no candidate is a leaf (its children are in use), the best-ranked block is taken anyway.
    """

    name: ClassVar[str]
    leaves_only: ClassVar[bool] = False
    needs_next_use: ClassVar[bool] = False
    reads_hints: ClassVar[bool] = False
    """Whether the order reads per-block workflow hints (reuse probability, steps to
    execution): a deployment feeds hints only to policies that read them."""

    @abstractmethod
    def sort_keys(self, table: BlockTable, slots: Slots, now: float) -> SortKeys:
        """Keys for ``numpy.lexsort`` over ``slots``: last key primary, smallest evicted first."""

    def order(self, table: BlockTable, slots: Slots, now: float) -> Slots:
        """``slots`` sorted best victim first (ties keep the given order: lexsort is stable)."""
        if slots.size == 0:
            return slots
        order: Slots = slots[np.lexsort(self.sort_keys(table, slots, now))]
        return order

    def select_victims(self, table: BlockTable, candidates: Slots, k: int, now: float) -> Slots:
        """``min(k, len(candidates))`` slots of ``candidates`` to evict, best victim first.

        Sorts only a best-ranked subset when that provably gives the same answer: the candidates
        whose primary key is within the ``k'``-th smallest (ties included) form a prefix of the
        full order; leaves-first selection retries on the full set if the subset runs dry.
        """
        candidates = np.asarray(candidates, dtype=np.int64)
        n = int(candidates.size)
        k = min(int(k), n)
        if k <= 0:
            return np.empty(0, np.int64)
        keys = self.sort_keys(table, candidates, now)
        head = min(n, 2 * k + 64)
        if head < n:
            primary = keys[-1]
            threshold = np.partition(primary, head - 1)[head - 1]
            if threshold == threshold:  # not NaN
                sub = np.flatnonzero(primary <= threshold)
                if sub.size < n:
                    ranked: Slots = candidates[sub][np.lexsort(tuple(key[sub] for key in keys))]
                    if not self.leaves_only:
                        return ranked[:k]
                    got = _leaves_first(table, ranked, k, complete=False)
                    if got is not None:
                        return got
        ranked = candidates[np.lexsort(keys)]
        if not self.leaves_only:
            return ranked[:k]
        got = _leaves_first(table, ranked, k, complete=True)
        assert got is not None
        return got


def _leaves_first(table: BlockTable, ranked: Slots, k: int, *, complete: bool) -> Slots | None:
    """Greedy leaves-first selection over candidates already sorted best first.

    ``complete=False``: ``ranked`` is only the best-ranked part of the candidates; return None
    when it runs out of leaves, since a better choice may then lie outside it.
    """
    n_slots = table.slots
    rank = np.full(n_slots, -1, np.int64)
    rank[ranked] = np.arange(ranked.size)
    need = np.zeros(n_slots, np.int64)
    need[ranked] = table.blocking_children(ranked)

    # Fast path: the top k are closed under "children first" and no parent outranks its child.
    top = ranked[:k]
    in_top = np.zeros(n_slots, bool)
    in_top[top] = True
    par = table.parent[top]
    linked = par != NO_PARENT
    linked[linked] = in_top[par[linked]]
    kids_in_top = np.zeros(n_slots, np.int64)
    np.add.at(kids_in_top, par[linked], 1)
    if np.array_equal(need[top], kids_in_top[top]) and bool(
            np.all(rank[par[linked]] > rank[top[linked]])):
        return top

    alive = np.zeros(n_slots, bool)
    alive[ranked] = True
    frontier = ranked[need[ranked] == 0]
    taken: list[Slots] = []
    remaining = k
    while remaining > 0:
        if frontier.size == 0:
            # Only blocks whose children are in use remain: take the best-ranked one.
            if not complete:
                return None
            rest = ranked[alive[ranked]]
            if rest.size == 0:
                break
            take, frontier_rest = rest[:1], frontier
        else:
            m = min(remaining, int(frontier.size))
            cut = _round_length(table, frontier[:m], need, alive, rank)
            take, frontier_rest = frontier[:cut], frontier[cut:]
        alive[take] = False
        taken.append(take)
        remaining -= int(take.size)
        p = table.parent[take]
        p = p[p != NO_PARENT]
        p = p[alive[p]]
        np.subtract.at(need, p, 1)
        new_leaves = np.unique(p[need[p] == 0])
        if new_leaves.size:
            merged = np.concatenate([frontier_rest, new_leaves])
            frontier = merged[np.argsort(rank[merged], kind="stable")]
        else:
            frontier = frontier_rest
    return np.concatenate(taken) if taken else np.empty(0, np.int64)


def _round_length(table: BlockTable, pref: Slots, need: Slots,
                  alive: npt.NDArray[np.bool_], rank: Slots) -> int:
    """How many leaves of ``pref`` (sorted by rank) greedy takes before a freed parent cuts in."""
    m = int(pref.size)
    par = table.parent[pref]
    valid = par != NO_PARENT
    valid[valid] = alive[par[valid]]
    if not valid.any():
        return m
    vp = par[valid]
    pos = np.flatnonzero(valid)
    uniq, inv, counts = np.unique(vp, return_inverse=True, return_counts=True)
    freed = need[uniq] == counts
    if not freed.any():
        return m
    last = np.zeros(uniq.size, np.int64)
    np.maximum.at(last, inv, pos)
    parent_rank = rank[uniq[freed]]
    overtakes = np.searchsorted(rank[pref], parent_rank)
    cut = int(np.min(np.maximum(last[freed] + 1, overtakes)))
    return min(m, cut)
