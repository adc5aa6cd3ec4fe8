"""`saga bench` through typer's runner, and the glue that validates the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saga.cli.bench import fit_engine_cost
from saga.cli.main import app

runner = CliRunner()


def test_bench_one_table_writes_every_file(tmp_path: Path) -> None:
    res = runner.invoke(app, ["bench", "--tables", "6", "--seeds", "1", "--workers", "1",
                              "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "Table 6" in res.output and "full SAGA" in res.output
    for name in ("table6.json", "table6.csv", "table6.png", "report.md", "bench.json"):
        assert (tmp_path / name).is_file(), name
    report = (tmp_path / "report.md").read_text()
    assert "saga bench --tables 6" in report and "simulated" in report
    assert json.loads((tmp_path / "bench.json").read_text())["tables"] == ["6"]


def test_bench_unknown_table_is_a_clear_error() -> None:
    res = runner.invoke(app, ["bench", "--tables", "3,12"])
    assert res.exit_code == 2
    assert "unknown table" in res.output


def test_bench_rates_table() -> None:
    res = runner.invoke(app, ["bench", "rates"])
    assert res.exit_code == 0 and "prefill_tokens_per_s" in res.output and "NO" not in res.output


def test_engine_cost_fit_recovers_a_known_model() -> None:
    calls = [(p, o, 0.002 + 1e-4 * p + 0.01 * o) for p in (10, 200, 600) for o in (8, 24, 48)]
    cost = fit_engine_cost(calls, 2048, 8)
    assert cost.per_prefill_token_s == pytest.approx(1e-4, rel=1e-6)
    assert cost.fixed_s == pytest.approx(0.01, rel=1e-6)


def test_validation_glue_on_the_real_engine(tmp_path: Path) -> None:
    """The real CPU engine on a tiny workload: the simulator gets its sessions and speed."""
    pytest.importorskip("vllm")
    from saga.cli.bench import validate_against_engine

    result = validate_against_engine(sessions=2, seed=0, max_steps=3)
    rows = {r["engine"]: r for r in result["rows"]}
    assert set(rows) == {"stock", "saga"}
    measured = result["measured"]["runs"]
    for name in ("stock", "saga"):
        sim = result["simulated"][name]
        assert sim["calls"] == measured[name]["calls"]
        assert sim["prompt_tokens"] == measured[name]["prompt_tokens"]
        assert sim["tct_mean_s"] > 0
        assert rows[name]["measured recomputed tokens"] == measured[name]["recomputed_tokens"]
    assert "| engine |" in "\n".join(result["markdown"])


def test_validation_section_replaces_the_placeholder() -> None:
    from saga.cli.bench import VALIDATION_HEADING, with_validation

    report = f"# r\n\n{VALIDATION_HEADING}\n\nNot run.\n\n## Versions\n\n| a | b |\n"
    out = with_validation(report, ["| engine |", "|---|"])
    assert "Not run." not in out and "| engine |" in out and out.endswith("| a | b |\n")
    assert "## Versions" in out
