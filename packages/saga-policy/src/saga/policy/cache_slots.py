"""The slot bookkeeping under `CacheManager`: which slot holds which block in which tier, the
parents' child counts, victim choice through the policies, and the invariants that tie them.

`SlotBook` is a base class holding no state of its own: `CacheManager` declares the fields and
the public operations; the moves every operation is made of live here, so each operation reads
as its steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from saga.policy.block_table import NO_PARENT, BlockTable, Tier
from saga.policy.cache_types import CacheStats
from saga.policy.errors import CacheError
from saga.policy.eviction import EvictionPolicy
from saga.policy.swap import SwapTimeModel

__all__ = ["DRAM", "FREE", "HBM", "EvictResult", "SlotBook", "Slots"]

Slots = npt.NDArray[np.int64]

# Plain ints, bound once: Enum members are slow in hot loops and in numpy comparisons.
FREE, HBM, DRAM = int(Tier.FREE), int(Tier.HBM), int(Tier.DRAM)


@dataclass
class EvictResult:
    """What evicting HBM victims did: blocks swapped to DRAM, dropped, transfer seconds."""


    swapped: int = 0
    dropped: int = 0
    seconds: float = 0.0


class SlotBook:
    """Slot-level moves and checks shared by every `CacheManager` operation (no state here)."""

    hbm_blocks: int
    dram_blocks: int
    block_bytes: int
    policy: EvictionPolicy
    dram_policy: EvictionPolicy | None
    swap: SwapTimeModel | None
    stats: CacheStats
    table: BlockTable
    _index: dict[int, int]
    _hash_of: list[int | None]
    _free: list[int]
    _used: list[int]
    _pending: dict[int, dict[str, float]]

    @property
    def hbm_used(self) -> int:
        """Blocks resident in HBM."""
        return self._used[HBM]

    @property
    def dram_used(self) -> int:
        """Blocks resident in DRAM."""
        return self._used[DRAM]

    @property
    def free(self) -> int:
        """Free HBM blocks."""
        return self.hbm_blocks - self._used[HBM]

    @property
    def dram_free(self) -> int:
        """Free DRAM blocks (0 without a DRAM tier)."""
        return self.dram_blocks - self._used[DRAM]

    def check_invariants(self) -> None:
        """Raise `CacheError` naming the first broken invariant (for tests and debugging)."""
        t = self.table
        n_slots = t.slots
        counts = np.bincount(t.tier.astype(np.int64), minlength=3)
        if int(counts[HBM]) != self._used[HBM] or int(
                counts[DRAM]) != self._used[DRAM]:
            raise CacheError(f"tier counts {counts.tolist()} disagree with {self._used}")
        if self._used[HBM] > self.hbm_blocks:
            raise CacheError(f"HBM holds {self._used[HBM]} > capacity {self.hbm_blocks}")
        if self._used[DRAM] > self.dram_blocks:
            raise CacheError(f"DRAM holds {self._used[DRAM]} > capacity {self.dram_blocks}")
        if (t.ref_count < 0).any():
            raise CacheError(f"negative ref count at slots {np.flatnonzero(t.ref_count < 0)}")
        if ((t.ref_count > 0) & (t.tier != HBM)).any():
            raise CacheError("a referenced block is not in HBM")
        free = set(self._free)
        if len(free) != len(self._free):
            raise CacheError("a slot is on the free list twice")
        free_tier = set(np.flatnonzero(t.tier == FREE).tolist())
        if free != free_tier:
            raise CacheError(f"free list {sorted(free)[:8]} != FREE slots {sorted(free_tier)[:8]}")
        if len(self._index) + len(self._free) != n_slots:
            raise CacheError("index and free list do not cover the slots exactly once")
        for h, s in self._index.items():
            if self._hash_of[s] != h or t.tier[s] == FREE:
                raise CacheError(f"block {h} maps to slot {s} which does not hold it")
        par = t.parent
        linked = np.flatnonzero(par != NO_PARENT)
        if (t.tier[linked] == FREE).any() or (t.tier[par[linked]] == FREE).any():
            raise CacheError("a parent link touches a free slot")
        for tier, col in ((HBM, t.children_hbm), (DRAM, t.children_dram)):
            kids = linked[t.tier[linked] == tier]
            expect = np.bincount(par[kids], minlength=n_slots)
            if not np.array_equal(expect, col):
                bad = int(np.argmax(expect != col))
                raise CacheError(f"slot {bad} counts {col[bad]} {Tier(tier).name} children, "
                                 f"has {expect[bad]}")
        err = self.policy.state_error(t) if self.policy.observes else None
        if err is not None:
            raise CacheError(f"policy {self.policy.name}: {err}")

    def _unique(self, hashes: Iterable[int], op: str) -> list[int]:
        hs = list(hashes)
        if len(set(hs)) != len(hs):
            raise CacheError(f"{op}: a block hash appears twice in one sequence; chained hashes "
                             f"are unique per position")
        return hs

    def _slots(self, hashes: Iterable[int], op: str) -> Slots:
        hs = list(hashes)
        try:
            return np.fromiter(map(self._index.__getitem__, hs), np.int64, len(hs))
        except KeyError as e:
            raise CacheError(f"{op}: block {e.args[0]} is not cached; check contains() "
                             f"first") from None

    def _hash_of_slot(self, slot: int) -> int:
        h = self._hash_of[slot]
        if h is None:
            raise CacheError(f"slot {slot} is free")
        return h

    def _seconds(self, blocks: int) -> float:
        assert self.swap is not None
        return self.swap.seconds(blocks * self.block_bytes)

    def _evictable(self, tier: int, now: float, exclude: Slots | None = None) -> Slots:
        t = self.table
        mask = (t.tier == tier) & (t.ref_count == 0) & (t.pinned_until <= now)
        if exclude is not None and exclude.size:
            mask[exclude] = False
        return np.flatnonzero(mask).astype(np.int64, copy=False)

    def _hbm_candidates(self, now: float, exclude: Slots) -> tuple[Slots, Slots]:
        """Unreferenced HBM blocks outside ``exclude``: (unpinned, pinned) — one pass."""
        t = self.table
        free = (t.tier == HBM) & (t.ref_count == 0)
        if exclude.size:
            free[exclude] = False
        pinned = t.pinned_until > now
        return (np.flatnonzero(free & ~pinned).astype(np.int64, copy=False),
                np.flatnonzero(free & pinned).astype(np.int64, copy=False))

    def _select(self, policy: EvictionPolicy, cands: Slots, k: int, now: float) -> Slots:
        k = min(k, int(cands.size))
        if k <= 0:
            return np.empty(0, np.int64)
        victims = np.asarray(policy.select_victims(self.table, cands, k, now), np.int64)
        if victims.size != k or not self._distinct_members(victims, cands):
            raise CacheError(f"policy {policy.name} returned {victims.size} victims, not {k} "
                             f"distinct candidates")
        return victims

    def _distinct_members(self, victims: Slots, cands: Slots) -> bool:
        """Whether ``victims`` are distinct slots, all among ``cands`` (one pass over a mask)."""
        if victims.size and (int(victims.min()) < 0 or int(victims.max()) >= self.table.slots):
            return False
        mark = np.zeros(self.table.slots, np.bool_)
        mark[cands] = True
        if not mark[victims].all():
            return False
        mark[victims] = False
        return int(np.count_nonzero(mark)) == int(cands.size) - int(victims.size)

    def _choose_victims(self, k: int, evictable: Slots, breakable: Slots,
                        now: float) -> tuple[Slots, int]:
        """``k`` HBM victims: policy choice first, then pins broken earliest-expiry-first."""
        victims = self._select(self.policy, evictable, k, now)
        short = k - int(victims.size)
        if short <= 0:
            return victims, 0
        order = np.argsort(self.table.pinned_until[breakable], kind="stable")
        broken = breakable[order[:short]]
        self.table.pinned_until[broken] = -np.inf
        return np.concatenate([victims, broken]), int(broken.size)

    def _evict_hbm(self, victims: Slots, now: float) -> EvictResult:
        """Swap victims to DRAM (dropping DRAM victims for room) or drop them."""
        if victims.size == 0:
            return EvictResult()
        self._tell_evicted(victims)
        dropped_before = self.stats.dropped
        self._make_dram_room(int(victims.size), now)
        n_swap = min(int(victims.size), self.dram_free)
        n_drop = int(victims.size) - n_swap
        # Victims come best first (leaves before parents): drop the least valuable, keep the rest.
        self._drop(victims[:n_drop])
        self._move(victims[n_drop:], DRAM)
        seconds = self._seconds(n_swap)
        s = self.stats
        s.evictions += int(victims.size)
        s.swapped_out += n_swap
        s.swap_seconds += seconds
        return EvictResult(swapped=n_swap, dropped=self.stats.dropped - dropped_before,
                            seconds=seconds)

    def _tell_evicted(self, slots: Slots) -> None:
        """Tell an observing policy which HBM blocks leave (before they move or go)."""
        if self.policy.observes:
            self.policy.on_evict(slots, [self._hash_of_slot(s) for s in slots.tolist()])

    def _make_dram_room(self, blocks: int, now: float, exclude: Slots | None = None) -> None:
        if self.dram_blocks == 0:
            return
        short = blocks - self.dram_free
        if short <= 0:
            return
        assert self.dram_policy is not None
        cands = self._evictable(DRAM, now, exclude=exclude)
        self._drop(self._select(self.dram_policy, cands, short, now))

    def _move(self, slots: Slots, tier: int) -> None:
        """Change the slots' tier, keeping occupancy and parents' child counts in step."""
        if slots.size == 0:
            return
        t = self.table
        old = t.tier[slots]
        for o in (HBM, DRAM):
            self._used[o] -= int(np.count_nonzero(old == o))
        self._used[tier] += int(slots.size)
        t.tier[slots] = tier
        par = t.parent[slots]
        linked = par != NO_PARENT
        if not linked.any():
            return
        par, old = par[linked], old[linked]
        # The parents lose these children in their old tier and gain them in the new one.
        # ufunc.at, not bincount: a batch touches a few dozen parents of thousands of slots.
        for o, col in ((HBM, t.children_hbm), (DRAM, t.children_dram)):
            sel = par[old == o]
            if sel.size:
                np.subtract.at(col, sel, 1)
        np.add.at(t.children_hbm if tier == HBM else t.children_dram, par, 1)

    def _recount_parents(self, slots: Slots, sign: int) -> None:
        t = self.table
        par = t.parent[slots]
        linked = par != NO_PARENT
        tiers = t.tier[slots]
        # np.add.at, not a full-length bincount: the same integer sums, and a batch touches a
        # few dozen of thousands of slots (NumPy >= 2 runs ufunc.at on a fast path).
        for col, tier in ((t.children_hbm, HBM), (t.children_dram, DRAM)):
            sel = par[linked & (tiers == tier)]
            if sel.size:
                np.add.at(col, sel, sign)

    def _drop(self, slots: Slots) -> None:
        """Remove blocks from the cache; their children lose their parent link."""
        if slots.size == 0:
            return
        t = self.table
        self._recount_parents(slots, -1)
        for o in (HBM, DRAM):
            self._used[o] -= int(np.count_nonzero(t.tier[slots] == o))
        # parent == NO_PARENT (-1) reads the extra last entry, which is never marked.
        dropped = np.zeros(t.slots + 1, np.bool_)
        dropped[slots] = True
        t.parent[dropped[t.parent]] = NO_PARENT
        t.reset(slots)
        for s in slots.tolist():
            h = self._hash_of[s]
            assert h is not None
            del self._index[h]
            self._hash_of[s] = None
            self._free.append(s)
        self.stats.dropped += int(slots.size)

    def _link_chain(self, seq: Slots) -> None:
        """Point each block at its predecessor in ``seq`` and set depths (all are in HBM)."""
        t = self.table
        want = np.empty(seq.size, np.int64)
        want[0] = NO_PARENT
        want[1:] = seq[:-1]
        cur = t.parent[seq]
        diff = cur != want
        if diff.any():
            moved = seq[diff]
            self._recount_parents(moved, -1)
            t.parent[moved] = want[diff]
            self._recount_parents(moved, +1)
        t.depth[seq] = np.arange(seq.size)

    def _apply_pending(self, block_hash: int, slot: int) -> None:
        pending = self._pending.pop(block_hash, None)
        if pending:
            for name, value in pending.items():
                getattr(self.table, name)[slot] = value
