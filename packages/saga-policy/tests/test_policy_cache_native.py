"""The native cache core against its definition, the Python `CacheManager`, step by step.

One random sequence of allocate (with and without hints, whole or partial), release (held and
double), touch, pin / unpin, tick, evict, swap_out / prefetch to the DRAM tier, set_hints (also
for blocks not cached yet), longest_prefix and resident runs on a Python manager and a native
one side by side; after every operation their return values (or error text), every block-table
column byte for byte (ref counts, tiers, pin deadlines, parents, child counts, hints, hits), the
index in insertion order, the free list, per-tier residents, occupancy, stats and pending hints
must be equal. It runs for every policy with a native order, with a native DRAM policy drawn too.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

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
from saga.policy.cache import BlockHints, CacheManager
from saga.policy.cache_native import native_available
from saga.policy.errors import CacheError, SagaConfigError
from saga.policy.eviction import LRUPolicy

NATIVE = [n for n in registry.replay_eviction_names()
          if registry.replay_eviction(n).native_order is not None]
PYTHON_ONLY = [n for n in registry.replay_eviction_names() if n not in NATIVE]
needs_core = pytest.mark.skipif(not native_available(),
                                reason="saga-kernels' native cache core is not loaded")

# Shared heads, diverging tails, one long chain, and chains that reuse a suffix out of order.
CHAINS: list[list[int]] = [
    [1, 2, 3], [1, 2, 4], [1, 5], [6, 7, 8, 9], [10], [10, 11], [12, 13, 14, 15, 16, 17],
    [1, 2, 3, 18, 19], [20], [21, 22], [2, 3], [7, 8, 23], [30, 31, 32, 33, 34, 35, 36, 37],
]
COLUMNS = ("last_access", "ref_count", "pinned_until", "tier", "depth", "parent",
           "children_hbm", "children_dram", "hits", "reuse_prob", "steps_to_exec", "next_use",
           "size_tokens")
hint_value = st.one_of(st.none(), st.sampled_from([0.0, 0.25, 0.5, 1.0]),
                       st.floats(0, 1, allow_nan=False))
plain = st.one_of(st.none(), st.sampled_from([0.0, 1.0, 3.0, math.inf, math.nan]),
                  st.floats(0, 50, allow_nan=False))


def outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    try:
        return ("ok", fn(*args, **kwargs))
    except CacheError as e:
        return ("error", str(e))


def observables(c: CacheManager) -> tuple[Any, ...]:
    t = c.table
    return (tuple(getattr(t, name).tobytes() for name in COLUMNS), list(c._index.items()),
            list(c._free), c.hashes_in(Tier.HBM), c.hashes_in(Tier.DRAM), len(c),
            (c.hbm_used, c.dram_used, c.free, c.dram_free), repr(c.stats), repr(c._pending))


class TwinMachine(RuleBasedStateMachine):
    """The same operations on a Python and a native manager; all observables equal."""

    policy_name = "lru"
    py: CacheManager
    nat: CacheManager
    now: float
    held: list[list[int]]

    @initialize(hbm=st.integers(2, 10), dram=st.integers(0, 8),
                dram_policy=st.sampled_from(["lru", "radix_lru", "walru"]))
    def setup(self, hbm: int, dram: int, dram_policy: str) -> None:
        def build(native: bool) -> CacheManager:
            return CacheManager(hbm, registry.replay_eviction(self.policy_name), dram_blocks=dram,
                                dram_policy=registry.replay_eviction(dram_policy), native=native)
        self.py, self.nat = build(False), build(True)
        assert self.py._core is None and self.nat._core is not None
        self.now = 0.0
        self.held = []

    def both(self, op: str, *args: Any, **kwargs: Any) -> Any:
        got = outcome(getattr(self.py, op), *args, **kwargs)
        assert outcome(getattr(self.nat, op), *args, **kwargs) == got, op
        return got

    def refs(self) -> Counter[int]:
        return Counter(h for seq in self.held for h in seq)

    # ------------------------------------------------------------------ rules

    @rule(i=st.integers(0, len(CHAINS) - 1), partial=st.booleans(),
          dt=st.sampled_from([0.0, 0.5, 1.0, 2.5]), hinted=st.booleans(), keep=st.integers(0, 3),
          reuse=hint_value, steps=plain, next_use=plain, size=st.one_of(
              st.none(), st.sampled_from([16.0, 64.0, 200.0]), st.lists(
                  st.floats(1, 500, allow_nan=False), min_size=8, max_size=8)))
    def allocate(self, i: int, partial: bool, dt: float, hinted: bool, keep: int,
                 reuse: float | None, steps: float | None, next_use: float | None,
                 size: float | list[float] | None) -> None:
        """Allocate a chain, first releasing the oldest held ones beyond ``keep`` (so the cache
        turns over and evicts instead of filling with blocks in use)."""
        self.now += dt
        while len(self.held) > keep:
            assert self.both("release", self.held.pop(0), self.now)[0] == "ok"
        chain = CHAINS[i]
        sizes = size[: len(chain)] if isinstance(size, list) and len(chain) <= 8 else (
            None if isinstance(size, list) else size)
        hints = BlockHints(reuse_prob=reuse, steps_to_exec=steps, next_use=next_use,
                           size_tokens=sizes) if hinted else None
        kind, got = self.both("allocate", chain, self.now, hints=hints, partial=partial)
        if kind == "ok" and got.resident_blocks:
            self.held.append(chain[: got.resident_blocks])

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if self.held:
            seq = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
            assert self.both("release", seq, self.now)[0] == "ok"

    @rule(i=st.integers(0, len(CHAINS) - 1))
    def release_any(self, i: int) -> None:
        chain = CHAINS[i]
        refs = self.refs()
        if all(refs[h] > 0 for h in chain):
            return
        assert self.both("release", chain, self.now)[0] == "error"

    @rule(i=st.integers(0, len(CHAINS) - 1), cached_only=st.booleans())
    def touch(self, i: int, cached_only: bool) -> None:
        hs = [h for h in CHAINS[i] if self.py.contains(h)] if cached_only else CHAINS[i]
        self.both("touch", hs, self.now)

    @rule(i=st.integers(0, len(CHAINS) - 1), ttl=st.sampled_from([0.0, 1.0, 4.0, 10.0]))
    def pin(self, i: int, ttl: float) -> None:
        self.both("pin", [h for h in CHAINS[i] if self.py.contains(h)], self.now + ttl)


    @rule(ttl=st.sampled_from([2.0, 50.0]))
    def pin_everything(self, ttl: float) -> None:
        """Pin every cached block, so the next allocation that needs room breaks pins."""
        self.both("pin", self.py.hashes_in(Tier.HBM) + self.py.hashes_in(Tier.DRAM),
                  self.now + ttl)

    @rule(i=st.integers(0, len(CHAINS) - 1))
    def unpin(self, i: int) -> None:
        self.both("unpin", [h for h in CHAINS[i] if self.py.contains(h)])

    @rule(dt=st.sampled_from([0.0, 1.0, 3.0, 6.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.both("tick", self.now)

    @rule(n=st.integers(-1, 6))
    def evict(self, n: int) -> None:
        self.both("evict", n, self.now)

    @rule(i=st.integers(0, len(CHAINS) - 1), cached_only=st.booleans())
    def swap_out(self, i: int, cached_only: bool) -> None:
        hs = [h for h in CHAINS[i] if self.py.contains(h)] if cached_only else CHAINS[i]
        self.both("swap_out", hs, self.now)

    @rule(i=st.integers(0, len(CHAINS) - 1), partial=st.booleans())
    def prefetch(self, i: int, partial: bool) -> None:
        self.both("prefetch", [h for h in CHAINS[i] if self.py.contains(h)], self.now,
                  partial=partial)

    @rule(i=st.integers(0, len(CHAINS) - 1), reuse=hint_value, steps=plain, next_use=plain)
    def set_hints(self, i: int, reuse: float | None, steps: float | None,
                  next_use: float | None) -> None:
        self.both("set_hints", CHAINS[i], reuse_prob=reuse, steps_to_exec=steps,
                  next_use=next_use)

    @rule(i=st.integers(0, len(CHAINS) - 1))
    def queries(self, i: int) -> None:
        chain = CHAINS[i]
        self.both("longest_prefix", chain)
        assert self.py.longest_prefix(iter(chain)) == self.nat.longest_prefix(iter(chain))
        self.both("resident", chain)
        for h in chain:
            assert self.py.tier_of(h) == self.nat.tier_of(h)
            assert self.py.contains(h) == self.nat.contains(h)
            self.both("ref_count", h)
            self.both("pinned_until", h)

    @rule(i=st.integers(0, len(CHAINS) - 1))
    def bad_calls(self, i: int) -> None:
        """Duplicates, a NaN pin and uncached blocks: the same error, nothing changed."""
        chain = CHAINS[i] + CHAINS[i][:1]
        for op in ("allocate", "release", "prefetch", "swap_out"):
            self.both(op, chain, self.now)
        self.both("pin", CHAINS[i], math.nan)
        self.both("pin", CHAINS[i], self.now + 1)  # fails if a block is not cached

    # ------------------------------------------------------------------ invariants

    @invariant()
    def same(self) -> None:
        assert observables(self.nat) == observables(self.py)
        self.nat.check_invariants()


@needs_core
@pytest.mark.parametrize("name", NATIVE)
def test_native_core_matches_python(name: str) -> None:
    machine = type(f"TwinMachine_{name}", (TwinMachine,), {"policy_name": name})
    run_state_machine_as_test(
        machine, settings=settings(max_examples=40, stateful_step_count=50, deadline=None))


def test_native_choice() -> None:
    """Which manager runs where: the core only for native orders, Python on request, an error
    when the core is required but cannot run."""
    assert {"lru", "prefix_lru", "radix_lru", "walru"} <= set(NATIVE)
    for name in PYTHON_ONLY:
        assert CacheManager(8, registry.replay_eviction(name))._core is None
        with pytest.raises(SagaConfigError):
            CacheManager(8, registry.replay_eviction(name), native=True)
    assert CacheManager(8, LRUPolicy(), native=False)._core is None
    auto = CacheManager(8, LRUPolicy())
    assert (auto._core is not None) == native_available()
    if not native_available():
        with pytest.raises(SagaConfigError):
            CacheManager(8, LRUPolicy(), native=True)


@needs_core
def test_native_large_table_replay() -> None:
    """A longer random workload on a bigger table (pressure, pin breaks, DRAM drops) ends in
    the same state on both, for WA-LRU with per-block hints."""
    rng = np.random.default_rng(7)
    caches = [CacheManager(64, registry.replay_eviction("walru"), dram_blocks=32, native=n)
              for n in (False, True)]
    held: list[list[int]] = []
    for step in range(400):
        now = step * 0.25
        head = int(rng.integers(0, 12)) * 1000
        chain = [head + j for j in range(int(rng.integers(1, 24)))]
        reuse = rng.choice([0.1, 0.5, 0.9], len(chain)).tolist()
        outs = [outcome(c.allocate, chain, now, hints=BlockHints(reuse_prob=reuse),
                        partial=True) for c in caches]
        assert outs[0] == outs[1]
        if outs[0][0] == "ok" and outs[0][1].resident_blocks:
            held.append(chain[: outs[0][1].resident_blocks])
        if rng.random() < 0.3:
            for c in caches:
                c.pin(c.resident(chain), now + 2.0)
        while len(held) > 3:
            seq = held.pop(0)
            for c in caches:
                c.release(seq, now)
        assert caches[0].tick(now) == caches[1].tick(now)
        assert observables(caches[0]) == observables(caches[1])
