"""The prefix index the peer routers score against, and llm-d's min-max queue scorer.

Split from :mod:`saga.policy.routing` (which re-exports :func:`min_max_score`): the index is the
routers' approximate view of each worker's prefix cache, a data structure of its own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

from saga.policy.errors import SagaConfigError


class _PrefixIndex:
    """Which worker holds which chained block hash, LRU-bounded per worker.

    With chained hashes a block hash names its whole prefix, so a per-worker set of hashes is an
    exact encoding of a radix tree over blocks; the longest cached prefix of a request on a worker
    is the longest run of its hashes, from the first, that the worker holds.
    """

    def __init__(self, capacity_blocks: int | None) -> None:
        if capacity_blocks is not None and capacity_blocks <= 0:
            raise SagaConfigError(f"capacity_blocks must be > 0 or None, got {capacity_blocks}")
        self.capacity = capacity_blocks
        self._held: dict[str, OrderedDict[int, None]] = {}
        self._where: dict[int, set[str]] = {}

    def size(self, worker: str) -> int:
        return len(self._held.get(worker, ()))

    def insert(self, worker: str, hashes: Sequence[int]) -> None:
        held = self._held.setdefault(worker, OrderedDict())
        where = self._where
        if self.capacity is None:  # unbounded: the LRU order is never read, so not kept
            for h in hashes:
                if h not in held:
                    held[h] = None
                    where.setdefault(h, set()).add(worker)
            return
        for h in hashes:
            if h in held:
                held.move_to_end(h)
            else:
                held[h] = None
                where.setdefault(h, set()).add(worker)
        while len(held) > self.capacity:
            old, _ = held.popitem(last=False)
            self._drop(worker, old)

    def remove(self, worker: str, hashes: Sequence[int]) -> None:
        held = self._held.get(worker)
        if held is None:
            return
        for h in hashes:
            if h in held:
                del held[h]
                self._drop(worker, h)

    def forget_worker(self, worker: str) -> None:
        for h in self._held.pop(worker, OrderedDict()):
            self._drop(worker, h)

    def _drop(self, worker: str, h: int) -> None:
        owners = self._where.get(h)
        if owners is not None:
            owners.discard(worker)
            if not owners:
                del self._where[h]

    def match_blocks(self, hashes: Sequence[int], workers: Sequence[str]) -> dict[str, int]:
        """Blocks of the longest cached prefix of ``hashes`` on each of ``workers``."""
        matched = dict.fromkeys(workers, 0)
        alive = set(workers)
        where = self._where
        depth = 0  # blocks every worker in ``alive`` holds so far
        for h in hashes:
            owners = where.get(h)
            if not owners:
                break
            if not alive <= owners:  # a worker's run ends here: record it once, not per block
                for w in alive - owners:
                    matched[w] = depth
                alive &= owners
                if not alive:
                    return matched
            depth += 1
        for w in alive:
            matched[w] = depth
        return matched


def min_max_score(values: Mapping[str, float]) -> dict[str, float]:
    """llm-d's queue scorer: ``(max - v) / (max - min)`` (1 for the lowest, 0 for the highest;
    1 for every worker when all are equal)."""
    lo, hi = min(values.values()), max(values.values())
    return {w: 1.0 if hi == lo else (hi - v) / (hi - lo) for w, v in values.items()}


__all__ = ["min_max_score"]
