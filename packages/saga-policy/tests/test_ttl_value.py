"""The value TTL: a tool call's pin lasts while its KV is worth more than the HBM it holds."""

from __future__ import annotations

import math

import pytest

from saga.aeg.latency import LogNormalLatency
from saga.policy import registry
from saga.policy.errors import SagaConfigError
from saga.policy.presets import get_preset
from saga.policy.ttl import TTLPolicy, pin_return_eta
from saga.policy.ttl_value import QUANTILES, ValueTTL, hold_price, value_ttl

TOOL = LogNormalLatency.from_median(10.0, 0.5)
"""Median 10 s: ``R(0) = 10``. With ``C_reload = 4``, ``share = 0.1``, ``P = 1`` the KV is
worth ``4 / (0.1 · 10) = 4`` per unit share and second, so it is pinned iff
``π / (1 − π) ≤ 4``, i.e. ``π ≤ 0.8``."""


def test_price_is_zero_when_idle_and_unbounded_when_full() -> None:
    assert hold_price(0.0) == 0.0
    assert hold_price(0.5) == pytest.approx(1.0)
    assert hold_price(0.8, scale=2.0) == pytest.approx(8.0)
    assert hold_price(1.0) == math.inf


def test_pins_exactly_while_the_value_is_above_the_price() -> None:
    kw = {"reload_s": 4.0, "share": 0.1, "reuse_prob": 1.0}
    assert value_ttl(TOOL, 0.79, **kw) > 0
    assert value_ttl(TOOL, 0.81, **kw) == 0.0
    assert value_ttl(TOOL, 0.99, **kw) == 0.0
    # Half the reuse probability halves the value: the threshold moves to π/(1 − π) = 2.
    assert value_ttl(TOOL, 0.66, **{**kw, "reuse_prob": 0.5}) > 0
    assert value_ttl(TOOL, 0.68, **{**kw, "reuse_prob": 0.5}) == 0.0
    # A returning call that queues 10 s holds the pin 20 s: the threshold is 2 again.
    assert value_ttl(TOOL, 0.7, **kw) > 0
    assert value_ttl(TOOL, 0.7, **kw, queue_delay_s=10.0) == 0.0


def test_kv_worth_nothing_is_never_pinned() -> None:
    for pressure in (0.0, 0.3, 0.9):
        assert value_ttl(TOOL, pressure, reload_s=4.0, reuse_prob=0.0) == 0.0
        assert value_ttl(TOOL, pressure, reload_s=0.0) == 0.0


def test_an_idle_pool_holds_to_the_last_quantile_capped_by_ttl_max() -> None:
    assert value_ttl(TOOL, 0.0, reload_s=4.0) == pytest.approx(TOOL.quantile(0.99))
    assert value_ttl(TOOL, 0.0, reload_s=4.0, ttl_max=20.0) == 20.0


def test_the_ttl_is_the_last_quantile_still_worth_holding() -> None:
    heavy = LogNormalLatency.from_median(10.0, 2.0)  # a long tail: R(e) grows late
    kw = {"reload_s": 4.0, "share": 0.1}
    ttls = [value_ttl(heavy, p, **kw) for p in (0.2, 0.4, 0.5, 0.6, 0.7)]
    assert ttls == sorted(ttls, reverse=True)  # dearer memory, shorter pins
    for pressure, ttl in zip((0.2, 0.4, 0.5, 0.6, 0.7), ttls, strict=True):
        price = hold_price(pressure)
        grid = [heavy.quantile(q) for q in QUANTILES]
        assert ttl == 0.0 or ttl in grid
        if ttl > 0:  # worth it up to the TTL, not at the next quantile
            k = grid.index(ttl)
            assert all(price * pin_return_eta(heavy, e) <= 40.0 for e in grid[:k + 1])
            if k + 1 < len(grid):
                assert price * pin_return_eta(heavy, grid[k + 1]) > 40.0
    assert 0 < ttls[2] < heavy.quantile(0.99)


def test_bad_inputs_are_named() -> None:
    for kw, word in (({"share": 0.0}, "share"), ({"reuse_prob": 1.5}, "reuse_prob"),
                     ({"queue_delay_s": -1.0}, "queue_delay_s")):
        with pytest.raises(SagaConfigError, match=word):
            value_ttl(TOOL, 0.5, reload_s=1.0, **kw)  # type: ignore[arg-type]
    with pytest.raises(SagaConfigError, match="pressure"):
        value_ttl(TOOL, 1.5, reload_s=1.0)


def test_value_policy_is_a_ttl_policy_the_serving_paths_call_unchanged() -> None:
    pol: TTLPolicy = registry.factory("ttl", "value")(ttl_max=120.0)
    assert isinstance(pol, ValueTTL) and pol.ttl_max == 120.0
    # The vLLM scheduler's and coordinator's call: no reuse probability, no share.
    assert pol.ttl("pytest", 0.1, queue_delay_s=0.5, reload_s=3.0) > 0
    assert pol.ttl("pytest", 0.99, queue_delay_s=0.5, reload_s=3.0) == 0.0
    before = pol.return_eta("pytest", 0.0)
    for _ in range(20):
        pol.observe("pytest", 30.0)
    after = pol.return_eta("pytest", 0.0)
    assert before is not None and after is not None and after > 10 * before
    assert isinstance(get_preset("saga_eta").build().ttl, ValueTTL)
