"""S3-FIFO: a small probationary FIFO, a main FIFO with lazy promotion, and a ghost FIFO."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from saga.policy.block_table import BlockTable, Tier
from saga.policy.errors import SagaConfigError
from saga.policy.eviction.base import (
    NOT_TRACKED,
    BlockQueues,
    EvictionPolicy,
    GhostList,
    Slots,
    SortKeys,
)

SMALL, MAIN = 1, 2
"""`BlockQueues` numbers of S and M."""
MAX_FREQ = 3
"""The 2-bit access counter saturates here."""

Freqs = npt.NDArray[np.int8]


class _NeedMore(Exception):
    """The walk ran past the part of a queue it was given (retry with all of it)."""


@dataclass
class _Walk:
    """S3-FIFO's eviction loop over the evictable blocks, run ahead of committing it.

    ``s``/``m``: S's and M's evictable blocks, tail first, with their counters (``whole_*``:
    all of them, not just the oldest). M is walked in passes: blocks reinserted at its head,
    or moved there from S, wait in ``pending`` until the current pass is used up.
    """

    s: Slots
    s_freq: Freqs
    whole_s: bool
    m: Slots
    m_freq: Freqs
    whole_m: bool
    n_main: int
    main_cap: int
    threshold: int
    i_s: int = 0
    i_m: int = 0
    victims: list[Slots] = field(default_factory=list)
    appended: list[tuple[Slots, Freqs]] = field(default_factory=list)
    pending: list[tuple[Slots, Freqs]] = field(default_factory=list)

    def run(self, need: int) -> None:
        """Evict ``need`` blocks as repeated ``EVICT()`` calls would (libCacheSim's rule: from
        M while it is over its share or S has nothing to give, else from S)."""
        while need > 0:
            s_left = self.i_s < self.s.size
            if not s_left and not self.whole_s:
                raise _NeedMore
            if self._main_left() and (self.n_main > self.main_cap or not s_left):
                want = need if not s_left else min(need, self.n_main - self.main_cap)
                got = self._from_main(want)
                need -= got
                if got:
                    continue
            if not s_left:
                return  # neither queue has an evictable block left
            need -= self._from_small(need, main_open=self._main_left())

    def _main_left(self) -> bool:
        """Whether M may still hold an evictable block."""
        return self.i_m < self.m.size or bool(self.pending) or not self.whole_m

    def _from_small(self, need: int, *, main_open: bool) -> int:
        """Walk S from its tail: blocks hit at least ``threshold`` times move to M's head
        (counter cleared), the others leave (to the ghost). Stops before a step at which M has
        grown over its share, since that eviction comes from M (step 0 always runs: the
        caller comes here only when M is within its share or has nothing evictable)."""
        start = self.i_s
        ok = np.flatnonzero(self.s_freq[start:] < self.threshold) + start
        if ok.size == 0:
            if not self.whole_s:
                raise _NeedMore
            self._move_to_main(self.s[start:])
            self.i_s = int(self.s.size)
            return 0
        limit = min(need, int(ok.size))
        steps = np.arange(limit)
        moved_before = np.where(steps == 0, 0, ok[np.maximum(steps - 1, 0)] + 1 - start - steps)
        fits = self.n_main + moved_before <= self.main_cap
        if not main_open:  # M had nothing evictable: S goes on until a block moves to M
            fits |= moved_before == 0
        limit = limit if fits.all() else int(np.argmin(fits))
        end = int(ok[limit - 1]) + 1
        seg, freq = self.s[start:end], self.s_freq[start:end]
        self.victims.append(seg[freq < self.threshold])
        self._move_to_main(seg[freq >= self.threshold])
        self.i_s = end
        return limit

    def _move_to_main(self, slots: Slots) -> None:
        if slots.size:
            entry = (slots, np.zeros(slots.size, np.int8))
            self.pending.append(entry)
            self.appended.append(entry)
            self.n_main += int(slots.size)

    def _from_main(self, want: int) -> int:
        """Walk M from its tail: a block with a nonzero counter goes back to the head with the
        counter less one, the first ``want`` with zero leave. Returns how many left."""
        got = 0
        while got < want:
            if self.i_m >= self.m.size:
                if not self.whole_m:
                    raise _NeedMore
                if not self.pending:
                    break
                self.m = np.concatenate([p[0] for p in self.pending])
                self.m_freq = np.concatenate([p[1] for p in self.pending])
                self.pending, self.i_m = [], 0
            start = self.i_m
            zeros = np.flatnonzero(self.m_freq[start:] == 0)
            end = int(zeros[want - got - 1]) + start + 1 if zeros.size >= want - got else int(
                self.m.size)
            seg, freq = self.m[start:end], self.m_freq[start:end]
            out = freq == 0
            self.victims.append(seg[out])
            got += int(np.count_nonzero(out))
            if not out.all():
                entry = (seg[~out], (freq[~out] - 1).astype(np.int8))
                self.pending.append(entry)
                self.appended.append(entry)
            self.i_m = end
        self.n_main -= got
        return got


@dataclass(eq=False)
class S3FIFOPolicy(EvictionPolicy):
    """S3-FIFO over the blocks of one tier (Yang et al., "FIFO queues are all you need for cache
    eviction", SOSP '23; rules as in the authors' libCacheSim ``S3FIFOv0.c``/``S3FIFO.c``).

    A new block enters the small FIFO S, or the main FIFO M when the ghost FIFO G remembers it;
    a hit only bumps a 2-bit counter (lazy promotion: nothing moves on a hit). Eviction takes
    from M while M holds more than its ``1 - small_ratio`` share (or S has nothing evictable),
    else from S: S's tail block moves to M's head if it was hit at least ``move_to_main_threshold``
    times (default 1: any hit while in S; libCacheSim now defaults to 2), else it leaves and its
    hash goes to G (quick demotion: one-hit wonders never reach M); M's tail block goes back to
    M's head with its counter less one while the counter is nonzero, else it leaves. G keeps the
    newest ``ghost_ratio * capacity`` hashes. A chain's blocks enter tail first, so its tail
    leaves first, as in vLLM's free-block queue; blocks are independent (``leaves_only`` False).
    Blocks in use or pinned are skipped in place. A hit served from DRAM is admitted (to M if G
    remembers it) and then counted.

    Victim choice commits the walk (moves to M, reinsertions) before the manager evicts the
    victims, in vectorised runs over the oldest ``2k + 64`` blocks of each queue (all of them
    only if the walk needs more). State is per cache: build one policy per `CacheManager`; as a
    ``dram_policy`` it hears no events and ranks by LRU.
    """

    small_ratio: float = 0.1
    ghost_ratio: float = 0.9
    move_to_main_threshold: int = 1

    name: ClassVar[str] = "s3fifo"
    leaves_only: ClassVar[bool] = False
    observes: ClassVar[bool] = True

    capacity: int = field(default=0, init=False)
    queues: BlockQueues = field(default_factory=lambda: BlockQueues.empty(0, 2), init=False,
                                repr=False)
    freq: Freqs = field(default_factory=lambda: np.zeros(0, np.int8), init=False, repr=False)
    ghost: GhostList = field(default_factory=lambda: GhostList(0), init=False, repr=False)

    def __post_init__(self) -> None:
        for what, value, ok in (
                ("small_ratio", self.small_ratio, 0.0 < self.small_ratio < 1.0),
                ("ghost_ratio", self.ghost_ratio, 0.0 <= self.ghost_ratio <= 10.0),
                ("move_to_main_threshold", self.move_to_main_threshold,
                 isinstance(self.move_to_main_threshold, int)
                 and 1 <= self.move_to_main_threshold <= MAX_FREQ)):
            if not ok or (isinstance(value, float) and math.isnan(value)):
                raise SagaConfigError(
                    f"S3-FIFO {what} is {value!r}; use small_ratio in (0, 1) (paper: 0.1), "
                    f"ghost_ratio in [0, 10] (0.9) and move_to_main_threshold in 1..3 (1)")

    @property
    def main_cap(self) -> int:
        """M's share of the capacity (libCacheSim: capacity minus ``int(small_ratio * c)``)."""
        return self.capacity - int(self.capacity * self.small_ratio)

    def attach(self, slots: int, capacity: int) -> None:
        if self.capacity:
            raise SagaConfigError("an S3-FIFO policy keeps per-cache state and already serves "
                                  "a cache; build one policy per CacheManager")
        self.capacity = capacity
        self.queues = BlockQueues.empty(slots, 2)
        self.freq = np.zeros(slots, np.int8)
        self.ghost = GhostList(int(capacity * self.ghost_ratio))

    def on_admit(self, slots: Slots, hashes: Sequence[int]) -> None:
        remembered = np.zeros(len(hashes), bool)
        if len(self.ghost):
            remembered[:] = [self.ghost.take(h) for h in hashes]
        self.freq[slots] = 0
        self.queues.put(slots[~remembered], SMALL, tail_first=True)
        self.queues.put(slots[remembered], MAIN, tail_first=True)

    def on_hit(self, slots: Slots) -> None:
        slots = slots[self.queues.queue_of(slots) != NOT_TRACKED]
        self.freq[slots] = np.minimum(self.freq[slots] + 1, MAX_FREQ)

    def on_evict(self, slots: Slots, hashes: Sequence[int]) -> None:
        where = self.queues.queue_of(slots)
        self.ghost.add(h for h, q in zip(hashes, where.tolist(), strict=True) if q == SMALL)
        self.queues.remove(slots[where != NOT_TRACKED])

    def state_error(self, table: BlockTable) -> str | None:
        return self.queues.state_error(table, Tier.HBM)

    def sort_keys(self, table: BlockTable, slots: Slots, now: float) -> SortKeys:
        """Untracked blocks (least recently used first), then S, then M, tail first: the FIFO
        order before lazy promotion (for inspection; `select_victims` runs the full rule)."""
        return self.queues.fifo_keys(table, slots)

    def select_victims(self, table: BlockTable, candidates: Slots, k: int, now: float) -> Slots:
        """``min(k, n)`` victims by S3-FIFO, committing the moves the walk makes on the way;
        untracked candidates (the policy was not told about them) go first, LRU first."""
        cands = np.asarray(candidates, dtype=np.int64)
        k = min(int(k), int(cands.size))
        if k <= 0:
            return np.empty(0, np.int64)
        where = self.queues.queue_of(cands)
        loose = cands[where == NOT_TRACKED]
        loose = loose[np.argsort(table.last_access[loose], kind="stable")][:k]
        small, main = cands[where == SMALL], cands[where == MAIN]
        need = k - int(loose.size)
        walk = self._walk(small, main, need, 2 * need + 64)
        if walk is None:
            walk = self._walk(small, main, need, int(cands.size))
            assert walk is not None
        for slots, freq in walk.appended:
            self.queues.put(slots, MAIN, tail_first=False)
            self.freq[slots] = freq
        return np.concatenate([loose, *walk.victims])

    def _walk(self, small: Slots, main: Slots, need: int, head: int) -> _Walk | None:
        """The walk over the ``head`` oldest blocks of each queue (None: it needed more)."""
        s, m = self.queues.oldest(small, head), self.queues.oldest(main, head)
        walk = _Walk(s, self.freq[s], s.size == small.size, m, self.freq[m],
                     m.size == main.size, self.queues.sizes[MAIN], self.main_cap,
                     self.move_to_main_threshold)
        try:
            walk.run(need)
        except _NeedMore:
            return None
        return walk
