"""Trace-driven workloads (``saga bench --trace``): tasks from recorded sessions, deterministic,
recorded durations kept, the rest drawn from a named model, and the trace in every run's hash."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from saga.bench.jobs import QUICK, SMOKE, ReplayJob, SimJob, Variant
from saga.bench.replay import run_replay_job
from saga.bench.store import job_hash
from saga.bench.trace_workload import TraceWorkloadSpec, open_trace_source
from saga.bench.workload import WorkloadSpec, build_workload, dumps_tasks
from saga.policy.errors import SagaConfigError


def _trace(path: Path, sessions: int = 4, durations: bool = False) -> Path:
    rows = []
    for i in range(sessions):
        steps: list[dict[str, object]] = []
        for k in range(5):
            steps.append({"kind": "llm", "input_tokens": 1200 + 700 * k + 37 * i,
                          "output_tokens": 40 + k, "t_start": None})
            steps.append({"kind": "tool", "name": ("grep", "pytest", "sed", "python")[k % 4],
                          "duration_s": 3.25 if durations and k % 2 == 0 else None})
        rows.append({"session_id": f"s{i}", "agent": "a", "t0_unix": None, "steps": steps[:-1]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_swe_and_web_run_on_the_trace_and_tasks_carry_its_tokens(tmp_path: Path) -> None:
    src, _ = open_trace_source(_trace(tmp_path / "t.jsonl"), "agent")
    scale = dataclasses.replace(SMOKE, trace=src)
    spec = scale.workload("swe", 0)
    assert isinstance(spec, TraceWorkloadSpec) and spec == scale.workload("web", 0)
    assert spec.tasks == 4 and spec.trace_sha256 == src.sha256
    assert type(scale.workload("tenants", 0)) is WorkloadSpec  # table 5 keeps its own
    w = build_workload(spec)
    assert len(w.tasks) == 4 and all(len(t.calls) == 5 for t in w.tasks)
    first = sorted(t.calls[0].new_tokens for t in w.tasks)
    assert first == [1200, 1237, 1274, 1311]
    # new tokens per call = prompt growth since the previous call's prompt and output
    assert {c.new_tokens for t in w.tasks for c in t.calls[1:]} == {700 - 40 - k for k in range(4)}
    assert all(t.calls[-1].tool is None for t in w.tasks)


def test_same_seed_same_tasks_other_seed_other_draws(tmp_path: Path) -> None:
    src, _ = open_trace_source(_trace(tmp_path / "t.jsonl"), "agent")
    scale = dataclasses.replace(SMOKE, trace=src)
    a, b = (dumps_tasks(build_workload(scale.workload("swe", 0))) for _ in range(2))
    assert a == b
    assert a != dumps_tasks(build_workload(scale.workload("swe", 1)))


def test_recorded_durations_are_kept_and_the_rest_drawn(tmp_path: Path) -> None:
    src, _ = open_trace_source(_trace(tmp_path / "t.jsonl", durations=True), "agent")
    w = build_workload(dataclasses.replace(SMOKE, trace=src).workload("swe", 0))
    for t in w.tasks:
        assert [c.tool_s for c in t.calls[0:4:2]] == [3.25, 3.25]
        assert all(c.tool_s > 0 and c.tool_s != 3.25 for c in t.calls[1:4:2])


def test_the_tool_scale_scales_trace_tools_too(tmp_path: Path) -> None:
    """The regime map's tool-latency axis applies to trace tasks as to template tasks."""
    src, _ = open_trace_source(_trace(tmp_path / "t.jsonl", durations=True), "agent")
    spec = dataclasses.replace(SMOKE, trace=src).workload("swe", 0)
    base, tripled = (build_workload(dataclasses.replace(spec, tool_scale=f)) for f in (1.0, 3.0))
    for a, b in zip(base.tasks, tripled.tasks, strict=True):
        assert [3 * c.tool_s for c in a.calls] == pytest.approx([c.tool_s for c in b.calls])


def test_concurrency_starts_n_at_once_then_one_per_finish(tmp_path: Path) -> None:
    src, _ = open_trace_source(_trace(tmp_path / "t.jsonl", 5), "agent", concurrency=2)
    w = build_workload(dataclasses.replace(SMOKE, trace=src).workload("swe", 0))
    starts = [t.arrival_s for t in w.tasks]
    assert starts[:2] == [0.0, 0.0] and all(s > 0 for s in starts[2:])


def test_run_hash_names_the_trace_content_and_options(tmp_path: Path) -> None:
    p = _trace(tmp_path / "t.jsonl")
    src, _ = open_trace_source(p, "agent")

    def h(s: object) -> str:
        scale = dataclasses.replace(SMOKE, trace=s)
        return job_hash(SimJob(Variant("saga"), scale.workload("swe", 0), scale))
    base = h(src)
    assert h(dataclasses.replace(src, latency_model="lognormal")) != base
    assert h(dataclasses.replace(src, rate_per_instance=0.9)) != base
    _trace(p, sessions=5)
    assert h(open_trace_source(p, "agent")[0]) != base
    # without --trace the quick grid's workloads are the plain specs they always were
    assert type(QUICK.workload("swe", 0)) is WorkloadSpec


def test_a_changed_trace_is_refused_mid_run(tmp_path: Path) -> None:
    p = _trace(tmp_path / "t2.jsonl")
    src, _ = open_trace_source(p, "agent")
    _trace(p, sessions=6)
    with pytest.raises(SagaConfigError, match="changed since the bench was planned"):
        build_workload(dataclasses.replace(SMOKE, trace=src).workload("swe", 0))


def test_mooncake_cannot_drive_agent_tasks_and_options_are_checked(tmp_path: Path) -> None:
    from saga.policy.traces import bundled_trace_path

    with pytest.raises(SagaConfigError, match="no sessions and no tool calls"):
        open_trace_source(bundled_trace_path(), "mooncake")
    p = _trace(tmp_path / "t.jsonl")
    with pytest.raises(SagaConfigError, match="not both"):
        open_trace_source(p, "agent", rate_per_instance=1.0, concurrency=2)
    with pytest.raises(SagaConfigError, match="unknown latency model"):
        open_trace_source(p, "agent", latency_model="fast")


def test_table4_replays_the_trace_tasks(tmp_path: Path) -> None:
    src, _ = open_trace_source(_trace(tmp_path / "t.jsonl"), "agent")
    r = run_replay_job(ReplayJob("swe", 0, dataclasses.replace(SMOKE, trace=src)))
    assert r["requests"] == 4 * 5 and r["ratio"]["belady"] == 1.0
