"""`saga coordinator soak`: a short soak prints its tables within 80 columns and writes JSON."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from saga.cli.main import app


def test_soak_prints_the_tables_and_finds_no_leak(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    res = CliRunner(env={"COLUMNS": "80"}).invoke(
        app, ["coordinator", "soak", "--sessions", "300", "--workers", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80
    assert "no leaks" in res.output and "router_homes" in res.output
    data = json.loads(out.read_text())
    assert data["sessions"] == 300 and data["leaks"] == []


def test_soak_refuses_a_bad_option_in_one_line() -> None:
    res = CliRunner().invoke(app, ["coordinator", "soak", "--sessions", "0"])
    assert res.exit_code == 2 and "error: soak: sessions must be >= 1" in res.output
