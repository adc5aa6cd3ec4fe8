"""saga-policy takes saga-kernels' native path when it is built, with the same answers as its own
NumPy code: victims of random block tables, whole trace replays, and Bélády's next-use hints."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga.kernels import have_native
from saga.policy.block_table import NO_PARENT, BlockTable, Tier
from saga.policy.eviction import WALRUPolicy, belady, walru
from saga.policy.replay import replay_policies
from saga.policy.traces import BUNDLED_AGENT, bundled_trace_path, parse_agent, parse_mooncake

pytestmark = pytest.mark.skipif(not have_native(), reason="native kernels not loaded")


def _table(seed: int, slots: int, ties: bool) -> BlockTable:
    """A forest of HBM blocks with consistent parent/child counts and random hints."""
    rng = np.random.default_rng(seed)
    t = BlockTable.empty(slots, 16)
    for i in range(slots):
        p = int(rng.integers(-1, i)) if i and rng.random() < 0.8 else NO_PARENT
        t.parent[i] = p
        t.depth[i] = t.depth[p] + 1 if p != NO_PARENT else 0
        if p != NO_PARENT:
            t.children_hbm[p] += 1
    t.tier[:] = Tier.HBM
    t.last_access[:] = rng.integers(0, 5, slots) if ties else rng.random(slots) * 100
    known = rng.random(slots) < 0.5
    t.reuse_prob[known] = rng.choice([0.0, 0.5, 1.0], int(known.sum())) if ties else rng.random(
        int(known.sum()))
    sized = rng.random(slots) < 0.2
    t.size_tokens[sized] = rng.integers(1, 200, int(sized.sum()))
    return t


def _victims(monkeypatch: pytest.MonkeyPatch, native: bool, policy: WALRUPolicy,
             table: BlockTable, cands: np.ndarray, k: int, now: float) -> list[int]:
    monkeypatch.setattr(walru, "_NATIVE", native)
    return policy.select_victims(table, cands, k, now).tolist()


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), slots=st.integers(1, 400), ties=st.booleans(),
       frac=st.floats(0.05, 1.0), k=st.integers(1, 500))
def test_walru_victims_equal_with_and_without_native(seed: int, slots: int, ties: bool,
                                                      frac: float, k: int) -> None:
    table = _table(seed, slots, ties)
    rng = np.random.default_rng(seed + 1)
    cands = np.flatnonzero(rng.random(slots) < frac).astype(np.int64)
    policy = WALRUPolicy()
    with pytest.MonkeyPatch.context() as mp:
        got = _victims(mp, True, policy, table, cands, k, 120.0)
        want = _victims(mp, False, policy, table, cands, k, 120.0)
    assert got == want


def test_replays_equal_with_and_without_native(monkeypatch: pytest.MonkeyPatch) -> None:
    with bundled_trace_path().open() as f:
        mooncake = parse_mooncake(f, limit=400)
    with bundled_trace_path(BUNDLED_AGENT).open() as f:
        agent = parse_agent(f)
    agent = replace(agent, requests=agent.requests[:600])
    for trace, capacity in ((mooncake, 600), (agent, 300)):
        runs = []
        for native in (True, False):
            monkeypatch.setattr(walru, "_NATIVE", native)
            monkeypatch.setattr(belady, "_NATIVE", native)
            runs.append(replay_policies(trace, ["walru", "belady"], capacity))
        assert runs[0] == runs[1]
        assert runs[0][0].evictions > 0  # the capacity is small enough to exercise eviction


@settings(max_examples=100, deadline=None)
@given(trace=st.lists(st.lists(st.integers(0, 9), max_size=6), max_size=25))
def test_next_use_positions_equal(trace: list[list[int]]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(belady, "_NATIVE", True)
        got = belady.next_use_positions(trace)
        mp.setattr(belady, "_NATIVE", False)
        assert got == belady.next_use_positions(trace)


def test_next_use_positions_keep_any_hashable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(belady, "_NATIVE", True)
    assert belady.next_use_positions([["a", 1], [1], ["a"]]) == [[2.0, 1.0], [math.inf],
                                                                  [math.inf]]
