"""`CacheManager` on saga-kernels' native cache core: the same operations, run in C++.

The Python manager (`saga.policy.cache`) is the definition. When saga-kernels' compiled module is
loaded (and ``SAGA_NATIVE`` is not 0) and both policies rank by an order the core knows
(``EvictionPolicy.native_order``) and keep no state of their own, the manager hands its block
index, free list, tier counts and every operation to the core, which works in place on the
manager's `BlockTable` columns. Otherwise (ARC, S3-FIFO, ETA, a build without a compiler) the
whole manager stays in Python. This module turns the core's counts into the same `Allocation`,
`CacheStats` and transfer seconds as the Python path, in the same order of float additions, so
simulated results are identical bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from saga.policy.block_table import BlockTable, Tier
from saga.policy.cache_types import Allocation, BlockHints, PrefixMatch, hint_arrays
from saga.policy.errors import CacheError
from saga.policy.eviction import EvictionPolicy

try:  # optional: the compiled core; without it every manager runs the Python path
    from saga.kernels.cache_core import cache_core as _cache_core
    from saga.kernels.cache_core import have_cache_core as _have_cache_core
except ImportError:  # saga-kernels older than the core, or absent
    _cache_core = None  # type: ignore[assignment]

    def _have_cache_core() -> bool:
        return False

if TYPE_CHECKING:
    from saga.policy.cache import CacheManager

__all__ = ["NativeCore", "native_available", "native_core"]

_HINTS = ("reuse_prob", "steps_to_exec", "next_use", "size_tokens")
_COLUMNS = ("last_access", "ref_count", "pinned_until", "tier", "depth", "parent",
            "children_hbm", "children_dram", "hits", *_HINTS)
T = TypeVar("T")


def native_available() -> bool:
    """Whether the compiled cache core is loaded (and ``SAGA_NATIVE`` is not 0)."""
    return _have_cache_core()


def _spec(policy: EvictionPolicy) -> tuple[str, bool, float, float, float] | None:
    if policy.native_order is None or policy.observes:
        return None
    return (policy.native_order, policy.leaves_only, *policy.native_weights())


def native_core(cache: CacheManager, table: BlockTable) -> NativeCore | None:
    """The native core for ``cache``, or None when its policies or the build need Python."""
    assert cache.dram_policy is not None
    spec, dram_spec = _spec(cache.policy), _spec(cache.dram_policy)
    if spec is None or dram_spec is None or _cache_core is None:
        return None
    columns = {name: getattr(table, name) for name in _COLUMNS}
    core = _cache_core(cache.hbm_blocks, cache.dram_blocks, cache.block_tokens, spec, dram_spec,
                       columns)
    return None if core is None else NativeCore(cache, core)


def _call(fn: Any, *args: Any) -> Any:
    """Run a core method; its ValueError is the Python path's `CacheError`, same text."""
    try:
        return fn(*args)
    except ValueError as e:
        raise CacheError(str(e)) from None
    except TypeError:  # a hash that is not an int64 (or a column of another dtype)
        raise CacheError("block hashes must be integers that fit an int64 (chain_hashes "
                         "gives 63-bit ones); pass CacheManager(..., native=False) for "
                         "others") from None


def _listed(hashes: Iterable[int]) -> list[int] | tuple[int, ...]:
    return hashes if isinstance(hashes, list | tuple) else list(hashes)


class NativeCore:
    """One manager's native core and the Python glue around it (stats, seconds, pending
    hints). Called only by `CacheManager`, which keeps the public interface."""

    def __init__(self, cache: CacheManager, core: Any) -> None:
        self.cache = cache
        self.core = core
        self.index = _IndexView(self)
        self.free_list = _ListView(lambda: core.free_list())
        self.hash_of = _SlotView(core.hash_at, len(cache.table.tier))
        self.used = _SlotView(core.used, 3)

    # ------------------------------------------------------------------ queries

    def slot_of(self, block_hash: object) -> int:
        """The block's slot, -1 when it is not cached (or cannot be: not an int64)."""
        try:
            return int(self.core.slot_of(block_hash))
        except TypeError:
            return -1

    def contains(self, block_hash: int) -> bool:
        return self.slot_of(block_hash) >= 0

    def tier_of(self, block_hash: int) -> Tier | None:
        slot = self.slot_of(block_hash)
        return None if slot < 0 else Tier(int(self.cache.table.tier[slot]))

    def slot(self, block_hash: int, op: str) -> int:
        slot = self.slot_of(block_hash)
        if slot < 0:
            raise CacheError(f"{op}: block {block_hash} is not cached; check contains() first")
        return slot

    def hashes_in(self, tier: Tier) -> list[int]:
        return list(self.core.hashes(int(tier)))

    def resident(self, hashes: Iterable[int]) -> list[int]:
        hs = _listed(hashes)
        try:
            return list(self.core.resident(hs))
        except TypeError:  # a hash outside int64 is never cached
            return [h for h in hs if self.slot_of(h) >= 0]

    def longest_prefix(self, hashes: Iterable[int]) -> PrefixMatch:
        hs = _listed(hashes)
        try:
            hbm, dram, run = self.core.longest_prefix(hs)
        except TypeError:  # a hash outside int64 is never cached: the run ends before it
            run = next((i for i, h in enumerate(hs) if self.slot_of(h) < 0), len(hs))
            hbm, dram, run = self.core.longest_prefix(list(hs[:run]))
        return PrefixMatch(hbm_blocks=hbm, dram_blocks=dram, cached_blocks=run)

    # ------------------------------------------------------------------ operations

    def allocate(self, hashes: Sequence[int], now: float, hints: BlockHints | None,
                 partial: bool) -> Allocation:
        c = self.cache
        hs = _listed(hashes)
        cols: dict[str, Any] = {}
        if hints is not None:  # the Python path's order of checks: duplicates, then hints
            c._unique(hs, "allocate")
            if hs:
                cols = {n: np.ascontiguousarray(v) for n, v in hint_arrays(hints, len(hs)).items()}
        (hit_hbm, hit_dram, new, uncached, evicted, swapped, dropped, broken,
         m) = _call(self.core.allocate, hs, now, partial, *(cols.get(n) for n in _HINTS))
        if not hs:
            return Allocation()
        if c._pending:
            self._apply_pending(hs[:m], {n: v[:m] for n, v in cols.items()})
        s = c.stats
        ev_seconds = 0.0
        if evicted:  # _evict_hbm's additions come first
            ev_seconds = c._seconds(swapped)
            s.evictions += evicted
            s.swapped_out += swapped
            s.swap_seconds += ev_seconds
            s.dropped += dropped
        load_s = c._seconds(hit_dram)
        out = Allocation(hit_blocks_hbm=hit_hbm, hit_blocks_dram=hit_dram, new_blocks=new,
                         uncached_blocks=uncached, evicted=evicted, swapped_out=swapped,
                         dropped=dropped, pin_breaks=broken, swap_seconds=load_s + ev_seconds,
                         resident_blocks=m)
        s.hit_blocks_hbm += hit_hbm
        s.hit_blocks_dram += hit_dram
        s.miss_blocks += out.miss_blocks
        s.swapped_in += hit_dram
        s.pin_breaks += broken
        s.swap_seconds += load_s
        return out

    def _apply_pending(self, hs: Sequence[int], cols: dict[str, Any]) -> None:
        """Hints set before a block existed, then this allocation's own (they win)."""
        pending = self.cache._pending
        for i, h in enumerate(hs):
            got = pending.pop(h, None)
            if not got:
                continue
            slot = int(self.core.slot_of(h))
            for name, value in got.items():
                self.core.set_hint(slot, _HINTS.index(name), value)
            for name, values in cols.items():
                self.core.set_hint(slot, _HINTS.index(name), float(values[i]))

    def release(self, hashes: Sequence[int], now: float) -> None:
        _call(self.core.release, _listed(hashes), now)

    def touch(self, hashes: Sequence[int], now: float) -> None:
        _call(self.core.touch, _listed(hashes), now)

    def pin(self, hashes: Sequence[int], until: float) -> None:
        _call(self.core.pin, _listed(hashes), until)

    def unpin(self, hashes: Sequence[int]) -> None:
        _call(self.core.unpin, _listed(hashes))

    def tick(self, now: float) -> int:
        expired = int(self.core.tick(now))
        self.cache.stats.pins_expired += expired
        return expired

    def evict(self, n: int, now: float) -> list[int]:
        hashes, swapped, dropped = _call(self.core.evict, n, now)
        if hashes:
            self._evicted(len(hashes), swapped, dropped)
        return list(hashes)

    def _evicted(self, victims: int, swapped: int, dropped: int) -> float:
        """`SlotBook._evict_hbm`'s totals; its transfer seconds."""
        c = self.cache
        seconds = c._seconds(swapped)
        s = c.stats
        s.evictions += victims
        s.swapped_out += swapped
        s.swap_seconds += seconds
        s.dropped += dropped
        return seconds

    def swap_out(self, hashes: Sequence[int], now: float) -> float:
        c = self.cache
        down, dropped = _call(self.core.swap_out, _listed(hashes), now)
        c.stats.dropped += dropped
        seconds = c._seconds(down)
        c.stats.swapped_out += down
        c.stats.swap_seconds += seconds
        return seconds

    def prefetch(self, hashes: Sequence[int], now: float, partial: bool) -> float:
        c = self.cache
        up, victims, swapped, dropped = _call(self.core.prefetch, _listed(hashes), now, partial)
        ev_seconds = self._evicted(victims, swapped, dropped) if victims else 0.0
        load_s = c._seconds(up)
        c.stats.swapped_in += up
        c.stats.swap_seconds += load_s
        return load_s + ev_seconds

    def set_hints(self, hashes: Sequence[int], hints: BlockHints) -> None:
        hs = _listed(hashes)
        cols = {n: np.ascontiguousarray(v) for n, v in hint_arrays(hints, len(hs)).items()}
        missing = _call(self.core.set_hints, hs, *(cols.get(n) for n in _HINTS))
        for i in missing:
            self.cache._pending.setdefault(hs[i], {}).update(
                {name: float(values[i]) for name, values in cols.items()})


class _IndexView:
    """The core's hash → slot index, read-only, in the order blocks were cached (what
    ``CacheManager._index`` is on the Python path; for inspection and tests)."""

    def __init__(self, native: NativeCore) -> None:
        self._native = native
        self._core = native.core

    def __getitem__(self, block_hash: int) -> int:
        slot = self._native.slot_of(block_hash)
        if slot < 0:
            raise KeyError(block_hash)
        return slot

    def get(self, block_hash: int, default: T | None = None) -> int | T | None:
        slot = self._native.slot_of(block_hash)
        return default if slot < 0 else slot

    def __contains__(self, block_hash: object) -> bool:
        return self._native.slot_of(block_hash) >= 0

    def __iter__(self) -> Iterator[int]:
        return iter(self._core.hashes(0))

    def __len__(self) -> int:
        return len(self._core)

    def keys(self) -> list[int]:
        return list(self._core.hashes(0))

    def values(self) -> list[int]:
        return [self[h] for h in self.keys()]

    def items(self) -> list[tuple[int, int]]:
        return [(h, self[h]) for h in self.keys()]


class _ListView:
    """A read-only list computed by the core on each access."""

    def __init__(self, read: Any) -> None:
        self._read = read

    def __iter__(self) -> Iterator[int]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())

    def __getitem__(self, i: int) -> int:
        return int(self._read()[i])


class _SlotView:
    """Read-only ``view[i]`` for ``0 <= i < n`` through a core accessor."""

    def __init__(self, read: Any, n: int) -> None:
        self._read, self._n = read, n

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._read(int(i))

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Any]:
        return (self._read(i) for i in range(self._n))
