"""JSON round trips of every type, and readable errors for malformed documents."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saga.aeg.counts import TransitionCounts
from saga.aeg.errors import AEGError
from saga.aeg.graph import AEG, Edge, LLMNode, Node, TerminalNode, ToolNode, node_from_dict
from saga.aeg.hints import WorkflowHint
from saga.aeg.inference import PatternInference
from saga.aeg.latency import LogNormalLatency, ToolLatencyModel
from saga.aeg.steps import LLMStep, ToolStep, step_from_dict, steps_from_trace_record
from saga.aeg.templates import swe_bench_agent, webarena_agent


def test_latency_round_trip() -> None:
    lat = LogNormalLatency.fit([0.5, 1.5, 9.0])
    assert LogNormalLatency.from_json(lat.to_json()) == lat
    assert LogNormalLatency.from_dict({"mu": 1, "sigma": 0}) == LogNormalLatency(1.0, 0.0, 0)
    model = ToolLatencyModel(prior_weight=2.0)
    model.set_prior("pytest", LogNormalLatency.from_median(10.0, 0.5))
    model.observe("grep", 0.2)
    model.observe("grep", 0.4)
    back = ToolLatencyModel.from_json(model.to_json())
    assert back == model
    assert back.latency("grep") == model.latency("grep")


def test_steps_round_trip() -> None:
    for step in (LLMStep(100, 7), ToolStep("bash", 1.5), ToolStep("ls")):
        assert type(step).from_json(step.to_json()) == step
        assert step_from_dict(step.to_dict()) == step
    record = {
        "steps": [
            {"kind": "llm", "input_tokens": 5, "output_tokens": 1, "t_start": 0.0},
            {"kind": "tool", "name": "ls", "duration_s": None},
        ]
    }
    assert steps_from_trace_record(record) == [LLMStep(5, 1), ToolStep("ls")]
    with pytest.raises(AEGError, match="'kind' must be"):
        step_from_dict({"kind": "video"})
    with pytest.raises(AEGError, match="missing field 'output_tokens'"):
        step_from_dict({"kind": "llm", "input_tokens": 3})


def test_nodes_and_edges_round_trip() -> None:
    nodes: list[Node] = [
        LLMNode("a", 1.5, 2.0),
        ToolNode("b", "bash", LogNormalLatency(0.1, 0.2, 3)),
        TerminalNode("end"),
    ]
    for node in nodes:
        assert node_from_dict(json.loads(json.dumps(node.to_dict()))) == node
    edge = Edge("a", "b", 0.25)
    assert Edge.from_dict(edge.to_dict()) == edge
    with pytest.raises(AEGError, match=r"node 'x'.*'kind'"):
        node_from_dict({"kind": "robot", "id": "x"})
    with pytest.raises(AEGError, match="'prompt_tokens' must be a number"):
        node_from_dict({"kind": "llm", "id": "x", "prompt_tokens": "many", "output_tokens": 1})


@pytest.mark.parametrize("aeg", [swe_bench_agent(), webarena_agent()])
def test_aeg_round_trip(aeg: AEG) -> None:
    back = AEG.from_json(aeg.to_json(indent=2))
    assert back == aeg
    assert back.expected_total_work() == aeg.expected_total_work()
    assert AEG.from_dict(aeg.to_dict()).sample_path(np.random.default_rng(1)) == aeg.sample_path(
        np.random.default_rng(1)
    )


def test_aeg_from_dict_validates() -> None:
    doc = swe_bench_agent().to_dict()
    doc["edges"][0]["p"] = 0.5
    with pytest.raises(AEGError, match="sum to"):
        AEG.from_dict(doc)
    with pytest.raises(AEGError, match="missing field 'start'"):
        AEG.from_dict({"agent_type": "a", "nodes": [], "edges": []})
    with pytest.raises(AEGError, match="expected a JSON object"):
        AEG.from_dict([])  # type: ignore[arg-type]


def test_hint_round_trip() -> None:
    hints = [
        WorkflowHint("a"),
        WorkflowHint(
            "swe-bench",
            tools=("bash",),
            steps=("llm", "bash"),
            expected_llm_calls=3.0,
            aeg=swe_bench_agent(),
            framework="langchain",
        ),
    ]
    for hint in hints:
        assert WorkflowHint.from_json(hint.to_json()) == hint


def test_counts_and_inference_round_trip() -> None:
    inf = PatternInference(theta_conf=0.6, cold_start_tasks=5, prior={"web": webarena_agent("web")})
    inf.register_hint(WorkflowHint("swe", tools=("search", "edit")))
    rng = np.random.default_rng(8)
    truth = swe_bench_agent("swe")
    for _ in range(3):
        inf.observe("swe", truth.sample_trace(rng))
    for _ in range(6):
        inf.observe("web", webarena_agent("web").sample_trace(rng))
    counts = inf.counts("swe")
    assert counts is not None
    assert TransitionCounts.from_json(counts.to_json()) == counts
    back = PatternInference.from_json(inf.to_json())
    assert back.to_dict() == inf.to_dict()
    for t in ("swe", "web", "unknown"):
        assert back.aeg_for(t) == inf.aeg_for(t)
        assert back.aeg_source(t) == inf.aeg_source(t)
    shared = PatternInference(prior=swe_bench_agent())
    assert PatternInference.from_json(shared.to_json()).aeg_for("x") == shared.aeg_for("x")


def test_inference_from_dict_errors_name_the_field() -> None:
    with pytest.raises(AEGError, match="missing field 'theta_conf'"):
        PatternInference.from_dict({})
    with pytest.raises(AEGError, match=r"llm_stats\[x\]"):
        TransitionCounts.from_dict(
            {
                "n_tasks": 0,
                "starts": {},
                "transitions": {},
                "llm_stats": {"x": [1]},
                "latency": ToolLatencyModel().to_dict(),
            }
        )
