"""Paged KV cache with an HBM tier and an optional DRAM tier, keyed by chained block hashes.

A sequence is a chain of full KV blocks; block ``i``'s hash covers block ``i - 1``'s hash and its
own tokens (`chain_hashes`), so equal hashes mean equal prefixes, as in vLLM's prefix caching.
`CacheManager` owns a slot-indexed `BlockTable` and delegates victim choice to an
`EvictionPolicy`. The life of a block: ``allocate`` (hit, load back from DRAM, or create; ref +1),
``release`` (ref −1; evictable again), eviction (HBM → DRAM, or dropped), ``pin`` / ``tick``
(kept through a tool call until the pin expires). Every method that can fail checks first and
mutates after, so a `CacheError` leaves the cache as it was.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import KW_ONLY, dataclass, field

import numpy as np
import numpy.typing as npt

from saga.policy.block_table import NO_PARENT, BlockTable, Tier
from saga.policy.errors import CacheError, SagaConfigError
from saga.policy.eviction import EvictionPolicy, LRUPolicy
from saga.policy.swap import SwapTimeModel

__all__ = ["Allocation", "BlockHints", "CacheManager", "CacheStats", "PrefixMatch", "Tier",
           "chain_hashes"]

Slots = npt.NDArray[np.int64]
HintValue = float | Sequence[float] | None

_HASH_MASK = (1 << 63) - 1
# Plain ints, bound once: Enum members are slow in hot loops and in numpy comparisons.
_FREE, _HBM, _DRAM = int(Tier.FREE), int(Tier.HBM), int(Tier.DRAM)
_ROOT = b"saga-kv-root"


def chain_hashes(token_ids: Sequence[int], block_tokens: int,
                 parent: int | None = None) -> list[int]:
    """Prefix-hash chain over the full blocks of ``token_ids`` (a partial last block is skipped).

    ``hash_i = blake2b(hash_{i-1} ‖ tokens of block i)``, truncated to 63 bits so it fits an int64;
    ``parent`` continues a chain whose earlier blocks were hashed before. Deterministic across
    processes (no salted ``hash()``).
    """
    if block_tokens < 1:
        raise SagaConfigError(f"block_tokens must be >= 1, got {block_tokens}")
    tokens = np.asarray(token_ids, dtype=np.int64)
    prev = _ROOT if parent is None else str(int(parent)).encode()
    out: list[int] = []
    for start in range(0, tokens.size - block_tokens + 1, block_tokens):
        h = hashlib.blake2b(prev, digest_size=8)
        h.update(tokens[start:start + block_tokens].tobytes())
        value = int.from_bytes(h.digest(), "little") & _HASH_MASK
        out.append(value)
        prev = str(value).encode()
    return out


@dataclass(frozen=True)
class PrefixMatch:
    """How much of a chain is cached: leading HBM run, and the resident run across both tiers.

    ``hbm_blocks`` leading blocks are in HBM; ``cached_blocks`` leading blocks are resident in
    either tier (the chain stops at the first missing block); ``dram_blocks`` of those are in
    DRAM and would be loaded back.
    """

    hbm_blocks: int
    dram_blocks: int
    cached_blocks: int


@dataclass(frozen=True)
class BlockHints:
    """Caller hints for `CacheManager.allocate`: a scalar for every block or one value each.

    ``None`` leaves a field as it is (new blocks start unknown: NaN, next_use +inf).
    """

    reuse_prob: HintValue = None
    steps_to_exec: HintValue = None
    next_use: HintValue = None
    size_tokens: HintValue = None


@dataclass(frozen=True)
class Allocation:
    """What `CacheManager.allocate` did for one sequence (counts in blocks).

    ``resident_blocks`` leading blocks are now in HBM and referenced: release exactly
    ``hashes[:resident_blocks]``. Blocks past a gap in the cached prefix are recomputed and so
    count in ``new_blocks`` even when a stale copy was resident. ``uncached_blocks`` (only with
    ``partial=True``) did not fit and are misses that stay uncached. ``swap_seconds`` adds the
    load-back and swap-out transfers (a conservative serial sum; PCIe is full duplex).
    """

    hit_blocks_hbm: int = 0
    hit_blocks_dram: int = 0
    new_blocks: int = 0
    uncached_blocks: int = 0
    evicted: int = 0
    swapped_out: int = 0
    dropped: int = 0
    pin_breaks: int = 0
    swap_seconds: float = 0.0
    resident_blocks: int = 0

    @property
    def miss_blocks(self) -> int:
        """Blocks that must be prefilled: recomputed plus uncached."""
        return self.new_blocks + self.uncached_blocks


@dataclass
class CacheStats:
    """Running totals since the manager was built (blocks, except ``swap_seconds``)."""

    hit_blocks_hbm: int = 0
    hit_blocks_dram: int = 0
    miss_blocks: int = 0
    evictions: int = 0
    swapped_out: int = 0
    swapped_in: int = 0
    dropped: int = 0
    pin_breaks: int = 0
    pins_expired: int = 0
    swap_seconds: float = 0.0

    @property
    def hit_rate(self) -> float:
        """Share of looked-up blocks served from cache (either tier); 0 before any lookup."""
        total = self.hit_blocks_hbm + self.hit_blocks_dram + self.miss_blocks
        return (self.hit_blocks_hbm + self.hit_blocks_dram) / total if total else 0.0


@dataclass
class _EvictResult:
    swapped: int = 0
    dropped: int = 0
    seconds: float = 0.0


@dataclass(eq=False)
class CacheManager:
    """Paged KV blocks in HBM (and DRAM when ``dram_blocks > 0``), evicted through ``policy``.

    Evicting from HBM swaps the victim to DRAM; when DRAM is full a DRAM victim chosen by
    ``dram_policy`` (default LRU) is dropped first; without a DRAM tier victims are dropped. A
    block in use (ref > 0) or pinned (``pinned_until > now``) is never evicted, except that
    ``allocate`` breaks pins, earliest expiry first, when nothing else makes room.
    """

    hbm_blocks: int
    policy: EvictionPolicy
    _: KW_ONLY
    dram_blocks: int = 0
    block_tokens: int = 16
    block_bytes: int = 16 * 327_680
    swap: SwapTimeModel | None = None
    dram_policy: EvictionPolicy | None = None
    stats: CacheStats = field(default_factory=CacheStats, init=False)
    table: BlockTable = field(init=False, repr=False)
    _index: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _hash_of: list[int | None] = field(default_factory=list, init=False, repr=False)
    _free: list[int] = field(default_factory=list, init=False, repr=False)
    _used: list[int] = field(default_factory=lambda: [0, 0, 0], init=False, repr=False)
    _pending: dict[int, dict[str, float]] = field(default_factory=dict, init=False, repr=False)

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

    # ------------------------------------------------------------------ queries

    @property
    def hbm_used(self) -> int:
        """Blocks resident in HBM."""
        return self._used[_HBM]

    @property
    def dram_used(self) -> int:
        """Blocks resident in DRAM."""
        return self._used[_DRAM]

    @property
    def free(self) -> int:
        """Free HBM blocks."""
        return self.hbm_blocks - self._used[_HBM]

    @property
    def dram_free(self) -> int:
        """Free DRAM blocks (0 without a DRAM tier)."""
        return self.dram_blocks - self._used[_DRAM]

    def __len__(self) -> int:
        return len(self._index)

    def contains(self, block_hash: int) -> bool:
        """Whether the block is resident in either tier."""
        return block_hash in self._index

    def tier_of(self, block_hash: int) -> Tier | None:
        """The block's tier, or None when it is not cached."""
        slot = self._index.get(block_hash)
        return None if slot is None else Tier(int(self.table.tier[slot]))

    def ref_count(self, block_hash: int) -> int:
        """References held on a resident block (raises `CacheError` if it is not cached)."""
        return int(self.table.ref_count[self._slots([block_hash], "ref_count")[0]])

    def pinned_until(self, block_hash: int) -> float:
        """The block's pin expiry (-inf when unpinned; raises `CacheError` if not cached)."""
        return float(self.table.pinned_until[self._slots([block_hash], "pinned_until")[0]])

    def hashes_in(self, tier: Tier) -> list[int]:
        """Hashes of the blocks resident in ``tier`` (for inspection and tests)."""
        return [h for h, s in self._index.items() if self.table.tier[s] == tier]

    def longest_prefix(self, hashes: Iterable[int]) -> PrefixMatch:
        """Leading blocks resident in HBM, and the resident run across both tiers."""
        slots: list[int] = []
        index = self._index
        for h in hashes:
            slot = index.get(h)
            if slot is None:
                break
            slots.append(slot)
        run = len(slots)
        if run == 0:
            return PrefixMatch(hbm_blocks=0, dram_blocks=0, cached_blocks=0)
        in_hbm = self.table.tier[np.asarray(slots, np.int64)] == _HBM
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
        hs = self._unique(hashes, "allocate")
        n = len(hs)
        if n == 0:
            return Allocation()
        hint_cols = self._hint_arrays(hints, n) if hints is not None else {}
        t = self.table
        slots = np.fromiter(map(self._index.get, hs, itertools.repeat(-1, n)), np.int64, n)
        known = slots >= 0
        tiers = np.zeros(n, np.int8)
        tiers[known] = t.tier[slots[known]]
        run = int(np.argmin(known)) if not known.all() else n
        need = np.cumsum(tiers != _HBM)

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
        seq = slots[:m].copy()
        seq_tiers = tiers[:m]
        needed = int(need[m - 1]) if m else 0

        victims, broken = self._choose_victims(max(0, needed - self.free), evictable, breakable,
                                               now)
        hit_end = min(run, m)
        hit_hbm = int(np.count_nonzero(seq_tiers[:hit_end] == _HBM))
        hit_dram = hit_end - hit_hbm
        up = seq[seq_tiers == _DRAM]
        self._move(up, _HBM)
        ev = self._evict_hbm(victims, now)
        load_s = self._seconds(hit_dram)

        missing = np.flatnonzero(seq < 0)
        if missing.size:
            new = np.array([self._free.pop() for _ in range(missing.size)], np.int64)
            for i, s in zip(missing.tolist(), new.tolist(), strict=True):
                self._index[hs[i]] = s
                self._hash_of[s] = hs[i]
            t.tier[new] = _HBM
            self._used[_HBM] += int(new.size)
            seq[missing] = new
            for i in missing.tolist():
                self._apply_pending(hs[i], int(seq[i]))
        if m:
            self._link_chain(seq)

        t.ref_count[seq] += 1
        t.last_access[seq] = now
        t.hits[seq[:hit_end]] += 1
        for name, values in hint_cols.items():
            getattr(t, name)[seq] = values[:m]

        new_blocks = m - hit_end
        uncached = n - m
        out = Allocation(hit_blocks_hbm=hit_hbm, hit_blocks_dram=hit_dram,
                         new_blocks=new_blocks, uncached_blocks=uncached,
                         evicted=int(victims.size), swapped_out=ev.swapped, dropped=ev.dropped,
                         pin_breaks=broken, swap_seconds=load_s + ev.seconds, resident_blocks=m)
        s = self.stats
        s.hit_blocks_hbm += hit_hbm
        s.hit_blocks_dram += hit_dram
        s.miss_blocks += new_blocks + uncached
        s.swapped_in += hit_dram
        s.pin_breaks += broken
        s.swap_seconds += load_s
        return out

    def release(self, hashes: Sequence[int], now: float) -> None:
        """Drop one reference on each block (it becomes evictable at 0); ``now`` counts as a use.

        Releasing a block that is not cached or not referenced raises `CacheError` and changes
        nothing (a double free is a caller bug).
        """
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

    def touch(self, hashes: Sequence[int], now: float) -> None:
        """Mark cached blocks as used at ``now`` (no reference taken)."""
        self.table.last_access[self._slots(hashes, "touch")] = now

    # ------------------------------------------------------------------ pins

    def pin(self, hashes: Sequence[int], until: float) -> None:
        """Keep the blocks until ``until`` (a pin only extends: the later expiry wins)."""
        if math.isnan(until):
            raise CacheError("pin expiry 'until' is NaN; pass a time in seconds")
        slots = self._slots(hashes, "pin")
        np.maximum.at(self.table.pinned_until, slots, until)

    def unpin(self, hashes: Sequence[int]) -> None:
        """Remove the blocks' pins now."""
        self.table.pinned_until[self._slots(hashes, "unpin")] = -np.inf

    def tick(self, now: float) -> int:
        """Release pins that expired by ``now``; returns how many."""
        p = self.table.pinned_until
        expired = np.flatnonzero((p <= now) & (p > -np.inf))
        p[expired] = -np.inf
        self.stats.pins_expired += int(expired.size)
        return int(expired.size)

    # ------------------------------------------------------------------ tiers

    def evict(self, n: int, now: float) -> list[int]:
        """Evict up to ``n`` HBM blocks chosen by the policy (no pin breaking); their hashes."""
        cands = self._evictable(_HBM, now)
        victims = self._select(self.policy, cands, n, now)
        evicted = [self._hash_of_slot(int(s)) for s in victims]
        self._evict_hbm(victims, now)
        return evicted

    def swap_out(self, hashes: Sequence[int], now: float) -> float:
        """Move HBM blocks to DRAM now (DRAM ones are skipped); returns the transfer seconds.

        The blocks must be unreferenced and unpinned. DRAM victims are dropped to make room;
        if DRAM cannot take them all, `CacheError` and nothing moves.
        """
        if self.dram_blocks == 0:
            raise CacheError("swap_out needs a DRAM tier; build the CacheManager with dram_blocks")
        hs = self._unique(hashes, "swap_out")
        slots = self._slots(hs, "swap_out")
        t = self.table
        down = slots[t.tier[slots] == _HBM]
        busy = (t.ref_count[down] > 0) | (t.pinned_until[down] > now)
        if busy.any():
            bad = self._hash_of_slot(int(down[int(np.argmax(busy))]))
            raise CacheError(f"swap_out of block {bad} which is in use or pinned; release or "
                             f"unpin it first")
        droppable = self._evictable(_DRAM, now, exclude=slots)
        if down.size > self.dram_free + droppable.size:
            raise CacheError(
                f"swap_out needs {down.size} DRAM blocks but only "
                f"{self.dram_free + droppable.size} can be freed; raise dram_blocks")
        self._make_dram_room(int(down.size), now, exclude=slots)
        self._move(down, _DRAM)
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
        hs = self._unique(hashes, "prefetch")
        slots = self._slots(hs, "prefetch")
        up = slots[self.table.tier[slots] == _DRAM]
        evictable = self._evictable(_HBM, now, exclude=slots)
        room = self.free + int(evictable.size)
        if up.size > room:
            if not partial:
                raise CacheError(
                    f"prefetch needs {up.size} HBM blocks but only {room} can be freed "
                    f"(free {self.free}, evictable {evictable.size}); pass partial=True")
            up = up[:room]
        victims = self._select(self.policy, evictable, max(0, int(up.size) - self.free), now)
        self._move(up, _HBM)
        ev = self._evict_hbm(victims, now)
        self.table.last_access[up] = now
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
        cols = self._hint_arrays(hints, len(hs))
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

    # ------------------------------------------------------------------ invariants

    def check_invariants(self) -> None:
        """Raise `CacheError` naming the first broken invariant (for tests and debugging)."""
        t = self.table
        n_slots = t.slots
        counts = np.bincount(t.tier.astype(np.int64), minlength=3)
        if int(counts[_HBM]) != self._used[_HBM] or int(
                counts[_DRAM]) != self._used[_DRAM]:
            raise CacheError(f"tier counts {counts.tolist()} disagree with {self._used}")
        if self._used[_HBM] > self.hbm_blocks:
            raise CacheError(f"HBM holds {self._used[_HBM]} > capacity {self.hbm_blocks}")
        if self._used[_DRAM] > self.dram_blocks:
            raise CacheError(f"DRAM holds {self._used[_DRAM]} > capacity {self.dram_blocks}")
        if (t.ref_count < 0).any():
            raise CacheError(f"negative ref count at slots {np.flatnonzero(t.ref_count < 0)}")
        if ((t.ref_count > 0) & (t.tier != _HBM)).any():
            raise CacheError("a referenced block is not in HBM")
        free = set(self._free)
        if len(free) != len(self._free):
            raise CacheError("a slot is on the free list twice")
        free_tier = set(np.flatnonzero(t.tier == _FREE).tolist())
        if free != free_tier:
            raise CacheError(f"free list {sorted(free)[:8]} != FREE slots {sorted(free_tier)[:8]}")
        if len(self._index) + len(self._free) != n_slots:
            raise CacheError("index and free list do not cover the slots exactly once")
        for h, s in self._index.items():
            if self._hash_of[s] != h or t.tier[s] == _FREE:
                raise CacheError(f"block {h} maps to slot {s} which does not hold it")
        par = t.parent
        linked = np.flatnonzero(par != NO_PARENT)
        if (t.tier[linked] == _FREE).any() or (t.tier[par[linked]] == _FREE).any():
            raise CacheError("a parent link touches a free slot")
        for tier, col in ((_HBM, t.children_hbm), (_DRAM, t.children_dram)):
            kids = linked[t.tier[linked] == tier]
            expect = np.bincount(par[kids], minlength=n_slots)
            if not np.array_equal(expect, col):
                bad = int(np.argmax(expect != col))
                raise CacheError(f"slot {bad} counts {col[bad]} {Tier(tier).name} children, "
                                 f"has {expect[bad]}")

    # ------------------------------------------------------------------ internals

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
        return np.flatnonzero(mask).astype(np.int64)

    def _hbm_candidates(self, now: float, exclude: Slots) -> tuple[Slots, Slots]:
        """Unreferenced HBM blocks outside ``exclude``: (unpinned, pinned) — one pass."""
        t = self.table
        free = (t.tier == _HBM) & (t.ref_count == 0)
        if exclude.size:
            free[exclude] = False
        pinned = t.pinned_until > now
        return (np.flatnonzero(free & ~pinned).astype(np.int64),
                np.flatnonzero(free & pinned).astype(np.int64))

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

    def _evict_hbm(self, victims: Slots, now: float) -> _EvictResult:
        """Swap victims to DRAM (dropping DRAM victims for room) or drop them."""
        if victims.size == 0:
            return _EvictResult()
        dropped_before = self.stats.dropped
        self._make_dram_room(int(victims.size), now)
        n_swap = min(int(victims.size), self.dram_free)
        n_drop = int(victims.size) - n_swap
        # Victims come best first (leaves before parents): drop the least valuable, keep the rest.
        self._drop(victims[:n_drop])
        self._move(victims[n_drop:], _DRAM)
        seconds = self._seconds(n_swap)
        s = self.stats
        s.evictions += int(victims.size)
        s.swapped_out += n_swap
        s.swap_seconds += seconds
        return _EvictResult(swapped=n_swap, dropped=self.stats.dropped - dropped_before,
                            seconds=seconds)

    def _make_dram_room(self, blocks: int, now: float, exclude: Slots | None = None) -> None:
        if self.dram_blocks == 0:
            return
        short = blocks - self.dram_free
        if short <= 0:
            return
        assert self.dram_policy is not None
        cands = self._evictable(_DRAM, now, exclude=exclude)
        self._drop(self._select(self.dram_policy, cands, short, now))

    def _move(self, slots: Slots, tier: int) -> None:
        """Change the slots' tier, keeping occupancy and parents' child counts in step."""
        if slots.size == 0:
            return
        t = self.table
        old = t.tier[slots]
        for o in (_HBM, _DRAM):
            self._used[o] -= int(np.count_nonzero(old == o))
        self._used[tier] += int(slots.size)
        t.tier[slots] = tier
        par = t.parent[slots]
        linked = par != NO_PARENT
        if not linked.any():
            return
        par, old = par[linked], old[linked]
        n = t.slots
        # The parents lose these children in their old tier and gain them in the new one.
        for o, col in ((_HBM, t.children_hbm), (_DRAM, t.children_dram)):
            sel = par[old == o]
            if sel.size:
                col -= np.bincount(sel, minlength=n)
        (t.children_hbm if tier == _HBM else t.children_dram)[:] += np.bincount(par, minlength=n)

    def _recount_parents(self, slots: Slots, sign: int) -> None:
        t = self.table
        par = t.parent[slots]
        linked = par != NO_PARENT
        tiers = t.tier[slots]
        n = t.slots
        # bincount, not np.add.at: the same sums, an order of magnitude faster on small batches.
        for col, tier in ((t.children_hbm, _HBM), (t.children_dram, _DRAM)):
            sel = par[linked & (tiers == tier)]
            if sel.size:
                col += (sign * np.bincount(sel, minlength=n)).astype(col.dtype)

    def _drop(self, slots: Slots) -> None:
        """Remove blocks from the cache; their children lose their parent link."""
        if slots.size == 0:
            return
        t = self.table
        self._recount_parents(slots, -1)
        for o in (_HBM, _DRAM):
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

    def _hint_arrays(self, hints: BlockHints, n: int) -> dict[str, npt.NDArray[np.float64]]:
        cols: dict[str, npt.NDArray[np.float64]] = {}
        for name in ("reuse_prob", "steps_to_exec", "next_use", "size_tokens"):
            value = getattr(hints, name)
            if value is None:
                continue
            arr = np.asarray(value, np.float64)
            if arr.ndim == 0:
                arr = np.full(n, float(arr))
            if arr.shape != (n,):
                raise CacheError(f"hint {name} has {arr.size} values for {n} blocks; pass one "
                                 f"per block or a single number")
            if name == "reuse_prob" and ((arr < 0) | (arr > 1)).any():
                raise CacheError(f"hint reuse_prob must lie in [0, 1] (NaN = unknown), got "
                                 f"{arr[(arr < 0) | (arr > 1)][:3].tolist()}")
            cols[name] = arr
        return cols

    def _apply_pending(self, block_hash: int, slot: int) -> None:
        pending = self._pending.pop(block_hash, None)
        if pending:
            for name, value in pending.items():
                getattr(self.table, name)[slot] = value
