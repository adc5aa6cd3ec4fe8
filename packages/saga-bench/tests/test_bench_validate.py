"""Validation against an engine's measurement, given as plain data (no engine needed here)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from saga.bench.validate import simulated_engine, step_samples, validate
from saga.policy.errors import SagaConfigError
from saga.policy.presets import PRESETS


def _steps(n: int, per_token_s: float, seed: int) -> list[list[Any]]:
    """Steps whose period is 1 ms + ``per_token_s`` per prefill token (exactly linear)."""
    out: list[list[Any]] = []
    t = 0.0
    for i in range(n):
        prefill = 32 * ((i * 7 + seed) % 5)
        decode = 1 + (i % 3)
        out.append([t, prefill, 0, decode, 64 * decode, i < n - 1])
        t += 1e-3 + per_token_s * prefill + 2e-4 * decode
    return out


def _measurement() -> dict[str, Any]:
    sessions = [{"session_id": f"web-{i}", "agent_type": "web", "tenant": "default",
                 "arrival_s": 0.1 * i,
                 "calls": [{"new_tokens": 96, "max_tokens": 8, "tool": "search", "tool_s": 0.2},
                           {"new_tokens": 40, "max_tokens": 8, "tool": None, "tool_s": 0.0}]}
                for i in range(3)]
    outputs = {s["session_id"]: [8, 6] for s in sessions}
    run = {"pin_cap_fraction": 0.5, "tct_mean_s": 0.5, "recomputed_tokens": 400,
           "call_time_s": 0.1, "outputs": outputs}
    saga = PRESETS["saga"]
    return {
        "engine": {"block_size": 32, "kv_blocks": 64, "usable_blocks": 63},
        "workload": {"seed": 0, "sessions": 3, "max_context": 512, "system_tokens": 64},
        "sessions": sessions,
        "runs": {"stock": {**run, "preset": {"name": "vllm_apc",
                                            "layers": PRESETS["vllm_apc"].layers()},
                           "steps": _steps(40, 2e-5, 0)},
                 "saga": {**run, "preset": {"name": saga.name, "layers": saga.layers()},
                          "steps": _steps(40, 3e-5, 1)}},
        "load_average": {"before": 0.5, "after": 0.7},
    }


def test_step_samples_keep_the_steps_another_followed() -> None:
    steps = _steps(5, 1e-5, 0)
    steps[2][5] = False  # an idle gap after step 2
    samples = step_samples(steps)
    assert len(samples) == 3  # steps 0, 1 and 3 (the last has no successor)
    assert samples[0].seconds == pytest.approx(steps[1][0] - steps[0][0])


def test_the_simulated_engine_runs_the_preset_the_engine_ran() -> None:
    m = _measurement()
    workload, configs, presets = simulated_engine(m)
    assert presets["saga"].layers() | {"tier": "hbm", "dram_tier": False, "prefetch": False,
                                       "stealing": None} == presets["saga"].layers()
    assert presets["saga"].eviction == PRESETS["saga"].eviction
    assert presets["saga"].ttl == PRESETS["saga"].ttl
    assert presets["stock"].eviction == PRESETS["vllm_apc"].eviction
    assert configs["saga"].hbm_blocks == 63 and configs["saga"].pin_cap_fraction == 0.5
    assert [c.output_tokens for c in workload.tasks[0].calls] == [8, 6]


def test_validate_reports_both_engines_and_recovers_the_step_model() -> None:
    result = validate(_measurement())
    assert [r["engine"] for r in result["rows"]] == ["stock", "saga"]
    fit = result["cost_fit"]["stock"]
    assert fit["per_prefill_token_s"] == pytest.approx(2e-5, rel=1e-6)
    assert fit["r2"] == pytest.approx(1.0)
    assert any("| engine |" in line for line in result["markdown"])
    assert result["simulated"]["saga"]["tasks"] == 3


def test_a_measurement_without_a_run_names_it() -> None:
    m = copy.deepcopy(_measurement())
    del m["runs"]["saga"]
    with pytest.raises(SagaConfigError, match=r"no 'saga' run"):
        validate(m)
