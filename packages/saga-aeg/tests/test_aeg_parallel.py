"""Parallel branches: a call that fans out to tool calls or sub-agents, in the graph, in observed
steps and inference, in serialisation, and what the scheduler derives from them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from saga.aeg import (
    AEG,
    AEGError,
    Branch,
    Edge,
    LLMNode,
    LogNormalLatency,
    Node,
    ParallelNode,
    ParallelStep,
    TaskStep,
    TerminalNode,
    ToolNode,
    infer_aeg,
)
from saga.aeg.counts import TransitionCounts
from saga.aeg.steps import (
    LLMStep,
    ToolStep,
    parallel_branches,
    parallel_node_id,
    path_node_ids,
    step_from_dict,
)

SEARCH = LogNormalLatency.from_median(2.0, 0.5)
EDIT = LogNormalLatency.from_median(0.5, 0.3)
AGENT = LogNormalLatency.from_median(8.0, 0.4)


def _fan(*branches: Branch, nid: str = "par:edit+search") -> ParallelNode:
    return ParallelNode(nid, branches)


def _graph(fan: ParallelNode, p_end: float = 0.25) -> AEG:
    """llm@start -> fan-out -> llm@fan -> (fan-out again | end)."""
    after = "llm@" + fan.id
    return AEG("agent", [LLMNode("llm@start", 1000, 100), fan, LLMNode(after, 300, 100),
                         TerminalNode("end")],
               [Edge("llm@start", fan.id, 1.0), Edge(fan.id, after, 1.0),
                Edge(after, fan.id, 1 - p_end), Edge(after, "end", p_end)], "llm@start")


def _sampled_max_min(lats: list[LogNormalLatency], n: int = 400_000) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    x = np.stack([lat.sample(rng, n) for lat in lats])
    return float(x.max(axis=0).mean()), float(x.min(axis=0).mean())


def test_join_and_first_return_match_sampling() -> None:
    fan = _fan(Branch("search", "tool", SEARCH), Branch("edit", "tool", EDIT),
               Branch("coder", "agent", AGENT))
    want_max, want_min = _sampled_max_min([SEARCH, EDIT, AGENT])
    assert fan.expected_join_s() == pytest.approx(want_max, rel=0.01)
    assert fan.expected_first_return_s() == pytest.approx(want_min, rel=0.01)
    assert fan.expected_first_return_s(fan.sharing) == pytest.approx(AGENT.mean(), rel=1e-3)
    assert fan.expected_join_s() > max(SEARCH.mean(), EDIT.mean(), AGENT.mean())
    assert fan.slowest().name == "coder"
    # Deterministic branches: the join is the longest, the first return the shortest.
    fixed = _fan(Branch("a", "tool", LogNormalLatency(math.log(3.0), 0.0)),
                 Branch("b", "tool", LogNormalLatency(math.log(1.0), 0.0)))
    assert fixed.expected_join_s() == pytest.approx(3.0, rel=1e-3)
    assert fixed.expected_first_return_s() == pytest.approx(1.0, rel=1e-3)


def test_the_chain_times_a_fan_out_by_its_join() -> None:
    fan = _fan(Branch("search", "tool", SEARCH), Branch("edit", "tool", EDIT))
    aeg = _graph(fan)
    join = fan.expected_join_s()
    assert aeg.expected_time_to_next_llm("llm@start") == pytest.approx(join)
    assert aeg.expected_time_to_next_llm(fan.id) == pytest.approx(join)
    assert aeg.tools() == ["edit", "search"]
    assert aeg.parallel_nodes() == [fan]
    assert aeg.expected_total_llm_calls() == pytest.approx(1 + 1 / 0.25)


def test_what_a_fan_out_says_about_the_shared_prefix() -> None:
    tools = _graph(_fan(Branch("search", "tool", SEARCH), Branch("edit", "tool", EDIT)))
    sp = tools.shared_prefix("par:edit+search")
    assert sp is not None
    # Tools do not read the prefix: only the call after the join does (always, here).
    assert (sp.readers, sp.p_reuse) == (1.0, 1.0)
    assert sp.next_use_s == pytest.approx(sp.join_s)
    assert tools.shared_prefix("llm@start") is None
    agents = _fan(Branch("coder", "agent", AGENT), Branch("tester", "agent", SEARCH),
                  Branch("edit", "tool", EDIT), nid="par:edit+@coder+@tester")
    aeg = _graph(agents)
    sp = aeg.shared_prefix(agents.id)
    assert sp is not None
    # Two sub-agents fork from the prefix, and the parent reads it after the join.
    assert sp.readers == pytest.approx(3.0) and sp.p_reuse == 1.0
    # Its next use is the earliest sub-agent's return, before the join.
    assert sp.next_use_s == pytest.approx(agents.expected_first_return_s(agents.sharing))
    assert sp.next_use_s < sp.join_s
    assert sp.to_dict()["readers"] == sp.readers


def test_reuse_probability_counts_a_sub_agent_fan_out_as_a_full_read() -> None:
    tool_fan = _fan(Branch("search", "tool", SEARCH), Branch("edit", "tool", EDIT))
    nodes: list[Node] = [LLMNode("a", 10, 10), tool_fan, TerminalNode("end")]
    dead_end = AEG("x", nodes, [Edge("a", tool_fan.id, 1.0), Edge(tool_fan.id, "end", 1.0)], "a")
    assert dead_end.p_reuse("a") == 0.0  # the tools' results are never read by a model
    agent_fan = _fan(Branch("coder", "agent", AGENT), Branch("edit", "tool", EDIT),
                     nid="par:edit+@coder")
    forks = AEG("x", [LLMNode("a", 10, 10), agent_fan, TerminalNode("end")],
                [Edge("a", agent_fan.id, 1.0), Edge(agent_fan.id, "end", 1.0)], "a")
    assert forks.p_reuse("a") == 1.0  # the sub-agent reads the prefix


def test_round_trip_through_json() -> None:
    fan = _fan(Branch("coder", "agent", AGENT), Branch("edit", "tool", EDIT),
               nid="par:edit+@coder")
    aeg = _graph(fan)
    back = AEG.from_json(aeg.to_json())
    assert back == aeg
    assert back.node(fan.id) == fan
    assert back.expected_time_to_next_llm("llm@start") == aeg.expected_time_to_next_llm(
        "llm@start")
    step = ParallelStep((ToolStep("edit", 0.4),), (ToolStep("coder", 7.0),))
    assert step_from_dict(step.to_dict()) == step
    assert step.node_id == fan.id


@pytest.mark.parametrize(("build", "match"), [
    (lambda: ParallelNode("p", (Branch("a", "tool", EDIT),)), "at least 2 branches"),
    (lambda: ParallelNode("p", ("a", "b")), "Branch objects"),  # type: ignore[arg-type]
    (lambda: Branch("a", "thread", EDIT),  # type: ignore[arg-type]
     "kind must be 'tool' or 'agent'"),
    (lambda: Branch("", "tool", EDIT), "non-empty string"),
    (lambda: Branch("a", "tool", 1.0), "LogNormalLatency"),  # type: ignore[arg-type]
    (lambda: ParallelStep((ToolStep("a", 1.0),)), "at least 2 branches"),
    (lambda: ParallelStep((ToolStep("a+b", 1.0), ToolStep("c", 1.0))), "may not contain '\\+'"),
    (lambda: ParallelStep((ToolStep("@a", 1.0), ToolStep("c", 1.0))), "start with '@'"),
    (lambda: parallel_branches("par:b+a"), "not a well-formed"),
    (lambda: parallel_branches("tool:a"), "not a fan-out node id"),
    (lambda: AEG.from_dict({"agent_type": "x", "start": "p", "edges": [], "nodes": [
        {"kind": "parallel", "id": "p", "branches": [
            {"name": "a", "kind": "tool", "latency": EDIT.to_dict()}]}]}), "at least 2"),
    (lambda: AEG.from_dict({"agent_type": "x", "start": "p", "edges": [], "nodes": [
        {"kind": "parallel", "id": "p", "branches": [
            {"name": "a", "kind": "job", "latency": EDIT.to_dict()}]}]}), "'tool' or 'agent'"),
    (lambda: AEG.from_dict({"agent_type": "x", "start": "p", "edges": [], "nodes": [
        {"kind": "fork", "id": "p"}]}), "'parallel'"),
])
def test_bad_fan_outs_are_refused_naming_the_problem(build: object, match: str) -> None:
    with pytest.raises(AEGError, match=match):
        build()  # type: ignore[operator]


def test_node_ids_spell_the_branches() -> None:
    nid = parallel_node_id(["search", "edit", "search"], ["coder"])
    assert nid == "par:edit+search+search+@coder"
    assert parallel_branches(nid) == (("edit", "search", "search"), ("coder",))
    steps: list[TaskStep] = [
        LLMStep(100, 10), ParallelStep((ToolStep("search", 1.0), ToolStep("edit", 0.5))),
        LLMStep(200, 10)]
    assert path_node_ids(steps) == ["llm@start", "par:edit+search", "llm@par:edit+search",
                                    "end"]


def test_inference_learns_fan_outs_and_their_branch_latencies() -> None:
    truth = _graph(_fan(Branch("search", "tool", SEARCH), Branch("edit", "tool", EDIT)), 0.2)
    rng = np.random.default_rng(5)
    tasks = [truth.sample_task(rng) for _ in range(300)]
    with pytest.raises(AEGError, match="sample_task"):
        truth.sample_trace(rng)
    assert any(isinstance(s, ParallelStep) for s in tasks[0])
    learnt = infer_aeg("agent", tasks)
    fan = learnt.node("par:edit+search")
    assert isinstance(fan, ParallelNode)
    lat = {b.name: b.latency for b in fan.branches}
    assert lat["search"].median() == pytest.approx(2.0, rel=0.1)
    assert lat["edit"].median() == pytest.approx(0.5, rel=0.1)
    assert dict(learnt.successors("llm@par:edit+search"))["end"] == pytest.approx(0.2, abs=0.05)
    assert learnt.expected_time_to_next_llm("llm@start") == pytest.approx(
        truth.expected_time_to_next_llm("llm@start"), rel=0.1)
    # A prior with a fan-out blends with observations of plain tool calls.
    plain: list[list[TaskStep]] = [
        [LLMStep(100, 10), ToolStep("search", 2.0), LLMStep(200, 10)]] * 3
    counts = TransitionCounts()
    for t in plain:
        counts.add_task(t)
    blended = counts.to_aeg("agent", prior=truth, prior_strength=5.0)
    assert isinstance(blended.node("par:edit+search"), ParallelNode)
    assert isinstance(blended.node("tool:search"), ToolNode)
