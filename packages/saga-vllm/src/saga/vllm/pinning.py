"""Tool-call pins inside vLLM's scheduler: creation, the cap, pressure, expiry and release.

A finished call that ends in a tool hands its block references to a
:class:`~saga.policy.pins.Pin` instead of the pool (``KVCacheManager.pop_blocks_for_free``).
Pins are released on expiry, when the session's next call got its blocks, under pressure
(before vLLM would fail to place a waiting request or preempt one; earliest expiry first) and
over the cap, where saga-policy's one rule (:func:`~saga.policy.pins.cap_victims`: the live pin
expected back last gives way) decides, as in the simulator.

The TTL comes from the preset's TTL policy. Continuum's rule weighs the queueing delay a dropped
session would pay and the time to reload its KV: the engine passes its running averages of the
time requests waited before their first step and of the engine seconds per scheduled token
(times the call's tokens: a re-prefill estimate); SAGA's and the fixed rule ignore both.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from saga.policy.eviction.walru import UNKNOWN_REUSE
from saga.policy.pins import Pin, PinTable, ReleaseReason, cap_blocks, cap_victims, return_eta
from saga.policy.ttl import TTLPolicy
from saga.vllm.block_queue import WALRUFreeBlockQueue
from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.metrics import SagaMetrics

_EMA = 0.05
"""Weight of a new sample in the engine's running averages (as the simulator's)."""


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class PinningMixin:
    """The pin half of :class:`~saga.vllm.scheduler.SagaScheduler` (vLLM's scheduler state is
    the host's: ``waiting``, ``running``, ``kv_cache_manager``, ``block_size``)."""

    pins: PinTable
    ttl_policy: TTLPolicy | None
    saga_config: SagaSchedulerConfig
    metrics: SagaMetrics
    block_queue: WALRUFreeBlockQueue
    block_pool: Any
    num_usable_blocks: int
    waiting: Any
    running: Any
    kv_cache_manager: Any
    block_size: int
    queue_delay_ema_s: float = 0.0
    """Running average of how long requests waited before their first step (wall seconds)."""
    token_time_ema_s: float = 0.0
    """Running average of engine seconds per scheduled token (schedule → output)."""

    if TYPE_CHECKING:  # the host scheduler's (only declared here, so the MRO finds the real ones)
        def _now(self) -> float: ...

        def _session(self, request_id: str) -> str: ...

    def _pressure(self) -> float:
        return min(max(float(self.block_pool.get_usage()), 0.0), 1.0)

    # -- estimates for the TTL -------------------------------------------------------------------
    def _observe_queue_delay(self, request: Any) -> None:
        """A request got its first step: how long it waited (vLLM stamps arrivals by
        ``time.time``)."""
        delay = max(time.time() - float(request.arrival_time), 0.0)
        self.queue_delay_ema_s += _EMA * (delay - self.queue_delay_ema_s)

    def _observe_step(self, seconds: float, tokens: int) -> None:
        """A step of ``tokens`` scheduled tokens took ``seconds`` from schedule to output."""
        if tokens > 0 and seconds >= 0:
            sample = seconds / tokens
            if self.token_time_ema_s == 0.0:
                self.token_time_ema_s = sample
            else:
                self.token_time_ema_s += _EMA * (sample - self.token_time_ema_s)

    # -- pinning -----------------------------------------------------------------------------------
    def _pin(self, session_id: str, tool: str, blocks: list[Any], tokens: int) -> None:
        """Pin ``blocks`` for ``session_id``'s ``tool`` (``tokens``: the call's context);
        then the cap rule, then an immediate release when the TTL is zero."""
        assert self.ttl_policy is not None
        now = self._now()
        ttl = self.ttl_policy.ttl(tool, self._pressure(), queue_delay_s=self.queue_delay_ema_s,
                                  reload_s=tokens * self.token_time_ema_s)
        self.metrics.pins_created += 1
        old = self.pins.add(Pin(session_id, tool, blocks, pinned_at=now, expires_at=now + ttl))
        if old is not None:
            self._release(old, ReleaseReason.REPLACED)
        self.release_expired_pins(now)  # expired pins hold blocks but do not count to the cap
        cap = cap_blocks(self.saga_config.pin_cap_fraction, self.num_usable_blocks)
        assert cap is not None
        for victim in cap_victims(self.pins, cap, now,
                                  lambda p: return_eta(self.ttl_policy, p, now)):
            self._release(self.pins.pop(victim.session_id), ReleaseReason.CAP)
        self._sync_gauges()

    def _release(self, pin: Pin | None, reason: ReleaseReason) -> None:
        """Give a pin's block references back to vLLM (tail first, as vLLM frees)."""
        if pin is None:
            return
        p_reuse = (UNKNOWN_REUSE if reason is ReleaseReason.RETURNED
                   else self.saga_config.pending_tool_reuse)
        self.block_queue.set_reuse((b.block_id for b in pin.blocks if not b.is_null), p_reuse)
        self.block_pool.free_blocks(reversed(pin.blocks))
        self.metrics.on_pin_release(reason.value, pin.num_blocks)

    # -- pressure ----------------------------------------------------------------------------------
    def _head_blocked(self) -> bool:
        """A waiting request exists but nothing new was placed and nothing runs."""
        return bool(self.waiting) and not self.running

    def _relieve_pressure(self, force: bool = False) -> None:
        """Release pins (earliest expiry first, the head request's own session last) until the
        head of the waiting queue fits beside the running requests' next blocks.

        Counts the head's prefix hits: hit blocks need no allocation, but the ones sitting free
        stop counting as free once touched. ``force`` (after a step that failed to place it or
        preempted) also releases when no estimate says so, one pin at a time, so a waiting
        request is never starved by pins.
        """
        if not len(self.pins):
            return
        head = None
        if self.waiting:
            try:
                head = self.waiting.peek_request()
            except IndexError:
                head = None
        own = self._session(head.request_id) if head is not None else None
        reserve = len(self.running)
        must_release = force
        while len(self.pins):
            if not must_release and self._fits(head, reserve):
                return
            victim = self._earliest_pin(exclude=own)
            if victim is None:
                return
            self._release(self.pins.pop(victim.session_id), ReleaseReason.PRESSURE)
            must_release = False

    def _fits(self, head: Any, reserve: int) -> bool:
        """Whether ``head`` (or nothing) plus one new block per running request fits now."""
        need_new, hits_free = 0, 0
        if head is not None and head.num_computed_tokens == 0:
            hit_blocks, n_hit, _ = self.kv_cache_manager.get_computed_blocks(head)
            flat = [b for group in hit_blocks.blocks for b in group]
            hits_free = sum(1 for b in flat if b.ref_cnt == 0)
            need_new = _cdiv(int(head.num_tokens), self.block_size) - n_hit // self.block_size
        free = int(self.block_pool.get_num_free_blocks()) - hits_free
        return free >= need_new + reserve

    def _earliest_pin(self, exclude: str | None) -> Pin | None:
        first = self.pins.earliest()
        if first is None or first.session_id != exclude:
            return first
        others = sorted((p for p in self.pins if p.session_id != exclude),
                        key=lambda p: (p.expires_at, p.seq))
        return others[0] if others else first

    # -- public ------------------------------------------------------------------------------------
    def release_expired_pins(self, now: float | None = None) -> int:
        """Release pins whose TTL ran out at ``now`` (default: the clock); returns how many.

        vLLM only calls ``schedule`` while requests exist, so an idle engine keeps expired pins
        until the next request; call this to return them sooner.
        """
        expired = self.pins.pop_expired(self._now() if now is None else now)
        for pin in expired:
            self._release(pin, ReleaseReason.EXPIRED)
        self._sync_gauges()
        return len(expired)

    def release_all_pins(self, reason: ReleaseReason = ReleaseReason.SHUTDOWN) -> int:
        """Release every pin; returns how many."""
        n = 0
        while len(self.pins):
            self._release(self.pins.pop_earliest(), reason)
            n += 1
        self._sync_gauges()
        return n

    def _sync_gauges(self) -> None:
        self.metrics.pinned_blocks = self.pins.pinned_blocks
        self.metrics.pinned_sessions = len(self.pins)


__all__ = ["PinningMixin"]
