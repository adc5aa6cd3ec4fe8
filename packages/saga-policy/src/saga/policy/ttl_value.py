"""Retention over a tool call from the value of the session's KV: pin while it is worth its HBM.

SAGA's :func:`saga.policy.ttl.tool_call_ttl` pins for the tool's p95 whatever the KV is worth.
:func:`value_ttl` prices it instead, with the one value eviction ranks by
(:func:`saga.policy.nextuse.block_value`): the session's KV is worth
``P_reuse · C_reload / (share · (R(e) + T_q))`` seconds of work per second held, per unit of
pool share, and holding a share of HBM costs others ``price(π) = c · π / (1 − π)`` at pressure
``π`` (free on an idle pool, unbounded on a full one). The pin lasts while the value stays above
the price as the tool runs on.
"""

from __future__ import annotations

import math
from typing import ClassVar

from saga.policy.errors import SagaConfigError
from saga.policy.ttl import (
    TTL_MAX_S,
    HasQuantile,
    LatencySource,
    _check_ttl_max,
    _PerTool,
    aeg_latency_source,
    pin_return_eta,
)

PRICE_SCALE = 1.0
"""``c`` of :func:`hold_price`: seconds of others' work a full pool share held for a second
costs at pressure 1/2."""
DEFAULT_SHARE = 1.0 / 16.0
"""Share of the HBM pool a pin holds when the caller does not say: a 32K-token session in a
Llama-3-70B TP4 instance of the reference deployment (~487K tokens of KV)."""
QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
"""Quantiles of the tool's latency at which the pin is re-priced (the TTL is one of them)."""


def hold_price(pressure: float, scale: float = PRICE_SCALE) -> float:
    """Price of holding a unit share of HBM for a second: ``c · π / (1 − π)`` (``inf`` at 1).

    Zero on an idle pool (nobody waits for the memory); it grows as the pool fills, as a queue's
    wait grows with its utilisation.
    """
    if not 0.0 <= pressure <= 1.0:
        raise SagaConfigError(f"pressure must be in [0, 1], got {pressure}")
    if not (scale >= 0 and math.isfinite(scale)):
        raise SagaConfigError(f"price scale must be a finite number >= 0, got {scale}")
    return math.inf if pressure >= 1.0 else scale * pressure / (1.0 - pressure)


def value_ttl(latency: HasQuantile, pressure: float, *, reload_s: float,
              reuse_prob: float = 1.0, share: float = DEFAULT_SHARE,
              queue_delay_s: float = 0.0, ttl_max: float = TTL_MAX_S,
              price_scale: float = PRICE_SCALE,
              quantiles: tuple[float, ...] = QUANTILES) -> float:
    """The value TTL: hold the session's KV while it is worth more than the HBM it holds.

    ``v(e) = P_reuse · C_reload / (share · (R(e) + T_q))`` is the value of the pinned KV ``e``
    seconds into the tool (``R(e)``: :func:`saga.policy.ttl.pin_return_eta`, the conditional
    median of the tool's remaining time; ``T_q``: the queueing delay the returning call waits,
    during which the pin still holds; ``C_reload``: seconds to recompute or reload the KV;
    ``share``: the share of the HBM pool the pin holds). Pin iff ``v(0) ≥ price(π)``
    (:func:`hold_price`); the TTL is then the last quantile ``F⁻¹(q)`` of the tool's latency,
    ``q`` in ``quantiles`` ascending, up to which ``v`` stays at or above the price, capped by
    ``ttl_max`` (``0``: no pin). KV worth nothing (``P_reuse = 0`` or ``C_reload = 0``) is never
    pinned; on an idle pool (price 0) anything else is held to the last quantile.
    """
    _check_ttl_max(ttl_max)
    for name, value in (("reload_s", reload_s), ("queue_delay_s", queue_delay_s)):
        if not (value >= 0 and math.isfinite(value)):
            raise SagaConfigError(f"{name} must be a finite number >= 0, got {value}")
    if not 0.0 <= reuse_prob <= 1.0:
        raise SagaConfigError(f"reuse_prob must be in [0, 1], got {reuse_prob}")
    if not 0.0 < share <= 1.0:
        raise SagaConfigError(f"share must be in (0, 1], got {share}")
    price = hold_price(pressure, price_scale)
    worth = reuse_prob * reload_s / share  # v(e) · (R(e) + T_q)

    def worth_holding(elapsed_s: float) -> bool:
        wait = pin_return_eta(latency, elapsed_s) + queue_delay_s
        if worth <= 0.0:  # never reused, or nothing to save: not worth any memory
            return False
        return price == 0.0 or worth >= price * wait

    if not worth_holding(0.0):
        return 0.0
    ttl = 0.0
    for q in sorted(quantiles):
        e = latency.quantile(q)
        if e >= ttl_max:
            return ttl_max if worth_holding(ttl_max) else ttl
        if not worth_holding(e):
            return ttl
        ttl = e
    return ttl


class ValueTTL(_PerTool[HasQuantile]):
    """SAGA's value TTL policy (:func:`value_ttl`) over a per-tool log-normal latency model.

    Satisfies :class:`saga.policy.ttl.TTLPolicy`: a caller that knows the session's reuse
    probability and the share of the pool its KV holds passes them (``reuse_prob``, ``share``);
    one that does not gets ``1`` and :data:`DEFAULT_SHARE`.
    """

    reads_hints: ClassVar[bool] = True

    def __init__(self, *, source: LatencySource | None = None, ttl_max: float = TTL_MAX_S,
                 price_scale: float = PRICE_SCALE, default: HasQuantile | None = None) -> None:
        _check_ttl_max(ttl_max)
        hold_price(0.5, price_scale)  # validates
        super().__init__(None, source, default)
        self.ttl_max = ttl_max
        self.price_scale = price_scale

    @classmethod
    def with_aeg_registry(cls, ttl_max: float = TTL_MAX_S, default_p95_s: float | None = None,
                          price_scale: float = PRICE_SCALE) -> ValueTTL:
        """A policy backed by a fresh ``saga.aeg`` log-normal registry (what presets build);
        ``default_p95_s``: see :func:`saga.policy.ttl.aeg_latency_source`."""
        return cls(source=aeg_latency_source(default_p95_s), ttl_max=ttl_max,
                   price_scale=price_scale)

    def model(self, tool: str) -> HasQuantile:
        """The latency model of ``tool``."""
        found = self._lookup(tool)
        if not isinstance(found, HasQuantile):
            raise SagaConfigError(f"the latency model of tool {tool!r} has no quantile(); "
                                  "the value TTL needs one")
        return found

    def ttl(self, tool: str, pressure: float, *, queue_delay_s: float = 0.0,
            reload_s: float = 0.0, reuse_prob: float = 1.0,
            share: float | None = None) -> float:
        """TTL in seconds for a session entering ``tool`` at HBM ``pressure``
        (:func:`value_ttl`)."""
        return value_ttl(self.model(tool), pressure, reload_s=reload_s, reuse_prob=reuse_prob,
                         share=DEFAULT_SHARE if share is None else share,
                         queue_delay_s=queue_delay_s, ttl_max=self.ttl_max,
                         price_scale=self.price_scale)


__all__ = ["DEFAULT_SHARE", "PRICE_SCALE", "QUANTILES", "ValueTTL", "hold_price", "value_ttl"]
