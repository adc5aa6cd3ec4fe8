"""Predicted-next-use value ranking of cached blocks, for vLLM's free-block queue and DRAM tier.

saga-policy's ``eta`` eviction (:class:`~saga.policy.eviction.eta.ETAPolicy`) drops the block
with the lowest :func:`~saga.policy.nextuse.block_value` first: ``P_reuse · saved / (size · Δt)``
with ``Δt`` the time until the block's predicted next use (:class:`NextUseEstimator`). In an
engine the estimator learns from what the scheduler sees: a call's arrival (its session's KV is
wanted now), its finish (the blocks it read, its session, the tool it now waits on, its reuse
probability, whether it was the last call). This module holds that ranking without any vLLM
import, so it can be tested and reused by both tiers:

- :class:`ChainLinks`: which cached block extends which. vLLM's prefix lookup stops at the first
  missing block, so a block with a cached child is not evictable until the child is gone:
  eviction takes leaves only, and a leaf's parent becomes a candidate once its last child goes.
- :func:`leaves_first`: the ``n`` victims of the lowest value among leaves, exposing parents as
  it goes (ties: deepest first, then least recently used, as ``ETAPolicy``).
- :class:`ValueRanker`: the free-block queue's ranker; slots are vLLM block ids.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from saga.policy.eviction.eta import ETAPolicy
from saga.policy.nextuse import NextUseEstimator, block_value, recompute_flops
from saga.policy.spec import LLAMA3_70B, ModelSpec

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class ChainLinks:
    """Parent links between cached blocks by slot, with a count of cached children per slot.

    A slot's generation changes whenever its content goes (:meth:`drop`), so a child whose
    parent slot was reused for other content no longer counts towards (or exposes) it.
    """

    def __init__(self, slots: int) -> None:
        self.parent: IntArray = np.full(slots, -1, np.int64)
        self.parent_gen: IntArray = np.zeros(slots, np.int64)
        self.gen: IntArray = np.zeros(slots, np.int64)
        self.children: IntArray = np.zeros(slots, np.int64)

    def linked(self, slot: int) -> int:
        """The slot's live parent (-1: none, or the parent's content has gone)."""
        p = int(self.parent[slot])
        if p >= 0 and self.parent_gen[slot] == self.gen[p]:
            return p
        return -1

    def link(self, chain: Sequence[int]) -> None:
        """One request's cached blocks, head first (-1 where a block is not held)."""
        for prev, cur in itertools.pairwise(chain):
            if prev < 0 or cur < 0 or self.linked(cur) == prev:
                continue
            self._unlink(cur)
            self.parent[cur] = prev
            self.parent_gen[cur] = self.gen[prev]
            self.children[prev] += 1

    def _unlink(self, slot: int) -> None:
        p = self.linked(slot)
        if p >= 0 and self.children[p] > 0:
            self.children[p] -= 1
        self.parent[slot] = -1

    def drop(self, slots: Sequence[int]) -> None:
        """These slots' contents left the cache: unlink them, forget their children."""
        for s in slots:
            self._unlink(s)
            self.gen[s] += 1
            self.children[s] = 0


def leaves_first(cand: IntArray, value: FloatArray, depth: IntArray, last: FloatArray,
                 links: ChainLinks, n: int) -> IntArray:
    """The ``n`` slots of ``cand`` to evict, in order: the lowest ``value`` among leaves (no
    cached child), a parent joining once its last child is taken; ties deepest first, then the
    smallest ``last`` (least recently used). ``value``, ``depth``, ``last`` align with ``cand``.

    O(len(cand) + n log n): only the ``n`` best initial leaves are sorted; parents they expose
    go to a heap. Should the links be inconsistent (no leaf left), the rest go by the same key.
    """
    n = min(n, int(cand.size))
    if n <= 0:
        return np.zeros(0, np.int64)
    pos = {int(s): i for i, s in enumerate(cand.tolist())}
    leaf = np.flatnonzero(links.children[cand] == 0)
    if leaf.size > n:
        part = np.argpartition(value[leaf], n - 1)[:n]
        kth = float(value[leaf[part]].max())
        leaf = leaf[value[leaf] <= kth]
    leaf = leaf[np.lexsort((last[leaf], -depth[leaf], value[leaf]))][:n].tolist()

    def key(i: int) -> tuple[float, int, float, int]:
        return (float(value[i]), -int(depth[i]), float(last[i]), i)

    taken = np.zeros(cand.size, np.bool_)
    remaining: dict[int, int] = {}
    heap: list[tuple[float, int, float, int]] = []
    out: list[int] = []
    a = 0
    while len(out) < n:
        if heap and (a >= len(leaf) or heap[0] < key(leaf[a])):
            i = heapq.heappop(heap)[3]
        elif a < len(leaf):
            i = leaf[a]
            a += 1
        else:
            break
        taken[i] = True
        out.append(i)
        p = links.linked(int(cand[i]))
        j = pos.get(p, -1) if p >= 0 else -1
        if j >= 0 and not taken[j]:
            left = remaining.get(p, int(links.children[p])) - 1
            remaining[p] = left
            if left <= 0:
                heapq.heappush(heap, key(j))
    if len(out) < n:
        rest = np.flatnonzero(~taken)
        order = np.lexsort((last[rest], -depth[rest], value[rest]))
        out.extend(rest[order][: n - len(out)].tolist())
    result: IntArray = cand[np.asarray(out, np.int64)]
    return result


def end_session(estimator: NextUseEstimator, session_id: str, now: float) -> None:
    """Tell ``estimator`` that a session ended after its last call: its blocks are read never,
    the time since that call teaches no tool latency, and the estimator forgets the session
    (``NextUseEstimator.session_ended``; an unknown session is ignored)."""
    estimator.session_ended(session_id, now)


class ValueRanker:
    """Ranks vLLM's free cached blocks by predicted-next-use value (slots are block ids).

    Fed by :class:`~saga.vllm.scheduler.SagaScheduler`: :meth:`call_started` when a session's
    call arrives, :meth:`observe_request` when a call finishes (its cached blocks, head first,
    with their hashes), :meth:`session_ended`, and by the free-block queue: :meth:`released` when
    blocks are handed out again, :meth:`choose` for victims. A block the estimator never saw
    (e.g. cached by a preempted request) is ranked by its time since freed, as LRU would.
    """

    def __init__(self, estimator: NextUseEstimator, *, model: ModelSpec = LLAMA3_70B,
                 depth_cost: bool = True) -> None:
        self.estimator = estimator
        self.model = model
        self.depth_cost = depth_cost
        self.block_tokens = 1
        self._hash_of: dict[int, int] = {}
        self._depth: IntArray = np.zeros(0, np.int64)
        self._bound = np.zeros(0, np.bool_)
        self.links = ChainLinks(0)

    @classmethod
    def from_policy(cls, policy: ETAPolicy) -> ValueRanker:
        """The ranker of ``policy``: its estimator (a fresh one when it reads table hints
        instead, which an engine does not have), its cost model."""
        est = policy.next_use_model()
        return cls(NextUseEstimator() if est is None else est, model=policy.model,
                   depth_cost=policy.depth_cost)

    def attach(self, num_blocks: int, block_tokens: int) -> None:
        """Serve a pool of ``num_blocks`` blocks of ``block_tokens`` tokens."""
        self.estimator.attach(num_blocks)
        self.block_tokens = max(int(block_tokens), 1)
        self._depth = np.zeros(num_blocks, np.int64)
        self._bound = np.zeros(num_blocks, np.bool_)
        self.links = ChainLinks(num_blocks)

    # -- what the scheduler sees -------------------------------------------------------------------
    def call_started(self, session_id: str, now: float) -> None:
        """A call of ``session_id`` arrived: its blocks are wanted now."""
        self.estimator.call_started(session_id, now)

    def observe_request(self, block_ids: Sequence[int], hashes: Sequence[int], now: float, *,
                        session_id: str | None = None, pending_tool: str | None = None,
                        reuse_prob: float = 1.0, final: bool = False,
                        agent_type: str | None = None) -> None:
        """A finished call read these cached blocks (head first; ``hashes`` their content)."""
        ids = [int(i) for i in block_ids]
        new = [(i, h) for i, h in zip(ids, hashes, strict=True) if self._hash_of.get(i) != h]
        if new:
            self.released(np.fromiter((i for i, _ in new), np.int64))
            slots = np.fromiter((i for i, _ in new), np.int64)
            self.estimator.bind(slots, [h for _, h in new])
            for i, h in new:
                self._hash_of[i] = h
            self._bound[slots] = True
        if ids:
            self._depth[ids] = np.arange(len(ids))
            self.links.link(ids)
        self.estimator.observe_request(list(hashes), now, session_id=session_id,
                                       pending_tool=pending_tool, reuse_prob=reuse_prob,
                                       final=final, agent_type=agent_type)

    def session_ended(self, session_id: str, now: float) -> None:
        """The session's task is over: its blocks are read never (unless others claim them)."""
        end_session(self.estimator, session_id, now)

    # -- what the free-block queue does ------------------------------------------------------------
    def released(self, block_ids: IntArray) -> None:
        """These blocks are handed out again: their cached content is gone."""
        gone = [int(i) for i in block_ids.tolist() if self._bound[i]]
        if not gone:
            return
        self.estimator.unbind([self._hash_of.pop(i) for i in gone])
        self._bound[gone] = False
        self.links.drop(gone)

    def values(self, block_ids: IntArray, now: float, last_free: FloatArray) -> FloatArray:
        """``block_value`` of these blocks at ``now`` (``last_free``: when each was freed)."""
        next_use, p = self.estimator.predict(block_ids, now)
        bound = self._bound[block_ids]
        until = np.where(bound, next_use - now, np.maximum(now - last_free, 0.0))
        p = np.where(bound, p, 1.0)
        depth = (np.where(bound, self._depth[block_ids], 0) if self.depth_cost
                 else np.zeros(block_ids.size, np.int64))
        saved = recompute_flops(depth, self.block_tokens, self.model)
        size = float(self.model.kv_bytes_per_token * self.block_tokens)
        return block_value(p, saved, size, until)

    def choose(self, block_ids: IntArray, n: int, now: float, last_free: FloatArray
               ) -> IntArray:
        """The ``n`` blocks of ``block_ids`` (free, cached) to evict next, in order."""
        value = self.values(block_ids, now, last_free)
        depth = np.where(self._bound[block_ids], self._depth[block_ids], 0)
        return leaves_first(block_ids, value, depth, last_free, self.links, n)


__all__ = ["ChainLinks", "ValueRanker", "end_session", "leaves_first"]
