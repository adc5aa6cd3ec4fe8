"""`saga integrations check` through typer's runner: the installed frameworks, and one made
to look missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saga.cli.main import app
from saga.integrations import frameworks

runner = CliRunner()


def test_check_reports_every_framework_installed_and_attachable(tmp_path: Path) -> None:
    out = tmp_path / "fw.json"
    res = runner.invoke(app, ["integrations", "check", "--strict", "--json", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for word in ("langchain", "autogen", "crewai", "yes"):
        assert word in text
    data = json.loads(out.read_text())["frameworks"]
    assert [f["name"] for f in data] == ["langchain", "autogen", "crewai"]
    assert all(f["attachable"] and all(f["versions"].values()) for f in data)


def test_a_missing_framework_is_reported_with_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = frameworks._installed
    monkeypatch.setattr(frameworks, "_installed",
                        lambda d: None if d == "crewai" else real(d))
    res = runner.invoke(app, ["integrations", "check", "--no-probe"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "no" in text and "crewai is not installed" in text
    strict = runner.invoke(app, ["integrations", "check", "--no-probe", "--strict"])
    assert strict.exit_code == 1
