"""The roofline against hand-computed values and the published ranges."""

from __future__ import annotations

import pytest

from saga.bench.costmodel import (
    LinearCost,
    RooflineCost,
    check_published_rates,
    ideal_call_s,
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
