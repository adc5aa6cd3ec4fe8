"""Trace replay through CacheManager: hand-checked misses, conservation, the oracle bound."""

from __future__ import annotations

import json
import math

import pytest

from saga.policy.errors import SagaConfigError
from saga.policy.replay import make_policy, replay_policies, replay_trace
from saga.policy.traces import (
    BUNDLED_AGENT,
    Trace,
    TraceRequest,
    bundled_trace_path,
    parse_agent,
    parse_mooncake,
)


def _unit_trace(blocks: list[int]) -> Trace:
    reqs = tuple(TraceRequest(index=i, arrival_s=float(i), input_tokens=512, output_tokens=1,
                              block_hashes=(b,), block_tokens=512)
                 for i, b in enumerate(blocks))
    return Trace(name="unit", block_tokens=512, requests=reqs)


def test_lru_and_belady_misses_by_hand() -> None:
    # A B C A B with room for 2. LRU: every access misses (C evicts A, A evicts B, B evicts C).
    # Bélády: at C, B's next use (4) is farther than A's (3): evict B; then A hits -> 4 misses.
    res = {r.policy: r for r in replay_policies(_unit_trace([1, 2, 3, 1, 2]), ["lru", "belady"],
                                                capacity_blocks=2)}
    assert res["lru"].miss_blocks == 5
    assert res["belady"].miss_blocks == 4
    assert res["lru"].ratio_to_belady == pytest.approx(5 / 4)
    assert res["belady"].ratio_to_belady == 1.0


def test_unbounded_cache_misses_only_first_uses() -> None:
    with bundled_trace_path().open() as fh:
        trace = parse_mooncake(fh, limit=300)
    distinct = len({h for r in trace.requests for h in r.block_hashes})
    for name in ("lru", "prefix_lru", "radix_lru", "walru", "kvflow"):
        # A pool that holds every distinct block never has to evict (a larger one only costs
        # time: the pool is scanned per allocation).
        r = replay_trace(trace, make_policy(name), capacity_blocks=distinct)
        assert r.miss_blocks == distinct, name
        assert r.evictions == 0


def test_conservation_and_belady_lower_bound_on_real_trace() -> None:
    with bundled_trace_path().open() as fh:
        trace = parse_mooncake(fh, limit=400)
    results = replay_policies(trace, ["lru", "prefix_lru", "radix_lru", "walru", "kvflow",
                                      "belady"], capacity_blocks=300)
    oracle = next(r for r in results if r.policy == "belady")
    for r in results:
        assert r.hit_blocks + r.dram_hit_blocks + r.miss_blocks == trace.block_refs
        assert r.hit_tokens + r.recomputed_tokens == r.input_tokens
        assert r.miss_blocks >= oracle.miss_blocks, r.policy
        assert r.ratio_to_belady is not None and r.ratio_to_belady >= 1.0


def test_dram_tier_turns_drops_into_dram_hits() -> None:
    with bundled_trace_path().open() as fh:
        trace = parse_mooncake(fh, limit=400)
    plain = replay_trace(trace, make_policy("lru"), 300)
    tiered = replay_trace(trace, make_policy("lru"), 300, dram_blocks=5000)
    assert plain.dram_hit_blocks == 0
    assert tiered.dram_hit_blocks > 0
    assert tiered.miss_blocks < plain.miss_blocks


def test_workflow_hints_make_walru_beat_lru_on_agent_sessions() -> None:
    # Finished sessions (pending tool `submit`) get P_reuse = 0 from the learned AEG, so WA-LRU
    # drops them first while LRU keeps them by recency. This can fail if the hints are ignored.
    with bundled_trace_path(BUNDLED_AGENT).open() as fh:
        trace = parse_agent(fh, limit=60)
    res = {r.policy: r for r in replay_policies(trace, ["lru", "walru", "belady"], 400)}
    assert res["walru"].miss_blocks < res["lru"].miss_blocks
    blind = replay_trace(trace, make_policy("walru"), 400, workflow=False)
    assert res["walru"].miss_blocks < blind.miss_blocks


def test_bad_arguments() -> None:
    trace = _unit_trace([1])
    with pytest.raises(SagaConfigError, match="valid policies: lru"):
        make_policy("fifo")
    with pytest.raises(SagaConfigError, match="capacity_blocks must be >= 1"):
        replay_trace(trace, make_policy("lru"), 0)
    with pytest.raises(SagaConfigError, match="at least one"):
        replay_policies(trace, [], 1)


def test_result_json_round_trip() -> None:
    (r,) = replay_policies(_unit_trace([1, 1]), ["lru"], 1)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["hit_blocks"] == 1 and d["miss_blocks"] == 1
    assert math.isclose(d["hit_ratio"], 0.5)
