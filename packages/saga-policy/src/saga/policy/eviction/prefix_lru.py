"""vLLM automatic prefix caching (v1 ``BlockPool`` / ``FreeKVCacheBlockQueue``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from saga.policy.block_table import BlockTable
from saga.policy.eviction.base import EvictionPolicy, Slots, SortKeys


@dataclass(frozen=True)
class PrefixLRUPolicy(EvictionPolicy):
    """LRU over free blocks, ties broken tail-first, as vLLM's free-block queue orders them.

    In vLLM v1 a cached block with no references sits in ``FreeKVCacheBlockQueue``; a prefix hit
    takes it out (``touch``), and when a request finishes its blocks are appended in *reverse*
    order, so the tail of a sequence is popped for reuse before its head. Eviction is therefore
    LRU by the time a block was last released or hit, and among blocks released together the
    deepest goes first. The queue does not check for children: a block whose descendants are
    still cached can be evicted (they become unreachable), so ``leaves_only`` is False.
    """

    name: ClassVar[str] = "prefix_lru"
    leaves_only: ClassVar[bool] = False
    native_order: ClassVar[str | None] = "access_deep"

    def sort_keys(self, table: BlockTable, slots: Slots, now: float) -> SortKeys:
        return (-table.depth[slots], table.last_access[slots])
