"""ARC, the Adaptive Replacement Cache, as vLLM's KV offloading ships it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from saga.policy.block_table import BlockTable, Tier
from saga.policy.errors import SagaConfigError
from saga.policy.eviction.base import (
    NOT_TRACKED,
    BlockQueues,
    EvictionPolicy,
    GhostList,
    Slots,
    SortKeys,
)

T1, T2 = 1, 2
"""`BlockQueues` numbers of the recency list (seen once) and the frequency list (seen again)."""


def arc_adapt(target: float, in_b1: bool, b1: int, b2: int, capacity: int) -> float:
    """ARC's adaptation of the T1 target ``p`` on a ghost hit (Megiddo & Modha, FAST '03).

    A hit in B1 (evicted from T1 too early) grows ``p`` by ``max(1, |B2|/|B1|)``, up to the
    capacity; a hit in B2 shrinks it by ``max(1, |B1|/|B2|)``, down to 0. The ghost hit is
    counted in its own list, so the divisor is at least 1.
    """
    if in_b1:
        return min(target + max(1.0, b2 / max(b1, 1)), float(capacity))
    return max(target - max(1.0, b1 / max(b2, 1)), 0.0)


@dataclass(eq=False)
class ARCPolicy(EvictionPolicy):
    """ARC over the blocks of one tier: T1/T2 recency and frequency lists, ghosts B1/B2 of
    their evicted blocks, and a target size ``p`` for T1 that ghost hits move.

    Megiddo & Modha, "ARC: A Self-Tuning, Low Overhead Replacement Cache", FAST '03; the rules
    follow vLLM 0.32's ``ARCCachePolicy`` (``vllm/v1/kv_offload/cpu/policies/arc.py``, driven by
    ``vllm/v1/kv_offload/cpu/manager.py``), also where it departs from the paper:

    - a block needed but not resident first adapts ``p`` if it is in a ghost list, and becomes
      that list's newest entry (`before_admit`, vLLM's ``on_store_miss``), before victims are
      chosen for the request;
    - an admitted block enters T1 and leaves the ghost lists (vLLM's ``insert``; the paper puts
      a ghost hit straight into T2); a reuse moves a T1 block to T2, a T2 block to T2's head
      (``touch``; vLLM also counts a recomputed block whose copy was still cached as reused).
      A hit served from DRAM is admitted and then reused, so it lands in T2;
    - a finished request's blocks move to the head of their own list, head of the chain last,
      so a chain's tail leaves first (``on_request_finished``);
    - victims: while ``|T1| >= int(p)`` the least recent T1 block, else the least recent T2
      block, falling back to the other list when one has no evictable block; ``|T1|`` counts
      every T1 block, in use or not, less those already taken in the batch (``evict``);
    - each ghost list keeps at most ``capacity`` entries (the paper keeps ``|T1| + |B1|``
      within c and all four lists within 2c).

    Victim choice is vectorised: it takes the ``a`` oldest evictable T1 blocks, then the oldest
    T2 blocks, then more T1 blocks, which is what vLLM's one-at-a-time loop yields. Blocks are
    independent (``leaves_only`` False), as in vLLM's offloading. State is per cache: build one
    policy per `CacheManager`; as a ``dram_policy`` it hears no events and ranks by LRU.
    """

    name: ClassVar[str] = "arc"
    leaves_only: ClassVar[bool] = False
    observes: ClassVar[bool] = True

    target_t1: float = field(default=0.0, init=False)
    """``p``: the size T1 should have (in blocks)."""
    capacity: int = field(default=0, init=False)
    lists: BlockQueues = field(default_factory=lambda: BlockQueues.empty(0, 2), init=False,
                               repr=False)
    b1: GhostList = field(default_factory=lambda: GhostList(0), init=False, repr=False)
    b2: GhostList = field(default_factory=lambda: GhostList(0), init=False, repr=False)

    def attach(self, slots: int, capacity: int) -> None:
        if self.capacity:
            raise SagaConfigError("an ARC policy keeps per-cache state and already serves a "
                                  "cache; build one policy per CacheManager")
        self.capacity = capacity
        self.lists = BlockQueues.empty(slots, 2)
        self.b1, self.b2 = GhostList(capacity), GhostList(capacity)

    def before_admit(self, hashes: Sequence[int]) -> None:
        b1, b2 = self.b1, self.b2
        if not (len(b1) or len(b2)):
            return
        for h in reversed(hashes):
            if h in b1 or h in b2:
                ghosts = b1 if h in b1 else b2
                self.target_t1 = arc_adapt(self.target_t1, ghosts is b1, len(b1), len(b2),
                                           self.capacity)
                ghosts.add((h,))  # newest again: trimming for this request's victims spares it

    def on_admit(self, slots: Slots, hashes: Sequence[int]) -> None:
        for h in hashes:
            if not self.b1.take(h):
                self.b2.take(h)
        self.lists.put(slots, T1, tail_first=True)

    def on_hit(self, slots: Slots) -> None:
        self.lists.put(slots[self.lists.queue_of(slots) != NOT_TRACKED], T2, tail_first=True)

    def on_release(self, slots: Slots) -> None:
        self.lists.refresh(slots)

    def on_evict(self, slots: Slots, hashes: Sequence[int]) -> None:
        where = self.lists.queue_of(slots).tolist()
        self.b1.add(h for h, q in zip(hashes, where, strict=True) if q == T1)
        self.b2.add(h for h, q in zip(hashes, where, strict=True) if q == T2)
        self.lists.remove(slots[self.lists.queue_of(slots) != NOT_TRACKED])

    def state_error(self, table: BlockTable) -> str | None:
        return self.lists.state_error(table, Tier.HBM)

    def sort_keys(self, table: BlockTable, slots: Slots, now: float) -> SortKeys:
        """Untracked blocks (least recently used first), then T1, then T2, oldest first: the
        order while ``|T1| >= p`` (for inspection; `select_victims` applies the full rule)."""
        return self.lists.fifo_keys(table, slots)

    def select_victims(self, table: BlockTable, candidates: Slots, k: int, now: float) -> Slots:
        """``min(k, n)`` victims by vLLM's ARC rule; untracked candidates (the policy was not
        told about them) go first, least recently used first."""
        cands = np.asarray(candidates, dtype=np.int64)
        k = min(int(k), int(cands.size))
        if k <= 0:
            return np.empty(0, np.int64)
        q = self.lists.queue_of(cands)
        loose = cands[q == NOT_TRACKED]
        loose = loose[np.argsort(table.last_access[loose], kind="stable")][:k]
        t1, t2 = cands[q == T1], cands[q == T2]
        left = k - int(loose.size)
        v, p = self.lists.sizes[T1], int(self.target_t1)
        a = min(left, int(t1.size), max(0, v - p + 1))
        b = min(left - a, int(t2.size))
        c = left - a - b
        first = self.lists.oldest(t1, a + c)
        return np.concatenate([loose, first[:a], self.lists.oldest(t2, b), first[a:]])
