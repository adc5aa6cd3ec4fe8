"""The slot-indexed block table that `CacheManager` owns and eviction policies read.

One row per slot, one numpy column per attribute, so a policy scores every candidate block in a
few vectorised operations instead of walking Python objects. A block keeps its slot for its whole
life, whichever tier it is in: a swap changes ``tier[slot]`` and the tier's occupancy count, not
the slot, so parent links stay valid without rewriting them. Tier capacities are enforced by the
manager's per-tier counts; all free slots share one free list.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

NO_PARENT = -1
"""``parent[slot]`` of a root block, or of a block whose parent was dropped."""


class Tier(IntEnum):
    """Where a slot's block lives. ``FREE`` marks an unused slot."""

    FREE = 0
    HBM = 1
    DRAM = 2


@dataclass(eq=False)
class BlockTable:
    """Columns of per-block state, indexed by slot.

    Hints are set by the caller: ``reuse_prob`` (NaN = unknown), ``steps_to_exec`` (NaN or +inf =
    unknown), ``next_use`` (+inf = never again; Bélády's oracle), ``size_tokens`` (NaN = use the
    prefix length ``(depth + 1) * block_tokens``). ``depth`` is the block's 0-based position in
    its chain; ``children_hbm`` / ``children_dram`` count the block's resident children per tier.
    """

    block_tokens: int
    last_access: npt.NDArray[np.float64]
    ref_count: npt.NDArray[np.int64]
    pinned_until: npt.NDArray[np.float64]
    tier: npt.NDArray[np.int8]
    depth: npt.NDArray[np.int64]
    parent: npt.NDArray[np.int64]
    children_hbm: npt.NDArray[np.int64]
    children_dram: npt.NDArray[np.int64]
    hits: npt.NDArray[np.int64]
    reuse_prob: npt.NDArray[np.float64]
    steps_to_exec: npt.NDArray[np.float64]
    next_use: npt.NDArray[np.float64]
    size_tokens: npt.NDArray[np.float64]

    @classmethod
    def empty(cls, slots: int, block_tokens: int) -> BlockTable:
        """A table of ``slots`` free slots."""
        t = cls(
            block_tokens=block_tokens,
            last_access=np.zeros(slots, np.float64),
            ref_count=np.zeros(slots, np.int64),
            pinned_until=np.full(slots, -np.inf),
            tier=np.zeros(slots, np.int8),
            depth=np.zeros(slots, np.int64),
            parent=np.full(slots, NO_PARENT, np.int64),
            children_hbm=np.zeros(slots, np.int64),
            children_dram=np.zeros(slots, np.int64),
            hits=np.zeros(slots, np.int64),
            reuse_prob=np.full(slots, np.nan),
            steps_to_exec=np.full(slots, np.nan),
            next_use=np.full(slots, np.inf),
            size_tokens=np.full(slots, np.nan),
        )
        return t

    @property
    def slots(self) -> int:
        """Total number of slots (HBM plus DRAM capacity)."""
        return int(self.tier.shape[0])

    def reset(self, slots: npt.NDArray[np.int64]) -> None:
        """Return slots to their free-slot defaults (tier FREE, no parent, no hints)."""
        self.last_access[slots] = 0.0
        self.ref_count[slots] = 0
        self.pinned_until[slots] = -np.inf
        self.tier[slots] = Tier.FREE
        self.depth[slots] = 0
        self.parent[slots] = NO_PARENT
        self.children_hbm[slots] = 0
        self.children_dram[slots] = 0
        self.hits[slots] = 0
        self.reuse_prob[slots] = np.nan
        self.steps_to_exec[slots] = np.nan
        self.next_use[slots] = np.inf
        self.size_tokens[slots] = np.nan

    def blocking_children(self, slots: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Resident children that evicting each slot from its own tier would strand.

        Leaving HBM strands HBM children only (DRAM children stay reachable through the swapped
        parent); a DRAM block is dropped, which strands children in either tier.
        """
        hbm = self.children_hbm[slots]
        return np.where(self.tier[slots] == Tier.HBM, hbm, hbm + self.children_dram[slots])

    def prefix_tokens(self, slots: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Tokens of the prefix that ends at each block: the caller's size hint, else by depth."""
        by_depth = (self.depth[slots] + 1).astype(np.float64) * self.block_tokens
        hint = self.size_tokens[slots]
        return np.where(np.isnan(hint), by_depth, hint)
