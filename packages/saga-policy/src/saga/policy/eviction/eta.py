"""Eviction by predicted next use: the lowest `saga.policy.nextuse.block_value` goes first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from saga.policy.block_table import BlockTable
from saga.policy.eviction.base import EvictionPolicy, Slots, SortKeys
from saga.policy.nextuse import NextUseEstimator, block_value, recompute_flops
from saga.policy.spec import LLAMA3_70B, ModelSpec


@dataclass(eq=False)
class ETAPolicy(EvictionPolicy):
    """Evict the block worth least per byte and second until its predicted next use.

    ``v = P_reuse · recompute_flops(depth) / (size · (next_use − now))`` (`block_value`). The
    next use and ``P_reuse`` come from ``estimator`` (sessions' tool calls and workflow ends,
    else each block's own reuse gaps), fed by the serving path through
    `EvictionPolicy.next_use_model`; with ``estimator=None`` they are read from the block
    table's ``next_use`` (absolute time, +inf = never) and ``reuse_prob`` (NaN = 1) hints, so
    exact next uses make it Bélády's MIN. Leaves first, as WA-LRU; ties go deepest first, then
    least recently used. Blocks are taken as equal in bytes (one paged block each).
    """

    estimator: NextUseEstimator | None = field(default_factory=NextUseEstimator)
    model: ModelSpec = LLAMA3_70B
    depth_cost: bool = True

    name: ClassVar[str] = "eta"
    leaves_only: ClassVar[bool] = True
    reads_hints: ClassVar[bool] = True
    observes: ClassVar[bool] = True

    def next_use_model(self) -> NextUseEstimator | None:
        return self.estimator

    def attach(self, slots: int, capacity: int) -> None:
        if self.estimator is not None:
            self.estimator.attach(slots)

    def on_admit(self, slots: Slots, hashes: Sequence[int]) -> None:
        if self.estimator is not None:
            self.estimator.bind(slots, hashes)

    def on_evict(self, slots: Slots, hashes: Sequence[int]) -> None:
        if self.estimator is not None:
            self.estimator.unbind(hashes)

    def values(self, table: BlockTable, slots: Slots, now: float) -> np.ndarray:
        """`block_value` of each slot at ``now``."""
        if self.estimator is not None:
            next_use, p = self.estimator.predict(slots, now)
        else:
            next_use = table.next_use[slots]
            hint = table.reuse_prob[slots]
            p = np.where(np.isnan(hint), 1.0, hint)
        depth = table.depth[slots] if self.depth_cost else np.zeros(slots.size, np.int64)
        saved = recompute_flops(depth, table.block_tokens, self.model)
        size = float(self.model.kv_bytes_per_token * table.block_tokens)
        return block_value(p, saved, size, next_use - now)

    def sort_keys(self, table: BlockTable, slots: Slots, now: float) -> SortKeys:
        return (table.last_access[slots], -table.depth[slots], self.values(table, slots, now))
