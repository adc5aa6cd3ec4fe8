"""The roofline against hand-computed values and the published ranges."""

from __future__ import annotations

import pytest

from saga.bench.costmodel import (
    LinearCost,
    RooflineCost,
    StepSample,
    check_published_rates,
    fit_linear_cost,
    ideal_call_s,
    linear_features,
)
from saga.policy.errors import SagaConfigError


def test_decode_at_batch_one_is_weight_bandwidth_bound() -> None:
    c = RooflineCost()
    # By hand: 70.6e9 params x 2 B = 141.2 GB of weights, plus 2048 tokens of KV read (x 327,680 B)
    # and one token written, over 4 GPUs x 2.039 TB/s x MBU 0.6.
    nbytes = 141.2e9 + 2048 * 327_680 + 327_680
    memory = nbytes / (4 * 2.039e12 * 0.6)
    # Two ring all-reduces per layer of 1 x 8192 x 2 B: 160 x (10 us + 1.5 x 16 KiB / 225 GB/s).
    comm = 160 * (10e-6 + 1.5 * 8192 * 2 / (300e9 * 0.75))
    assert c.step_time(0, 0, 1, 2048) == pytest.approx(memory + comm + 1e-3, rel=1e-9)


def test_full_prefill_chunk_is_compute_bound() -> None:
    c = RooflineCost()
    n = 8192
    flops = 2 * 70.6e9 * n + 4 * 80 * 8192 * (n * n / 2)
    compute = flops / (4 * 312e12 * 0.5)
    comm = 160 * (10e-6 + 1.5 * n * 8192 * 2 / (300e9 * 0.75))
    assert c.step_time(n, 0, 0, 0) == pytest.approx(compute + comm + 1e-3, rel=1e-9)
    assert c.flops(n, 0, 0, 0) / (4 * 312e12 * 0.5) > c.bytes_moved(n, 0, 0, 0) / (
        4 * 2.039e12 * 0.6)


def test_rates_fall_in_published_ranges() -> None:
    checks = check_published_rates()
    assert {r.name for r in checks} == {"prefill_tokens_per_s", "decode_tokens_per_s_batch1",
                                        "decode_tokens_per_s_batch64"}
    assert all(r.ok for r in checks), [(r.name, r.value) for r in checks]


def test_a_mis_calibrated_model_fails_the_check() -> None:
    slow = RooflineCost(mbu=0.1, mfu=0.1)
    assert not all(r.ok for r in check_published_rates(slow))


def test_bad_efficiency_names_the_field() -> None:
    with pytest.raises(SagaConfigError, match="mfu"):
        RooflineCost(mfu=1.5)
    with pytest.raises(SagaConfigError, match="per_prefill_token_s"):
        LinearCost(0.01, -1.0, 0.001)


def test_ideal_call_grows_with_work() -> None:
    c = RooflineCost()
    assert ideal_call_s(c, 100, 0, 10) < ideal_call_s(c, 100, 0, 100)
    assert ideal_call_s(c, 100, 0, 10) < ideal_call_s(c, 20_000, 0, 10)
    lin = LinearCost(0.01, 1e-4, 1e-3)
    assert lin.step_time(0, 0, 0, 0) == 0.0
    assert lin.step_time(100, 0, 2, 0) == pytest.approx(0.01 + 0.01 + 0.002)


def _steps(fixed: float, a: float, b: float, c: float) -> list[StepSample]:
    out = []
    for p, ctx in ((0, 0), (64, 0), (400, 160), (900, 1200)):
        for d in (0, 1, 3, 7):
            if p + d:
                x = linear_features(p, ctx, d, 300 * d)
                out.append(StepSample(p, ctx, d, 300 * d,
                                      fixed * x[0] + a * x[1] + b * x[2] + c * x[3]))
    return out


def test_step_fit_recovers_known_coefficients() -> None:
    fit = fit_linear_cost(_steps(2e-3, 3e-5, 4e-4, 1e-7), max_batched_tokens=1664,
                          max_num_seqs=8)
    assert fit.cost.coefficients == pytest.approx((2e-3, 3e-5, 4e-4, 1e-7), rel=1e-6)
    assert fit.r2 == pytest.approx(1.0) and fit.median_rel_error < 1e-9
    assert fit.steps == 15 and fit.cost.max_batched_tokens == 1664
    s = fit.cost.step_time(400, 160, 3, 900)
    assert s == pytest.approx(2e-3 + 400 * 3e-5 + 3 * 4e-4 + 1060 * 1e-7)


def test_step_fit_keeps_every_coefficient_non_negative() -> None:
    # Decode steps that get *faster* with more sequences: least squares alone would fit a
    # negative cost per sequence; the fit sets it to 0 and refits the rest.
    steps = [StepSample(p, 0, d, 0, 0.005 + 1e-5 * p - 5e-4 * d)
             for p in (0, 100, 400, 800) for d in (1, 2, 3, 4)]
    fit = fit_linear_cost(steps, max_batched_tokens=2048, max_num_seqs=8)
    assert min(fit.cost.coefficients) >= 0.0
    assert fit.cost.per_decode_seq_s == 0.0
    assert 0.0 < fit.r2 < 1.0 and fit.median_rel_error > 0.0


def test_step_fit_needs_steps() -> None:
    with pytest.raises(SagaConfigError, match="at least 2 steps"):
        fit_linear_cost([StepSample(1, 0, 0, 0, 0.1)], max_batched_tokens=8, max_num_seqs=1)
