"""`saga vllm compare` through typer's runner: a short real run of both engines, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saga.cli.vllm import app

runner = CliRunner()


def test_compare_runs_both_engines_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "cmp.json"
    res = runner.invoke(app, [
        "compare", "--sessions", "3", "--max-steps", "3", "--tool-scale", "0.05",
        "--max-context", "1200", "--kv-blocks", "48", "--seed", "1", "--json", str(out),
        "--per-call"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for word in ("stock", "SAGA", "÷", "recomputed", "completion", "goal: recomputed tokens"):
        assert word in text
    data = json.loads(out.read_text())
    stock, saga = data["runs"]["stock"], data["runs"]["saga"]
    calls = data["workload"]["calls"]
    assert stock["calls"] == saga["calls"] == calls
    # Same workload, same prompts: only what was cached may differ.
    assert stock["prompt_tokens"] == saga["prompt_tokens"] == data["workload"]["prompt_tokens"]
    for run in (stock, saga):
        assert run["recomputed_tokens"] == run["prompt_tokens"] - run["cached_tokens"]
        assert 0.0 <= run["prefix_hit_rate"] <= 1.0
        assert run["tct_mean_s"] > 0 and run["wall_s"] > 0
        assert sum(len(s["calls"]) for s in run["sessions"]) == calls
    assert saga["saga_stats"] is not None and stock["saga_stats"] is None
    assert data["saga_over_stock"]["recomputed_tokens"] == pytest.approx(
        saga["recomputed_tokens"] / stock["recomputed_tokens"], rel=1e-3)


def test_compare_over_seeds_reports_median_and_spread(tmp_path: Path) -> None:
    out = tmp_path / "seeds.json"
    res = runner.invoke(app, [
        "compare", "--sessions", "2", "--max-steps", "2", "--tool-scale", "0.02",
        "--max-context", "600", "--kv-blocks", "24", "--seeds", "3-4", "--json", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "over 2 seeds" in text and "median" in text and "geomean" in text
    data = json.loads(out.read_text())
    assert [d["settings"]["workload"]["seed"] for d in data["seeds"]] == [3, 4]
    spread = data["saga_over_stock_over_seeds"]["recomputed_tokens"]
    per_seed = [d["saga_over_stock"]["recomputed_tokens"] for d in data["seeds"]]
    assert spread["min"] == pytest.approx(min(per_seed), rel=1e-3)
    assert spread["max"] == pytest.approx(max(per_seed), rel=1e-3)
    assert spread["min"] <= spread["median"] <= spread["max"]


def test_model_shapes_size_the_kv_pool() -> None:
    from saga.vllm.testing import SMALL_LLAMA, TINY_LLAMA, kv_bytes_per_block

    # K and V, every layer, float32: 2 · layers · kv heads · head dim · 4 B per token.
    assert kv_bytes_per_block(32) == 2 * 2 * 2 * 32 * 4 * 32
    assert kv_bytes_per_block(32, SMALL_LLAMA) == 2 * 8 * 4 * 64 * 4 * 32
    assert kv_bytes_per_block(32, TINY_LLAMA) == kv_bytes_per_block(32)


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "huge"], "unknown model 'huge'"),
    (["--dram-mb", "4", "--driver", "inproc"], "DRAM tier needs each engine core"),
    (["--dram-mb", "-1"], "--dram-mb must be > 0"),
    (["--dram-mb", "4", "--prefetch-quantile", "1.5"], "prefetch_quantile must be in (0, 1)"),
    (["--seeds", "a,b"], "--seeds must be integers"),
    (["--workload", "chat"], "--workload must be one of"),
    (["--kv-blocks", "4"], "kv_blocks must be >= 8"),
    (["--kv-blocks", "64", "--kv-mb", "2"], "not both"),
    (["--kv-mb", "0.5"], "cannot hold"),
    (["--sessions", "0"], "sessions must be >= 1"),
    (["--driver", "ray"], "--driver must be one of"),
    (["--saga-config", "{nope"], "--saga-config must be a JSON object"),
    (["--saga-config", '{"bogus": 1}'], "bogus"),
    (["--engines", "stock,tgi"], "engines must be drawn from"),
])
def test_bad_input_is_a_clear_error_with_exit_2(args: list[str], message: str) -> None:
    res = runner.invoke(app, ["compare", *args])
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and message in res.output.replace("\n", " ")
