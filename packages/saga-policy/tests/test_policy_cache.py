"""Unit tests of `saga.policy.cache`: hashing, allocate/release, pins, tiers, hints, invariants."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from saga.policy.block_table import Tier
from saga.policy.cache import BlockHints, CacheManager, chain_hashes
from saga.policy.errors import CacheError, SagaConfigError
from saga.policy.eviction import LRUPolicy, RadixLRUPolicy
from saga.policy.swap import SwapTimeModel

# 1 MB blocks over 1 GB/s at full efficiency with 1 ms latency: n blocks take 0.001 + n * 0.001 s.
SWAP = SwapTimeModel(bandwidth_bytes_per_s=1e9, efficiency=1.0, latency_s=1e-3)
BLOCK_BYTES = 1_000_000


def lru_cache(hbm: int, dram: int = 0) -> CacheManager:
    return CacheManager(hbm, LRUPolicy(), dram_blocks=dram, block_bytes=BLOCK_BYTES, swap=SWAP)


def put(cache: CacheManager, hashes: list[int], now: float) -> None:
    """Allocate and release at once: the blocks stay cached and evictable."""
    cache.allocate(hashes, now)
    cache.release(hashes, now)
    cache.check_invariants()


def snapshot(cache: CacheManager) -> tuple[object, ...]:
    t = cache.table
    cols = tuple(getattr(t, f).tobytes() for f in ("last_access", "ref_count", "pinned_until",
                                                   "tier", "parent", "children_hbm",
                                                   "children_dram", "hits"))
    return (dict(cache._index), list(cache._free), repr(cache.stats), *cols)


def same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    return a == b


# --------------------------------------------------------------------------- chain_hashes

def test_chain_hashes_covers_full_blocks_only() -> None:
    tokens = list(range(40))
    hs = chain_hashes(tokens, 16)
    assert len(hs) == 2  # 40 tokens = 2 full blocks + 8 left over
    assert chain_hashes(tokens[:32], 16) == hs
    assert chain_hashes(tokens[:15], 16) == []
    assert all(0 <= h < 2**63 for h in hs)


def test_chain_hashes_chain_on_the_parent() -> None:
    a = chain_hashes(list(range(48)), 16)
    assert chain_hashes(list(range(16, 48)), 16, parent=a[0]) == a[1:]
    # Same second block under a different first block: a different hash.
    b = chain_hashes([999, *range(1, 48)], 16)
    assert b[0] != a[0] and b[1] != a[1] and b[2] != a[2]
    # Same tokens at block 0 but a changed block 1: block 0 equal, the rest differ.
    c = chain_hashes([*range(16), 7, *range(17, 48)], 16)
    assert c[0] == a[0] and c[1] != a[1] and c[2] != a[2]


def test_chain_hashes_deterministic_across_processes() -> None:
    code = ("from saga.policy.cache import chain_hashes;"
            "print(chain_hashes(list(range(64)), 16))")
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                text=True, check=True).stdout)
    assert outs == {f"{chain_hashes(list(range(64)), 16)}\n"}


def test_chain_hashes_rejects_bad_block_size() -> None:
    with pytest.raises(SagaConfigError, match="block_tokens"):
        chain_hashes([1, 2, 3], 0)


# --------------------------------------------------------------------------- construction

@pytest.mark.parametrize(("field", "build"), [
    ("hbm_blocks", lambda: CacheManager(0, LRUPolicy())),
    ("dram_blocks", lambda: CacheManager(4, LRUPolicy(), dram_blocks=-1)),
    ("block_tokens", lambda: CacheManager(4, LRUPolicy(), block_tokens=0)),
    ("block_bytes", lambda: CacheManager(4, LRUPolicy(), block_bytes=0)),
])
def test_config_errors_name_the_field(field: str, build: Callable[[], CacheManager]) -> None:
    with pytest.raises(SagaConfigError, match=field):
        build()


def test_policy_must_be_an_eviction_policy() -> None:
    with pytest.raises(SagaConfigError, match="policy"):
        CacheManager(4, "lru")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- allocate / release

def test_miss_then_hit_and_longest_prefix() -> None:
    c = lru_cache(8)
    a = c.allocate([1, 2, 3], 0.0)
    assert (a.hit_blocks_hbm, a.new_blocks, a.resident_blocks) == (0, 3, 3)
    assert [c.ref_count(h) for h in (1, 2, 3)] == [1, 1, 1]
    c.release([1, 2, 3], 1.0)
    b = c.allocate([1, 2, 3, 4], 2.0)
    assert (b.hit_blocks_hbm, b.new_blocks, b.miss_blocks) == (3, 1, 1)
    assert c.longest_prefix([1, 2, 3, 4, 5]).hbm_blocks == 4
    assert c.longest_prefix([9, 1]).cached_blocks == 0
    assert c.stats.hit_blocks_hbm == 3 and c.stats.miss_blocks == 4
    assert c.stats.hit_rate == pytest.approx(3 / 7)
    c.check_invariants()
    # Chain links: 1 <- 2 <- 3 <- 4, each parent counts one HBM child.
    t = c.table
    assert t.children_hbm[c._index[1]] == 1 and t.children_hbm[c._index[4]] == 0
    assert t.depth[c._index[4]] == 3


def test_gap_stops_the_prefix_and_recomputes_what_follows() -> None:
    c = lru_cache(4)
    put(c, [1, 2, 3], 0.0)
    c.touch([1, 3], 5.0)  # 2 becomes the LRU block
    assert c.evict(1, 6.0) == [2]
    assert c.longest_prefix([1, 2, 3]) .cached_blocks == 1
    a = c.allocate([1, 2, 3], 7.0)
    # 3 is still resident but follows the gap: recomputed, counted as new, no extra slot.
    assert (a.hit_blocks_hbm, a.new_blocks, a.evicted) == (1, 2, 0)
    assert c.hbm_used == 3
    c.check_invariants()


def test_release_of_unreferenced_block_raises_and_changes_nothing() -> None:
    c = lru_cache(4)
    c.allocate([1, 2], 0.0)
    c.release([2], 1.0)
    before = snapshot(c)
    with pytest.raises(CacheError, match="block 2"):
        c.release([1, 2], 2.0)
    assert same(before, snapshot(c))
    with pytest.raises(CacheError, match="not cached"):
        c.release([77], 2.0)
    with pytest.raises(CacheError, match="twice"):
        c.allocate([5, 5], 2.0)
    c.release([1], 3.0)
    c.check_invariants()


def test_no_room_raises_with_counts_and_leaves_cache_unchanged() -> None:
    c = lru_cache(4)
    c.allocate([1, 2, 3], 0.0)  # held: not evictable
    before = snapshot(c)
    with pytest.raises(CacheError, match=r"needs 2 HBM blocks .* only 1 can be freed"):
        c.allocate([10, 11], 1.0)
    assert same(before, snapshot(c))


def test_partial_caches_the_leading_blocks_that_fit() -> None:
    c = lru_cache(4)
    c.allocate([1, 2, 3], 0.0)
    a = c.allocate([10, 11, 12], 1.0, partial=True)
    assert (a.resident_blocks, a.new_blocks, a.uncached_blocks, a.miss_blocks) == (1, 1, 2, 3)
    assert c.contains(10) and not c.contains(11)
    c.release([10], 2.0)
    # A request larger than the whole pool: the first `capacity` blocks are cached.
    big = lru_cache(3).allocate(list(range(100, 110)), 0.0, partial=True)
    assert (big.resident_blocks, big.uncached_blocks) == (3, 7)


def test_allocate_evicts_lru_victims_in_one_batch() -> None:
    c = lru_cache(4)
    for i, h in enumerate((1, 2, 3, 4)):
        put(c, [h], float(i))
    a = c.allocate([10, 11, 12], 10.0)
    assert a.evicted == 3 and a.dropped == 3
    assert sorted(c.hashes_in(Tier.HBM)) == [4, 10, 11, 12]


# --------------------------------------------------------------------------- pins

def test_pins_block_eviction_until_tick_and_extend_only() -> None:
    c = lru_cache(3)
    put(c, [1], 0.0)
    put(c, [2], 1.0)
    put(c, [3], 2.0)
    c.pin([1], 50.0)
    c.pin([1], 20.0)  # a shorter pin does not cut the longer one
    assert c.pinned_until(1) == 50.0
    assert c.evict(3, 10.0) == [2, 3]  # 1 is pinned
    assert c.tick(49.0) == 0
    assert c.tick(50.0) == 1 and c.pinned_until(1) == -math.inf
    assert c.stats.pins_expired == 1
    assert c.evict(1, 51.0) == [1]


def test_allocate_breaks_pins_earliest_expiry_first() -> None:
    c = lru_cache(2)
    put(c, [1], 0.0)
    put(c, [2], 1.0)
    c.pin([1], 100.0)
    c.pin([2], 50.0)
    a = c.allocate([3], 10.0)
    assert a.pin_breaks == 1 and c.stats.pin_breaks == 1
    assert c.contains(1) and not c.contains(2)
    c.unpin([1])
    assert c.pinned_until(1) == -math.inf


def test_pin_rejects_unknown_and_nan() -> None:
    c = lru_cache(2)
    put(c, [1], 0.0)
    with pytest.raises(CacheError, match="not cached"):
        c.pin([1, 9], 5.0)
    with pytest.raises(CacheError, match="NaN"):
        c.pin([1], math.nan)
    assert c.pinned_until(1) == -math.inf


# --------------------------------------------------------------------------- DRAM tier

def test_eviction_swaps_to_dram_and_allocate_loads_back() -> None:
    c = lru_cache(2, dram=2)
    put(c, [1], 0.0)
    put(c, [2], 1.0)
    a = c.allocate([3], 2.0)
    assert (a.evicted, a.swapped_out, a.dropped) == (1, 1, 0)
    assert a.swap_seconds == pytest.approx(0.002)
    assert c.tier_of(1) is Tier.DRAM and c.dram_used == 1
    c.release([3], 2.0)
    m = c.longest_prefix([1])
    assert (m.hbm_blocks, m.dram_blocks, m.cached_blocks) == (0, 1, 1)
    b = c.allocate([1], 3.0)
    # Load 1 back (0.002 s) and swap the LRU block 2 out (0.002 s).
    assert (b.hit_blocks_dram, b.swapped_out) == (1, 1)
    assert b.swap_seconds == pytest.approx(0.004)
    assert c.tier_of(1) is Tier.HBM and c.tier_of(2) is Tier.DRAM
    assert c.stats.swapped_in == 1 and c.stats.swapped_out == 2
    assert c.stats.swap_seconds == pytest.approx(0.006)
    c.check_invariants()


def test_full_dram_drops_its_lru_block() -> None:
    c = lru_cache(1, dram=1)
    put(c, [1], 0.0)
    put(c, [2], 1.0)  # 1 -> DRAM
    a = c.allocate([3], 2.0)  # 2 -> DRAM, 1 dropped
    assert (a.swapped_out, a.dropped) == (1, 1)
    assert not c.contains(1) and c.tier_of(2) is Tier.DRAM
    c.check_invariants()


def test_swap_out_and_prefetch_report_transfer_seconds() -> None:
    c = lru_cache(4, dram=4)
    put(c, [1, 2], 0.0)
    assert c.swap_out([1, 2], 1.0) == pytest.approx(0.003)  # 0.001 + 2 MB / 1 GB/s
    assert c.dram_used == 2 and c.hbm_used == 0
    assert c.swap_out([1], 1.5) == 0.0  # already in DRAM
    assert c.prefetch([1, 2], 2.0) == pytest.approx(0.003)
    assert c.tier_of(1) is Tier.HBM and c.table.last_access[c._index[1]] == 2.0
    c.check_invariants()


def test_swap_out_refuses_blocks_in_use_or_pinned_and_without_dram() -> None:
    c = lru_cache(4, dram=4)
    c.allocate([1], 0.0)
    with pytest.raises(CacheError, match="in use or pinned"):
        c.swap_out([1], 1.0)
    c.release([1], 1.0)
    c.pin([1], 9.0)
    with pytest.raises(CacheError, match="in use or pinned"):
        c.swap_out([1], 2.0)
    no_dram = lru_cache(2)
    put(no_dram, [1], 0.0)
    with pytest.raises(CacheError, match="DRAM tier"):
        no_dram.swap_out([1], 1.0)


def test_prefetch_without_room_raises_or_loads_what_fits() -> None:
    c = lru_cache(2, dram=4)
    put(c, [1, 2], 0.0)
    c.swap_out([1, 2], 1.0)
    c.allocate([5, 6], 2.0)  # HBM full of blocks in use
    before = snapshot(c)
    with pytest.raises(CacheError, match="prefetch needs 2"):
        c.prefetch([1, 2], 3.0)
    assert same(before, snapshot(c))
    c.release([6], 3.0)
    seconds = c.prefetch([1, 2], 4.0, partial=True)
    # 1 comes in (0.002 s), 6 goes out to DRAM (0.002 s).
    assert seconds == pytest.approx(0.004)
    assert c.tier_of(1) is Tier.HBM and c.tier_of(2) is Tier.DRAM and c.tier_of(6) is Tier.DRAM
    c.check_invariants()


def test_dram_children_keep_their_parent_link() -> None:
    c = CacheManager(3, RadixLRUPolicy(), dram_blocks=3)
    put(c, [1, 2, 3], 0.0)
    c.allocate([7, 8], 1.0)  # evicts leaves 3 then 2 to DRAM
    assert c.tier_of(3) is Tier.DRAM and c.tier_of(2) is Tier.DRAM and c.tier_of(1) is Tier.HBM
    t = c.table
    assert t.children_dram[c._index[1]] == 1 and t.children_dram[c._index[2]] == 1
    m = c.longest_prefix([1, 2, 3])
    assert (m.hbm_blocks, m.dram_blocks, m.cached_blocks) == (1, 2, 3)
    c.check_invariants()


# --------------------------------------------------------------------------- hints / invariants

def test_hints_apply_now_or_when_the_block_is_created() -> None:
    c = lru_cache(4)
    put(c, [1], 0.0)
    c.set_hints([1, 2], next_use=[5.0, 9.0], reuse_prob=0.25)
    t = c.table
    assert t.next_use[c._index[1]] == 5.0 and t.reuse_prob[c._index[1]] == 0.25
    c.allocate([2], 1.0)
    assert t.next_use[c._index[2]] == 9.0
    c.allocate([3, 4], 1.0, hints=BlockHints(steps_to_exec=[2.0, 3.0], size_tokens=64.0))
    assert t.steps_to_exec[c._index[4]] == 3.0 and t.size_tokens[c._index[3]] == 64.0
    with pytest.raises(CacheError, match="2 blocks"):
        c.set_hints([1, 2], next_use=[1.0, 2.0, 3.0])
    with pytest.raises(CacheError, match="reuse_prob"):
        c.set_hints([1], reuse_prob=1.5)


def test_check_invariants_catches_corruption() -> None:
    c = lru_cache(4)
    put(c, [1, 2], 0.0)
    c.check_invariants()
    c.table.children_hbm[c._index[1]] = 0
    with pytest.raises(CacheError, match="children"):
        c.check_invariants()
    d = lru_cache(4)
    put(d, [1], 0.0)
    d.table.ref_count[d._index[1]] = -1
    with pytest.raises(CacheError, match="negative ref"):
        d.check_invariants()
