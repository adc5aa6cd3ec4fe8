"""Stateful property test of `CacheManager` with a DRAM tier and pins.

Random allocate / release / touch / pin / tick / swap_out / prefetch / evict sequences against a
small model of references and pins: capacity is never exceeded, references never go negative,
a double release raises and changes nothing, blocks in use or pinned are never evicted (except
pins that allocate breaks, which it counts), expired pins are released by tick, and every block
lives in exactly one tier. It runs once per registered eviction policy (Bélády included), so a
policy with state of its own (ARC, S3-FIFO) is checked against the blocks actually in HBM
after every step (`CacheManager.check_invariants`).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from saga.policy import registry
from saga.policy.block_table import Tier
from saga.policy.cache import CacheManager
from saga.policy.errors import CacheError

# A small prefix tree of chains: shared heads, diverging tails, and one long chain.
CHAINS: list[list[int]] = [
    [1, 2, 3], [1, 2, 4], [1, 5], [6, 7, 8, 9], [10], [10, 11], [12, 13, 14, 15, 16, 17],
    [1, 2, 3, 18, 19], [20], [21, 22],
]
POLICIES = registry.replay_eviction_names()


def snapshot(c: CacheManager) -> tuple[object, ...]:
    t = c.table
    return (dict(c._index), list(c._free), repr(c.stats), t.ref_count.tobytes(),
            t.tier.tobytes(), t.pinned_until.tobytes(), t.parent.tobytes(),
            t.last_access.tobytes())


class CacheMachine(RuleBasedStateMachine):
    """Drives one cache; the model tracks the references it handed out."""

    policy_name = "lru"
    cache: CacheManager
    now: float
    held: list[list[int]]

    @initialize(hbm=st.integers(2, 8), dram=st.integers(0, 6), seed=st.integers(0, 2**16))
    def setup(self, hbm: int, dram: int, seed: int) -> None:
        self.cache = CacheManager(hbm, registry.replay_eviction(self.policy_name),
                                  dram_blocks=dram)
        self.now = 0.0
        self.held = []
        self.rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------ helpers

    def refs(self) -> Counter[int]:
        return Counter(h for seq in self.held for h in seq)

    def pinned(self) -> dict[int, Tier]:
        c = self.cache
        return {h: Tier(int(c.table.tier[s])) for h, s in c._index.items()
                if c.table.pinned_until[s] > self.now}

    def assert_pins_kept(self, before: dict[int, Tier], allowed_breaks: int = 0) -> None:
        lost = [h for h, tier in before.items()
                if self.cache.tier_of(h) != Tier.HBM and tier == Tier.HBM]
        lost += [h for h, tier in before.items() if tier == Tier.DRAM and not
                 self.cache.contains(h)]
        assert len(lost) <= allowed_breaks, lost

    # ------------------------------------------------------------------ rules

    @rule(i=st.integers(0, len(CHAINS) - 1), partial=st.booleans(), dt=st.floats(0, 3))
    def allocate(self, i: int, partial: bool, dt: float) -> None:
        self.now += dt
        chain = CHAINS[i]
        before, pins = snapshot(self.cache), self.pinned()
        try:
            a = self.cache.allocate(chain, self.now, partial=partial)
        except CacheError:
            assert not partial
            assert snapshot(self.cache) == before
            return
        assert a.resident_blocks + a.uncached_blocks == len(chain)
        assert a.hit_blocks_hbm + a.hit_blocks_dram + a.miss_blocks == len(chain)
        assert partial or a.resident_blocks == len(chain)
        if a.resident_blocks:
            self.held.append(chain[: a.resident_blocks])
        self.assert_pins_kept(pins, allowed_breaks=a.pin_breaks)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if not self.held:
            return
        j = data.draw(st.integers(0, len(self.held) - 1))
        seq = self.held.pop(j)
        self.cache.release(seq, self.now)

    @rule(i=st.integers(0, len(CHAINS) - 1))
    def release_unheld(self, i: int) -> None:
        chain = CHAINS[i]
        refs = self.refs()
        if all(refs[h] > 0 for h in chain):
            return
        before = snapshot(self.cache)
        try:
            self.cache.release(chain, self.now)
        except CacheError:
            assert snapshot(self.cache) == before
        else:
            raise AssertionError("released a block that holds no reference")

    @rule(i=st.integers(0, len(CHAINS) - 1))
    def touch(self, i: int) -> None:
        self.cache.touch([h for h in CHAINS[i] if self.cache.contains(h)], self.now)

    @rule(i=st.integers(0, len(CHAINS) - 1), ttl=st.floats(0, 10))
    def pin(self, i: int, ttl: float) -> None:
        hs = [h for h in CHAINS[i] if self.cache.contains(h)]
        self.cache.pin(hs, self.now + ttl)
        assert all(self.cache.pinned_until(h) >= self.now + ttl for h in hs)

    @rule(dt=st.floats(0, 6))
    def tick(self, dt: float) -> None:
        self.now += dt
        c = self.cache
        p = c.table.pinned_until
        expected = int(np.count_nonzero((p <= self.now) & (p > -math.inf)))
        assert c.tick(self.now) == expected
        assert not ((c.table.pinned_until <= self.now) & (c.table.pinned_until > -math.inf)).any()

    @rule(i=st.integers(0, len(CHAINS) - 1))
    def swap_out(self, i: int) -> None:
        c = self.cache
        refs = self.refs()
        pins = self.pinned()
        hs = [h for h in CHAINS[i] if c.contains(h) and refs[h] == 0 and h not in pins]
        before = snapshot(c)
        try:
            c.swap_out(hs, self.now)
        except CacheError:
            assert snapshot(c) == before
            return
        assert all(c.tier_of(h) is Tier.DRAM for h in hs)
        self.assert_pins_kept(pins)

    @rule(i=st.integers(0, len(CHAINS) - 1), partial=st.booleans())
    def prefetch(self, i: int, partial: bool) -> None:
        c = self.cache
        hs = [h for h in CHAINS[i] if c.contains(h)]
        before, pins = snapshot(c), self.pinned()
        try:
            c.prefetch(hs, self.now, partial=partial)
        except CacheError:
            assert not partial
            assert snapshot(c) == before
            return
        self.assert_pins_kept(pins)

    @rule(n=st.integers(0, 5))
    def evict(self, n: int) -> None:
        pins = self.pinned()
        out = self.cache.evict(n, self.now)
        assert len(out) <= n
        refs = self.refs()
        assert all(refs[h] == 0 and h not in pins for h in out)
        self.assert_pins_kept(pins)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def consistent(self) -> None:
        c = self.cache
        c.check_invariants()
        assert c.hbm_used <= c.hbm_blocks and c.dram_used <= c.dram_blocks
        refs = self.refs()
        for h, s in c._index.items():
            assert c.table.ref_count[s] == refs[h]
            assert c.table.tier[s] in (Tier.HBM, Tier.DRAM)
        for h in refs:
            assert c.tier_of(h) is Tier.HBM  # in use: never evicted


@pytest.mark.parametrize("name", POLICIES)
def test_cache_machine(name: str) -> None:
    machine = type(f"CacheMachine_{name}", (CacheMachine,), {"policy_name": name})
    run_state_machine_as_test(
        machine, settings=settings(max_examples=30, stateful_step_count=40, deadline=None))
