"""Predicted-next-use value in vLLM's structures, without an engine: the leaves-first choice,
the free-block queue on a real ``BlockPool``, and the ``saga_eta`` DRAM-tier policy driven
through vLLM's own ``CPUOffloadingManager``."""

from __future__ import annotations

from typing import Any

import numpy as np
from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_utils import BlockHash, make_block_hash_with_group_id
from vllm.v1.kv_offload.base import ReqContext, make_offload_key
from vllm.v1.kv_offload.cpu.manager import CPUOffloadingManager
from vllm.v1.kv_offload.cpu.policies.factory import CachePolicyFactory

from saga.policy.eviction import ETAPolicy, WALRUPolicy
from saga.policy.nextuse import NextUseEstimator
from saga.vllm.block_queue import WALRUFreeBlockQueue
from saga.vllm.compare import CompareConfig, dram_policy
from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.eta_rank import ChainLinks, ValueRanker, leaves_first
from saga.vllm.offload import offload_engine_kwargs
from saga.vllm.offload_eta import ETA_POLICY_CLASS, SAGA_ETA, ETACachePolicy, NextUseFeed
from saga.vllm.policies import DRAM_WALRU, ETA_VALUE, eviction_enactment
from saga.vllm.testing import ManualClock


def test_leaves_first_takes_a_chain_tail_before_its_head() -> None:
    """The head of a chain is worth least here, yet goes last: vLLM cannot read past a gap."""
    links = ChainLinks(6)
    links.link([0, 1, 2])
    cand = np.array([0, 1, 2, 3, 4], np.int64)
    value = np.array([0.1, 0.5, 0.9, 0.3, 0.7])
    depth = np.array([0, 1, 2, 0, 0], np.int64)
    last = np.zeros(5)
    assert leaves_first(cand, value, depth, last, links, 5).tolist() == [3, 4, 2, 1, 0]
    assert leaves_first(cand, value, depth, last, links, 2).tolist() == [3, 4]
    links.drop([2])  # the tail went: its parent is a leaf now
    assert leaves_first(cand[:2], value[:2], depth[:2], last[:2], links, 1).tolist() == [1]


def _pool(clock: ManualClock, ranker: ValueRanker | None) -> tuple[Any, WALRUFreeBlockQueue]:
    pool = BlockPool(num_gpu_blocks=12, enable_caching=True, hash_block_size=32)
    kw: dict[str, Any] = {"ranker": ranker} if ranker is not None else {}
    return pool, WALRUFreeBlockQueue.replace_in(pool, clock, walru=False, block_size=32, **kw)


def _serve(pool: Any, ranker: ValueRanker | None, name: str, clock: ManualClock,
           **session: Any) -> list[int]:
    """One call of four full blocks, cached and observed, then freed as vLLM frees them."""
    blocks = pool.get_new_blocks(4)
    for depth, block in enumerate(blocks):
        pool._insert_block_hash(make_block_hash_with_group_id(
            BlockHash(f"{name}{depth}".encode()), 0), block, num_tokens=32 * (depth + 1))
    ids = [b.block_id for b in blocks]
    if ranker is not None:
        ranker.observe_request(ids, [hash(f"{name}{d}") for d in range(4)], clock(),
                               session_id=name, **session)
    pool.free_blocks(reversed(blocks))
    return ids


def test_queue_evicts_the_ended_session_before_the_one_in_a_tool() -> None:
    victims, ids = {}, {}
    for mode in ("lru", "eta"):
        clock = ManualClock(0.0)
        ranker = ValueRanker(NextUseEstimator()) if mode == "eta" else None
        pool, queue = _pool(clock, ranker)
        a = _serve(pool, ranker, "A", clock, pending_tool="bash", reuse_prob=0.95)
        clock.t = 1.0
        b = _serve(pool, ranker, "B", clock, final=True)
        clock.t = 2.0
        assert queue.ranked == (mode == "eta")
        got = [blk.block_id for blk in pool.get_new_blocks(3 + 2)]  # 3 hash-less first
        victims[mode] = got[3:]
        ids[mode] = (a, b)
        if mode == "eta":
            assert ranker is not None and not ranker._bound[got[3:]].any()
    a, _ = ids["lru"]
    assert victims["lru"] == [a[3], a[2]]  # vLLM: the older session, tail first
    _, b = ids["eta"]
    assert victims["eta"] == [b[3], b[2]]  # value: the ended session, tail first


def test_enactment_and_config_select_the_value_ranking() -> None:
    e = eviction_enactment(ETAPolicy())
    assert e.mode == ETA_VALUE and e.dram_policy == SAGA_ETA and not e.native
    assert isinstance(e.queue_kwargs["ranker"], ValueRanker)
    assert eviction_enactment(WALRUPolicy()).dram_policy == DRAM_WALRU
    assert not SagaSchedulerConfig.from_preset("saga_eta").stock
    assert dram_policy(CompareConfig(saga_overrides={"preset": "saga_eta"})) == SAGA_ETA
    assert dram_policy(CompareConfig()) == DRAM_WALRU
    extra = offload_engine_kwargs(1 << 20, SAGA_ETA, host_worker=False)[
        "kv_transfer_config"].kv_connector_extra_config
    assert (extra["eviction_policy"], extra["cache_policy_module_path"]) == (
        ETA_POLICY_CLASS, "saga.vllm.offload_eta")
    mgr = CPUOffloadingManager(num_chunks=4, cache_policy=extra["eviction_policy"],
                               cache_policy_module_path=extra["cache_policy_module_path"])
    assert isinstance(mgr._policy, ETACachePolicy)
    assert CachePolicyFactory.get_cache_policy_cls(SAGA_ETA) is ETACachePolicy


def _keys(name: str, n: int) -> list[bytes]:
    return [make_offload_key(f"{name}{i}".encode(), 0) for i in range(n)]


def _store(mgr: CPUOffloadingManager, keys: list[bytes]) -> list[bytes]:
    c = ReqContext(req_id="r", kv_transfer_params=None)
    out = mgr.prepare_store(keys, c)
    assert out is not None
    mgr.complete_store(out.keys_to_store, c)
    return list(out.evicted_keys)


def test_dram_policy_evicts_by_value_through_vllms_manager() -> None:
    clock = ManualClock(0.0)
    feed = NextUseFeed(clock, block_tokens=32)
    mgr = CPUOffloadingManager(num_chunks=9, cache_policy=SAGA_ETA)
    policy = mgr._policy
    assert isinstance(policy, ETACachePolicy)
    policy.bind_feed(feed)
    chains = {name: _keys(name, 3) for name in "ABC"}
    for keys in chains.values():
        assert _store(mgr, keys) == []
    hashes = {name: [f"{name}{i}".encode() for i in range(3)] for name in "ABC"}
    feed.observe(hashes["A"], 0.0, session_id="A", pending_tool="bash", reuse_prob=0.95)
    feed.observe(hashes["B"], 0.5, session_id="B", final=True)
    feed.call_started("C", 0.9)
    feed.observe(hashes["C"], 1.0, session_id="C", pending_tool="bash", reuse_prob=0.95)
    clock.t = 2.0
    # The ended session goes first, tail first; the session in a tool keeps its chunks.
    assert _store(mgr, _keys("D", 3)) == chains["B"][::-1]
    # Calls of C and D arrive: their chunks are wanted now, A's only when its tool returns.
    feed.observe([f"D{i}".encode() for i in range(3)], 2.0,
                 session_id="D", pending_tool="bash", reuse_prob=0.95)
    feed.call_started("C", 2.5)
    feed.call_started("D", 2.5)
    clock.t = 3.0
    assert _store(mgr, _keys("E", 3)) == chains["A"][::-1]
    # An ended session learnt through the feed without a call in flight.
    feed.session_ended("C", 3.0)
    assert policy.estimator.session_next_use("C", 3.5) == float("inf")
    mgr.reset_cache()
    assert _store(mgr, _keys("F", 9)) == []
