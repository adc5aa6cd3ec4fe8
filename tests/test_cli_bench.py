"""`saga bench` through typer's runner, and the glue that validates the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

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


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[1, 2]",
                                     b'{"markdown": [3]}'])
def test_an_unreadable_validation_file_keeps_the_results_and_says_so(tmp_path: Path,
                                                                     content: bytes) -> None:
    (tmp_path / "validation.json").write_bytes(content)
    res = runner.invoke(app, ["bench", "--smoke", "--tables", "6", "--seeds", "1",
                              "--workers", "1", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    compact = "".join(res.output.split())  # rich wraps (and folds the long path) at any width
    assert "warning:ignoring" in compact and "validation.json" in compact
    report = (tmp_path / "report.md").read_text()
    assert "Table 6" in report and "saga bench validate" in report  # the placeholder section


def test_bench_unknown_table_is_a_clear_error() -> None:
    res = runner.invoke(app, ["bench", "--tables", "3,12"])
    assert res.exit_code == 2
    assert "unknown table" in res.output


def test_bench_rates_table() -> None:
    res = runner.invoke(app, ["bench", "rates"])
    assert res.exit_code == 0 and "prefill_tokens_per_s" in res.output and "NO" not in res.output


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
        # The step model was fitted to this engine's own logged steps.
        fit = result["cost_fit"][name]
        assert rows[name]["steps"] == measured[name]["steps_recorded"] > fit["steps"] >= 2
        assert fit["fixed_s"] + fit["per_decode_seq_s"] > 0 and fit["r2"] <= 1.0
    assert measured["saga"]["saga_stats"]["pins_created"] > 0
    assert "| engine |" in "\n".join(result["markdown"])


def test_validation_section_replaces_the_placeholder() -> None:
    from saga.cli.bench import VALIDATION_HEADING, with_validation

    report = f"# r\n\n{VALIDATION_HEADING}\n\nNot run.\n\n## Versions\n\n| a | b |\n"
    out = with_validation(report, ["| engine |", "|---|"])
    assert "Not run." not in out and "| engine |" in out and out.endswith("| a | b |\n")
    assert "## Versions" in out
