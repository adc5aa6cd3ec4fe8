"""`saga show native` and `saga kernels bench` through typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from saga.cli.main import app
from saga.kernels.status import CUDA_KERNELS, HOST_KERNELS

runner = CliRunner(env={"COLUMNS": "250"})


def test_show_native_lists_every_kernel_with_where_it_runs() -> None:
    res = runner.invoke(app, ["show", "native"])
    assert res.exit_code == 0, res.output
    for name in (*HOST_KERNELS, *CUDA_KERNELS):
        assert name in res.output
    assert "native" in res.output or "twin" in res.output
    text = "".join(res.output.split())
    assert "prefix_overlap│host,experimental│" in text and "walru_select│host│" in text
    assert "experimental:nocallerinSAGAyet" in text


def test_bench_prints_ratios_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = runner.invoke(app, ["kernels", "bench", "--sizes", "64,512", "--python-max-n", "100",
                              "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "NumPy" in res.output and "×" in res.output and "memcpy" in res.output
    assert "skipped above N=100" in res.output  # the Python twin is skipped, and it says so
    data = json.loads(out.read_text())
    assert data["memcpy_gbps"] > 0
    rows = data["rows"]
    assert {r["kernel"] for r in rows} >= {"walru_select", "next_use", "prefix_overlap"}
    assert all(r["numpy"]["seconds"] > 0 for r in rows)
    assert all(r["python"]["seconds"] is None for r in rows if r["n"] > 100)
    assert {r["kernel"] for r in rows if r["experimental"]} == {"prefix_overlap",
                                                                 "session_table.get_many"}
    text = "".join(res.output.split())
    assert "prefix_overlap*" in text and "walru_select│" in text
    assert "experimental:nocallerinSAGAyet" in text


def test_bench_rejects_bad_options() -> None:
    res = runner.invoke(app, ["kernels", "bench", "--kernels", "nope"])
    assert res.exit_code == 2 and "unknown" in res.output
    res = runner.invoke(app, ["kernels", "bench", "--sizes", "0"])
    assert res.exit_code == 2 and "--sizes" in res.output
