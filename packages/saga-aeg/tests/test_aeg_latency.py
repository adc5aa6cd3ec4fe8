"""LogNormalLatency and ToolLatencyModel against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga.aeg.errors import AEGError
from saga.aeg.latency import LogNormalLatency, ToolLatencyModel, pool_log_moments


def test_fit_is_mean_and_population_std_of_logs() -> None:
    fit = LogNormalLatency.fit([1.0, math.e, math.e**2])
    assert fit.mu == pytest.approx(1.0)
    assert fit.sigma == pytest.approx(math.sqrt(2.0 / 3.0))
    assert fit.n == 3


def test_quantiles_mean_cdf_by_hand() -> None:
    lat = LogNormalLatency(mu=0.0, sigma=1.0)
    assert lat.p95() == pytest.approx(math.exp(1.6448536269514722))
    assert lat.quantile(0.5) == pytest.approx(1.0)
    assert lat.median() == pytest.approx(1.0)
    assert lat.mean() == pytest.approx(math.exp(0.5))
    assert lat.variance() == pytest.approx((math.e - 1.0) * math.e)
    assert lat.cv() == pytest.approx(math.sqrt(math.e - 1.0))
    assert lat.cdf(1.0) == pytest.approx(0.5)
    assert lat.cdf(lat.quantile(0.9)) == pytest.approx(0.9)
    assert lat.cdf(0.0) == 0.0
    assert lat.cdf(-3.0) == 0.0
    assert lat.cdf(math.inf) == 1.0


def test_degenerate_sigma_zero() -> None:
    lat = LogNormalLatency(mu=math.log(3.0), sigma=0.0)
    assert lat.p95() == pytest.approx(3.0)
    assert lat.cdf(2.999) == 0.0
    assert lat.cdf(3.0) == 1.0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, True, "1"])
def test_rejects_impossible_samples(bad: object) -> None:
    with pytest.raises(AEGError, match=r"positive|number"):
        LogNormalLatency(0.0, 1.0).update(bad)  # type: ignore[arg-type]
    with pytest.raises(AEGError):
        LogNormalLatency.fit([1.0, bad])  # type: ignore[list-item]


def test_rejects_bad_parameters() -> None:
    with pytest.raises(AEGError, match="sigma"):
        LogNormalLatency(0.0, -0.1)
    with pytest.raises(AEGError, match="mu"):
        LogNormalLatency(math.nan, 1.0)
    with pytest.raises(AEGError, match="n must"):
        LogNormalLatency(0.0, 1.0, n=-1)
    with pytest.raises(AEGError, match="at least one"):
        LogNormalLatency.fit([])
    for q in (0.0, 1.0, -0.5, 2.0):
        with pytest.raises(AEGError, match=r"\(0, 1\)"):
            LogNormalLatency(0.0, 1.0).quantile(q)


def test_update_from_empty_replaces_stated_parameters() -> None:
    lat = LogNormalLatency(5.0, 2.0)
    assert lat.update(math.e) is lat
    assert lat.mu == pytest.approx(1.0)
    assert (lat.sigma, lat.n) == (0.0, 1)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=1e-3, max_value=1e4), min_size=1, max_size=40))
def test_online_update_equals_batch_fit(xs: list[float]) -> None:
    online = LogNormalLatency(0.0, 0.0).update_many(xs)
    batch = LogNormalLatency.fit(xs)
    assert online.n == batch.n == len(xs)
    assert online.mu == pytest.approx(batch.mu, abs=1e-9)
    assert online.sigma == pytest.approx(batch.sigma, abs=1e-7)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-2, max_value=1e3), min_size=1, max_size=20),
    st.lists(st.floats(min_value=1e-2, max_value=1e3), min_size=1, max_size=20),
)
def test_merge_equals_fit_of_union(a: list[float], b: list[float]) -> None:
    merged = LogNormalLatency.fit(a).merge(LogNormalLatency.fit(b))
    both = LogNormalLatency.fit(a + b)
    assert merged.n == both.n
    assert merged.mu == pytest.approx(both.mu, abs=1e-9)
    assert merged.sigma == pytest.approx(both.sigma, abs=1e-7)


def test_sample_is_deterministic_and_matches_parameters() -> None:
    lat = LogNormalLatency(mu=1.0, sigma=0.5)
    a = lat.sample(np.random.default_rng(7), 20_000)
    b = lat.sample(np.random.default_rng(7), 20_000)
    assert np.array_equal(a, b)
    assert np.all(a > 0)
    refit = LogNormalLatency.fit(a.tolist())
    assert refit.mu == pytest.approx(1.0, abs=0.02)
    assert refit.sigma == pytest.approx(0.5, abs=0.02)
    assert lat.sample(np.random.default_rng(0), 0).shape == (0,)


def test_from_mean_cv_and_from_median() -> None:
    lat = LogNormalLatency.from_mean_cv(10.0, 2.0)
    assert lat.mean() == pytest.approx(10.0)
    assert lat.cv() == pytest.approx(2.0)
    assert LogNormalLatency.from_median(4.0, 0.3).median() == pytest.approx(4.0)
    with pytest.raises(AEGError):
        LogNormalLatency.from_mean_cv(10.0, -1.0)


def test_pool_log_moments_by_hand() -> None:
    # prior (mu 0, sigma 1, weight 1) + one observation at log 2: mu 1, M2 = 1 + 4/2 = 3
    mu, sigma = pool_log_moments(0.0, 1.0, 1.0, 2.0, 0.0, 1.0)
    assert mu == pytest.approx(1.0)
    assert sigma == pytest.approx(math.sqrt(1.5))
    assert pool_log_moments(3.0, 0.5, 0.0, 9.0, 9.0, 0.0) == (3.0, 0.5)


def test_tool_model_prior_then_pooled_then_data_dominates() -> None:
    model = ToolLatencyModel()
    assert model.latency("grep") == LogNormalLatency(0.0, 1.0)
    model.observe("grep", math.e**2)
    one = model.latency("grep")
    assert one.mu == pytest.approx(1.0)
    assert one.sigma == pytest.approx(math.sqrt(1.5))
    assert one.n == 1
    for _ in range(999):
        model.observe("grep", math.e**2)
    assert model.latency("grep").mu == pytest.approx(2.0, abs=0.01)
    assert model.n_observations("grep") == 1000
    assert model.n_observations("sed") == 0


def test_tool_model_specific_prior_and_zero_weight() -> None:
    model = ToolLatencyModel(prior_weight=0.0)
    model.set_prior("pytest", LogNormalLatency.from_median(10.0, 0.5))
    assert model.latency("pytest").median() == pytest.approx(10.0)
    assert model.p95("pytest") == pytest.approx(10.0 * math.exp(0.5 * 1.6448536269514722))
    model.observe("pytest", 2.0)
    assert model.latency("pytest").median() == pytest.approx(2.0)
    assert model.tools() == ["pytest"]
    with pytest.raises(AEGError, match="tool name"):
        model.observe("", 1.0)
    with pytest.raises(AEGError, match="positive"):
        model.observe("pytest", 0.0)


def test_returned_latencies_are_copies() -> None:
    model = ToolLatencyModel()
    model.observe("ls", 1.0)
    lat = model.latency("ls")
    lat.update(100.0)
    assert model.n_observations("ls") == 1


def test_cdf_array_matches_cdf_and_rejects_nan() -> None:
    lat = LogNormalLatency(0.2, 0.9)
    xs = np.array([-1.0, 0.0, 0.3, 1.0, 7.5, math.inf])
    assert np.allclose(lat.cdf_array(xs), [lat.cdf(float(x)) for x in xs], rtol=1e-12)
    step = LogNormalLatency(math.log(3.0), 0.0)
    assert step.cdf_array(np.array([2.999, 3.0])).tolist() == [0.0, 1.0]
    with pytest.raises(AEGError):
        lat.cdf_array(np.array([1.0, math.nan]))
