"""AEG validation and closed-form predictions against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga.aeg.errors import AEGError
from saga.aeg.graph import AEG, Edge, LLMNode, Node, TerminalNode, ToolNode, p_reuse
from saga.aeg.latency import LogNormalLatency
from saga.aeg.steps import LLMStep, ToolStep


def fixed(seconds: float) -> LogNormalLatency:
    """A latency that always takes `seconds` (sigma 0, so its mean is exactly `seconds`)."""
    return LogNormalLatency(math.log(seconds), 0.0)


def loop(q: float = 0.25, tool_s: float = 2.0) -> AEG:
    """LLM a -> tool b (1-q) | end (q); b -> a."""
    return AEG(
        "loop",
        [LLMNode("a", 100.0, 50.0), ToolNode("b", "bash", fixed(tool_s)), TerminalNode("end")],
        [Edge("a", "b", 1 - q), Edge("a", "end", q), Edge("b", "a", 1.0)],
        "a",
    )


def branching() -> AEG:
    """L0 -> T1 (.5) | T2 (.5); T1 -> L1; T2 -> T1 (.4) | end (.6); L1 -> end."""
    return AEG(
        "branch",
        [
            LLMNode("L0", 10.0, 5.0),
            ToolNode("T1", "t1", fixed(1.0)),
            ToolNode("T2", "t2", fixed(2.0)),
            LLMNode("L1", 20.0, 7.0),
            TerminalNode("end"),
        ],
        [
            Edge("L0", "T1", 0.5),
            Edge("L0", "T2", 0.5),
            Edge("T1", "L1", 1.0),
            Edge("T2", "T1", 0.4),
            Edge("T2", "end", 0.6),
            Edge("L1", "end", 1.0),
        ],
        "L0",
    )


# --- formula -----------------------------------------------------------------------------
def test_p_reuse_formula_by_hand() -> None:
    # 0.6 * 1.0 + 0.3 * 0.5 + 0.1 * 0 (missing -> no overlap)
    assert p_reuse({"x": 0.6, "y": 0.3, "z": 0.1}, {"x": 1.0, "y": 0.5}) == pytest.approx(0.75)
    assert p_reuse([("x", 0.2), ("y", 0.8)], lambda u: 1.0 if u == "y" else 0.25) == pytest.approx(
        0.85
    )
    assert p_reuse([], {}) == 0.0


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_p_reuse_rejects_bad_overlap(bad: float) -> None:
    with pytest.raises(AEGError, match="overlap for successor 'x'"):
        p_reuse({"x": 1.0}, {"x": bad})


def test_p_reuse_rejects_negative_probability() -> None:
    with pytest.raises(AEGError, match="'x'"):
        p_reuse({"x": -0.5}, {"x": 1.0})


# --- geometric loop ----------------------------------------------------------------------
def test_geometric_loop_expected_calls_is_one_over_q() -> None:
    g = loop(q=0.25)
    assert g.expected_total_llm_calls() == pytest.approx(4.0)
    assert g.expected_remaining_llm_calls("a") == pytest.approx(3.0)
    assert g.expected_remaining_llm_calls("a", include_current=True) == pytest.approx(4.0)
    assert g.expected_remaining_llm_calls("b") == pytest.approx(4.0)
    assert g.expected_remaining_llm_calls("end") == 0.0
    assert g.expected_visits("a") == {"a": pytest.approx(4.0), "b": pytest.approx(3.0)}


def test_geometric_loop_remaining_work_in_tokens() -> None:
    g = loop(q=0.25)
    assert g.expected_total_work() == pytest.approx(4 * 150.0)
    assert g.expected_remaining_work("a") == pytest.approx(3 * 150.0)
    assert g.expected_remaining_work("b") == pytest.approx(4 * 150.0)
    assert g.expected_remaining_work("end") == 0.0


def test_geometric_loop_next_llm() -> None:
    g = loop(q=0.25, tool_s=2.0)
    assert g.p_next_llm("a") == pytest.approx(0.75)
    assert g.p_next_llm("b") == pytest.approx(1.0)
    assert g.expected_steps_to_next_llm("a") == pytest.approx(2.0)
    assert g.expected_steps_to_next_llm("b") == pytest.approx(1.0)
    assert g.expected_time_to_next_llm("b") == pytest.approx(2.0)
    assert g.expected_time_to_next_llm("b", include_current=False) == pytest.approx(0.0)
    assert g.expected_time_to_next_llm("a", llm_call_s=3.0) == pytest.approx(5.0)
    assert g.expected_time_to_next_llm("a", llm_call_s=3.0, include_current=False) == (
        pytest.approx(2.0)
    )
    assert math.isinf(g.expected_steps_to_next_llm("end"))
    assert math.isinf(g.expected_time_to_next_llm("end"))


def test_geometric_loop_p_reuse() -> None:
    g = loop(q=0.25)
    assert g.p_reuse("a", {"b": 0.8, "end": 0.0}) == pytest.approx(0.6)
    assert g.p_reuse("a", lambda u: 0.5) == pytest.approx(0.5)
    assert g.p_reuse("a") == pytest.approx(0.75)  # default: the chance of another call
    assert g.p_reuse("b") == pytest.approx(1.0)
    assert g.p_reuse("end") == 0.0


# --- branching graph ---------------------------------------------------------------------
def test_branching_conditional_steps_and_time() -> None:
    g = branching()
    # paths to the next LLM call: L0-T1-L1 (p .5, 2 steps, 1 s); L0-T2-T1-L1 (p .2, 3 steps, 3 s)
    assert g.p_next_llm("L0") == pytest.approx(0.7)
    assert g.expected_steps_to_next_llm("L0") == pytest.approx((0.5 * 2 + 0.2 * 3) / 0.7)
    assert g.expected_time_to_next_llm("L0") == pytest.approx((0.5 * 1 + 0.2 * 3) / 0.7)
    assert g.p_next_llm("T2") == pytest.approx(0.4)
    assert g.expected_steps_to_next_llm("T2") == pytest.approx(2.0)
    assert g.expected_time_to_next_llm("T2") == pytest.approx(3.0)
    assert g.expected_time_to_next_llm("T2", include_current=False) == pytest.approx(1.0)
    assert g.p_next_llm("L1") == 0.0
    assert math.isinf(g.expected_steps_to_next_llm("L1"))
    assert g.expected_remaining_llm_calls("L0", include_current=True) == pytest.approx(1.7)
    assert g.expected_remaining_work("L0") == pytest.approx(0.7 * 27.0)
    assert g.p_reuse("L0") == pytest.approx(0.5 * 1.0 + 0.5 * 0.4)


def test_lookup_helpers() -> None:
    g = branching()
    assert g.successors("T2") == [("T1", 0.4), ("end", 0.6)]
    assert g.successors("end") == []
    assert g.is_terminal("end") and not g.is_terminal("L0")
    assert [n.id for n in g.llm_nodes()] == ["L0", "L1"]
    assert g.tools() == ["t1", "t2"]
    assert "T1" in g and "nope" not in g
    assert g.node_ids == ["L0", "T1", "T2", "L1", "end"]
    with pytest.raises(AEGError, match="no node 'nope'"):
        g.successors("nope")
    with pytest.raises(AEGError, match="no node 'nope'"):
        g.expected_remaining_work("nope")
    with pytest.raises(AEGError, match="llm_call_s"):
        g.expected_time_to_next_llm("L0", llm_call_s=-1.0)


# --- validation --------------------------------------------------------------------------
def _mk(nodes: list[Node], edges: list[Edge], start: str = "a") -> AEG:
    return AEG("t", nodes, edges, start)


A = LLMNode("a", 1.0, 1.0)
B = ToolNode("b", "bash", fixed(1.0))
END = TerminalNode("end")


def test_probabilities_must_sum_to_one() -> None:
    with pytest.raises(AEGError, match=r"node 'a' sum to 0\.9"):
        _mk([A, END], [Edge("a", "end", 0.9)])
    # within 1e-9 is fine
    _mk([A, B, END], [Edge("a", "end", 0.5 + 5e-10), Edge("a", "b", 0.5), Edge("b", "end", 1.0)])
    with pytest.raises(AEGError, match="node 'a'"):
        _mk([A, B, END], [Edge("a", "end", 0.5 + 1e-8), Edge("a", "b", 0.5), Edge("b", "end", 1.0)])


def test_negative_and_out_of_range_weights() -> None:
    with pytest.raises(AEGError, match="a->end"):
        Edge("a", "end", -0.1)
    with pytest.raises(AEGError, match="a->end"):
        Edge("a", "end", 1.5)
    with pytest.raises(AEGError, match="a->end"):
        Edge("a", "end", math.nan)


def test_unknown_nodes_in_edges() -> None:
    with pytest.raises(AEGError, match="unknown node 'ghost'"):
        _mk([A, END], [Edge("a", "ghost", 1.0)])
    with pytest.raises(AEGError, match="unknown node 'ghost'"):
        _mk([A, END], [Edge("a", "end", 1.0), Edge("ghost", "end", 1.0)])


def test_terminal_with_outgoing_edges() -> None:
    with pytest.raises(AEGError, match="terminal node 'end'"):
        _mk([A, END], [Edge("a", "end", 1.0), Edge("end", "a", 1.0)])


def test_non_terminal_without_outgoing_edges() -> None:
    with pytest.raises(AEGError, match="node 'b' has no outgoing edges"):
        _mk([A, B, END], [Edge("a", "end", 1.0)])


def test_cycle_without_exit() -> None:
    c = ToolNode("c", "grep", fixed(1.0))
    with pytest.raises(AEGError, match="no terminal node is reachable from node 'b'"):
        _mk(
            [A, B, c, END],
            [Edge("a", "b", 0.5), Edge("a", "end", 0.5), Edge("b", "c", 1.0), Edge("c", "b", 1.0)],
        )
    # an exit edge of probability 0 is no exit
    with pytest.raises(AEGError, match="no terminal node is reachable from node 'a'"):
        _mk([A, B, END], [Edge("a", "b", 1.0), Edge("a", "end", 0.0), Edge("b", "a", 1.0)])


def test_missing_start_and_duplicates() -> None:
    with pytest.raises(AEGError, match="start node 'zz' is missing"):
        _mk([A, END], [Edge("a", "end", 1.0)], start="zz")
    with pytest.raises(AEGError, match="duplicate node id 'a'"):
        _mk([A, A, END], [Edge("a", "end", 1.0)])
    with pytest.raises(AEGError, match="duplicate edge a->end"):
        _mk([A, END], [Edge("a", "end", 0.5), Edge("a", "end", 0.5)])
    with pytest.raises(AEGError, match="agent_type"):
        AEG("", [A, END], [Edge("a", "end", 1.0)], "a")


def test_node_field_validation() -> None:
    with pytest.raises(AEGError, match="LLMNode 'x': output_tokens"):
        LLMNode("x", 1.0, -1.0)
    with pytest.raises(AEGError, match="LLMNode 'x' prompt_tokens"):
        LLMNode("x", math.inf, 1.0)
    with pytest.raises(AEGError, match="ToolNode 'x'"):
        ToolNode("x", "", fixed(1.0))
    with pytest.raises(AEGError, match=r"ToolNode\.id"):
        ToolNode("", "bash", fixed(1.0))


def test_unreachable_nodes_are_allowed() -> None:
    g = _mk([A, B, END], [Edge("a", "end", 1.0), Edge("b", "end", 1.0)])
    assert g.expected_total_llm_calls() == pytest.approx(1.0)


# --- sampling ----------------------------------------------------------------------------
def test_sample_path_is_deterministic_and_geometric() -> None:
    g = loop(q=0.25)
    p1 = g.sample_path(np.random.default_rng(3))
    p2 = g.sample_path(np.random.default_rng(3))
    assert p1 == p2 and p1[0] == "a" and p1[-1] == "end"
    rng = np.random.default_rng(11)
    calls = [g.sample_path(rng).count("a") for _ in range(4000)]
    # geometric with mean 4 and variance (1-q)/q^2 = 12: 4 standard errors is ~0.22
    assert np.mean(calls) == pytest.approx(4.0, abs=0.22)


def test_sample_never_takes_zero_probability_edges() -> None:
    g = _mk(
        [A, B, END],
        [Edge("a", "b", 0.0), Edge("a", "end", 1.0), Edge("b", "end", 1.0)],
    )
    rng = np.random.default_rng(0)
    assert all(g.sample_path(rng) == ["a", "end"] for _ in range(200))


def test_sample_path_max_steps() -> None:
    g = loop(q=1e-6)
    with pytest.raises(AEGError, match="max_steps"):
        g.sample_path(np.random.default_rng(0), max_steps=5)


def test_sample_trace_grows_the_context() -> None:
    g = loop(q=0.25, tool_s=2.0)
    rng = np.random.default_rng(5)
    steps = g.sample_trace(rng)
    while len(steps) < 3:
        steps = g.sample_trace(rng)
    assert steps[0] == LLMStep(100, 50)
    assert isinstance(steps[1], ToolStep) and steps[1].tool == "bash"
    assert steps[1].duration_s == pytest.approx(2.0)
    assert steps[2] == LLMStep(100 + 50 + 100, 50)


# --- property: Bellman equations of the absorbing chain ----------------------------------
@st.composite
def random_aeg(draw: st.DrawFn) -> AEG:
    n = draw(st.integers(min_value=1, max_value=6))
    kinds = draw(st.lists(st.booleans(), min_size=n, max_size=n))  # True: LLM
    nodes: list[Node] = [
        LLMNode(f"n{i}", float(i + 1), 1.0) if k else ToolNode(f"n{i}", f"t{i}", fixed(i + 1.0))
        for i, k in enumerate(kinds)
    ]
    nodes.append(TerminalNode("end"))
    edges: list[Edge] = []
    for i in range(n):
        w = draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n))
        exit_w = draw(st.floats(0.05, 1.0))
        total = sum(w) + exit_w
        edges += [Edge(f"n{i}", f"n{j}", w[j] / total) for j in range(n) if w[j] > 0]
        edges.append(Edge(f"n{i}", "end", 1.0 - sum(w[j] / total for j in range(n) if w[j] > 0)))
    return AEG("random", nodes, edges, "n0")


@settings(max_examples=40, deadline=None)
@given(random_aeg())
def test_bellman_equations_hold(g: AEG) -> None:
    for node in g.nodes:
        v = node.id
        succ = g.successors(v)
        is_llm = 1.0 if isinstance(node, LLMNode) else 0.0
        tokens = node.prompt_tokens + node.output_tokens if isinstance(node, LLMNode) else 0.0
        calls = g.expected_remaining_llm_calls(v, include_current=True)
        assert calls == pytest.approx(
            is_llm
            + sum(p * g.expected_remaining_llm_calls(u, include_current=True) for u, p in succ),
            rel=1e-7,
            abs=1e-9,
        )
        work = g.expected_remaining_work(v, include_current=True)
        assert work == pytest.approx(
            tokens + sum(p * g.expected_remaining_work(u, include_current=True) for u, p in succ),
            rel=1e-7,
            abs=1e-9,
        )

        def h(u: str) -> float:
            n = g.node(u)
            return (
                1.0
                if isinstance(n, LLMNode)
                else (0.0 if isinstance(n, TerminalNode) else g.p_next_llm(u))
            )

        H = g.p_next_llm(v)
        assert pytest.approx(sum(p * h(u) for u, p in succ), abs=1e-9) == H
        assert -1e-12 <= H <= 1.0 + 1e-9
        if H > 1e-9:
            # steps: one step to u, then (if u is a tool) u's own conditional steps
            rhs = 0.0
            for u, p in succ:
                n = g.node(u)
                if isinstance(n, LLMNode):
                    rhs += p
                elif isinstance(n, ToolNode) and g.p_next_llm(u) > 0:
                    rhs += p * g.p_next_llm(u) * (1.0 + g.expected_steps_to_next_llm(u))
            assert g.expected_steps_to_next_llm(v) * H == pytest.approx(rhs, rel=1e-7, abs=1e-9)


def test_degenerate_graphs() -> None:
    only_end = AEG("t", [TerminalNode("e")], [], "e")
    assert only_end.expected_total_llm_calls() == 0.0
    assert only_end.p_next_llm("e") == 0.0
    assert only_end.sample_path(np.random.default_rng(0)) == ["e"]
    # an LLM retry loop without tools: next call is one step away, half the time
    retry = AEG(
        "t",
        [LLMNode("a", 1.0, 1.0), TerminalNode("e")],
        [Edge("a", "a", 0.5), Edge("a", "e", 0.5)],
        "a",
    )
    assert retry.expected_total_llm_calls() == pytest.approx(2.0)
    assert retry.p_next_llm("a") == pytest.approx(0.5)
    assert retry.expected_steps_to_next_llm("a") == pytest.approx(1.0)
    assert retry.expected_time_to_next_llm("a", llm_call_s=2.0) == pytest.approx(2.0)
