"""`saga bench live` for real, at CI size: two tiny vLLM engines behind the gateway, two short
tasks, one seed, SAGA's system only (each system's two engines take tens of seconds to start on
two shared cores; the other systems differ only in their options, checked in
test_bench_live_units).

Every call of every task must complete exactly once — once in the client's records, and once
in the engines' own counters (their prompt and generated tokens add up to exactly what the tasks
sent and asked for: a lost call would be missing, a duplicated one counted twice) — and the
cache figures must be the engines' counters, consistent with what the responses reported.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from saga.vllm.serve import build_command

RUN_S = 420   # two engines starting on two busy cores, then ~10 s of tasks


def test_live_run_completes_every_call_once(tmp_path: Path) -> None:
    build_command(["--model", "tiny", "--port", "1"])   # build the model once, not per engine
    out = tmp_path / "live"
    cmd = [sys.executable, "-c", "from saga.cli.main import app; app()", "bench", "live",
           "--engines", "2", "--model", "tiny", "--systems", "saga", "--tasks", "2",
           "--max-calls", "3", "--tool-scale", "0.02", "--seeds", "0", "--kv-blocks", "32",
           "--max-context", "900", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_S)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("live.json", "live.csv", "live.png", "report.md"):
        assert (out / name).is_file(), name
    data = json.loads((out / "live.json").read_text())
    [run] = data["runs"]
    tasks = data["tasks"]["0"]
    assert len(run["tasks"]) == len(tasks) == 2
    for planned, done in zip(tasks, run["tasks"], strict=True):
        assert done["task_id"] == planned["task_id"] and not done["error"]
        assert [c["index"] for c in done["calls"]] == list(range(len(planned["calls"])))
        assert all(c["status"] == 200 for c in done["calls"])
        assert [c["completion_tokens"] for c in done["calls"]] == [
            c["max_tokens"] for c in planned["calls"]]
    calls = [c for t in run["tasks"] for c in t["calls"]]
    engines = run["engine_counters"]
    assert len(engines) == 2
    total = {k: sum(e.get(k, 0.0) for e in engines) for k in engines[0]}
    assert total["prompt_tokens"] == sum(c["prompt_tokens"] for c in calls)
    assert total["generation_tokens"] == sum(c["completion_tokens"] for c in calls)
    # Prefix caching on: every prompt token looked up once (no preemption at this size), and
    # the hits are the cached tokens the responses reported.
    assert total["queries"] == total["prompt_tokens"]
    assert total["hits"] + total["external_hits"] == sum(c["cached_tokens"] for c in calls)
    f = run["figures"]
    assert f["calls"] == f["calls_planned"] == len(calls) and f["tasks_failed"] == 0
    assert 0.0 < f["hit_rate"] < 1.0 and f["tct_mean_s"] > 0 and f["calls_per_s"] > 0
    rows = list(csv.DictReader((out / "live.csv").open()))
    assert [(x["system"], x["seed"]) for x in rows] == [("saga", "0")]
    assert "## Live, 2 engines, model tiny, CPU" in (out / "report.md").read_text()
