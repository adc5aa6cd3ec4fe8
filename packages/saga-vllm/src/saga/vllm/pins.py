"""Tool-call pins: a session's KV blocks held referenced while its tool runs.

A pin owns the references a finished request held on its blocks (taken from vLLM with
``KVCacheManager.pop_blocks_for_free``), so vLLM cannot evict them; releasing a pin hands the
blocks back with ``BlockPool.free_blocks``. This module is only the bookkeeping — which sessions
are pinned, until when, how many blocks — so that it can be tested without an engine; the
scheduler decides when to release (expiry, the session's next call, the cap, pressure).

Pins are kept in a heap by expiry with lazy deletion, so the earliest-expiring pin (the first to
give up under pressure, and the next to expire) is found in O(log n). Over the cap the scheduler
ranks pins by predicted return time instead (``saga.policy.ttl.pin_return_eta``).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ReleaseReason(StrEnum):
    """Why a pin gave its blocks back (the metrics count each)."""

    EXPIRED = "expired"
    """The TTL ran out before the session's next call came."""
    RETURNED = "returned"
    """The session's next call was scheduled and took its own references."""
    PRESSURE = "pressure"
    """A waiting request needed the blocks."""
    CAP = "cap"
    """Pins held more than their share of the pool."""
    REPLACED = "replaced"
    """The session pinned again (its newer call ended in a tool too)."""
    SHUTDOWN = "shutdown"
    """The scheduler released everything (reset or shutdown)."""
    ENDED = "ended"
    """The session's task ended (``SagaScheduler.end_session``): its tool will never run."""


@dataclass
class Pin:
    """One session's pinned blocks (vLLM ``KVCacheBlock`` objects, allocation order)."""

    session_id: str
    tool: str
    blocks: list[Any]
    pinned_at: float
    expires_at: float
    seq: int = field(default=0, compare=False)

    @property
    def num_blocks(self) -> int:
        """Blocks this pin holds a reference on."""
        return len(self.blocks)


class PinTable:
    """Pins by session, ordered by expiry (earliest first), with the total pinned blocks."""

    def __init__(self) -> None:
        self._by_session: dict[str, Pin] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._blocks = 0

    def __len__(self) -> int:
        return len(self._by_session)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_session

    def __iter__(self) -> Iterator[Pin]:
        return iter(list(self._by_session.values()))

    @property
    def pinned_blocks(self) -> int:
        """Block references held by all pins (a block shared by two pins counts twice)."""
        return self._blocks

    def get(self, session_id: str) -> Pin | None:
        """The session's pin, if any."""
        return self._by_session.get(session_id)

    def add(self, pin: Pin) -> Pin | None:
        """Pin a session; returns the session's previous pin (the caller releases it)."""
        old = self.pop(pin.session_id)
        pin.seq = next(self._seq)
        self._by_session[pin.session_id] = pin
        self._blocks += pin.num_blocks
        heapq.heappush(self._heap, (pin.expires_at, pin.seq, pin.session_id))
        return old

    def pop(self, session_id: str) -> Pin | None:
        """Unpin a session (its heap entry dies lazily)."""
        pin = self._by_session.pop(session_id, None)
        if pin is not None:
            self._blocks -= pin.num_blocks
            if not self._by_session:
                self._heap.clear()
            elif len(self._heap) > 2 * len(self._by_session) + 64:
                self._compact()
        return pin

    def _compact(self) -> None:
        """Drop the dead heap entries at once: pins leave mostly from the middle (their session
        returned), and in a long-running engine their entries would pile up until they expire."""
        self._heap = [(p.expires_at, p.seq, p.session_id) for p in self._by_session.values()]
        heapq.heapify(self._heap)

    @property
    def heap_size(self) -> int:
        """Entries in the expiry heap, dead ones included (bounded: see ``_compact``)."""
        return len(self._heap)

    def _prune(self) -> None:
        while self._heap:
            _, seq, session = self._heap[0]
            live = self._by_session.get(session)
            if live is not None and live.seq == seq:
                return
            heapq.heappop(self._heap)

    def earliest(self) -> Pin | None:
        """The pin that expires first."""
        self._prune()
        return self._by_session[self._heap[0][2]] if self._heap else None

    def pop_earliest(self) -> Pin | None:
        """Unpin the session whose pin expires first."""
        pin = self.earliest()
        return None if pin is None else self.pop(pin.session_id)

    def pop_expired(self, now: float) -> list[Pin]:
        """Unpin every session whose pin expired at or before ``now`` (earliest first)."""
        out: list[Pin] = []
        while True:
            pin = self.earliest()
            if pin is None or pin.expires_at > now:
                return out
            popped = self.pop(pin.session_id)
            assert popped is not None
            out.append(popped)


__all__ = ["Pin", "PinTable", "ReleaseReason"]
