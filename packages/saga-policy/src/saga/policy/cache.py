"""Paged KV cache with an HBM tier and an optional DRAM tier, keyed by chained block hashes.

A sequence is a chain of full KV blocks; block ``i``'s hash covers block ``i - 1``'s hash and its
own tokens (`chain_hashes`), so equal hashes mean equal prefixes, as in vLLM's prefix caching.
`CacheManager` owns a slot-indexed `BlockTable` and delegates victim choice to an
`EvictionPolicy`. The life of a block: ``allocate`` (hit, load back from DRAM, or create; ref +1),
``release`` (ref −1; evictable again), eviction (HBM → DRAM, or dropped), ``pin`` / ``tick``
(kept through a tool call until the pin expires). Every method that can fail checks first and
mutates after, so a `CacheError` leaves the cache as it was.

The value types (`Allocation`, `BlockHints`, ...) live in `saga.policy.cache_types` and the slot
bookkeeping in `saga.policy.cache_slots`; this module re-exports the types.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt

from saga.policy.block_table import BlockTable, Tier
from saga.policy.cache_native import NativeCore, native_core
from saga.policy.cache_slots import DRAM, HBM, SlotBook, Slots
from saga.policy.cache_types import (
    Allocation,
    BlockHints,
    CacheStats,
    HintValue,
    PrefixMatch,
    chain_hashes,
    hint_arrays,
)
from saga.policy.errors import CacheError, SagaConfigError
from saga.policy.eviction import EvictionPolicy, LRUPolicy
from saga.policy.swap import SwapTimeModel

__all__ = ["Allocation", "BlockHints", "CacheManager", "CacheStats", "PrefixMatch", "Tier",
           "chain_hashes"]


@dataclass(frozen=True)
class _Plan:
    """Where an allocation's blocks are (slot -1: not cached; tier 0: none) and what fits:
    ``run`` leading blocks are cached, ``resident`` leading blocks will be, ``needed`` of those
    need an HBM slot; ``evictable``/``breakable``: unreferenced HBM slots, unpinned/pinned."""

    slots: Slots
    tiers: npt.NDArray[np.int8]
    run: int
    resident: int
    needed: int
    evictable: Slots
    breakable: Slots


@dataclass(eq=False)
class CacheManager(SlotBook):
    """Paged KV blocks in HBM (and DRAM when ``dram_blocks > 0``), evicted through ``policy``.

    Evicting from HBM swaps the victim to DRAM; when DRAM is full a DRAM victim chosen by
    ``dram_policy`` (default LRU) is dropped first; without a DRAM tier victims are dropped. A
    block in use (ref > 0) or pinned (``pinned_until > now``) is never evicted, except that
    ``allocate`` breaks pins, earliest expiry first, when nothing else makes room.

    The slot-level moves each operation is made of, the occupancy properties (``hbm_used``,
    ``dram_used``, ``free``, ``dram_free``) and ``check_invariants`` come from `SlotBook`.

    ``native``: run on saga-kernels' native cache core (`saga.policy.cache_native`) — None (the
    default) when it is built, ``SAGA_NATIVE`` is not 0 and both policies have a native order;
    True: require it (`SagaConfigError` otherwise); False: this Python code, which defines it.
    Results are the same either way.
    """

    hbm_blocks: int
    policy: EvictionPolicy
    _: KW_ONLY
    dram_blocks: int = 0
    block_tokens: int = 16
    block_bytes: int = 16 * 327_680
    swap: SwapTimeModel | None = None
    dram_policy: EvictionPolicy | None = None
    native: bool | None = None
    stats: CacheStats = field(default_factory=CacheStats, init=False)
    table: BlockTable = field(init=False, repr=False)
    _index: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _hash_of: list[int | None] = field(default_factory=list, init=False, repr=False)
    _free: list[int] = field(default_factory=list, init=False, repr=False)
    _used: list[int] = field(default_factory=lambda: [0, 0, 0], init=False, repr=False)
    _pending: dict[int, dict[str, float]] = field(default_factory=dict, init=False, repr=False)
    _core: NativeCore | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name, value, low in (("hbm_blocks", self.hbm_blocks, 1),
                                 ("dram_blocks", self.dram_blocks, 0),
                                 ("block_tokens", self.block_tokens, 1),
                                 ("block_bytes", self.block_bytes, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SagaConfigError(f"CacheManager.{name} must be an int >= {low}, got {value!r}")
        if not isinstance(self.policy, EvictionPolicy):
            raise SagaConfigError(
                f"CacheManager.policy must be an EvictionPolicy, got {type(self.policy).__name__}")
        if self.swap is None:
            self.swap = SwapTimeModel()
        if self.dram_policy is None:
            self.dram_policy = LRUPolicy()
        slots = self.hbm_blocks + self.dram_blocks
        self.table = BlockTable.empty(slots, self.block_tokens)
        self._hash_of = [None] * slots
        self._free = list(range(slots - 1, -1, -1))  # pop() hands out low slots first
        if self.native is not False:
            self._core = self._native_core()
        if self.policy.observes:
            self.policy.attach(slots, self.hbm_blocks)

    def _native_core(self) -> NativeCore | None:
        core = native_core(self, self.table)
        if core is None:
            if self.native:
                raise SagaConfigError(
                    "CacheManager(native=True) needs saga-kernels' compiled cache core (built, "
                    "SAGA_NATIVE not 0) and policies with a native order; pass native=None "
                    "to fall back to Python")
            return None
        # Read-only views of the core's state for inspection (check_invariants, tests): the
        # Python code that mutates these never runs on a native manager.
        self._index = cast("dict[int, int]", core.index)
        self._free = cast("list[int]", core.free_list)
        self._hash_of = cast("list[int | None]", core.hash_of)
        self._used = cast("list[int]", core.used)
        return core

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._core.core) if self._core is not None else len(self._index)

    def contains(self, block_hash: int) -> bool:
        """Whether the block is resident in either tier."""
        if self._core is not None:
            return self._core.contains(block_hash)
        return block_hash in self._index

    def resident(self, hashes: Iterable[int]) -> list[int]:
        """The given blocks that are resident in either tier, in the given order (one pass,
        for callers that filter many hashes at a time)."""
        if self._core is not None:
            return self._core.resident(hashes)
        index = self._index
        return [h for h in hashes if h in index]

    def tier_of(self, block_hash: int) -> Tier | None:
        """The block's tier, or None when it is not cached."""
        if self._core is not None:
            return self._core.tier_of(block_hash)
        slot = self._index.get(block_hash)
        return None if slot is None else Tier(int(self.table.tier[slot]))

    def ref_count(self, block_hash: int) -> int:
        """References held on a resident block (raises `CacheError` if it is not cached)."""
        if self._core is not None:
            return int(self.table.ref_count[self._core.slot(block_hash, "ref_count")])
        return int(self.table.ref_count[self._slots([block_hash], "ref_count")[0]])

    def pinned_until(self, block_hash: int) -> float:
        """The block's pin expiry (-inf when unpinned; raises `CacheError` if not cached)."""
        if self._core is not None:
            return float(self.table.pinned_until[self._core.slot(block_hash, "pinned_until")])
        return float(self.table.pinned_until[self._slots([block_hash], "pinned_until")[0]])

    def hashes_in(self, tier: Tier) -> list[int]:
        """Hashes of the blocks resident in ``tier`` (for inspection and tests)."""
        if self._core is not None:
            return self._core.hashes_in(tier)
        return [h for h, s in self._index.items() if self.table.tier[s] == tier]

    def longest_prefix(self, hashes: Iterable[int]) -> PrefixMatch:
        """Leading blocks resident in HBM, and the resident run across both tiers."""
        if self._core is not None:
            return self._core.longest_prefix(hashes)
        hs = hashes if isinstance(hashes, list | tuple) else list(hashes)
        found = np.fromiter(map(self._index.get, hs, itertools.repeat(-1, len(hs))), np.int64,
                            len(hs))
        missing = found < 0
        run = int(np.argmax(missing)) if missing.any() else len(hs)
        if run == 0:
            return PrefixMatch(hbm_blocks=0, dram_blocks=0, cached_blocks=0)
        in_hbm = self.table.tier[found[:run]] == HBM
        dram = run - int(np.count_nonzero(in_hbm))
        hbm = run if dram == 0 else int(np.argmin(in_hbm))
        return PrefixMatch(hbm_blocks=hbm, dram_blocks=dram, cached_blocks=run)

    # ------------------------------------------------------------------ allocate / release

    def allocate(self, hashes: Sequence[int], now: float, *, hints: BlockHints | None = None,
                 partial: bool = False) -> Allocation:
        """Make every block of the chain resident in HBM and referenced (ref +1).

        ``hashes`` is the whole chain from its first block. Leading cached blocks are hits (HBM
        ones touched, DRAM ones loaded back); the rest are created. Room comes from free slots,
        then policy victims, then breaking pins earliest-expiry-first. If even that is too
        little, raise `CacheError` with the cache unchanged, or with ``partial=True`` cache the
        longest leading part that fits and count the rest as ``uncached_blocks``.
        """
        if self._core is not None:
            return self._core.allocate(hashes, now, hints, partial)
        hs = self._unique(hashes, "allocate")
        n = len(hs)
        if n == 0:
            return Allocation()
        hint_cols = hint_arrays(hints, n) if hints is not None else {}
        plan = self._plan(hs, now, partial)
        m = plan.resident
        seq = plan.slots[:m].copy()
        seq_tiers = plan.tiers[:m]
        observes = self.policy.observes
        if observes:  # blocks entering HBM: created or loaded back
            entering = np.flatnonzero(seq_tiers != HBM)
            entering_hs = [hs[i] for i in entering.tolist()]
            self.policy.before_admit(entering_hs)

        victims, broken = self._choose_victims(max(0, plan.needed - self.free), plan.evictable,
                                               plan.breakable, now)
        hit_end = min(plan.run, m)
        hit_hbm = int(np.count_nonzero(seq_tiers[:hit_end] == HBM))
        hit_dram = hit_end - hit_hbm
        self._move(seq[seq_tiers == DRAM], HBM)
        ev = self._evict_hbm(victims, now)
        load_s = self._seconds(hit_dram)
        self._create(hs, seq)
        if m:
            self._link_chain(seq)
        self._reference(seq, hit_end, now, {name: v[:m] for name, v in hint_cols.items()})
        if observes:
            self.policy.on_admit(seq[entering], entering_hs)
            self.policy.on_hit(seq[seq_tiers != 0])  # resident before, hit or not

        out = Allocation(hit_blocks_hbm=hit_hbm, hit_blocks_dram=hit_dram,
                         new_blocks=m - hit_end, uncached_blocks=n - m,
                         evicted=int(victims.size), swapped_out=ev.swapped, dropped=ev.dropped,
                         pin_breaks=broken, swap_seconds=load_s + ev.seconds, resident_blocks=m)
        s = self.stats
        s.hit_blocks_hbm += hit_hbm
        s.hit_blocks_dram += hit_dram
        s.miss_blocks += out.miss_blocks
        s.swapped_in += hit_dram
        s.pin_breaks += broken
        s.swap_seconds += load_s
        return out

    def _plan(self, hs: list[int], now: float, partial: bool) -> _Plan:
        """Where the chain's blocks are and how much of it fits; raises `CacheError` (nothing
        changed) when it does not fit and ``partial`` is False."""
        n = len(hs)
        t = self.table
        slots = np.fromiter(map(self._index.get, hs, itertools.repeat(-1, n)), np.int64, n)
        known = slots >= 0
        tiers = np.zeros(n, np.int8)
        tiers[known] = t.tier[slots[known]]
        run = int(np.argmin(known)) if not known.all() else n
        need = np.cumsum(tiers != HBM)
        if int(need[-1]) <= self.free:  # fits in free slots: no victims, so no candidate scan
            none = np.empty(0, np.int64)
            return _Plan(slots, tiers, run, n, int(need[-1]), none, none)

        evictable, breakable = self._hbm_candidates(now, exclude=slots[known])
        room = self.free + int(evictable.size) + int(breakable.size)
        m = n
        if int(need[-1]) > room:
            if not partial:
                raise CacheError(
                    f"allocate needs {int(need[-1])} HBM blocks for a {n}-block sequence but "
                    f"only {room} can be freed (free {self.free}, evictable {evictable.size}, "
                    f"pinned {breakable.size}); raise hbm_blocks, release blocks in use, or "
                    f"pass partial=True")
            m = int(np.searchsorted(need, room, side="right"))
        return _Plan(slots, tiers, run, m, int(need[m - 1]) if m else 0, evictable, breakable)

    def _create(self, hs: list[int], seq: Slots) -> None:
        """Give each block of ``seq`` without a slot (-1) a free HBM slot, in place, and apply
        hints that were set before it existed."""
        missing = np.flatnonzero(seq < 0)
        if not missing.size:
            return
        new = np.array([self._free.pop() for _ in range(missing.size)], np.int64)
        for i, s in zip(missing.tolist(), new.tolist(), strict=True):
            self._index[hs[i]] = s
            self._hash_of[s] = hs[i]
        self.table.tier[new] = HBM
        self._used[HBM] += int(new.size)
        seq[missing] = new
        for i in missing.tolist():
            self._apply_pending(hs[i], int(seq[i]))

    def _reference(self, seq: Slots, hit_end: int, now: float,
                   hint_cols: dict[str, npt.NDArray[np.float64]]) -> None:
        """Take a reference on each block, mark it used at ``now``, count the hits, set hints."""
        t = self.table
        t.ref_count[seq] += 1
        t.last_access[seq] = now
        t.hits[seq[:hit_end]] += 1
        for name, values in hint_cols.items():
            getattr(t, name)[seq] = values

    def release(self, hashes: Sequence[int], now: float) -> None:
        """Drop one reference on each block (it becomes evictable at 0); ``now`` counts as a use.

        Releasing a block that is not cached or not referenced raises `CacheError` and changes
        nothing (a double free is a caller bug).
        """
        if self._core is not None:
            return self._core.release(hashes, now)
        hs = self._unique(hashes, "release")
        slots = self._slots(hs, "release")
        unref = self.table.ref_count[slots] <= 0
        if unref.any():
            bad = hs[int(np.argmax(unref))]
            raise CacheError(
                f"release of block {bad} which holds no reference (double free?); "
                f"release each allocated block once")
        self.table.ref_count[slots] -= 1
        self.table.last_access[slots] = now
        if self.policy.observes:
            self.policy.on_release(slots)

    def touch(self, hashes: Sequence[int], now: float) -> None:
        """Mark cached blocks as used at ``now`` (no reference taken)."""
        if self._core is not None:
            return self._core.touch(hashes, now)
        slots = self._slots(hashes, "touch")
        self.table.last_access[slots] = now
        if self.policy.observes:
            self.policy.on_hit(slots[self.table.tier[slots] == HBM])

    # ------------------------------------------------------------------ pins

    def pin(self, hashes: Sequence[int], until: float) -> None:
        """Keep the blocks until ``until`` (a pin only extends: the later expiry wins)."""
        if math.isnan(until):
            raise CacheError("pin expiry 'until' is NaN; pass a time in seconds")
        if self._core is not None:
            return self._core.pin(hashes, until)
        slots = self._slots(hashes, "pin")
        np.maximum.at(self.table.pinned_until, slots, until)

    def unpin(self, hashes: Sequence[int]) -> None:
        """Remove the blocks' pins now."""
        if self._core is not None:
            return self._core.unpin(hashes)
        self.table.pinned_until[self._slots(hashes, "unpin")] = -np.inf

    def tick(self, now: float) -> int:
        """Release pins that expired by ``now``; returns how many."""
        if self._core is not None:
            return self._core.tick(now)
        p = self.table.pinned_until
        expired = np.flatnonzero((p <= now) & (p > -np.inf))
        p[expired] = -np.inf
        self.stats.pins_expired += int(expired.size)
        return int(expired.size)

    # ------------------------------------------------------------------ tiers

    def evict(self, n: int, now: float) -> list[int]:
        """Evict up to ``n`` HBM blocks chosen by the policy (no pin breaking); their hashes."""
        if self._core is not None:
            return self._core.evict(n, now)
        cands = self._evictable(HBM, now)
        victims = self._select(self.policy, cands, n, now)
        evicted = [self._hash_of_slot(int(s)) for s in victims]
        self._evict_hbm(victims, now)
        return evicted

    def swap_out(self, hashes: Sequence[int], now: float) -> float:
        """Move HBM blocks to DRAM now (DRAM ones are skipped); returns the transfer seconds.

        The blocks must be unreferenced and unpinned. DRAM victims are dropped to make room;
        if DRAM cannot take them all, `CacheError` and nothing moves.
        """
        if self._core is not None:
            return self._core.swap_out(hashes, now)
        if self.dram_blocks == 0:
            raise CacheError("swap_out needs a DRAM tier; build the CacheManager with dram_blocks")
        hs = self._unique(hashes, "swap_out")
        slots = self._slots(hs, "swap_out")
        t = self.table
        down = slots[t.tier[slots] == HBM]
        busy = (t.ref_count[down] > 0) | (t.pinned_until[down] > now)
        if busy.any():
            bad = self._hash_of_slot(int(down[int(np.argmax(busy))]))
            raise CacheError(f"swap_out of block {bad} which is in use or pinned; release or "
                             f"unpin it first")
        droppable = self._evictable(DRAM, now, exclude=slots)
        if down.size > self.dram_free + droppable.size:
            raise CacheError(
                f"swap_out needs {down.size} DRAM blocks but only "
                f"{self.dram_free + droppable.size} can be freed; raise dram_blocks")
        self._make_dram_room(int(down.size), now, exclude=slots)
        self._tell_evicted(down)
        self._move(down, DRAM)
        seconds = self._seconds(int(down.size))
        self.stats.swapped_out += int(down.size)
        self.stats.swap_seconds += seconds
        return seconds

    def prefetch(self, hashes: Sequence[int], now: float, *, partial: bool = False) -> float:
        """Load DRAM blocks back into HBM ahead of use; returns the PCIe seconds (in + out).

        HBM room comes from policy victims (swapped to DRAM), never from breaking pins. Without
        room: `CacheError` and nothing moves, or with ``partial=True`` the leading blocks that
        fit. Prefetched blocks count as used at ``now``.
        """
        if self._core is not None:
            return self._core.prefetch(hashes, now, partial)
        hs = self._unique(hashes, "prefetch")
        slots = self._slots(hs, "prefetch")
        in_dram = np.flatnonzero(self.table.tier[slots] == DRAM)
        up = slots[in_dram]
        evictable = self._evictable(HBM, now, exclude=slots)
        room = self.free + int(evictable.size)
        if up.size > room:
            if not partial:
                raise CacheError(
                    f"prefetch needs {up.size} HBM blocks but only {room} can be freed "
                    f"(free {self.free}, evictable {evictable.size}); pass partial=True")
            up = up[:room]
        victims = self._select(self.policy, evictable, max(0, int(up.size) - self.free), now)
        self._move(up, HBM)
        ev = self._evict_hbm(victims, now)
        self.table.last_access[up] = now
        if self.policy.observes:
            self.policy.on_admit(up, [hs[i] for i in in_dram[: up.size].tolist()])
        load_s = self._seconds(int(up.size))
        self.stats.swapped_in += int(up.size)
        self.stats.swap_seconds += load_s
        return load_s + ev.seconds

    # ------------------------------------------------------------------ hints

    def set_hints(self, hashes: Sequence[int], *, reuse_prob: HintValue = None,
                  steps_to_exec: HintValue = None, next_use: HintValue = None,
                  size_tokens: HintValue = None) -> None:
        """Set policy hints per block (scalar for all, or one value each; None = leave as is).

        Hints for blocks not cached yet are kept and applied when ``allocate`` creates them, so
        an oracle can set every block's next use before the request that brings it in.
        """
        hs = list(hashes)
        hints = BlockHints(reuse_prob=reuse_prob, steps_to_exec=steps_to_exec,
                           next_use=next_use, size_tokens=size_tokens)
        if self._core is not None:
            return self._core.set_hints(hs, hints)
        cols = hint_arrays(hints, len(hs))
        found = np.fromiter(map(self._index.get, hs, itertools.repeat(-1, len(hs))), np.int64,
                            len(hs))
        present = np.flatnonzero(found >= 0)
        slots = found[present]
        for name, values in cols.items():
            getattr(self.table, name)[slots] = values[present]
        if present.size < len(hs):
            for i, h in enumerate(hs):
                if h not in self._index:
                    self._pending.setdefault(h, {}).update(
                        {name: float(values[i]) for name, values in cols.items()})
