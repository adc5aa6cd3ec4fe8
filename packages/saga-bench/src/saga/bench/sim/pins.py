"""Tool-call pins of the simulated instances: saga-policy's pin table and cap rule, applied to
each instance's ``CacheManager``.

The cache keeps only a per-block expiry (``CacheManager.pin``). The table keeps the pins
themselves, so that a pin ends when it has done its job, as in SAGA's vLLM scheduler: when the
session's next call is admitted (the call holds its own references then; a pin left to its
expiry would keep the blocks, and after the task's last call its whole context, out of
everyone else's reach). With ``cap_fraction`` the pins of one instance hold at most that share
of its HBM blocks, by :func:`saga.policy.pins.cap_victims` (the rule the vLLM scheduler runs).

Blocks a session shares with others (the agent type's system prompt) keep their pin until it
expires: the cache cannot tell one session's pin on them from another's.

The book also remembers each pin granted (TTL 0 included) until the session's next call, so the
router hears what SAGA's coordinator tells it (``RouteRequest.home_held``): nothing when the
tool returned within its pin, else how much of the KV the home still holds since the pin ran
out (`saga.policy.routing.expected_home_held`, unpinned KV taken as evicted at once).
"""

from __future__ import annotations

from saga.bench.sim.instance import Instance
from saga.policy.pins import Pin, PinTable, cap_blocks, cap_victims, return_eta
from saga.policy.routing import expected_home_held
from saga.policy.ttl import TTLPolicy


class PinBook:
    """Every live tool-call pin, by session; ``ttl`` (the preset's TTL policy) supplies the
    tools' return estimates that rank pins over the cap."""

    def __init__(self, cap_fraction: float | None = None, ttl: TTLPolicy | None = None) -> None:
        cap_blocks(cap_fraction, 0)  # validates
        self.cap_fraction = cap_fraction
        self._ttl = ttl
        self._table = PinTable()
        self._inst: dict[str, Instance] = {}
        self._granted: dict[str, tuple[float, float]] = {}
        self.cap_releases = 0

    def __len__(self) -> int:
        return len(self._table)

    def pin(self, inst: Instance, session: str, hashes: list[int], own_from: int, tool: str,
            now: float, until: float) -> None:
        """Pin ``hashes`` on ``inst`` until ``until``; ``hashes[own_from:]`` are the session's
        own blocks. Over the cap, pins expected back last are released (maybe this one)."""
        self.release(session)
        inst.cache.pin(hashes, until)
        self._table.add(Pin(session, tool, hashes, pinned_at=now, expires_at=until,
                            own_from=own_from))
        self._inst[session] = inst
        cap = cap_blocks(self.cap_fraction, inst.cache.hbm_blocks)
        if cap is None:
            return
        mine = (p for p in self._table if self._inst[p.session_id] is inst)
        for victim in cap_victims(mine, cap, now, lambda p: return_eta(self._ttl, p, now)):
            self.release(victim.session_id)
            self.cap_releases += 1

    def granted(self, session: str, now: float, ttl: float) -> None:
        """The TTL policy granted ``session`` a pin of ``ttl`` seconds at ``now`` (as the
        coordinator's ``tool_started``; 0 counts: a pin that lapsed at once)."""
        self._granted[session] = (now, ttl)

    def home_held(self, session: str, now: float, tool_s: float) -> float | None:
        """What the coordinator routes the session's next call with, its tool having taken
        ``tool_s``: None when no pin was granted or the tool returned within it, else the share
        of the KV its home holds at ``now`` (`expected_home_held` from the pin's end)."""
        got = self._granted.pop(session, None)
        if got is None or not tool_s > got[1]:
            return None
        return expected_home_held(now, got[0] + got[1], residence_s=0.0)

    def forget(self, session: str) -> None:
        """The session's task ended."""
        self._granted.pop(session, None)

    def release(self, session: str) -> None:
        """End the session's pin (its next call was admitted, or the cap chose it)."""
        p = self._table.pop(session)
        if p is None:
            return
        cache = self._inst.pop(session).cache
        own = cache.resident(p.own)
        if own:
            cache.unpin(own)


__all__ = ["PinBook"]
