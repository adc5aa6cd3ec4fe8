"""`saga coordinator bench` and `serve` through typer's runner (small, bounded runs)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from saga.cli.main import app

runner = CliRunner(env={"COLUMNS": "250"})


def test_bench_runs_every_phase_against_a_separate_process(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = runner.invoke(app, ["coordinator", "bench", "--calls", "300", "--concurrency", "1,4",
                              "--stream-routes", "2000", "--batch", "32", "--max-seconds", "10",
                              "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [(p["mode"], p["concurrency"]) for p in data["phases"]] == [
        ("unary", 1), ("unary", 4), ("unary, blocking client", 1), ("unary Ping (no-op)", 1),
        ("streamed", 2), ("in-process decision", 1)]
    assert data["phases"][0]["routes"] == 300
    assert data["phases"][4]["routes"] == 2000 // 64 * 64
    assert data["server_pid"] != data["client_pid"]
    assert "P99 of Route, unary (1 caller)" in res.output
    assert "P99 of Route, unary, blocking client (1 caller)" in res.output
    assert "routes/s" in res.output and "gRPC floor" in res.output


def test_bench_rejects_bad_options() -> None:
    res = runner.invoke(app, ["coordinator", "bench", "--concurrency", "one"])
    assert res.exit_code == 2 and "--concurrency" in res.output
    res = runner.invoke(app, ["coordinator", "bench", "--batch", "0"])
    assert res.exit_code == 2 and "batch" in res.output


def test_serve_needs_a_token() -> None:
    res = runner.invoke(app, ["coordinator", "serve"], env={"SAGA_COORDINATOR_TOKEN": ""})
    assert res.exit_code == 2 and "SAGA_COORDINATOR_TOKEN" in res.output
