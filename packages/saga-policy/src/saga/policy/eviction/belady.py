"""Bélády's MIN: the offline optimum that online policies are measured against."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from saga.policy.block_table import BlockTable
from saga.policy.eviction.base import EvictionPolicy, Slots, SortKeys

try:  # optional: saga-kernels' native next-use scan (same answers, integer block ids only)
    from saga.kernels import have_native as _have_native
    from saga.kernels import next_use_lists as _next_use_lists

    _NATIVE = _have_native()
except ImportError:
    _NATIVE = False


@dataclass(frozen=True)
class BeladyPolicy(EvictionPolicy):
    """Evict the block whose next use lies farthest in the future (``next_use``, +inf = never).

    Needs the whole trace: the caller sets each block's ``next_use`` before every request (see
    `next_use_positions`). Ties go deepest first, then least recently used. Optimal for
    unit-size blocks without prefix dependencies; with chains it is the usual yardstick.
    """

    name: ClassVar[str] = "belady"
    leaves_only: ClassVar[bool] = False
    needs_next_use: ClassVar[bool] = True
    native_order: ClassVar[str | None] = "next_use"

    def sort_keys(self, table: BlockTable, slots: Slots, now: float) -> SortKeys:
        return (table.last_access[slots], -table.depth[slots], -table.next_use[slots])


def next_use_positions(trace: Sequence[Sequence[Hashable]]) -> list[list[float]]:
    """For each block reference, the index of the next request that uses the block (inf if none).

    One reverse scan with a dict, O(total references). ``result[i][j]`` belongs to block ``j`` of
    request ``i``; a replay sets it as the block's ``next_use`` hint before request ``i``.
    Runs saga-kernels' native scan when it is installed and every block id is an int64.
    """
    if _NATIVE:
        try:
            return _next_use_lists(trace)  # type: ignore[arg-type]
        except TypeError:
            pass  # a non-integer block id: the dict below takes any hashable
    upcoming: dict[Hashable, float] = {}
    out: list[list[float]] = [[] for _ in trace]
    for i in range(len(trace) - 1, -1, -1):
        req = trace[i]
        out[i] = [upcoming.get(b, math.inf) for b in req]
        for b in req:
            upcoming[b] = float(i)
    return out
