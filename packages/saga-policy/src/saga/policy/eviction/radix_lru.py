"""SGLang RadixAttention: LRU over the leaves of the radix tree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from saga.policy.block_table import BlockTable
from saga.policy.eviction.base import EvictionPolicy, Slots, SortKeys


@dataclass(frozen=True)
class RadixLRUPolicy(EvictionPolicy):
    """Strictly leaves first, LRU among leaves; a parent becomes a candidate once it is a leaf.

    SGLang's ``RadixCache.evict`` heap-orders the unlocked leaves by ``last_access_time`` and
    pushes a parent when its last child goes. Matching or inserting a prefix touches every node on
    the path, which `CacheManager.allocate` and ``release`` do for every block of a sequence.
    Ties (blocks touched at the same instant) go deepest first.
    """

    name: ClassVar[str] = "radix_lru"
    leaves_only: ClassVar[bool] = True
    native_order: ClassVar[str | None] = "access_deep"

    def sort_keys(self, table: BlockTable, slots: Slots, now: float) -> SortKeys:
        return (-table.depth[slots], table.last_access[slots])
