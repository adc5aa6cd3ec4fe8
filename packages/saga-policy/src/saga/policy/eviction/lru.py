"""Plain block LRU: what a cache without prefix awareness does (vLLM without prefix caching)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from saga.policy.block_table import BlockTable
from saga.policy.eviction.base import EvictionPolicy, Slots, SortKeys


@dataclass(frozen=True)
class LRUPolicy(EvictionPolicy):
    """Evict the block used least recently (oldest ``last_access``); ties by slot order."""

    name: ClassVar[str] = "lru"
    leaves_only: ClassVar[bool] = False
    native_order: ClassVar[str | None] = "access"

    def sort_keys(self, table: BlockTable, slots: Slots, now: float) -> SortKeys:
        return (table.last_access[slots],)
