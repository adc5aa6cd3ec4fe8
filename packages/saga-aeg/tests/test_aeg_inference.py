"""Pattern inference: scripted agents are recovered, cold start and confidence gate it."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from saga.aeg.counts import TransitionCounts, node_kind_of_id
from saga.aeg.errors import AEGError
from saga.aeg.graph import AEG, Edge, LLMNode, TerminalNode, ToolNode
from saga.aeg.hints import WorkflowHint, hint_aeg
from saga.aeg.inference import PatternInference, infer_aeg
from saga.aeg.latency import LogNormalLatency
from saga.aeg.steps import LLMStep, Step, ToolStep, path_node_ids, steps_from_trace_record
from saga.aeg.templates import swe_bench_agent

TRACE = Path("/work/shared/data/agent_traces/swebench_verified_mini_swe_agent_gemini3pro.jsonl")


def scripted_task(rng: np.random.Generator) -> list[Step]:
    """LLM -> search -> LLM -> edit -> LLM -> end, with fixed tokens and random durations."""
    return [
        LLMStep(1000, 100),
        ToolStep("search", float(rng.lognormal(0.0, 0.5))),
        LLMStep(1400, 50),  # growth 1400 - 1100 = 300
        ToolStep("edit", float(rng.lognormal(1.0, 0.2))),
        LLMStep(1700, 80),  # growth 1700 - 1450 = 250
    ]


def edges_of(aeg: AEG) -> dict[tuple[str, str], float]:
    return {(e.src, e.dst): e.p for e in aeg.edges}


def test_path_node_ids() -> None:
    rng = np.random.default_rng(0)
    assert path_node_ids(scripted_task(rng)) == [
        "llm@start",
        "tool:search",
        "llm@tool:search",
        "tool:edit",
        "llm@tool:edit",
        "end",
    ]
    assert path_node_ids([LLMStep(1, 1), LLMStep(3, 1)]) == ["llm@start", "llm@llm", "end"]
    with pytest.raises(AEGError, match="at least one step"):
        path_node_ids([])
    assert node_kind_of_id("tool:x") == "tool"
    with pytest.raises(AEGError, match="naming scheme"):
        node_kind_of_id("weird")


def test_deterministic_agent_is_recovered_exactly() -> None:
    rng = np.random.default_rng(1)
    aeg = infer_aeg("scripted", [scripted_task(rng) for _ in range(50)])
    assert aeg.start == "llm@start"
    assert edges_of(aeg) == {
        ("llm@start", "tool:search"): 1.0,
        ("tool:search", "llm@tool:search"): 1.0,
        ("llm@tool:search", "tool:edit"): 1.0,
        ("tool:edit", "llm@tool:edit"): 1.0,
        ("llm@tool:edit", "end"): 1.0,
    }
    assert isinstance(aeg.node("end"), TerminalNode)
    assert aeg.node("llm@start") == LLMNode("llm@start", 1000.0, 100.0)
    assert aeg.node("llm@tool:search") == LLMNode("llm@tool:search", 300.0, 50.0)
    assert aeg.node("llm@tool:edit") == LLMNode("llm@tool:edit", 250.0, 80.0)
    edit = aeg.node("tool:edit")
    assert isinstance(edit, ToolNode) and edit.tool == "edit"
    assert edit.latency.mu == pytest.approx(1.0, abs=0.1)
    assert aeg.expected_total_llm_calls() == pytest.approx(3.0)
    assert aeg.expected_total_work() == pytest.approx(1100 + 350 + 330)


def loop_aeg(q: float) -> AEG:
    """The real structure of a probabilistic LLM/bash loop, in the inference naming scheme."""
    lat = LogNormalLatency(mu=0.5, sigma=0.4)
    return AEG(
        "loop",
        [
            LLMNode("llm@start", 800.0, 60.0),
            ToolNode("tool:bash", "bash", lat),
            LLMNode("llm@tool:bash", 200.0, 40.0),
            TerminalNode("end"),
        ],
        [
            Edge("llm@start", "tool:bash", 1 - q),
            Edge("llm@start", "end", q),
            Edge("tool:bash", "llm@tool:bash", 1.0),
            Edge("llm@tool:bash", "tool:bash", 1 - q),
            Edge("llm@tool:bash", "end", q),
        ],
        "llm@start",
    )


def test_probabilistic_loop_is_recovered() -> None:
    truth = loop_aeg(q=0.2)
    rng = np.random.default_rng(2)
    counts = TransitionCounts()
    for _ in range(400):
        counts.add_task(truth.sample_trace(rng))
    aeg = counts.to_aeg("loop")
    assert sorted(aeg.node_ids) == sorted(truth.node_ids)
    got, want = edges_of(aeg), edges_of(truth)
    assert got.keys() == want.keys()
    for (src, dst), p in want.items():
        n = sum(counts.transitions[src].values())
        # within 4 standard errors of a binomial proportion over n departures
        assert got[(src, dst)] == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n) + 1e-12)
    assert aeg.expected_total_llm_calls() == pytest.approx(5.0, rel=0.1)
    bash = aeg.node("tool:bash")
    assert isinstance(bash, ToolNode)
    assert bash.latency.mu == pytest.approx(0.5, abs=0.05)
    assert bash.latency.sigma == pytest.approx(0.4, abs=0.05)
    assert aeg.node("llm@tool:bash") == LLMNode("llm@tool:bash", 200.0, 40.0)


def test_swe_template_round_trips_through_inference() -> None:
    truth = swe_bench_agent()
    rng = np.random.default_rng(3)
    counts = TransitionCounts()
    for _ in range(300):
        counts.add_task(truth.sample_trace(rng))
    aeg = counts.to_aeg("swe-bench")
    assert set(aeg.node_ids) == set(truth.node_ids)
    got = edges_of(aeg)
    assert set(got) <= set(edges_of(truth))
    for (src, dst), p in edges_of(truth).items():
        n = sum(counts.transitions[src].values())
        tol = 4 * math.sqrt(p * (1 - p) / n) + 1e-12
        assert got.get((src, dst), 0.0) == pytest.approx(p, abs=tol), (src, dst)
    assert aeg.expected_total_llm_calls() == pytest.approx(
        truth.expected_total_llm_calls(), rel=0.15
    )


def test_confidence_by_hand() -> None:
    counts = TransitionCounts(
        n_tasks=4,
        starts={"llm@start": 4},
        transitions={
            "llm@start": {"tool:x": 3, "end": 1},
            "tool:x": {"llm@tool:x": 3},
            "llm@tool:x": {"end": 3},
        },
    )
    # llm@start: 1 singleton of 4 -> 0.25, plus 0.5*(2*sqrt(.75*.25/4)); other rows error 0
    e = 0.25 + 0.5 * 2 * math.sqrt(0.75 * 0.25 / 4)
    assert counts.confidence() == pytest.approx((4 + 4 * (1 - e) + 3 + 3) / 14)
    assert TransitionCounts().confidence() == 0.0


def test_cold_start_then_inferred() -> None:
    inf = PatternInference(theta_conf=0.7, cold_start_tasks=30)
    assert inf.aeg_source("scripted") == "generic"
    assert inf.aeg_for("scripted").expected_total_llm_calls() == pytest.approx(20.0)
    rng = np.random.default_rng(4)
    inf.observe("scripted", scripted_task(rng))
    assert inf.confidence("scripted") == 0.0  # one task: every transition seen once
    for _ in range(28):
        inf.observe("scripted", scripted_task(rng))
    assert inf.n_tasks("scripted") == 29
    assert inf.confidence("scripted") == pytest.approx(1.0)
    assert not inf.is_confident("scripted")
    assert inf.aeg_source("scripted") == "generic+observed"
    inf.observe("scripted", scripted_task(rng))
    assert inf.is_confident("scripted")
    assert inf.aeg_source("scripted") == "inferred"
    aeg = inf.aeg_for("scripted")
    assert aeg.expected_total_llm_calls() == pytest.approx(3.0)
    assert "tool:tool" not in aeg  # the generic prior's placeholder is gone


def test_noisy_agent_stays_below_theta() -> None:
    inf = PatternInference(cold_start_tasks=30)
    rng = np.random.default_rng(5)
    tools = [f"t{i}" for i in range(40)]
    for _ in range(30):
        picks = rng.choice(tools, size=2)
        inf.observe(
            "noisy",
            [LLMStep(10, 1), ToolStep(str(picks[0])), LLMStep(20, 1), ToolStep(str(picks[1]))],
        )
    assert inf.confidence("noisy") < 0.7
    assert not inf.is_confident("noisy")
    assert inf.aeg_source("noisy") == "generic+observed"


def test_hint_seeds_the_prior_then_loses_weight() -> None:
    inf = PatternInference(cold_start_tasks=30, prior_strength=5.0)
    hint = WorkflowHint("scripted", tools=("search", "edit", "fly"), expected_llm_calls=3)
    inf.register_hint(hint)
    prior = inf.aeg_for("scripted")
    assert inf.aeg_source("scripted") == "hint"
    assert prior == hint_aeg(hint)
    p_fly_prior = edges_of(prior)[("llm@start", "tool:fly")]
    rng = np.random.default_rng(6)
    for _ in range(10):
        inf.observe("scripted", scripted_task(rng))
    blended = inf.aeg_for("scripted")
    assert inf.aeg_source("scripted") == "hint+observed"
    p_fly = edges_of(blended)[("llm@start", "tool:fly")]
    assert 0.0 < p_fly < p_fly_prior / 2
    for _ in range(20):
        inf.observe("scripted", scripted_task(rng))
    later = edges_of(inf.aeg_for("scripted"))
    assert inf.aeg_source("scripted") == "inferred"
    assert ("llm@start", "tool:fly") not in later
    assert later[("llm@start", "tool:search")] == 1.0


def test_blend_by_hand() -> None:
    # hint loop with q = 1/2 over tool x: every prior node is visited once per task, so with
    # prior_strength 2 llm@start carries pseudo-counts {end: 1, tool:x: 1}; one observed task
    # "LLM then end" makes it {end: 2, tool:x: 1}.
    inf = PatternInference(prior_strength=2.0)
    inf.register_hint(WorkflowHint("a", tools=("x",), expected_llm_calls=2))
    inf.observe("a", [LLMStep(100, 10)])
    got = edges_of(inf.aeg_for("a"))
    assert got[("llm@start", "end")] == pytest.approx(2 / 3)
    assert got[("llm@start", "tool:x")] == pytest.approx(1 / 3)
    start = inf.aeg_for("a").node("llm@start")
    assert isinstance(start, LLMNode)
    # tokens: 2 pseudo-calls at the hint default (1650, 276) and one observed (100, 10)
    assert start.prompt_tokens == pytest.approx((2 * 1650 + 100) / 3)
    assert start.output_tokens == pytest.approx((2 * 276 + 10) / 3)


def test_configured_prior_per_agent_type() -> None:
    prior = loop_aeg(0.5)
    inf = PatternInference(prior={"loop": prior})
    assert inf.aeg_for("loop") == prior
    assert inf.aeg_source("loop") == "prior"
    assert inf.aeg_source("other") == "generic"
    shared = PatternInference(prior=prior)
    assert shared.aeg_for("other").agent_type == "other"
    assert shared.aeg_for("other").expected_total_llm_calls() == pytest.approx(2.0)


def test_unmeasured_tools_keep_prior_latency() -> None:
    prior = loop_aeg(0.5)
    inf = PatternInference(prior=prior, cold_start_tasks=2)
    for _ in range(5):
        inf.observe("loop", [LLMStep(10, 1), ToolStep("bash"), LLMStep(20, 1)])
    assert inf.aeg_source("loop") == "inferred"
    bash = inf.aeg_for("loop").node("tool:bash")
    assert isinstance(bash, ToolNode)
    assert bash.latency == LogNormalLatency(0.5, 0.4)


def test_observe_validates_before_changing_state() -> None:
    inf = PatternInference()
    with pytest.raises(AEGError, match="at least one step"):
        inf.observe("x", [])
    with pytest.raises(AEGError, match="agent_type"):
        inf.observe("", [LLMStep(1, 1)])
    with pytest.raises(AEGError, match="step #1"):
        inf.observe("x", [LLMStep(1, 1), "bash"])  # type: ignore[list-item]
    assert inf.n_tasks("x") == 0
    with pytest.raises(AEGError, match="theta_conf"):
        PatternInference(theta_conf=1.5)
    with pytest.raises(AEGError, match="cold_start_tasks"):
        PatternInference(cold_start_tasks=-1)
    with pytest.raises(AEGError, match="register_hint"):
        inf.register_hint("x")  # type: ignore[arg-type]


def test_infer_with_no_tasks_fails() -> None:
    with pytest.raises(AEGError, match="no observed tasks"):
        infer_aeg("x", [])


def _real_tasks(n: int) -> list[Sequence[Step]]:
    with TRACE.open() as f:
        return [steps_from_trace_record(json.loads(next(f))) for _ in range(n)]


@pytest.mark.skipif(not TRACE.exists(), reason="real agent trace not present")
def test_real_trace_inferred_chain_reproduces_empirical_means() -> None:
    # For counts-based estimates, expected visits per task under the fitted chain equal the
    # observed visits per task, so expected calls and tokens match the data's means exactly.
    tasks = _real_tasks(60)
    aeg = infer_aeg("swe", tasks)
    calls = [sum(isinstance(s, LLMStep) for s in t) for t in tasks]
    assert aeg.expected_total_llm_calls() == pytest.approx(float(np.mean(calls)), rel=1e-9)
    work = []
    for t in tasks:
        llm = [s for s in t if isinstance(s, LLMStep)]
        total = float(llm[0].input_tokens + llm[0].output_tokens)
        for a, b in itertools.pairwise(llm):
            total += max(0, b.input_tokens - a.input_tokens - a.output_tokens) + b.output_tokens
        work.append(total)
    assert aeg.expected_total_work() == pytest.approx(float(np.mean(work)), rel=1e-9)
