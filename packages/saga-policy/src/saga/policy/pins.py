"""Tool-call pins: a session's KV blocks held through its tool call, and the cap rule.

A pin holds a session's blocks while its tool runs: in vLLM the references a finished request
held (``KVCacheManager.pop_blocks_for_free``), in the simulator the block hashes it pinned in its
``CacheManager``. This module is the bookkeeping both use — which sessions are pinned, until
when, how many blocks — and the one rule for the cap (:func:`cap_victims`); the caller decides
when to release (expiry, the session's next call, the cap, pressure) and gives the blocks back.

Pins are kept in a heap by expiry with lazy deletion, so the earliest-expiring pin (the first to
give up under pressure, and the next to expire) is found in O(log n). Over the cap pins are ranked
by predicted return time instead (``TTLPolicy.return_eta``).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from saga.policy.errors import SagaConfigError
from saga.policy.ttl import TTLPolicy


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
    """One session's pinned blocks, in allocation order (vLLM ``KVCacheBlock`` objects, or the
    simulator's block hashes). ``blocks[own_from:]`` are the session's own and go back with the
    pin; earlier ones (a prompt shared by an agent type) keep their pin until it expires."""

    session_id: str
    tool: str
    blocks: list[Any]
    pinned_at: float
    expires_at: float
    seq: int = field(default=0, compare=False)
    own_from: int = 0

    @property
    def own(self) -> list[Any]:
        """The session's own blocks (released with the pin)."""
        return self.blocks[self.own_from:]

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


def return_eta(ttl: TTLPolicy | None, pin: Pin, now: float) -> float:
    """Seconds until ``pin``'s session is expected back: the TTL policy's ``return_eta`` of
    its tool; with no latency model, the pin's remaining time (the longest pin gives way)."""
    eta = None if ttl is None else ttl.return_eta(pin.tool, max(now - pin.pinned_at, 0.0))
    return pin.expires_at - now if eta is None else eta


def cap_victims(pins: Iterable[Pin], cap_blocks: int, now: float,
                eta: Callable[[Pin], float]) -> list[Pin]:
    """The pins to release so that the live ones (not expired at ``now``) hold at most
    ``cap_blocks``: over the cap, the pin whose session is expected back last (``eta``; the
    newer pin on ties) gives way, repeatedly — Bélády's rule on predicted return times, so a new
    pin that would displace sessions about to return is refused instead."""
    live = [p for p in pins if p.expires_at > now]
    total = sum(p.num_blocks for p in live)
    out: list[Pin] = []
    while total > cap_blocks and live:
        victim = max(live, key=lambda p: (eta(p), p.seq))
        live.remove(victim)
        total -= victim.num_blocks
        out.append(victim)
    return out


def cap_blocks(cap_fraction: float | None, pool_blocks: int) -> int | None:
    """The most blocks pins may hold in a pool of ``pool_blocks`` (None: no cap)."""
    if cap_fraction is None:
        return None
    if not 0.0 <= cap_fraction <= 1.0:
        raise SagaConfigError(f"pin cap_fraction must be in [0, 1] or None, got {cap_fraction}")
    return math.floor(cap_fraction * pool_blocks)


__all__ = ["Pin", "PinTable", "ReleaseReason", "cap_blocks", "cap_victims", "return_eta"]
