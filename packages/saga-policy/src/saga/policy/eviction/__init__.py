"""KV-block eviction policies behind one interface (by name: ``saga.policy.registry``)."""

from __future__ import annotations

from saga.policy.eviction.arc import ARCPolicy, arc_adapt
from saga.policy.eviction.base import EvictionPolicy
from saga.policy.eviction.belady import BeladyPolicy, next_use_positions
from saga.policy.eviction.eta import ETAPolicy
from saga.policy.eviction.kvflow import KVFlowPolicy
from saga.policy.eviction.lru import LRUPolicy
from saga.policy.eviction.prefix_lru import PrefixLRUPolicy
from saga.policy.eviction.radix_lru import RadixLRUPolicy
from saga.policy.eviction.s3fifo import S3FIFOPolicy
from saga.policy.eviction.walru import WALRUPolicy, walru_score

__all__ = [
    "ARCPolicy",
    "BeladyPolicy",
    "ETAPolicy",
    "EvictionPolicy",
    "KVFlowPolicy",
    "LRUPolicy",
    "PrefixLRUPolicy",
    "RadixLRUPolicy",
    "S3FIFOPolicy",
    "WALRUPolicy",
    "arc_adapt",
    "next_use_positions",
    "walru_score",
]
