"""Which sessions read each cached slot, kept in arrays so a prediction needs no loop over slots.

`saga.policy.nextuse.NextUseEstimator` predicts a claimed slot's next use from the sessions that
read it: its last reader (``owner``) and, for a slot several sessions read (a system prompt, a
parent agent's context), every one of them. A session that ended for good (its last call, or
``session_ended``) reads nothing again, so it is not kept: its owned slots hold a closed code
that remembers only its agent type, and in a shared slot it leaves the live users for the
slot's set of closed agent types. That is exact for the prediction: an ended user's next use is
never, so it only matters, by its agent type, once every user has ended. The state is bounded
by the slots and the live sessions.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]

NO_OWNER = -1
"""Owner code of a slot no session claims."""
CLOSED = -2
"""Owner codes ``CLOSED - t`` (``t >= 0``) mark a slot last read by an ended session of agent
type number ``t`` (`Claims.type_names`)."""


@dataclass(eq=False)
class _Shared:
    live: set[int] = field(default_factory=set)
    closed: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Pairs:
    """Every (shared slot, reader) pair: live sessions by id, ended ones by agent type number."""

    live_slot: IntArray
    live_user: IntArray
    closed_slot: IntArray
    closed_type: IntArray


def _empty() -> IntArray:
    return np.zeros(0, np.int64)


@dataclass(eq=False)
class Claims:
    """Per-slot readers of one cache: ``owner`` (last reader's session id, `NO_OWNER`, or a
    closed code) and, for shared slots, the live readers and the ended readers' agent types."""

    owner: IntArray = field(default_factory=_empty)
    is_shared: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, np.bool_))
    shared: dict[int, _Shared] = field(default_factory=dict)
    member_of: dict[int, set[int]] = field(default_factory=dict)
    type_names: list[str | None] = field(default_factory=lambda: [None])
    _type_index: dict[str | None, int] = field(default_factory=lambda: {None: 0})
    _pairs: Pairs | None = None

    def attach(self, slots: int) -> None:
        """Size the per-slot arrays for a cache of ``slots`` slots."""
        self.owner = np.full(slots, NO_OWNER, np.int64)
        self.is_shared = np.zeros(slots, np.bool_)

    def type_of(self, agent_type: str | None) -> int:
        """The number of ``agent_type`` (None: 0), assigned on first sight."""
        t = self._type_index.get(agent_type)
        if t is None:
            t = self._type_index[agent_type] = len(self.type_names)
            self.type_names.append(agent_type)
        return t

    def release(self, slots: IntArray) -> None:
        """These slots hold new content: nobody has read it yet."""
        self.owner[slots] = NO_OWNER
        for s in slots[self.is_shared[slots]].tolist():
            for u in self.shared.pop(s).live:
                m = self.member_of[u]
                m.discard(s)
                if not m:
                    del self.member_of[u]
            self._pairs = None
        self.is_shared[slots] = False

    def claim(self, slots: IntArray, session: int) -> None:
        """Session ``session`` read ``slots`` (held ones only, no repeats): it is now their
        last reader, and a reader besides others of those someone else read before."""
        prev = self.owner[slots]
        other = (prev != NO_OWNER) & (prev != session)
        for s, o in zip(slots[other].tolist(), prev[other].tolist(), strict=True):
            self._share(s, o, session)
        self.owner[slots] = session

    def _share(self, slot: int, prev: int, session: int) -> None:
        sh = self.shared.get(slot)
        if sh is None:
            sh = self.shared[slot] = _Shared()
            self.is_shared[slot] = True
            if prev >= 0:
                self._join(sh, slot, prev)
            else:
                sh.closed.add(CLOSED - prev)
        if session not in sh.live:
            self._join(sh, slot, session)

    def _join(self, sh: _Shared, slot: int, session: int) -> None:
        sh.live.add(session)
        self.member_of.setdefault(session, set()).add(slot)
        self._pairs = None

    def close(self, session: int, agent_type: str | None) -> None:
        """``session`` ended for good: what it read is kept only as its agent type's."""
        t = self.type_of(agent_type)
        mine = self.owner == session
        if mine.any():
            self.owner[mine] = CLOSED - t
        for s in self.member_of.pop(session, ()):
            sh = self.shared[s]
            sh.live.discard(session)
            sh.closed.add(t)
            self._pairs = None

    def owners(self) -> set[int]:
        """Every session id that owns a slot or reads a shared one."""
        own = self.owner[self.owner >= 0]
        return set(np.unique(own).tolist()) | set(self.member_of)

    def pairs(self) -> Pairs:
        """The (shared slot, reader) pairs, rebuilt only after readers changed."""
        if self._pairs is None:
            items = list(self.shared.items())
            slots = np.fromiter((s for s, _ in items), np.int64, len(items))
            n_live = np.fromiter((len(sh.live) for _, sh in items), np.int64, len(items))
            n_closed = np.fromiter((len(sh.closed) for _, sh in items), np.int64, len(items))
            live = itertools.chain.from_iterable(sorted(sh.live) for _, sh in items)
            closed = itertools.chain.from_iterable(sorted(sh.closed) for _, sh in items)
            self._pairs = Pairs(np.repeat(slots, n_live),
                                np.fromiter(live, np.int64, int(n_live.sum())),
                                np.repeat(slots, n_closed),
                                np.fromiter(closed, np.int64, int(n_closed.sum())))
        return self._pairs

    def size(self) -> int:
        """Entries kept besides the per-slot arrays (what a bound is checked on)."""
        return (len(self.shared) + sum(len(sh.live) + len(sh.closed)
                                       for sh in self.shared.values())
                + sum(len(m) for m in self.member_of.values()) + len(self.member_of))


__all__ = ["CLOSED", "NO_OWNER", "Claims", "Pairs"]
