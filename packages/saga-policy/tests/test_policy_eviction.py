"""Unit tests of the eviction policies, with expectations computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga.policy import registry
from saga.policy.block_table import BlockTable, Tier
from saga.policy.cache import CacheManager
from saga.policy.errors import SagaConfigError
from saga.policy.eviction import (
    BeladyPolicy,
    EvictionPolicy,
    KVFlowPolicy,
    LRUPolicy,
    PrefixLRUPolicy,
    RadixLRUPolicy,
    WALRUPolicy,
    next_use_positions,
    walru_score,
)


def put(cache: CacheManager, hashes: list[int], now: float) -> None:
    cache.allocate(hashes, now)
    cache.release(hashes, now)


# --------------------------------------------------------------------------- walru_score

def test_walru_score_by_hand() -> None:
    # 0.3 * 1 + 0.5 * (1 - 0.9) + 0.2 * 0.25 = 0.40
    assert walru_score(1.0, 0.9, 0.25) == pytest.approx(0.40)
    # 0.2 * 0.5 + 0.6 * (1 - 0.2) + 0.2 * 1 = 0.78
    assert walru_score(0.5, 0.2, 1.0, alpha=0.2, beta=0.6, gamma=0.2) == pytest.approx(0.78)
    got = walru_score(np.array([0.0, 1.0]), np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    np.testing.assert_allclose(got, [0.0, 1.0])


@pytest.mark.parametrize("bad", [dict(alpha=-0.1), dict(beta=math.nan), dict(gamma=-1.0)])
def test_walru_rejects_bad_weights(bad: dict[str, float]) -> None:
    with pytest.raises(SagaConfigError, match=next(iter(bad))):
        WALRUPolicy(**bad)
    with pytest.raises(SagaConfigError, match=next(iter(bad))):
        walru_score(0.5, 0.5, 0.5, **bad)


def test_walru_policy_scores_and_evicts_the_argmax() -> None:
    c = CacheManager(3, WALRUPolicy())
    put(c, [1], 0.0)
    put(c, [2], 5.0)
    put(c, [3], 8.0)
    c.set_hints([1, 2, 3], reuse_prob=[0.9, 0.2, 0.5], size_tokens=[16.0, 64.0, 32.0])
    # now = 10: ages 10, 5, 2 -> R^ = 1, 0.5, 0.2; 1 - P = 0.1, 0.8, 0.5; S^ = 0.25, 1, 0.5
    # scores: 0.3+0.05+0.05 = 0.40, 0.15+0.40+0.20 = 0.75, 0.06+0.25+0.10 = 0.41
    slots = np.array([c._index[h] for h in (1, 2, 3)], np.int64)
    pol = WALRUPolicy()
    np.testing.assert_allclose(pol.scores(c.table, slots, 10.0), [0.40, 0.75, 0.41])
    np.testing.assert_array_equal(pol.select_victims(c.table, slots, 3, 10.0), slots[[1, 2, 0]])
    a = c.allocate([4], 10.0)
    assert a.evicted == 1 and not c.contains(2)  # plain LRU would have evicted 1


def test_walru_without_hint_uses_a_neutral_reuse_prior() -> None:
    c = CacheManager(4, WALRUPolicy(alpha=0.0, beta=1.0, gamma=0.0))
    put(c, [1], 0.0)
    put(c, [1], 1.0)
    put(c, [1], 2.0)  # two hits, but hits are no workflow prediction
    put(c, [2], 2.0)
    put(c, [3], 2.0)
    c.set_hints([3], reuse_prob=0.8)
    slots = np.array([c._index[1], c._index[2], c._index[3]], np.int64)
    # 1 - P_reuse: unknown -> 1 - 0.5 for blocks 1 and 2, 1 - 0.8 for the hinted block 3
    np.testing.assert_allclose(WALRUPolicy(0.0, 1.0, 0.0).scores(c.table, slots, 2.0),
                               [0.5, 0.5, 0.2])


def test_walru_size_defaults_to_prefix_length() -> None:
    c = CacheManager(8, WALRUPolicy(alpha=0.0, beta=0.0, gamma=1.0), block_tokens=16)
    put(c, [1, 2, 3, 4], 0.0)
    slots = np.array([c._index[h] for h in (1, 2, 3, 4)], np.int64)
    # prefix tokens 16, 32, 48, 64 over max 64
    np.testing.assert_allclose(WALRUPolicy(0.0, 0.0, 1.0).scores(c.table, slots, 1.0),
                               [0.25, 0.5, 0.75, 1.0])


# --------------------------------------------------------------------------- LRU family

def test_lru_evicts_the_oldest() -> None:
    c = CacheManager(3, LRUPolicy())
    put(c, [1], 0.0)
    put(c, [2], 2.0)
    put(c, [3], 1.0)
    assert c.evict(2, 5.0) == [1, 3]


def test_prefix_lru_is_tail_first_and_may_strand_a_chain() -> None:
    c = CacheManager(5, PrefixLRUPolicy())
    put(c, [1, 2, 3], 1.0)  # released together: tail 3 goes first
    put(c, [9], 2.0)
    assert c.evict(2, 3.0) == [3, 2]
    d = CacheManager(3, PrefixLRUPolicy())
    put(d, [1, 2], 1.0)
    d.touch([2], 4.0)  # the child is newer than its parent
    put(d, [9], 3.0)
    assert d.evict(1, 5.0) == [1]  # vLLM's free queue ignores children
    assert d.longest_prefix([1, 2]).cached_blocks == 0 and d.contains(2)


def test_radix_lru_evicts_leaves_only() -> None:
    d = CacheManager(3, RadixLRUPolicy())
    put(d, [1, 2], 1.0)
    d.touch([2], 4.0)
    put(d, [9], 3.0)
    assert d.evict(1, 5.0) == [9]  # 1 is older but is not a leaf
    assert d.evict(2, 6.0) == [2, 1]  # then the chain, tail first


def test_radix_lru_parent_becomes_a_leaf_within_one_call() -> None:
    c = CacheManager(6, RadixLRUPolicy())
    put(c, [1, 2], 1.0)   # chain released at t=1
    put(c, [5], 2.0)
    put(c, [6], 3.0)
    c.touch([1], 0.5)     # make the parent look older than everything
    # Greedy: leaf 2 (t=1) goes, its parent 1 (t=0.5) becomes the oldest leaf, then 5.
    assert c.evict(3, 4.0) == [2, 1, 5]


def test_kvflow_evicts_largest_steps_unknown_first_ties_lru() -> None:
    c = CacheManager(5, KVFlowPolicy())
    for i, h in enumerate((1, 2, 3, 4, 5)):
        put(c, [h], float(i))
    c.set_hints([1, 2, 3, 4, 5], steps_to_exec=[3.0, 1.0, math.nan, 3.0, math.inf])
    # unknown (3 at t=2, 5 at t=4) as +inf: LRU among them -> 3, 5; then steps 3: 1 (t=0), 4
    assert c.evict(5, 10.0) == [3, 5, 1, 4, 2]


def test_belady_evicts_farthest_next_use() -> None:
    c = CacheManager(3, BeladyPolicy())
    for i, h in enumerate((1, 2, 3)):
        put(c, [h], float(i))
    c.set_hints([1, 2, 3], next_use=[5.0, math.inf, 2.0])
    assert c.evict(3, 4.0) == [2, 1, 3]


def test_belady_beats_lru_on_a_hand_trace() -> None:
    trace = [[1], [2], [3], [1], [2]]
    nxt = next_use_positions(trace)
    misses = {}
    for policy in (LRUPolicy(), BeladyPolicy()):
        c = CacheManager(2, policy)
        total = 0
        for i, req in enumerate(trace):
            c.set_hints(req, next_use=nxt[i])
            total += c.allocate(req, float(i)).new_blocks
            c.release(req, float(i))
        misses[policy.name] = total
    # LRU misses all 5; MIN evicts 2 (next use 4) for 3 and hits 1: 4 misses.
    assert misses == {"lru": 5, "belady": 4}


def test_next_use_positions_by_hand() -> None:
    got = next_use_positions([[1, 2], [2, 3], [1], [3, 2]])
    inf = math.inf
    assert got == [[2.0, 1.0], [3.0, 3.0], [inf], [inf, inf]]


def test_registry_names_every_policy() -> None:
    assert set(registry.replay_eviction_names()) == {"lru", "prefix_lru", "radix_lru", "walru",
                                                     "kvflow", "arc", "s3fifo", "eta",
                                                     "belady"}
    assert "belady" not in registry.names("eviction")  # an oracle is no preset's policy
    for name in registry.replay_eviction_names():
        policy = registry.replay_eviction(name)
        assert isinstance(policy, EvictionPolicy) and policy.name == name
    assert BeladyPolicy.needs_next_use and not LRUPolicy.needs_next_use
    assert not PrefixLRUPolicy.leaves_only and RadixLRUPolicy.leaves_only
    assert WALRUPolicy.leaves_only and KVFlowPolicy.leaves_only


def test_select_victims_edge_cases() -> None:
    t = BlockTable.empty(4, 16)
    t.tier[:] = Tier.HBM
    pol = RadixLRUPolicy()
    assert pol.select_victims(t, np.array([], np.int64), 3, 0.0).size == 0
    assert pol.select_victims(t, np.array([0, 1], np.int64), 0, 0.0).size == 0
    assert pol.select_victims(t, np.array([0, 1], np.int64), 5, 0.0).size == 2


# --------------------------------------------------------------------------- leaves-first rounds

def naive_leaves_first(policy: EvictionPolicy, t: BlockTable, cands: np.ndarray,
                       k: int) -> list[int]:
    """Reference: one victim at a time, best-ranked leaf, else best-ranked candidate."""
    ranked = [int(s) for s in policy.order(t, cands, 0.0)]
    pos = {s: i for i, s in enumerate(ranked)}
    kids = {s: int(t.children_hbm[s]) for s in ranked}
    alive = set(ranked)
    out: list[int] = []
    while len(out) < k and alive:
        leaves = [s for s in alive if kids[s] == 0]
        pick = min(leaves or alive, key=pos.__getitem__)
        out.append(pick)
        alive.discard(pick)
        p = int(t.parent[pick])
        if p in alive:
            kids[p] -= 1
    return out


@st.composite
def forests(draw: st.DrawFn) -> tuple[BlockTable, np.ndarray, int]:
    n = draw(st.integers(1, 30))
    t = BlockTable.empty(n, 16)
    t.tier[:] = Tier.HBM
    for s in range(1, n):
        p = draw(st.integers(-1, s - 1))
        t.parent[s] = p
        if p >= 0:
            t.children_hbm[p] += 1
            t.depth[s] = t.depth[p] + 1
    t.last_access[:] = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    in_cands = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    cands = np.flatnonzero(np.array(in_cands, bool)).astype(np.int64)
    k = draw(st.integers(0, n))
    return t, cands, k


@settings(max_examples=150, deadline=None)
@given(forests())
def test_vectorised_rounds_match_one_at_a_time_greedy(case: tuple[BlockTable, np.ndarray,
                                                                  int]) -> None:
    t, cands, k = case
    for policy in (RadixLRUPolicy(), WALRUPolicy()):
        got = policy.select_victims(t, cands, k, 0.0).tolist()
        assert got == naive_leaves_first(policy, t, cands, min(k, cands.size))


@pytest.mark.parametrize("seed", range(5))
def test_walru_top_k_ranks_like_the_policy_sort(seed: int) -> None:
    from saga.policy.eviction.walru import walru_score, walru_top_k

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    last = rng.integers(0, 20, n).astype(np.float64)          # many ties in every key
    reuse = rng.choice([0.0, 0.5, 1.0], n)
    size = rng.integers(1, 6, n).astype(np.float64) * 32
    depth = rng.integers(0, 4, n).astype(np.int64)
    now, k = 25.0, int(rng.integers(1, n + 1))
    got = walru_top_k(last, reuse, size, depth, now, k)
    age = now - last
    score = walru_score(age / age.max() if age.max() > 0 else age, reuse, size / size.max())
    want = sorted(range(n), key=lambda i: (-score[i], last[i], -depth[i], i))[:k]
    assert got.tolist() == want
