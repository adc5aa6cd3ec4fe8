"""KV-block eviction policies behind one interface, and a registry of them by name."""

from __future__ import annotations

from saga.policy.eviction.base import EvictionPolicy
from saga.policy.eviction.belady import BeladyPolicy, next_use_positions
from saga.policy.eviction.kvflow import KVFlowPolicy
from saga.policy.eviction.lru import LRUPolicy
from saga.policy.eviction.prefix_lru import PrefixLRUPolicy
from saga.policy.eviction.radix_lru import RadixLRUPolicy
from saga.policy.eviction.walru import WALRUPolicy, walru_score

EVICTION_POLICIES: dict[str, type[EvictionPolicy]] = {
    cls.name: cls
    for cls in (LRUPolicy, PrefixLRUPolicy, RadixLRUPolicy, WALRUPolicy, KVFlowPolicy,
                BeladyPolicy)
}
"""Policy classes by name (each constructible with no arguments: the spec's defaults)."""

__all__ = [
    "EVICTION_POLICIES",
    "BeladyPolicy",
    "EvictionPolicy",
    "KVFlowPolicy",
    "LRUPolicy",
    "PrefixLRUPolicy",
    "RadixLRUPolicy",
    "WALRUPolicy",
    "next_use_positions",
    "walru_score",
]
