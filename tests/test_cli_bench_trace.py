"""`saga bench --trace` end to end: ATIF written here, the bundled real sessions, null timings
with their fallbacks in the output and report, bad lines, and determinism."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from saga.cli.main import app
from saga.policy.traces import BUNDLED_AGENT, bundled_trace_path

runner = CliRunner()
FAST = ["bench", "--smoke", "--tables", "3", "--seeds", "1", "--workers", "1"]


def _atif(sid: str, calls: int, timed: bool) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"step_id": 1, "source": "user", "message": "task " * 50}]
    for k in range(calls):
        steps.append({
            "step_id": k + 2, "source": "agent", "message": "run",
            "timestamp": f"2025-10-11T10:{30 + k:02d}:00Z" if timed else None,
            "tool_calls": [{"tool_call_id": f"c{k}", "function_name": "bash", "arguments": {}}],
            "observation": {"results": [{"content": "out " * 100}]},
            "metrics": {"prompt_tokens": 1500 + 600 * k, "completion_tokens": 80}})
    return {"schema_version": "ATIF-v1.4", "session_id": sid,
            "agent": {"name": "terminus-2", "version": "1"}, "steps": steps}


def _harbor(root: Path, n: int = 4) -> Path:
    for i in range(n):
        d = root / f"trial-{i}" / "agent"
        d.mkdir(parents=True)
        (d / "trajectory.json").write_text(json.dumps(_atif(f"run-{i}", 3 + i, timed=i % 2 == 0)))
    return root


def _flat(text: str) -> str:
    return "".join(text.split())


def test_atif_directory_runs_table3_and_states_its_fallbacks(tmp_path: Path) -> None:
    trace = _harbor(tmp_path / "job")
    out = tmp_path / "out"
    res = runner.invoke(app, [*FAST, "--trace", str(trace), "--format", "atif",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    flat = _flat(res.output)
    assert "Table3" in flat and "4sessions;thefirst4drivethetasks" in flat
    assert _flat("start time missing in 2 of 4 sessions") in flat
    assert _flat("unrecorded tool durations drawn from latency model 'swe-template'") in flat
    assert _flat("python: median 2.00 s, sigma 1.00") in flat  # the model's parameters
    report = _flat((out / "report.md").read_text())
    assert "##Trace-drivenworkload" in report and _flat("start time missing in 2") in report
    assert "--formatatif" in report  # the command that reproduces it
    rows = json.loads((out / "table3.json").read_text())["rows"]
    again = tmp_path / "again"
    res2 = runner.invoke(app, [*FAST, "--trace", str(trace), "--format", "atif",
                               "--out", str(again)])
    assert res2.exit_code == 0, res2.output
    assert json.loads((again / "table3.json").read_text())["rows"] == rows  # deterministic


def test_single_atif_file_with_a_bad_line_fails_or_is_counted(tmp_path: Path) -> None:
    p = tmp_path / "runs.jsonl"
    bad = _atif("bad", 3, True)
    bad["steps"][2]["metrics"]["completion_tokens"] = -5
    p.write_text("\n".join(json.dumps(x) for x in (_atif("a", 3, True), bad,
                                                    _atif("b", 4, False))) + "\n")
    res = runner.invoke(app, [*FAST, "--trace", str(p), "--format", "atif"])
    assert res.exit_code == 2
    assert _flat("line 2: steps[2]: field 'metrics.completion_tokens' must be") in _flat(
        res.output)
    res = runner.invoke(app, [*FAST, "--trace", str(p), "--format", "atif", "--skip-bad-lines"])
    assert res.exit_code == 0, res.output
    assert _flat("skipped 1 bad line(s)/file(s)") in _flat(res.output)
    assert "2sessions" in _flat(res.output)


def test_bundled_real_sessions_run_with_null_timings_named(tmp_path: Path) -> None:
    rows = bundled_trace_path(BUNDLED_AGENT).read_text().splitlines()[:8]
    recs = [json.loads(r) for r in rows]
    for r in recs[:3]:
        r["t0_unix"] = None
        for st in r["steps"]:
            st["t_start"] = None
    p = tmp_path / "real8.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    res = runner.invoke(app, [*FAST, "--trace", str(p), "--trace-tasks", "4",
                              "--concurrency", "2"])
    assert res.exit_code == 0, res.output
    flat = _flat(res.output)
    assert _flat("start time missing in 3 of 8 sessions: each starts with the session before") \
        in flat
    assert "thefirst4drivethetasks" in flat and "arrivals:concurrency2" in flat


def test_mooncake_and_conflicting_options_are_one_line_errors() -> None:
    res = runner.invoke(app, [*FAST, "--trace", str(bundled_trace_path()), "--format",
                              "mooncake"])
    assert res.exit_code == 2 and "cannotdriveagenttasks" in _flat(res.output)
    res = runner.invoke(app, [*FAST, "--trace", str(bundled_trace_path(BUNDLED_AGENT)),
                              "--trace-rate", "1", "--concurrency", "2"])
    assert res.exit_code == 2 and "not both" in res.output
