"""Compare bookkeeping without an engine: metrics, ratios, JSON, config checks."""

from __future__ import annotations

import dataclasses
import math

import pytest

from saga.policy.errors import SagaConfigError
from saga.vllm.compare import (
    CallRecord,
    CompareConfig,
    CompareResult,
    EngineRun,
    SessionRecord,
)
from saga.vllm.compare_results import summarise
from saga.vllm.workload import WorkloadConfig, build_workload


def _run(name: str, cached: list[int], tcts: list[float]) -> EngineRun:
    # Two sessions, two calls each: prompts 100 then 200 (of which 120 seen before).
    sessions = []
    for i, tct in enumerate(tcts):
        calls = (CallRecord(f"s{i}", 0, 100, cached[2 * i], 10, 0.1, 0),
                 CallRecord(f"s{i}", 1, 200, cached[2 * i + 1], 10, 0.3, 120))
        sessions.append(SessionRecord(f"s{i}", "swe-bench", 0.0, tct, calls))
    return summarise(name, 1.0, 10.0, sessions, None)


def test_engine_run_metrics_by_hand() -> None:
    r = _run("stock", [0, 96, 0, 0], [4.0, 6.0])
    assert r.calls == 4 and r.prompt_tokens == 600 and r.cached_tokens == 96
    assert r.recomputed_tokens == 504
    # re-prefilled: call 2 of s0 reuses 120, 96 cached → 24; s1 call 2 → 120.
    assert r.reprefilled_tokens == 144
    assert r.hit_rate == pytest.approx(96 / 600)
    assert r.tct_mean_s == pytest.approx(5.0)
    assert r.tct_p95_s == pytest.approx(4.0 + 0.95 * 2.0)
    assert r.calls_per_s == pytest.approx(0.4)
    assert r.tokens_per_s == pytest.approx((600 + 40) / 10.0)
    assert r.call_latency_mean_s == pytest.approx(0.2)


def test_ratios_and_json() -> None:
    stock = _run("stock", [0, 0, 0, 0], [4.0, 6.0])
    saga = _run("saga", [0, 96, 0, 96], [3.0, 5.0])
    cfg = CompareConfig(workload=WorkloadConfig(sessions=2, max_steps=2), kv_blocks=128)
    res = CompareResult(cfg, build_workload(cfg.workload), (stock, saga))
    ratios = res.ratios()
    assert ratios["recomputed_tokens"] == pytest.approx((600 - 192) / 600)
    assert ratios["reprefilled_tokens"] == pytest.approx((240 - 192) / 240)
    assert ratios["tct_mean_s"] == pytest.approx(4.0 / 5.0)
    d = res.to_dict(sessions=True)
    assert set(d["runs"]) == {"stock", "saga"}
    assert d["runs"]["saga"]["recomputed_tokens"] == 408
    assert len(d["runs"]["saga"]["sessions"]) == 2
    assert d["settings"]["saga_config"]["preset"] == "saga_no_afs"
    only = CompareResult(cfg, build_workload(cfg.workload), (stock,))
    assert only.ratios() == {}
    zero = _run("saga", [100, 200, 100, 200], [1.0, 1.0])
    zero_stock = dataclasses.replace(zero, name="stock")
    assert CompareResult(cfg, build_workload(cfg.workload), (zero_stock, zero)).ratios()[
        "recomputed_tokens"] == 1.0
    assert math.isinf(CompareResult(cfg, build_workload(cfg.workload), (zero_stock, saga))
                      .ratios()["recomputed_tokens"])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"kv_blocks": 4}, "kv_blocks"),
    ({"kv_blocks": 50}, "cannot hold"),
    ({"driver": "ray"}, "driver"),
    ({"engines": ("stock", "sglang")}, "engines"),
    ({"saga_overrides": {"bogus": 1}}, "bogus"),
    ({"saga_overrides": {"queue": "lifo"}}, "queue"),
])
def test_bad_compare_config_is_rejected_before_any_engine_starts(kwargs: dict[str, object],
                                                                 match: str) -> None:
    with pytest.raises(SagaConfigError, match=match):
        CompareConfig(**kwargs)  # type: ignore[arg-type]
