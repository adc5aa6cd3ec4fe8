"""KVFlow's workflow-aware eviction by steps-to-execution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from saga.policy.block_table import BlockTable
from saga.policy.eviction.base import EvictionPolicy, Slots, SortKeys


@dataclass(frozen=True)
class KVFlowPolicy(EvictionPolicy):
    """Evict the block whose agent runs furthest in the future: largest steps-to-execution first.

    KVFlow ("KVFlow: Efficient Prefix Caching for Accelerating LLM-Based Multi-Agent Workflows",
    arXiv 2507.07400) keeps an Agent Step Graph, gives each agent a steps-to-execution
    value, and assigns it to the agent's cache nodes; a prefix shared by several agents takes the
    minimum over them, and eviction removes the largest value first. Modelled here: the caller sets
    ``steps_to_exec`` per block (taking that minimum itself); unknown (NaN or +inf) ranks as +inf,
    i.e. evicted first; ties go least recently used, then deepest first. Eviction stays
    leaves-first, as in the SGLang radix tree KVFlow is built on. Its overlapped CPU prefetch is
    `CacheManager.prefetch`, driven by the caller.
    """

    name: ClassVar[str] = "kvflow"
    leaves_only: ClassVar[bool] = True
    reads_hints: ClassVar[bool] = True
    native_order: ClassVar[str | None] = "steps"

    def sort_keys(self, table: BlockTable, slots: Slots, now: float) -> SortKeys:
        steps = table.steps_to_exec[slots]
        steps = np.where(np.isnan(steps), np.inf, steps)
        return (-table.depth[slots], table.last_access[slots], -steps)
