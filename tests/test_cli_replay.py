"""`saga replay` through typer's runner: good runs, JSON output and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saga.cli.main import app
from saga.policy.traces import bundled_trace_path

runner = CliRunner()


def _lines(n: int) -> list[str]:
    return bundled_trace_path().read_text().splitlines()[:n]


@pytest.fixture
def small_trace(tmp_path: Path) -> Path:
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(_lines(300)) + "\n")
    return p


def test_replay_prints_policies_side_by_side_and_writes_json(small_trace: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["replay", str(small_trace), "--capacity-blocks", "200,800",
                              "--json", str(out), "--csv", str(tmp_path / "r.csv")])
    assert res.exit_code == 0, res.output
    for name in ("lru", "prefix_lru", "walru", "belady"):
        assert name in res.output
    data = json.loads(out.read_text())
    csv_lines = (tmp_path / "r.csv").read_text().splitlines()
    assert csv_lines[0].startswith("policy,capacity_blocks") and len(csv_lines) == 1 + 8
    assert data["requests"] == 300
    rows = data["results"]
    assert {r["policy"] for r in rows} == {"lru", "prefix_lru", "walru", "belady"}
    assert {r["capacity_blocks"] for r in rows} == {200, 800}
    for r in rows:
        assert r["hit_tokens"] + r["recomputed_tokens"] == r["input_tokens"]
        assert r["ratio_to_belady"] >= 1.0  # Bélády is a lower bound on misses here
    by = {(r["policy"], r["capacity_blocks"]): r for r in rows}
    # a larger cache never misses more under the oracle
    assert by[("belady", 800)]["miss_blocks"] <= by[("belady", 200)]["miss_blocks"]


def test_replay_default_trace_is_bundled() -> None:
    res = runner.invoke(app, ["replay", "--limit", "50", "--policies", "lru",
                              "--capacity-blocks", "100"])
    assert res.exit_code == 0, res.output
    assert "50 requests" in res.output


def test_malformed_line_stops_with_its_number(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    lines = _lines(5)
    lines[2] = '{"timestamp": 0, "input_length": 10}'
    p.write_text("\n".join(lines) + "\n")
    res = runner.invoke(app, ["replay", str(p), "--capacity-blocks", "10"])
    assert res.exit_code == 2
    assert "line 3" in res.output and "output_length" in res.output


def test_skip_bad_lines_counts_and_continues(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    lines = _lines(6)
    lines[1] = "not json"
    lines[4] = '{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1]}'
    p.write_text("\n".join(lines) + "\n")
    res = runner.invoke(app, ["replay", str(p), "--capacity-blocks", "10", "--skip-bad-lines",
                              "--policies", "lru"])
    assert res.exit_code == 0, res.output
    assert "2 malformed line(s) skipped" in res.output
    assert "4 requests" in res.output


@pytest.mark.parametrize(("args", "message"), [
    (["replay", "/nonexistent/trace.jsonl"], "does not exist"),
    (["replay", "--policies", "lru,fifo"], "unknown eviction policy 'fifo'"),
    (["replay", "--capacity-blocks", "0"], "--capacity-blocks must be integers >= 1"),
    (["replay", "--capacity-blocks", "ten"], "--capacity-blocks must be integers"),
    (["replay", "--format", "csv"], "unknown trace format 'csv'"),
])
def test_bad_input_is_a_clear_error(args: list[str], message: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output


def test_agent_format_replays_sessions(tmp_path: Path) -> None:
    from saga.policy.traces import BUNDLED_AGENT
    src = bundled_trace_path(BUNDLED_AGENT).read_text().splitlines()[:6]
    p = tmp_path / "agents.jsonl"
    p.write_text("\n".join(src) + "\n")
    res = runner.invoke(app, ["replay", str(p), "--format", "agent", "--capacity-blocks", "64",
                              "--policies", "lru,walru,belady"])
    assert res.exit_code == 0, res.output
    assert "walru" in res.output


def test_agent_format_with_null_timings_replays_and_names_the_fallback(tmp_path: Path) -> None:
    from saga.policy.traces import BUNDLED_AGENT
    recs = [json.loads(r) for r in bundled_trace_path(BUNDLED_AGENT).read_text().splitlines()[:4]]
    recs[1]["t0_unix"] = None
    recs[2]["steps"][2]["t_start"] = None
    p = tmp_path / "nulls.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["replay", str(p), "--format", "agent", "--capacity-blocks", "64",
                              "--policies", "lru", "--json", str(out)])
    assert res.exit_code == 0, res.output
    flat = "".join(res.output.split())
    assert "starttimemissingin1of4sessions:eachstartswiththesessionbeforeit" in flat
    assert "starttimemissingfor1of" in flat
    assert any("start time missing in 1 of 4" in n for n in json.loads(out.read_text())["notes"])


def test_atif_directory_replays_through_the_same_reader(tmp_path: Path) -> None:
    for i in range(3):
        d = tmp_path / "job" / f"trial-{i}" / "agent"
        d.mkdir(parents=True)
        steps = [{"step_id": k + 1, "source": "agent", "message": "m",
                  "tool_calls": [{"tool_call_id": "c", "function_name": "bash",
                                  "arguments": {}}],
                  "metrics": {"prompt_tokens": 2048 + 700 * k, "completion_tokens": 30}}
                 for k in range(4)]
        (d / "trajectory.json").write_text(json.dumps(
            {"schema_version": "ATIF-v1.4", "session_id": f"r{i}",
             "agent": {"name": "x", "version": "1"}, "steps": steps}))
    res = runner.invoke(app, ["replay", str(tmp_path / "job"), "--format", "atif",
                              "--capacity-blocks", "16", "--policies", "lru,belady"])
    assert res.exit_code == 0, res.output
    flat = "".join(res.output.split())
    assert "12requests" in flat and "starttimemissingin3of3sessions" in flat
