"""`saga cluster up --local`: real vLLM engines in Ray worker actors behind the coordinator.

One run (two workers, the tiny random Llama, SAGA's scheduler in each engine) with a fault drill:
one worker actor is killed mid-workload and every task still completes on the other.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saga.cli.main import app
from saga.coordinator.testing import ray_skip_reason

runner = CliRunner(env={"COLUMNS": "250"})
narrow = CliRunner(env={"COLUMNS": "80"})  # the run's report must read at 80 columns
TABLE_LINE = tuple("┏┃┡│└┌├╭╰")

pytest.importorskip("saga.vllm")


@pytest.mark.skipif(ray_skip_reason() is not None, reason=str(ray_skip_reason()))
def test_cluster_up_local_runs_agents_on_vllm_workers_and_survives_a_kill(
        tmp_path: Path) -> None:
    out = tmp_path / "up.json"
    res = narrow.invoke(app, [
        "cluster", "up", "--local", "--workers", "2", "--tasks", "6", "--steps", "4",
        "--kill-after", "8", "--model-dir", str(tmp_path / "model"), "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["engine"] == "vllm" and data["model"] == "tiny"
    assert data["completed"] == 6 and data["calls"] == 24
    assert data["killed"] == ["w1"]
    # Sessions homed on the killed worker moved to the survivor.
    assert data["reasons"].get("REHOMED", 0) >= 1
    assert data["per_worker"]["w0"] > data["per_worker"].get("w1", 0)
    # Affinity kept calls home, so vLLM served part of each prompt from its prefix cache.
    assert data["reasons"]["HOME"] >= 1
    assert 0 < data["cached_tokens"] < data["prompt_tokens"]
    assert data["coordinator"]["observations"] > 0
    assert data["coordinator"]["sessions_left"] == 0
    flat = " ".join(res.output.split())  # rich wraps long lines at 80 columns
    assert "6/6 tasks completed through the coordinator" in flat
    assert "real vLLM engines" in flat
    assert data["ray_node_address"] == "127.0.0.1"
    assert "Ray node address: 127.0.0.1 (loopback only" in flat
    tables = [line for line in res.output.splitlines() if line.lstrip().startswith(TABLE_LINE)]
    assert tables and all(len(line) <= 80 and "…" not in line for line in tables), tables


def test_cluster_up_needs_exactly_one_of_local_or_address() -> None:
    res = runner.invoke(app, ["cluster", "up"])
    assert res.exit_code == 2 and "--local or --address" in res.output
    res = runner.invoke(app, ["cluster", "up", "--local", "--engine", "tpu"])
    assert res.exit_code == 2 and "--engine" in res.output
    res = runner.invoke(app, ["cluster", "up", "--local", "--engine", "sim", "--preset", "nope"])
    assert res.exit_code == 2 and "unknownpreset'nope'" in "".join(res.output.split())


def test_cluster_plan_places_every_instance_of_the_reference_cluster(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    res = runner.invoke(app, ["cluster", "plan", "--json", str(out)])
    assert res.exit_code == 0, res.output
    plan = json.loads(out.read_text())
    workers = [a for a in plan["actors"] if a["name"].startswith("worker-")]
    assert len(workers) == 16 and sum(a["gpus"] for a in workers) == 64
    per_node: dict[str, int] = {}
    for a in workers:
        per_node[a["node"]] = per_node.get(a["node"], 0) + a["gpus"]
    assert per_node == {f"node-{i}": 8 for i in range(8)}
    assert all(a["strategy"] == "STRICT_PACK" for a in workers)
    assert "GPUs used: 64 of 64" in res.output
