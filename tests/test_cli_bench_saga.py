"""`saga bench --saga`: another SAGA preset plays SAGA in the tables."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from saga.cli.main import app

runner = CliRunner(env={"COLUMNS": "250"})


def test_bench_saga_eta_runs_table_6_on_its_ablations(tmp_path: Path) -> None:
    res = runner.invoke(app, ["bench", "--smoke", "--tables", "6", "--seeds", "1",
                              "--workers", "1", "--saga", "saga_eta", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "w/o value_ttl" in res.output and "w/o eta" in res.output
    assert "saga bench --smoke --tables 6" in (tmp_path / "report.md").read_text()
    assert "--saga saga_eta" in (tmp_path / "report.md").read_text()
    names = {json.loads(p.read_text())["config"]["variant"]["preset"]
             for p in (tmp_path / "runs").glob("*.json")}
    assert "saga_eta_no_value_ttl" in names and "saga" not in names


def test_bench_saga_must_be_a_saga_preset_that_can_play_saga() -> None:
    res = runner.invoke(app, ["bench", "--smoke", "--tables", "6", "--saga", "vllm_apc"])
    assert res.exit_code == 2
    assert "error: --saga" in res.output and "saga_eta" in res.output
