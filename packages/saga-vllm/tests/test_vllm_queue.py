"""WA-LRU free-block queue on a real vLLM BlockPool, SAGA's waiting queue, and the pin table."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_utils import BlockHash, make_block_hash_with_group_id

from saga.policy.afs import AFS
from saga.policy.autellix import ATLAS, PLAS
from saga.policy.eviction.walru import walru_score
from saga.policy.pins import Pin, PinTable
from saga.policy.queueing import (
    BFSQueue,
    DFSQueue,
    FCFSQueue,
    HybridQueue,
    ProgramFCFSQueue,
    QueuedRequest,
)
from saga.vllm.block_queue import WALRUFreeBlockQueue
from saga.vllm.scheduler import SagaRequestQueue


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make_pool(n: int, clock: Clock, walru: bool = True) -> tuple[Any, WALRUFreeBlockQueue]:
    pool = BlockPool(num_gpu_blocks=n, enable_caching=True, hash_block_size=32)
    queue = WALRUFreeBlockQueue.replace_in(pool, clock, walru=walru, block_size=32)
    return pool, queue


def cache(pool: Any, block: Any, key: bytes, depth: int) -> None:
    """Give a block a prefix hash, as vLLM does when it fills up."""
    pool._insert_block_hash(make_block_hash_with_group_id(BlockHash(key), 0), block,
                            num_tokens=32 * depth)


def test_replace_keeps_the_free_list() -> None:
    clock = Clock()
    pool, queue = make_pool(8, clock)
    assert pool.free_block_queue is queue
    assert queue.num_free_blocks == 7  # block 0 is vLLM's null block
    assert [b.block_id for b in queue.get_all_free_blocks()] == list(range(1, 8))
    assert sorted(queue.free_block_ids().tolist()) == list(range(1, 8))


def test_walru_order_matches_the_score_by_hand() -> None:
    clock = Clock()
    pool, queue = make_pool(8, clock)
    a, b, c = pool.get_new_blocks(3)
    for blk, key, depth in ((a, b"a", 1), (b, b"b", 2), (c, b"c", 1)):
        cache(pool, blk, key, depth)
    # The other 4 free blocks were never hashed: they go first.
    queue.set_reuse([a.block_id], 0.9)
    queue.set_reuse([b.block_id], 0.0)
    queue.set_reuse([c.block_id], 0.5)
    clock.t = 0.0
    pool.free_blocks([a])
    clock.t = 5.0
    pool.free_blocks([b])
    clock.t = 10.0
    pool.free_blocks([c])
    # R̂ = age / 10: a 1, b .5, c 0; Ŝ = prefix / 64: a .5, b 1, c .5.
    # a: .3*1 + .5*.1 + .2*.5 = .45; b: .3*.5 + .5*1 + .2*1 = .85; c: 0 + .25 + .1 = .35
    assert walru_score(1.0, 0.9, 0.5) == pytest.approx(0.45)
    ids = queue.free_block_ids()
    cached = np.array([a.block_id, b.block_id, c.block_id])
    assert queue.scores(cached) == pytest.approx([0.45, 0.85, 0.35])
    assert len(ids) == 7
    first = pool.get_new_blocks(4)
    assert all(blk.block_id not in cached for blk in first)  # hash-less blocks first
    order = [pool.get_new_blocks(1)[0].block_id for _ in range(3)]
    assert order == [b.block_id, a.block_id, c.block_id]  # LRU would give a, b, c
    assert a.block_hash is None and pool.get_num_free_blocks() == 0


def test_kvflow_order_evicts_the_furthest_session_first() -> None:
    clock = Clock()
    pool = BlockPool(num_gpu_blocks=5, enable_caching=True, hash_block_size=32)
    queue = WALRUFreeBlockQueue.replace_in(pool, clock, walru=False, steps=True, block_size=32)
    blocks = pool.get_new_blocks(4)
    for i, blk in enumerate(blocks):
        cache(pool, blk, bytes([i]), 1)
    near, far, never, unknown = blocks
    queue.set_steps([near.block_id], 1.0)
    queue.set_steps([far.block_id], 3.0)
    queue.set_steps([never.block_id], float("inf"))
    for t, blk in enumerate((unknown, never, far, near)):
        clock.t = float(t)
        pool.free_blocks([blk])
    order = [pool.get_new_blocks(1)[0].block_id for _ in range(4)]
    # Unknown and never-again go first (oldest free first among them), then the farthest.
    assert order == [unknown.block_id, never.block_id, far.block_id, near.block_id]
    with pytest.raises(ValueError, match="not both"):
        WALRUFreeBlockQueue.replace_in(pool, clock, walru=True, steps=True)


def test_walru_off_is_vllm_order() -> None:
    """The same random operations on a stock pool and a walru=False pool agree exactly."""
    rng = np.random.default_rng(0)
    clock = Clock()
    stock = BlockPool(num_gpu_blocks=40, enable_caching=True, hash_block_size=32)
    pool, _ = make_pool(40, clock, walru=False)
    held: list[tuple[Any, Any]] = []
    for step in range(300):
        clock.t = float(step)
        if held and (rng.random() < 0.45 or stock.get_num_free_blocks() < 4):
            i = int(rng.integers(len(held)))
            x, y = held.pop(i)
            stock.free_blocks([x])
            pool.free_blocks([y])
        else:
            x, y = stock.get_new_blocks(1)[0], pool.get_new_blocks(1)[0]
            assert x.block_id == y.block_id
            if rng.random() < 0.6:
                cache(stock, x, bytes([step % 256, step // 256]), 1)
                cache(pool, y, bytes([step % 256, step // 256]), 1)
            held.append((x, y))
    assert [b.block_id for b in stock.free_block_queue.get_all_free_blocks()] == \
        [b.block_id for b in pool.free_block_queue.get_all_free_blocks()]


def test_touch_and_counts_stay_consistent() -> None:
    clock = Clock()
    pool, queue = make_pool(6, clock)
    blocks = pool.get_new_blocks(3)
    for i, blk in enumerate(blocks):
        cache(pool, blk, bytes([i]), i + 1)
    pool.free_blocks(reversed(blocks))
    pool.touch([blocks[1]])  # a prefix hit takes a free block out
    assert queue.num_free_blocks == 4 == len(queue.free_block_ids())
    assert blocks[1].block_id not in queue.free_block_ids()
    got = pool.get_new_blocks(4)
    assert blocks[1] not in got and queue.num_free_blocks == 0
    with pytest.raises(ValueError):
        pool.get_new_blocks(1)


def test_popleft_n_is_vectorised() -> None:
    clock = Clock()
    pool, _ = make_pool(20_001, clock)
    blocks = pool.get_new_blocks(20_000)
    for i, blk in enumerate(blocks):
        cache(pool, blk, i.to_bytes(4, "little"), 1 + i % 8)
    pool.free_blocks(blocks)
    start = time.perf_counter()
    for _ in range(100):
        pool.free_blocks(pool.get_new_blocks(8))
    assert time.perf_counter() - start < 5.0


def req(rid: str, arrival: float) -> Any:
    return SimpleNamespace(request_id=rid, arrival_time=arrival)


def describer(sessions: dict[str, tuple[str, int]],
              tenants: dict[str, str] | None = None) -> Any:
    def describe(r: Any) -> QueuedRequest:
        session, steps = sessions[r.request_id]
        return QueuedRequest(r.request_id, session, r.arrival_time, steps_done=steps,
                             tenant=(tenants or {}).get(session, "default"))
    return describe


def drain(q: SagaRequestQueue) -> list[str]:
    out = []
    while q:
        peeked = q.peek_request()
        popped = q.pop_request()
        assert peeked is popped
        out.append(popped.request_id)
    return out


def test_bfs_dfs_orders_and_front() -> None:
    sessions = {"a1": ("A", 3), "b1": ("B", 0), "c1": ("C", 1)}
    reqs = [req("a1", 1.0), req("b1", 2.0), req("c1", 3.0)]
    bfs = SagaRequestQueue(BFSQueue(), describer(sessions))
    dfs = SagaRequestQueue(DFSQueue(), describer(sessions))
    for r in reqs:
        bfs.add_request(r)
        dfs.add_request(r)
    assert len(bfs) == 3 and [r.request_id for r in bfs] == ["a1", "b1", "c1"]
    # vLLM puts a preempted request back at the front, ahead of any policy order.
    first = bfs.pop_request()
    assert first.request_id == "b1"
    bfs.prepend_request(first)
    assert drain(bfs) == ["b1", "c1", "a1"]
    assert drain(dfs) == ["a1", "c1", "b1"]


def test_lazy_removal_and_hybrid() -> None:
    sessions = {"a1": ("A", 0), "a2": ("A", 1), "b1": ("B", 0)}
    q = SagaRequestQueue(HybridQueue(max_active=1), describer(sessions))
    for r in (req("a1", 1.0), req("b1", 2.0)):
        q.add_request(r)
    assert q.peek_request().request_id == "a1"
    q.remove_requests([q.peek_request()])
    assert len(q) == 1 and drain(q) == ["b1"]
    with pytest.raises(IndexError):
        q.peek_request()


def test_afs_picks_the_urgent_session_across_tenants() -> None:
    afs = AFS(capacity_per_s=100.0)
    afs.add_task("slow", "t1", work=100.0, deadline_s=1000.0)
    afs.add_task("urgent", "t2", work=100.0, deadline_s=2.0)
    sessions = {"s1": ("slow", 0), "s2": ("slow", 1), "u1": ("urgent", 0)}
    tenants = {"slow": "t1", "urgent": "t2"}
    q = SagaRequestQueue(FCFSQueue(), describer(sessions, tenants), afs=afs, clock=lambda: 0.0)
    for r in (req("s1", 1.0), req("s2", 1.5), req("u1", 2.0)):
        q.add_request(r)
    # Two tenants wait: AFS serves the urgent task first; then one tenant is left and the
    # queue's own order (FCFS) decides, as in the simulator.
    assert drain(q) == ["u1", "s1", "s2"]
    assert q.session_count() == 0 and q.served_count() == 3


def test_afs_leaves_one_tenant_to_the_queue_order() -> None:
    afs = AFS(capacity_per_s=100.0)
    afs.add_task("deep", "t", work=100.0, deadline_s=1000.0)
    afs.add_task("urgent", "t", work=100.0, deadline_s=2.0)
    sessions = {"d1": ("deep", 5), "u1": ("urgent", 0)}
    q = SagaRequestQueue(DFSQueue(), describer(sessions), afs=afs, clock=lambda: 0.0)
    q.add_request(req("u1", 1.0))
    q.add_request(req("d1", 2.0))
    assert drain(q) == ["d1", "u1"]  # one tenant: depth first, whatever AFS would say


@pytest.mark.parametrize("order", [PLAS(), ATLAS()], ids=["plas", "atlas"])
def test_attained_service_orders_run_behind_vllms_interface(order: Any) -> None:
    """PLAS/ATLAS: a program that already got service waits behind a fresh one; the service
    comes back through ``on_finished`` (engine seconds), as the simulator feeds it."""
    sessions = {"a1": ("A", 0), "a2": ("A", 1), "b1": ("B", 0)}
    q = SagaRequestQueue(order, describer(sessions), order_clock=lambda: 0.0)
    q.add_request(req("a1", 0.0))
    assert drain(q) == ["a1"]
    q.on_finished("a1", 10.0)  # program A attained 10 s of service
    q.add_request(req("a2", 1.0))
    q.add_request(req("b1", 2.0))
    assert drain(q) == ["b1", "a2"]
    for rid in ("a2", "b1"):
        q.on_finished(rid, 1.0)
    q.on_task_done("A")
    q.on_task_done("B")
    assert q.served_count() == 0 and q.session_count() == 0


def test_program_fcfs_orders_by_task_start() -> None:
    def describe(r: Any) -> QueuedRequest:
        session, start = {"late1": ("L", 5.0), "old2": ("O", 0.0)}[r.request_id]
        return QueuedRequest(r.request_id, session, r.arrival_time, task_start_s=start)
    q = SagaRequestQueue(ProgramFCFSQueue(), describe)
    q.add_request(req("late1", 6.0))
    q.add_request(req("old2", 7.0))
    assert drain(q) == ["old2", "late1"]  # the older task's call first, though it came later


def test_pin_table() -> None:
    table = PinTable()
    assert table.add(Pin("a", "bash", [1, 2], 0.0, 10.0)) is None
    assert table.add(Pin("b", "web", [3], 0.0, 5.0)) is None
    assert table.pinned_blocks == 3 and len(table) == 2 and "a" in table
    old = table.add(Pin("a", "bash", [4], 1.0, 20.0))
    assert old is not None and old.blocks == [1, 2]
    assert table.pinned_blocks == 2
    assert table.earliest() is not None and table.earliest().session_id == "b"  # type: ignore[union-attr]
    assert [p.session_id for p in table.pop_expired(6.0)] == ["b"]
    assert table.pop_expired(19.0) == []
    assert table.pop_earliest() is not None and len(table) == 0 and table.pinned_blocks == 0
