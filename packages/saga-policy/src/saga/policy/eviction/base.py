"""The eviction-policy interface and the shared victim selection.

A policy only says how to *order* candidate blocks (`sort_keys`, for `numpy.lexsort`); the base
class turns that order into victims. For ``leaves_only`` policies it does so exactly as a greedy
"evict the best-ranked current leaf, repeat" would (what SGLang's radix cache does with a heap),
but in vectorised rounds: each round takes the longest run of the current leaves, in rank order,
that no parent freed earlier in the same run would have overtaken.

A policy that remembers more than the table holds (ARC's lists and ghosts, S3-FIFO's queues)
sets ``observes`` and is told what happens to its tier through the ``on_*`` hooks; the manager
calls them for such policies only. `BlockQueues` and `GhostList` are the state they share.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import numpy.typing as npt

from saga.policy.block_table import NO_PARENT, BlockTable

if TYPE_CHECKING:
    from saga.policy.nextuse import NextUseEstimator

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
    observes: ClassVar[bool] = False
    """Whether the policy keeps per-block state of its own, fed by the hooks below: the manager
    calls them only for such a policy, so a stateless order depends on the table alone."""
    native_order: ClassVar[str | None] = None
    """The name, in saga-kernels' native cache core, of the order `sort_keys` defines (the same
    keys, ties by slot); None: only the Python selection ranks by it. A subclass that changes
    `sort_keys` must set it back to None."""

    def native_weights(self) -> tuple[float, float, float]:
        """Parameters the native order reads (WA-LRU's weights); zeros for the others."""
        return (0.0, 0.0, 0.0)

    def next_use_model(self) -> NextUseEstimator | None:
        """The next-use estimator the serving path feeds (calls, sessions, requests served) for
        this policy to rank by; None: the policy predicts nothing and needs no feed."""
        return None

    def attach(self, slots: int, capacity: int) -> None:
        """Start serving one cache: ``slots`` table slots, ``capacity`` blocks in the tier."""
        return None

    def before_admit(self, hashes: Sequence[int]) -> None:
        """Blocks a request needs that are not in the tier (misses and loads from below), in
        chain order, before victims are chosen to make room for them."""
        return None

    def on_admit(self, slots: Slots, hashes: Sequence[int]) -> None:
        """Blocks that entered the tier (created, loaded back or prefetched), in chain order."""
        return None

    def on_hit(self, slots: Slots) -> None:
        """Resident blocks used again, in chain order: a prefix hit (from either tier), a block
        still cached past the end of the hit (recomputed, but its copy is reused) or a touch."""
        return None

    def on_release(self, slots: Slots) -> None:
        """Blocks a request finished with, in chain order."""
        return None

    def on_evict(self, slots: Slots, hashes: Sequence[int]) -> None:
        """Blocks leaving the tier (swapped to DRAM or dropped), best victim first."""
        return None

    def state_error(self, table: BlockTable) -> str | None:
        """What disagrees between the policy's own state and ``table`` (None: nothing)."""
        return None

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


NOT_TRACKED = 0
"""`BlockQueues.queue` of a slot on no queue (not in the tier, or never admitted)."""


@dataclass(eq=False)
class BlockQueues:
    """Which of a policy's queues each slot is on, and where: one stamp per slot from a running
    clock, smaller = nearer the tail (leaves sooner). Sizes count every member, in use or not."""

    queue: npt.NDArray[np.int8]
    stamp: npt.NDArray[np.int64]
    sizes: list[int]
    clock: int = 0

    @classmethod
    def empty(cls, slots: int, queues: int) -> BlockQueues:
        """No slot on any of ``queues`` queues (numbered from 1)."""
        return cls(np.zeros(slots, np.int8), np.zeros(slots, np.int64), [0] * (queues + 1))

    def queue_of(self, slots: Slots) -> npt.NDArray[np.int8]:
        """Each slot's queue; slots beyond the table this state was built for are untracked."""
        if slots.size and int(slots.max()) >= self.queue.size:
            out = np.zeros(slots.size, np.int8)
            inside = slots < self.queue.size
            out[inside] = self.queue[slots[inside]]
            return out
        got: npt.NDArray[np.int8] = self.queue[slots]
        return got

    def put(self, slots: Slots, queue: int, *, tail_first: bool) -> None:
        """Put ``slots`` at the head of ``queue``, in the given order; ``tail_first``: a chain
        given head first, so its deepest block gets the oldest stamp and leaves first."""
        n = int(slots.size)
        if n == 0:
            return
        self._count(slots, -1)
        self.queue[slots] = queue
        self.sizes[queue] += n
        steps = np.arange(n - 1, -1, -1) if tail_first else np.arange(n)
        self.stamp[slots] = self.clock + steps
        self.clock += n

    def refresh(self, slots: Slots) -> None:
        """Move tracked ``slots`` (a chain, head first) to the head of the queue they are on."""
        slots = slots[self.queue_of(slots) != NOT_TRACKED]
        n = int(slots.size)
        self.stamp[slots] = self.clock + np.arange(n - 1, -1, -1)
        self.clock += n

    def remove(self, slots: Slots) -> None:
        """Take ``slots`` off whatever queue they are on."""
        self._count(slots, -1)
        self.queue[slots] = NOT_TRACKED

    def _count(self, slots: Slots, sign: int) -> None:
        for q, c in enumerate(np.bincount(self.queue_of(slots), minlength=len(self.sizes))):
            if q != NOT_TRACKED:
                self.sizes[q] += sign * int(c)

    def oldest(self, slots: Slots, m: int) -> Slots:
        """The ``m`` slots of ``slots`` nearest the tail, tail first (O(n) partition, m log m
        sort; ties cannot occur: stamps are unique)."""
        m = min(m, int(slots.size))
        if m <= 0:
            return np.empty(0, np.int64)
        keys = self.stamp[slots]
        if m < slots.size:
            part = np.argpartition(keys, m - 1)[:m]
            return slots[part[np.argsort(keys[part])]]
        return slots[np.argsort(keys)]

    def fifo_keys(self, table: BlockTable, slots: Slots) -> SortKeys:
        """Lexsort keys: untracked slots first (least recently used first), then by queue
        number, oldest stamp first within a queue."""
        q = self.queue_of(slots)
        known = q != NOT_TRACKED
        within = table.last_access[slots].copy()
        within[known] = self.stamp[slots[known]]
        return (within, q)

    def state_error(self, table: BlockTable, tier: int) -> str | None:
        """Whether exactly the blocks in ``tier`` are tracked and the sizes add up."""
        tracked = self.queue[: table.slots] != NOT_TRACKED
        if not np.array_equal(tracked, table.tier == tier):
            bad = int(np.argmax(tracked != (table.tier == tier)))
            return f"slot {bad} is tracked={bool(tracked[bad])} but its tier is {table.tier[bad]}"
        counts = np.bincount(self.queue, minlength=len(self.sizes))
        if counts[1:].tolist() != self.sizes[1:]:
            return f"queue sizes {self.sizes[1:]} != members {counts[1:].tolist()}"
        return None


@dataclass(eq=False)
class GhostList:
    """Hashes of blocks evicted recently, oldest first, at most ``capacity`` of them."""

    capacity: int
    keys: OrderedDict[int, None] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self.keys

    def add(self, hashes: Iterable[int]) -> None:
        """Remember ``hashes`` as the newest entries; forget the oldest beyond capacity."""
        keys = self.keys
        for h in hashes:
            keys[h] = None
            keys.move_to_end(h)
        while len(keys) > self.capacity:
            keys.popitem(last=False)

    def take(self, block_hash: int) -> bool:
        """Forget ``block_hash``; whether it was remembered."""
        return self.keys.pop(block_hash, 0) is None


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
