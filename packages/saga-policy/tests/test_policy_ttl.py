"""Tool-call TTL (SAGA) and Continuum's TTL: hand-computed values and edge cases."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from saga.aeg.latency import LogNormalLatency
from saga.policy.errors import SagaConfigError
from saga.policy.ttl import (
    ContinuumTTL,
    FixedTTL,
    ToolCallTTL,
    UnknownToolError,
    continuum_ttl,
    pin_return_eta,
    tool_call_ttl,
)


@dataclass
class Fixed:
    """A latency model stub: fixed p95, exponential CDF with the given rate."""

    p95_s: float
    rate: float = 1.0

    def p95(self) -> float:
        return self.p95_s

    def cdf(self, x: float) -> float:
        return 1.0 - math.exp(-self.rate * x)


@pytest.mark.parametrize(
    ("p95", "pressure", "ttl_max", "expected"),
    [
        (10.0, 0.0, 300.0, 10.0),
        (10.0, 1.0, 300.0, 10.0 * (1 - 0.5 * 1.0)),
        (10.0, 0.4, 300.0, 10.0 * (1 - 0.5 * 0.4)),
        (1000.0, 0.0, 300.0, 300.0),
        (1000.0, 0.5, 600.0, 600.0),
        (700.0, 0.5, 600.0, 700.0 * 0.75),
        (0.0, 0.3, 300.0, 0.0),
    ],
)
def test_tool_call_ttl(p95: float, pressure: float, ttl_max: float, expected: float) -> None:
    assert tool_call_ttl(p95, pressure, ttl_max) == pytest.approx(expected)


@pytest.mark.parametrize("pressure", [-0.01, 1.01, math.nan])
def test_tool_call_ttl_rejects_bad_pressure(pressure: float) -> None:
    with pytest.raises(SagaConfigError, match="pressure"):
        tool_call_ttl(5.0, pressure)


def test_tool_call_ttl_rejects_negative_latency() -> None:
    with pytest.raises(SagaConfigError, match="p95"):
        tool_call_ttl(-1.0, 0.0)


def test_tool_call_ttl_class_reads_model_per_tool() -> None:
    policy = ToolCallTTL({"pytest": Fixed(40.0), "grep": Fixed(2.0)})
    assert policy.ttl("pytest", 0.5) == pytest.approx(40.0 * 0.75)
    assert policy.ttl("grep", 0.0) == pytest.approx(2.0)
    with pytest.raises(UnknownToolError, match="browser"):
        policy.ttl("browser", 0.0)
    policy.register("browser", Fixed(8.0))
    assert policy.ttl("browser", 1.0) == pytest.approx(4.0)


def test_tool_call_ttl_default_model() -> None:
    policy = ToolCallTTL(default=Fixed(6.0), ttl_max=5.0)
    assert policy.ttl("anything", 0.0) == 5.0


def test_tool_call_ttl_with_aeg_registry_learns() -> None:
    policy = ToolCallTTL.with_aeg_registry()
    before = policy.ttl("pytest", 0.0)
    for _ in range(50):
        policy.observe("pytest", 60.0)
    after = policy.ttl("pytest", 0.0)
    assert before < 30.0 < after <= 300.0


def test_continuum_degenerate_cdf_pins_exactly_the_tool_time() -> None:
    # Tool always takes 10 s: F(tau) = 1[tau >= 10]. Benefit 4*0.5 + 20 = 22 > 10, so pin 10 s.
    def step(x: float) -> float:
        return 1.0 if x >= 10.0 else 0.0

    assert continuum_ttl(step, queue_delay_s=4.0, reload_s=20.0, eta=0.5) == pytest.approx(10.0)
    # Benefit 6 < 10: pinning never pays, TTL 0.
    assert continuum_ttl(step, queue_delay_s=2.0, reload_s=4.0, eta=1.0) == 0.0


def test_continuum_exponential_cdf_matches_closed_form() -> None:
    # F = 1 - exp(-l t): d/dt [F B - t] = l B exp(-l t) - 1 = 0  ->  t* = ln(l B) / l.
    rate, benefit = 0.2, 30.0
    expected = math.log(rate * benefit) / rate
    got = continuum_ttl(Fixed(0.0, rate).cdf, queue_delay_s=10.0, reload_s=20.0, step_s=0.01)
    assert got == pytest.approx(expected, abs=0.01)


def test_continuum_ttl_clamped_to_ttl_max() -> None:
    got = continuum_ttl(Fixed(0.0, 0.01).cdf, queue_delay_s=0.0, reload_s=1e6, ttl_max=120.0)
    assert got == 120.0


def test_continuum_rejects_bad_inputs() -> None:
    with pytest.raises(SagaConfigError, match="reload_s"):
        continuum_ttl(Fixed(0.0).cdf, queue_delay_s=1.0, reload_s=-1.0)
    with pytest.raises(SagaConfigError, match="probabilities"):
        continuum_ttl(lambda x: 2.0, queue_delay_s=1.0, reload_s=1.0)
    with pytest.raises(SagaConfigError, match="step_s"):
        continuum_ttl(Fixed(0.0).cdf, queue_delay_s=1.0, reload_s=1.0, step_s=0.0)


def test_continuum_class_uses_per_tool_cdf() -> None:
    policy = ContinuumTTL({"fast": Fixed(0.0, 1.0)}, step_s=0.001)
    assert policy.ttl("fast", 0.9, queue_delay_s=5.0, reload_s=5.0) == pytest.approx(
        math.log(10.0), abs=1e-3)
    with pytest.raises(UnknownToolError):
        policy.ttl("slow", 0.0)
    with pytest.raises(SagaConfigError, match="pressure"):
        policy.ttl("fast", 2.0)


def test_fixed_ttl() -> None:
    assert FixedTTL(42.0).ttl("x", 1.0) == 42.0
    with pytest.raises(SagaConfigError):
        FixedTTL(-1.0)


def test_pin_return_eta_is_the_conditional_median() -> None:
    lat = LogNormalLatency(mu=math.log(10.0), sigma=1.0)
    assert pin_return_eta(lat, 0.0) == pytest.approx(10.0)        # the median itself
    for e in (1.0, 5.0, 20.0, 80.0):
        eta = pin_return_eta(lat, e)
        # Half of the calls still running at e are back by e + eta.
        survived = 1.0 - lat.cdf(e)
        assert 1.0 - lat.cdf(e + eta) == pytest.approx(survived / 2.0, rel=1e-6)
    # Log-normal tails: a tool far past its usual latency is expected back later, not sooner.
    assert pin_return_eta(lat, 200.0) > pin_return_eta(lat, 5.0)


def test_pin_return_eta_edges() -> None:
    lat = LogNormalLatency(mu=0.0, sigma=0.1)
    assert pin_return_eta(lat, 1e6) == math.inf                   # should long have returned
    with pytest.raises(SagaConfigError, match="elapsed_s"):
        pin_return_eta(lat, -1.0)
    with pytest.raises(SagaConfigError, match="elapsed_s"):
        pin_return_eta(lat, math.nan)


def test_continuum_ttl_vectorised_cdf_gives_the_same_ttl() -> None:
    for mu, sigma in ((0.5, 0.8), (2.0, 1.5), (-1.0, 0.3)):
        lat = LogNormalLatency(mu, sigma)
        grid = np.linspace(0.0, 50.0, 501)
        assert np.allclose(lat.cdf_array(grid), [lat.cdf(float(x)) for x in grid],
                           rtol=1e-12, atol=1e-15)
        for q, r in ((1.0, 5.0), (10.0, 40.0), (0.0, 0.5)):
            assert continuum_ttl(lat.cdf, q, r, cdf_array=lat.cdf_array) == continuum_ttl(
                lat.cdf, q, r)


def _full_grid_ttl(lat: LogNormalLatency, q: float, r: float, cost: float) -> float:
    """The argmax over the whole grid, every point read (what the cut must reproduce)."""
    grid = np.arange(3001, dtype=np.float64) * 0.1
    utility = lat.cdf_array(grid) * (q * 1.0 + r) - cost * grid
    return float(grid[int(np.argmax(utility))])


def test_continuum_ttl_cut_grid_gives_the_full_grid_argmax() -> None:
    """Reading F only where a point can still win gives the full grid's TTL, bit for bit,
    including ties (flat CDFs), no benefit, no memory cost and a benefit past TTL_max."""
    rng = np.random.default_rng(7)
    cases = [(0.0, 1e-9, 0.0, 0.0, 1.0), (0.0, 1e-9, 5.0, 0.0, 1.0), (0.0, 1.0, 2.0, 3.0, 0.0),
             (3.0, 0.5, 1e4, 0.0, 1.0), (1.0, 2.0, 0.0, 1e3, 1.0)]
    cases += [(float(rng.uniform(-2, 4)), float(rng.uniform(0.05, 2.5)),
               float(rng.uniform(0, 60)), float(rng.uniform(0, 60)), float(rng.uniform(0.2, 3)))
              for _ in range(200)]
    for mu, sigma, q, r, cost in cases:
        lat = LogNormalLatency(mu, sigma)
        got = continuum_ttl(lat.cdf, q, r, cost_per_s=cost, cdf_array=lat.cdf_array)
        assert got == _full_grid_ttl(lat, q, r, cost), (mu, sigma, q, r, cost)
