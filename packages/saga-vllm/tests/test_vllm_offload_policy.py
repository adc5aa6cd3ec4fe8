"""WA-LRU as a vLLM DRAM-tier cache policy, driven through vLLM's own CPUOffloadingManager."""

from __future__ import annotations

import math

import numpy as np
import pytest
from vllm.v1.kv_offload.base import LookupResult, ReqContext, make_offload_key
from vllm.v1.kv_offload.cpu.manager import CPUOffloadingManager
from vllm.v1.kv_offload.cpu.policies.base import CachePolicy, ChunkStatus
from vllm.v1.kv_offload.cpu.policies.factory import CachePolicyFactory

from saga.policy.errors import SagaConfigError
from saga.policy.eviction.walru import UNKNOWN_REUSE, WALRU_ALPHA, WALRU_BETA, WALRU_GAMMA
from saga.vllm.offload import (
    POLICY_CLASS,
    REUSE_PARAM,
    SAGA_WALRU,
    OffloadReuseHints,
    WALRUCachePolicy,
    bind_reuse_hints,
    offload_engine_kwargs,
)


def keys(ids: list[int]) -> list[bytes]:
    return [make_offload_key(str(i).encode(), 0) for i in ids]


def ctx(name: str = "r", positions: dict[int, int] | None = None,
        params: dict[str, object] | None = None) -> ReqContext:
    c = ReqContext(req_id=name, kv_transfer_params=params)
    for i, pos in (positions or {}).items():
        c.set_offload_key_position(keys([i])[0], pos)
    return c


def ready(chunk_id: int = 0) -> ChunkStatus:
    """A stored, idle chunk (vLLM creates chunks "not ready", ref_cnt -1)."""
    chunk = ChunkStatus(chunk_id)
    chunk.ref_cnt = 0
    return chunk


def walru_manager(num_chunks: int, hints: OffloadReuseHints | None = None) -> CPUOffloadingManager:
    mgr = CPUOffloadingManager(num_chunks=num_chunks, cache_policy=SAGA_WALRU)
    if hints is not None:
        mgr._policy = WALRUCachePolicy(num_chunks, hints=hints)
    return mgr


def store(mgr: CPUOffloadingManager, ids: list[int], c: ReqContext | None = None) -> list[bytes]:
    """prepare_store + complete_store; returns the evicted keys."""
    c = c or ctx()
    out = mgr.prepare_store(keys(ids), c)
    assert out is not None
    mgr.complete_store(out.keys_to_store, c)
    return list(out.evicted_keys)


# --- registry -------------------------------------------------------------------------------

def test_registered_in_vllm_registry_by_name_and_module_path() -> None:
    assert CachePolicyFactory.get_cache_policy_cls(SAGA_WALRU) is WALRUCachePolicy
    assert CachePolicyFactory.get_cache_policy_cls(
        POLICY_CLASS, "saga.vllm.offload") is WALRUCachePolicy
    assert issubclass(WALRUCachePolicy, CachePolicy)
    mgr = CPUOffloadingManager(num_chunks=4, cache_policy=POLICY_CLASS,
                               cache_policy_module_path="saga.vllm.offload")
    assert isinstance(mgr._policy, WALRUCachePolicy)


# --- vLLM's manager call sequence (its LRU test): without hints WA-LRU must match LRU ---------

def _scripted_sequence(policy: str) -> list[object]:
    """vLLM's ``test_cpu_manager`` call sequence, recording every observable result."""
    mgr = CPUOffloadingManager(num_chunks=4, cache_policy=policy, enable_events=True)
    c = ctx()
    seen: list[object] = []

    def prep(ids: list[int]) -> None:
        out = mgr.prepare_store(keys(ids), c)
        seen.append(None if out is None else (out.keys_to_store, out.store_spec.block_ids.tolist(),
                                              out.evicted_keys))

    prep([1, 2])
    seen.append(mgr.lookup(keys([1])[0], c))
    mgr.complete_store(keys([1, 2]), c)
    seen.append([mgr.lookup(k, c) for k in keys([1, 2, 3])])
    prep([2, 3, 4, 5])
    prep([1, 6])
    mgr.complete_store(keys([2, 3, 4, 5]), c)
    seen.append(mgr.prepare_load(keys([2, 3]), c).block_ids.tolist())
    prep([6, 7, 8])
    mgr.complete_load(keys([2, 3]), c)
    prep([6, 7, 8])
    mgr.complete_store(keys([6, 7, 8]), c)
    mgr.touch(keys([5, 6, 7]), c)
    prep([9])
    mgr.complete_store(keys([7, 9]), c, success=False)
    seen.append([mgr.lookup(k, c) for k in keys([7, 9])])
    seen.append([(e.keys, e.removed) for e in mgr.take_events()])
    return seen


def test_manager_contract_matches_lru_without_hints() -> None:
    walru = _scripted_sequence(SAGA_WALRU)
    assert walru == _scripted_sequence("lru")
    # The values vLLM's own test expects of LRU.
    assert walru[0] == (keys([1, 2]), [0, 1], [])
    assert walru[3] == (keys([3, 4, 5]), [2, 3, 0], keys([1]))
    assert walru[4] is None  # no space: everything else is pending
    assert walru[5] == [1, 2]
    assert walru[6] is None  # [2, 3] are being loaded
    assert walru[7] == (keys([6, 7, 8]), [3, 2, 1], keys([2, 3, 4]))
    assert walru[8] == (keys([9]), [1], keys([8]))
    assert walru[9] == [LookupResult.HIT, LookupResult.MISS]


def test_already_stored_key_is_protected() -> None:
    mgr = walru_manager(4)
    store(mgr, [1, 2])
    mgr.touch(keys([1]), ctx())
    out = mgr.prepare_store(keys([2, 3, 4, 5]), ctx())
    assert out is not None
    assert out.keys_to_store == keys([3, 4, 5])
    assert out.evicted_keys == keys([1])  # 2 is older but part of the offer


# --- the WA-LRU score -----------------------------------------------------------------------

def test_scores_are_walru_formula_by_hand() -> None:
    hints = OffloadReuseHints()
    policy = WALRUCachePolicy(8, hints=hints)
    c = ctx(positions={1: 32, 2: 64, 3: 96})
    policy.on_store_miss(keys([1, 2, 3]), c)
    for k in keys([1, 2, 3]):
        policy.insert(k, ready())
    hints.set([b"2"], 0.9)
    # ticks: 1, 2, 3; clock 3 → ages 2, 1, 0; sizes 32, 64, 96.
    s = policy.scores(np.array([policy._slot[k] for k in keys([1, 2, 3])]))
    a, b, g = WALRU_ALPHA, WALRU_BETA, WALRU_GAMMA
    expected = [a * 1.0 + b * (1 - UNKNOWN_REUSE) + g * (32 / 96),
                a * 0.5 + b * (1 - 0.9) + g * (64 / 96),
                a * 0.0 + b * (1 - UNKNOWN_REUSE) + g * 1.0]
    assert s.tolist() == pytest.approx(expected)
    assert [k for k, _ in policy.evict(1, set()) or []] == keys([1])


def test_hinted_low_reuse_goes_first_even_when_recent() -> None:
    hints = OffloadReuseHints()
    mgr = walru_manager(6, hints)
    store(mgr, [1, 2, 3], ctx("a", {1: 32, 2: 64, 3: 96}))  # session A, older
    store(mgr, [4, 5, 6], ctx("b", {4: 32, 5: 64, 6: 96}))  # session B, newer
    hints.set([b"4", b"5", b"6"], 0.0)  # B finished: its KV will not be reused
    hints.set([b"1", b"2", b"3"], 1.0)  # A waits on a tool
    assert store(mgr, [7, 8], ctx("c", {7: 32, 8: 64})) == keys([6, 5])
    assert mgr.lookup(keys([1])[0], ctx()) == LookupResult.HIT


def test_each_engine_reads_only_its_own_table() -> None:
    """Two engines' DRAM tiers in one process: each policy reads the table its engine bound,
    and a policy vLLM built alone starts with a private one (no process-wide table). The real
    engine's binding through its connector is in test_vllm_0_offload_engine.py."""
    first, second = walru_manager(4), walru_manager(4)
    assert first._policy.hints is not second._policy.hints
    for mgr in (first, second):
        store(mgr, [1, 2])
    mine, theirs = OffloadReuseHints(), OffloadReuseHints()
    mine.set([b"1"], 0.25)  # known before binding: resident chunks take it at once
    for mgr, table in ((first, mine), (second, theirs)):
        policy = mgr._policy
        assert isinstance(policy, WALRUCachePolicy)
        policy.bind_hints(table)  # what SagaScheduler does through its connector
    mine.set([b"2"], 0.75)

    def reuse(mgr: CPUOffloadingManager, i: int) -> float:
        policy = mgr._policy
        assert isinstance(policy, WALRUCachePolicy)
        return float(policy._reuse[policy._slot[keys([i])[0]]])

    assert (reuse(first, 1), reuse(first, 2)) == (0.25, 0.75)
    assert np.isnan(reuse(second, 1)) and np.isnan(reuse(second, 2))
    assert bind_reuse_hints(None, mine) == []  # an engine without a KV connector


def test_request_reuse_param_and_table_priority() -> None:
    hints = OffloadReuseHints()
    mgr = walru_manager(4, hints)
    store(mgr, [1, 2], ctx("a", params={REUSE_PARAM: 0.0}))
    store(mgr, [3, 4], ctx("b", params={REUSE_PARAM: 1.0}))
    policy = mgr._policy
    assert isinstance(policy, WALRUCachePolicy)
    assert policy._reuse[policy._slot[keys([1])[0]]] == 0.0
    assert store(mgr, [5], ctx("c")) == keys([1])
    hints.set([b"2"], 1.0)  # the table overrides the requests' values
    hints.set([b"4"], 0.0)
    assert store(mgr, [6], ctx("d")) == keys([4])
    # A malformed request value is "no prediction", never an error inside the engine step.
    fresh = WALRUCachePolicy(4, hints=OffloadReuseHints())
    for i, bad in enumerate((2.0, -0.1, "high", True, None)):
        k = keys([10 + i])[0]
        fresh.on_store_miss([k], ctx("e", params={REUSE_PARAM: bad}))
        fresh.insert(k, ready())
        assert np.isnan(fresh._reuse[fresh._slot[k]])


def test_tail_before_head_within_a_prefix() -> None:
    mgr = walru_manager(4)
    c = ctx("a", {1: 32, 2: 64, 3: 96, 4: 128})
    store(mgr, [1, 2, 3, 4], c)
    mgr.on_request_finished(c)  # re-ranks tail to head: head most recent
    assert store(mgr, [5, 6], ctx("b", {5: 32, 6: 64})) == keys([4, 3])


def test_pinned_and_protected_chunks_are_never_victims_and_failure_is_atomic() -> None:
    policy = WALRUCachePolicy(4, hints=OffloadReuseHints())
    for k in keys([1, 2, 3]):
        policy.insert(k, ready())
    policy.mark_non_evictable(keys([1])[0])
    assert policy.evict(2, {keys([2])[0]}) is None
    assert all(policy.get(k) is not None for k in keys([1, 2, 3]))
    victims = policy.evict(1, {keys([2])[0]})
    assert victims is not None and [k for k, _ in victims] == keys([3])
    assert policy.evict(0, set()) == []


def test_grows_past_capacity_remove_and_clear() -> None:
    policy = WALRUCachePolicy(1, hints=OffloadReuseHints())
    ids = list(range(40))
    for k in keys(ids):
        policy.insert(k, ready())
    policy.remove(keys([0])[0])
    assert policy.get(keys([0])[0]) is None
    victims = policy.evict(39, set())
    assert victims is not None and [k for k, _ in victims] == keys(ids[1:])
    policy.insert(keys([1])[0], ready())
    policy.clear()
    assert policy.get(keys([1])[0]) is None and policy.evict(1, set()) is None


def test_large_batch_eviction_picks_exactly_n_oldest() -> None:
    policy = WALRUCachePolicy(20_000, hints=OffloadReuseHints())
    ks = [make_offload_key(i.to_bytes(8, "little"), 0) for i in range(20_000)]
    for k in ks:
        policy.insert(k, ready())
    victims = policy.evict(5_000, set())
    assert victims is not None and [k for k, _ in victims] == ks[:5_000]


# --- hint table and helper ------------------------------------------------------------------

def test_hint_table_validation_bound_and_forget() -> None:
    hints = OffloadReuseHints(max_entries=2)
    with pytest.raises(SagaConfigError, match="reuse_prob"):
        hints.set([b"x"], 1.5)
    with pytest.raises(SagaConfigError, match="reuse_prob"):
        hints.set([b"x"], math.nan)
    hints.set([b"a", b"b", b"c"], 0.25)
    assert len(hints) == 2 and hints.get(b"a") is None and hints.get(b"c") == 0.25
    hints.forget([b"c"])
    assert hints.get(b"c") is None
    hints.clear()
    assert len(hints) == 0
    with pytest.raises(SagaConfigError, match="max_entries"):
        OffloadReuseHints(max_entries=0)


def test_offload_engine_kwargs() -> None:
    kw = offload_engine_kwargs(1 << 20, host_worker=False)
    cfg = kw["kv_transfer_config"]
    assert cfg.kv_connector == "OffloadingConnector" and cfg.kv_role == "kv_both"
    assert cfg.kv_connector_extra_config == {
        "cpu_bytes_to_use": 1 << 20, "eviction_policy": POLICY_CLASS,
        "cache_policy_module_path": "saga.vllm.offload"}
    host = offload_engine_kwargs(1 << 20, "arc", blocks_per_chunk=2, host_worker=True)
    extra = host["kv_transfer_config"].kv_connector_extra_config
    assert extra["eviction_policy"] == "arc" and extra["blocks_per_chunk"] == 2
    assert extra["spec_name"] == "HostOffloadingSpec"
    assert extra["spec_module_path"] == "saga.vllm.offload_host"
    with pytest.raises(SagaConfigError, match="cpu_bytes"):
        offload_engine_kwargs(0)
    with pytest.raises(SagaConfigError, match="blocks_per_chunk"):
        offload_engine_kwargs(1, blocks_per_chunk=0)
