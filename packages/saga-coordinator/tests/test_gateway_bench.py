"""`saga gateway bench` end to end on a tiny setting: real child processes (trivial engine and
gateway under uvicorn) on loopback, real requests, files written, figures positive."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saga.cli.main import app
from saga.coordinator.gateway.bench import (
    BenchError,
    GatewayBenchConfig,
    _Served,
    run_gateway_bench,
    serve_command,
    write_results,
)
from saga.coordinator.gateway.server import free_port
from saga.policy.errors import SagaConfigError


def _positive(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0


def test_bench_runs_end_to_end_and_writes_its_files(tmp_path: Path) -> None:
    profile = tmp_path / "gateway.prof"
    cfg = GatewayBenchConfig(requests=12, warmup=3, concurrency=4, seconds=0.5, stream=True,
                             profile=str(profile))
    r = run_gateway_bench(cfg, log_dir=tmp_path / "logs")
    assert [lat.stream for lat in r.latency] == [False, True]
    for lat in r.latency:
        assert lat.pairs == 12 and len(lat.direct_ms) == len(lat.gateway_ms) == 12
        for v in (lat.direct_p50_ms, lat.direct_p99_ms, lat.gateway_p50_ms, lat.gateway_p99_ms):
            assert _positive(v)
        assert lat.direct_p50_ms <= lat.direct_p99_ms
        assert math.isfinite(lat.added_p50_ms) and math.isfinite(lat.added_p99_ms)
    assert [(t.target, t.stream) for t in r.throughput] == [
        ("direct", False), ("gateway", False), ("direct", True), ("gateway", True)]
    for t in r.throughput:
        assert t.requests > 0 and t.errors == 0
        assert _positive(t.per_s) and _positive(t.p50_ms) and _positive(t.seconds)
    # The gateway really sat in front of the engine: it spent CPU on every request.
    assert _positive(r.throughput_of("gateway").server_cpu_ms_per_request)
    assert profile.stat().st_size > 0  # written as the gateway exited

    paths = write_results(r, tmp_path / "out")
    data = json.loads(paths[0].read_text())
    assert data["config"]["requests"] == 12 and len(data["throughput"]) == 4
    assert data["latency"][0]["gateway_p50_ms"] == r.latency[0].gateway_p50_ms
    with paths[1].open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 24 and all(float(x["direct_ms"]) > 0 for x in rows)
    with paths[2].open() as fh:
        assert [x["target"] for x in csv.DictReader(fh)] == [
            "direct", "gateway", "direct", "gateway"]


def test_cli_bench_exits_0_and_reports_against_the_goals(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["gateway", "bench", "--requests", "20", "--seconds", "1",
                                   "--concurrency", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    flat = "".join(res.output.split())
    assert "addedperrequest(paired)P99" in flat and "<=2ms" in flat
    assert ">=1,000/s" in flat and "req/s" in flat
    assert "met" in flat  # "met" or "NOT met", from this run's figures
    assert (out / "gateway_bench.json").exists()
    assert (out / "gateway_bench_latency.csv").exists()
    assert (out / "gateway_bench_throughput.csv").exists()
    assert (out / "gateway.log").exists() and (out / "engine.log").exists()


def test_bad_settings_are_refused_before_anything_starts() -> None:
    with pytest.raises(SagaConfigError, match="unknown preset"):
        GatewayBenchConfig(preset="nope")
    with pytest.raises(SagaConfigError, match="--seconds"):
        GatewayBenchConfig(seconds=0)
    res = CliRunner().invoke(app, ["gateway", "bench", "--concurrency", "0"])
    assert res.exit_code == 2
    assert "error:" in res.output and "--concurrency must be >= 1" in "".join(res.output)


def test_a_server_that_does_not_start_is_a_clear_error(tmp_path: Path) -> None:
    served = _Served("gateway", [sys.executable, "-c", "print('no such engine'); exit(3)"],
                     free_port(), tmp_path / "gateway.log")
    with pytest.raises(BenchError, match=r"gateway did not become healthy.*exit code 3.*no such"):
        served.wait_healthy(10.0)


def test_serve_command_names_each_side() -> None:
    assert serve_command(8001)[-3:] == ["--port", "8001", "--engine-only"]
    cmd = serve_command(8002, "http://127.0.0.1:8001", "vllm", "/tmp/p.prof")
    assert cmd[cmd.index("--gateway") + 1] == "http://127.0.0.1:8001"
    assert cmd[cmd.index("--preset") + 1] == "vllm" and cmd[-1] == "/tmp/p.prof"
