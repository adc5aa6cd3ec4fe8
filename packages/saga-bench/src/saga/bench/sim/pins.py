"""Tool-call pins of the simulated instances: which session holds which blocks, until when.

The cache keeps only a per-block expiry (``CacheManager.pin``). This book keeps the pins
themselves, so that a pin ends when it has done its job, as in SAGA's vLLM scheduler: when the
session's next call is admitted (the call holds its own references then; a pin left to its
expiry would keep the blocks, and after the task's last call its whole context, out of
everyone else's reach). With ``cap_fraction`` the pins of one instance hold at most that share
of its HBM blocks; over it the pin whose session is expected back last gives way
(``pin_return_eta`` of the tool's latency model), so a new pin that would displace sessions
about to return is refused.

Blocks a session shares with others (the agent type's system prompt) keep their pin until it
expires: the cache cannot tell one session's pin on them from another's.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from saga.bench.sim.instance import Instance
from saga.policy.errors import SagaConfigError
from saga.policy.ttl import HasQuantile, pin_return_eta


@dataclass
class _Pin:
    inst: Instance
    own: list[int]
    """The session's own pinned blocks (released with the pin)."""
    blocks: int
    tool: str
    pinned_at: float
    until: float
    seq: int


class PinBook:
    """Every live tool-call pin, by session; ``ttl`` (the preset's TTL policy) supplies the
    tools' latency models that rank pins over the cap."""

    def __init__(self, cap_fraction: float | None = None, ttl: object = None) -> None:
        if cap_fraction is not None and not 0.0 <= cap_fraction <= 1.0:
            raise SagaConfigError(f"pin cap_fraction must be in [0, 1] or None, got "
                                  f"{cap_fraction}")
        self.cap_fraction = cap_fraction
        self._ttl = ttl
        self._pins: dict[str, _Pin] = {}
        self._seq = itertools.count()
        self.cap_releases = 0

    def __len__(self) -> int:
        return len(self._pins)

    def pin(self, inst: Instance, session: str, hashes: list[int], own_from: int, tool: str,
            now: float, until: float) -> None:
        """Pin ``hashes`` on ``inst`` until ``until``; ``hashes[own_from:]`` are the session's
        own blocks. Over the cap, pins expected back last are released (maybe this one)."""
        self.release(session)
        inst.cache.pin(hashes, until)
        self._pins[session] = _Pin(inst, hashes[own_from:], len(hashes), tool, now, until,
                                   next(self._seq))
        if self.cap_fraction is None:
            return
        cap = math.floor(self.cap_fraction * inst.cache.hbm_blocks)
        live = {s: p for s, p in self._pins.items() if p.inst is inst and p.until > now}
        total = sum(p.blocks for p in live.values())
        while total > cap and live:
            victim = max(live, key=lambda s: (self._eta(live[s], now), live[s].seq))
            total -= live.pop(victim).blocks
            self.release(victim)
            self.cap_releases += 1

    def release(self, session: str) -> None:
        """End the session's pin (its next call was admitted, or the cap chose it)."""
        p = self._pins.pop(session, None)
        if p is None:
            return
        cache = p.inst.cache
        own = [h for h in p.own if cache.contains(h)]
        if own:
            cache.unpin(own)

    def _eta(self, p: _Pin, now: float) -> float:
        model_of = getattr(self._ttl, "model", None)
        model = model_of(p.tool) if callable(model_of) else None
        if isinstance(model, HasQuantile):
            return pin_return_eta(model, max(now - p.pinned_at, 0.0))
        return p.until - now  # no latency model: the pin that would last longest gives way


__all__ = ["PinBook"]
