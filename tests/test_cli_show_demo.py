"""`saga show` and `saga demo` through typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saga.cli.demo import instance_capacity_blocks, verdict
from saga.cli.main import app
from saga.policy import PRESETS, check_reference_invariants
from saga.policy.replay import ReplayResult

runner = CliRunner(env={"COLUMNS": "250"})


def test_show_presets_lists_every_preset() -> None:
    res = runner.invoke(app, ["show", "presets", "--verbose"])
    assert res.exit_code == 0, res.output
    assert len(PRESETS) == 24
    for name in PRESETS:
        assert name in res.output
    assert "walru(alpha=0.3, beta=0.5, gamma=0.2)" in res.output


def test_show_presets_table_has_every_layer_and_switch_of_every_preset() -> None:
    res = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["show", "presets"])
    assert res.exit_code == 0, res.output
    # Width-proof: a folded cell continues on a line whose other cells are empty, so with all
    # whitespace and column rules removed each preset reads as its name, then layer, value, ...
    text = "".join(res.output.replace("│", " ").split())
    for name, preset in PRESETS.items():
        layers = preset.layers()
        assert list(layers) == ["eviction", "prefix_caching", "ttl", "tier", "dram_tier",
                                "prefetch", "router", "stealing", "queue", "fairness",
                                "movement", "rehome_kv", "migration"]
        rows = []
        for layer, value in layers.items():
            if value is None:
                shown = "off"
            elif isinstance(value, bool):
                shown = "yes" if value else "no"
            elif isinstance(value, dict):
                shown = getattr(preset, layer).describe()
            else:
                shown = value
            rows.append(layer + "".join(shown.split()))
        # The table has no outer edge: a preset ends at a row rule (─) or at the table's end.
        whole = f"{name}{''.join(rows)}"
        assert f"{whole}─" in text or text.endswith(whole), name


def test_show_presets_mechanisms_prints_the_parity_table_with_sources() -> None:
    from saga.policy.parity import mechanism_rows

    res = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["show", "presets", "--mechanisms"])
    assert res.exit_code == 0, res.output
    assert all(len(line) <= 80 for line in res.output.splitlines())
    text = "".join(res.output.replace("│", " ").split())
    for name in PRESETS:
        assert name in text
    for row in mechanism_rows():
        assert "".join(row["modelled_by"].split()) in text
    assert "withsources" in text and "leftout" in text
    res = runner.invoke(app, ["show", "presets", "--mechanisms", "--json"])
    data = json.loads(res.output)
    assert set(data) == set(PRESETS)
    assert data["llumnix"][0]["modelled_by"] == "migration"
    assert all(m["source"] for rows in data.values() for m in rows)
    assert any("llm-d-inference-scheduler" in m["source"] for m in data["vllm_apc"])


def test_show_presets_json_lists_every_layer_of_every_preset() -> None:
    res = runner.invoke(app, ["show", "presets", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert set(data) == set(PRESETS)
    object_layers = ("eviction", "ttl", "router", "stealing", "queue", "fairness")
    switches = ("prefix_caching", "dram_tier", "prefetch", "rehome_kv", "migration")
    for name, preset in PRESETS.items():
        row = data[name]
        assert row["description"] == preset.description
        assert set(row) == {"description", *object_layers, *switches, "tier", "movement"}
        for layer in object_layers:
            spec = getattr(preset, layer)
            expected = None if spec is None else {"name": spec.name, "kwargs": dict(spec.kwargs)}
            assert row[layer] == expected, (name, layer)
        for switch in switches:
            assert row[switch] is getattr(preset, switch), (name, switch)
        assert row["tier"] == preset.tier and row["movement"] == preset.movement
    assert data["saga"]["eviction"] == {"name": "walru",
                                        "kwargs": {"alpha": 0.3, "beta": 0.5, "gamma": 0.2}}
    assert data["llumnix"]["movement"] == "migrate" and data["vllm"]["ttl"] is None


def test_show_spec_prints_computed_kv_per_token() -> None:
    res = runner.invoke(app, ["show", "spec"])
    assert res.exit_code == 0, res.output
    assert f"{2 * 80 * 8 * 128 * 2:,} B" in res.output  # Llama-3-70B FP16 KV per token


def test_unknown_command_is_an_error() -> None:
    res = runner.invoke(app, ["show", "nothing"])
    assert res.exit_code != 0


def test_instance_capacity_is_one_instance_of_kv() -> None:
    r = check_reference_invariants()
    cap = instance_capacity_blocks(512)
    assert cap * 512 * r.kv_bytes_per_token <= r.kv_hbm_bytes_per_instance
    assert (cap + 1) * 512 * r.kv_bytes_per_token > r.kv_hbm_bytes_per_instance


def _result(policy: str, misses: int) -> ReplayResult:
    return ReplayResult(policy=policy, capacity_blocks=1, dram_blocks=0, requests=1,
                        block_refs=100, hit_blocks=100 - misses, dram_hit_blocks=0,
                        miss_blocks=misses, input_tokens=100, hit_tokens=100 - misses,
                        recomputed_tokens=misses, evictions=0)


def test_verdict_reports_wins_and_losses_honestly() -> None:
    assert verdict([_result("lru", 100), _result("walru", 80)]) == (
        "WA-LRU: 20.0% fewer misses than lru")
    assert "more misses than prefix_lru" in verdict([_result("prefix_lru", 50),
                                                     _result("walru", 60)])


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    # The real-engine part is `saga vllm compare`'s, tested in test_cli_vllm; the bench is
    # `saga bench`'s, tested in test_cli_bench; CI runs both in full.
    res = runner.invoke(app, ["demo", "--no-vllm", "--no-bench", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "demo.json").read_text())
    assert data["workflow_model"]["AEG source"] == "inferred"
    assert data["workflow_model"]["P_reuse while waiting on 'submit'"] == 0.0
    for rows in data["replays"].values():
        policies = {r["policy"] for r in rows}
        assert {"lru", "walru", "belady"} <= policies
        for r in rows:
            assert r["ratio_to_belady"] >= 1.0


def test_demo_vllm_part_without_saga_vllm_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    import sys

    from saga.cli import demo as demo_mod

    monkeypatch.setitem(sys.modules, "saga.cli.vllm", None)  # as if saga-vllm were absent
    payload: dict[str, object] = {}
    demo_mod.vllm_short_compare(payload)
    assert "vllm_compare" not in payload
