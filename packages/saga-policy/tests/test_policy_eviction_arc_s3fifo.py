"""ARC and S3-FIFO: their defining behaviour on hand-worked sequences, and the vectorised victim
choice against one-block-at-a-time reference implementations of the same rules."""

from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga.policy import registry
from saga.policy.block_table import Tier
from saga.policy.cache import CacheManager
from saga.policy.errors import SagaConfigError
from saga.policy.eviction import ARCPolicy, LRUPolicy, S3FIFOPolicy, arc_adapt
from saga.policy.eviction.arc import T1, T2
from saga.policy.eviction.s3fifo import MAIN, SMALL


def put(cache: CacheManager, block: int, now: float = 0.0) -> None:
    """One single-block request: allocate, release, check."""
    cache.allocate([block], now)
    cache.release([block], now)
    cache.check_invariants()


def resident(cache: CacheManager) -> set[int]:
    return set(cache.hashes_in(Tier.HBM))


# --------------------------------------------------------------------------- ARC by hand

def test_arc_scan_does_not_flush_the_frequent_list() -> None:
    arc, lru = CacheManager(4, ARCPolicy()), CacheManager(4, LRUPolicy())
    for c in (arc, lru):
        for t, b in enumerate([0, 1, 2, 3, 0, 1]):  # 0 and 1 are used twice: T2
            put(c, b, float(t))
        for b in range(10, 20):  # a scan of ten one-off blocks
            put(c, b, float(b))
    assert resident(arc) == {0, 1, 18, 19}       # the scan cycles through T1 only
    assert resident(lru) == {16, 17, 18, 19}     # LRU lost the frequent blocks
    pol = arc.policy
    assert isinstance(pol, ARCPolicy)
    assert pol.lists.sizes[T1:] == [2, 2]
    assert {int(pol.lists.queue[arc._index[b]]) for b in (0, 1)} == {T2}
    assert list(pol.b1.keys) == [14, 15, 16, 17] and len(pol.b2) == 0  # ghosts bounded by c


def test_arc_target_adapts_on_ghost_hits() -> None:
    """Capacity 2; worked by hand with vLLM's rules (evict T1 while |T1| >= int(p))."""
    c = CacheManager(2, ARCPolicy())
    pol = c.policy
    assert isinstance(pol, ARCPolicy)
    for t, b in enumerate([1, 1, 2, 2]):  # both used twice: T2 = [1, 2], T1 empty
        put(c, b, float(t))
    put(c, 3, 4.0)                        # |T1| = 0 >= p = 0 but T1 has none: T2's 1 -> B2
    assert list(pol.b2.keys) == [1] and resident(c) == {2, 3}
    put(c, 4, 5.0)                        # |T1| = 1 >= 0: T1's 3 -> B1
    assert list(pol.b1.keys) == [3] and pol.target_t1 == 0.0
    put(c, 3, 6.0)                        # B1 hit: p += max(1, |B2|/|B1| = 1) -> 1
    assert pol.target_t1 == 1.0
    assert resident(c) == {2, 3} and list(pol.b1.keys) == [4]  # |T1| = 1 >= 1: 4 -> B1
    put(c, 1, 7.0)                        # B2 hit: p -= max(1, |B1|/|B2| = 1) -> 0
    assert pol.target_t1 == 0.0
    assert resident(c) == {1, 2} and list(pol.b1.keys) == [4, 3]


def test_arc_adapt_formula() -> None:
    assert arc_adapt(0.0, True, 1, 3, 10) == 3.0     # |B2| / |B1| = 3
    assert arc_adapt(9.5, True, 4, 1, 10) == 10.0    # capped at c
    assert arc_adapt(5.0, False, 6, 2, 10) == 2.0    # |B1| / |B2| = 3
    assert arc_adapt(0.5, False, 1, 1, 10) == 0.0    # floored at 0


# --------------------------------------------------------------------------- S3-FIFO by hand

def s3(capacity: int = 10) -> tuple[CacheManager, S3FIFOPolicy]:
    """Capacity 10: S's share is 1 block, M's 9, the ghost keeps 9 hashes."""
    pol = S3FIFOPolicy()
    c = CacheManager(capacity, pol)
    for b in range(capacity):
        put(c, b, float(b))
    return c, pol


def test_s3fifo_one_hit_wonders_leave_from_small_without_entering_main() -> None:
    c, pol = s3()
    for b in range(100, 105):
        put(c, b, float(b))
    assert resident(c) == set(range(5, 10)) | set(range(100, 105))
    assert list(pol.ghost.keys) == [0, 1, 2, 3, 4]
    assert pol.queues.sizes[SMALL:] == [10, 0]


def test_s3fifo_block_hit_in_small_moves_to_main() -> None:
    c, pol = s3()
    c.touch([3], 20.0)
    for b in range(100, 104):
        put(c, b, 30.0 + b)
    assert resident(c) == {3, 5, 6, 7, 8, 9, 100, 101, 102, 103}
    assert list(pol.ghost.keys) == [0, 1, 2, 4]   # 3 was passed over, not ghosted
    slot = c._index[3]
    assert pol.queues.queue[slot] == MAIN and pol.freq[slot] == 0  # counter cleared on the move


def test_s3fifo_ghost_hit_goes_straight_to_main() -> None:
    c, pol = s3()
    put(c, 100, 20.0)                     # 0 leaves S for the ghost
    assert 0 in pol.ghost
    put(c, 0, 21.0)                       # remembered: admitted to M; S's tail (1) leaves
    assert pol.queues.queue[c._index[0]] == MAIN and 0 not in pol.ghost
    assert resident(c) == set(range(2, 10)) | {0, 100}


def test_s3fifo_main_reinserts_blocks_with_a_nonzero_counter() -> None:
    c, pol = s3()
    c.touch(list(range(9)), 20.0)         # 0..8 hit once
    put(c, 100, 21.0)                     # S walk: 0..8 move to M (counter 0), 9 leaves
    assert pol.queues.sizes[SMALL:] == [1, 9]
    c.touch([0], 22.0)                    # M: 0 has counter 1
    put(c, 101, 23.0)                     # M at its share (9): S's 100 leaves
    put(c, 9, 24.0)                       # ghost hit: S's 101 leaves, 9 joins M (10 > 9)
    put(c, 102, 25.0)                     # from M: 0 goes round (counter 0), 1 leaves
    assert 1 not in resident(c) and 0 in resident(c)
    assert pol.freq[c._index[0]] == 0
    assert pol.queues.stamp[c._index[0]] > pol.queues.stamp[c._index[9]]  # 0 is at M's head


def test_s3fifo_rejects_bad_parameters() -> None:
    for kwargs in ({"small_ratio": 0.0}, {"small_ratio": float("nan")},
                   {"move_to_main_threshold": 4}, {"ghost_ratio": -1.0}):
        with pytest.raises(SagaConfigError, match="S3-FIFO"):
            S3FIFOPolicy(**kwargs)


@pytest.mark.parametrize("name", ["arc", "s3fifo"])
def test_a_stateful_policy_serves_one_cache(name: str) -> None:
    policy = registry.replay_eviction(name)
    CacheManager(4, policy)
    with pytest.raises(SagaConfigError, match="one policy per CacheManager"):
        CacheManager(4, policy)


# --------------------------------------------------------------------------- references

class RefARC:
    """vLLM's ARCCachePolicy rules on single-block accesses, one victim at a time."""

    def __init__(self, c: int) -> None:
        self.c, self.p = c, 0.0
        self.t1: OrderedDict[int, None] = OrderedDict()
        self.t2: OrderedDict[int, None] = OrderedDict()
        self.b1: OrderedDict[int, None] = OrderedDict()
        self.b2: OrderedDict[int, None] = OrderedDict()

    def access(self, x: int) -> None:
        if x in self.t1 or x in self.t2:
            self.t1.pop(x, None)
            self.t2.pop(x, None)
            self.t2[x] = None
            return
        if x in self.b1:
            self.p = min(self.p + max(1, len(self.b2) / len(self.b1)), self.c)
            self.b1.move_to_end(x)
        elif x in self.b2:
            self.p = max(self.p - max(1, len(self.b1) / len(self.b2)), 0)
            self.b2.move_to_end(x)
        if len(self.t1) + len(self.t2) >= self.c:
            self.evict(1)
        self.t1[x] = None
        self.b1.pop(x, None)
        self.b2.pop(x, None)

    def evict(self, n: int) -> None:
        v, i1, i2, out = len(self.t1), iter(list(self.t1)), iter(list(self.t2)), []
        for _ in range(n):
            key = next(i1, None) if v >= int(self.p) else None
            from_t1 = key is not None
            if key is None:
                key = next(i2, None)
            if key is None:
                key, from_t1 = next(i1), True
            v -= from_t1
            out.append((key, from_t1))
        for key, from_t1 in out:
            (self.t1 if from_t1 else self.t2).pop(key)
            (self.b1 if from_t1 else self.b2)[key] = None
        for ghost in (self.b1, self.b2):
            while len(ghost) > self.c:
                ghost.popitem(last=False)

    def resident(self) -> set[int]:
        return set(self.t1) | set(self.t2)


class RefS3FIFO:
    """S3-FIFO as libCacheSim's S3FIFOv0 runs it, one eviction call at a time."""

    def __init__(self, c: int, threshold: int = 1) -> None:
        self.c, self.thr = c, threshold
        self.main_cap, self.ghost_cap = c - int(c * 0.1), int(c * 0.9)
        self.s: deque[int] = deque()
        self.m: deque[int] = deque()
        self.freq: dict[int, int] = {}
        self.g: OrderedDict[int, None] = OrderedDict()

    def access(self, x: int) -> None:
        if x in self.freq:
            self.freq[x] = min(self.freq[x] + 1, 3)
            return
        if len(self.s) + len(self.m) >= self.c:
            self.evict(1)
        self.freq[x] = 0
        (self.m if self.g.pop(x, 0) is None else self.s).append(x)

    def evict(self, n: int) -> None:
        """Evict until ``n`` blocks left: one ``EVICT()`` may only move blocks from S to M."""
        gone = 0
        while gone < n:
            if len(self.m) > self.main_cap or not self.s:
                gone += self._main()
            else:
                gone += self._small()

    def _small(self) -> bool:
        while self.s:
            t = self.s.popleft()
            if self.freq[t] >= self.thr:
                self.freq[t] = 0
                self.m.append(t)
            else:
                del self.freq[t]
                self.g[t] = None
                while len(self.g) > self.ghost_cap:
                    self.g.popitem(last=False)
                return True
        return False

    def _main(self) -> bool:
        while self.m:
            t = self.m.popleft()
            if self.freq[t]:
                self.freq[t] -= 1
                self.m.append(t)
            else:
                del self.freq[t]
                return True
        return False

    def resident(self) -> set[int]:
        return set(self.s) | set(self.m)


ops = st.lists(st.one_of(st.integers(0, 24), st.tuples(st.just("evict"), st.integers(1, 6))),
               min_size=1, max_size=120)


@settings(max_examples=150, deadline=None)
@given(ops=ops, capacity=st.integers(2, 14))
def test_arc_and_s3fifo_match_their_references(ops: list[int | tuple[str, int]],
                                               capacity: int) -> None:
    """Single-block requests and batch evictions (``CacheManager.evict``): the vectorised
    choice keeps exactly the blocks the one-at-a-time reference keeps."""
    for policy, ref in ((ARCPolicy(), RefARC(capacity)), (S3FIFOPolicy(), RefS3FIFO(capacity))):
        cache = CacheManager(capacity, policy)
        for t, op in enumerate(ops):
            if isinstance(op, tuple):
                n = min(op[1], len(ref.resident()))
                ref.evict(n)
                cache.evict(n, float(t))
            else:
                ref.access(op)
                put(cache, op, float(t))
            assert resident(cache) == ref.resident(), (policy.name, t, op)
        if isinstance(policy, ARCPolicy) and isinstance(ref, RefARC):
            assert policy.target_t1 == ref.p


def test_policies_rank_untracked_blocks_lru_first() -> None:
    """As a ``dram_policy`` (no events) ARC and S3-FIFO fall back to least recently used."""
    c = CacheManager(2, LRUPolicy(), dram_blocks=2, dram_policy=S3FIFOPolicy())
    c2 = CacheManager(2, LRUPolicy(), dram_blocks=2, dram_policy=ARCPolicy())
    for cache in (c, c2):
        for b in range(6):
            put(cache, b, float(b))
        assert set(cache.hashes_in(Tier.DRAM)) == {2, 3}
    table = c.table
    cands = np.flatnonzero(table.tier == Tier.HBM).astype(np.int64)
    assert ARCPolicy().select_victims(table, cands, 1, 0.0).tolist() == [c._index[4]]


def test_s3fifo_walk_past_the_oldest_2k_plus_64_blocks() -> None:
    """90 blocks of S were hit: the walk moves them all to M before a victim turns up, more
    than the first look at the queue (2k + 64 blocks) covers, so it widens to all of them."""
    c, pol = s3(100)
    ref = RefS3FIFO(100)
    for b in range(100):
        ref.access(b)
    c.touch(list(range(90)), 200.0)
    for b in range(90):
        ref.access(b)
    for t, b in enumerate([100, 101, 0, 5, 102]):
        put(c, b, 300.0 + t)
        ref.access(b)
        assert resident(c) == ref.resident()
    assert pol.queues.sizes[SMALL:] == [len(ref.s), len(ref.m)]
