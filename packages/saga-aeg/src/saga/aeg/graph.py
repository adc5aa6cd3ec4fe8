"""The Agent Execution Graph (AEG): a task's workflow as an absorbing Markov chain.

Nodes are kinds of LLM calls, tool calls and terminal states; edges carry transition
probabilities. Terminal nodes absorb, every other node is transient, so the questions SAGA asks
("how likely is this session's cached prefix reused?", "how long until its next LLM call?",
"how much work is left?") are expectations over an absorbing chain, answered in closed form
from the fundamental matrix `N = (I − Q)⁻¹` (`Q` = transitions among transient nodes) with
`numpy.linalg.solve`, not by simulation.

Conventions: a node id passed to a prediction method is the node the session is at — the call
it is running or has just finished. "Remaining" counts exclude that node unless
`include_current=True`.

The node and edge types live in `saga.aeg.nodes`; this module re-exports them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from saga.aeg import _serde
from saga.aeg.errors import AEGError
from saga.aeg.graph_checks import check_graph
from saga.aeg.nodes import (
    PROBABILITY_TOLERANCE,
    Edge,
    LLMNode,
    Node,
    ParallelNode,
    TerminalNode,
    ToolNode,
    node_from_dict,
)
from saga.aeg.parallel import SharedPrefix, shared_prefix
from saga.aeg.steps import LLMStep, ParallelStep, Step, TaskStep, ToolStep

__all__ = [
    "AEG",
    "PROBABILITY_TOLERANCE",
    "Edge",
    "LLMNode",
    "Node",
    "ParallelNode",
    "SharedPrefix",
    "TerminalNode",
    "ToolNode",
    "node_from_dict",
    "p_reuse",
]

_FloatArray = np.ndarray[Any, np.dtype[np.float64]]
Overlap = Mapping[str, float] | Callable[[str], float]


def p_reuse(
    transitions: Mapping[str, float] | Iterable[tuple[str, float]],
    overlaps: Overlap,
) -> float:
    """Reuse probability of a cached prefix `s`: `P_reuse(s) = Σ_u P(v→u) · overlap(s, u)`.

    `transitions` are the successors `u` of the session's current node `v` with `P(v→u)`
    (a mapping or `(u, p)` pairs, as `AEG.successors` returns); `overlaps` gives
    `overlap(s, u)` ∈ [0, 1], the share of `s` that the step at `u` reuses (mapping — a missing
    successor counts as 0 — or callable).
    """
    pairs = transitions.items() if isinstance(transitions, Mapping) else transitions
    total = 0.0
    for u, p in pairs:
        if not math.isfinite(p) or p < 0.0:
            raise AEGError(f"p_reuse: transition probability to '{u}' must be >= 0, got {p!r}")
        ov = overlaps(u) if callable(overlaps) else overlaps.get(u, 0.0)
        if isinstance(ov, bool) or not isinstance(ov, int | float) or not 0.0 <= ov <= 1.0:
            raise AEGError(f"p_reuse: overlap for successor '{u}' must lie in [0, 1], got {ov!r}")
        total += p * float(ov)
    return total


@dataclass(frozen=True)
class _Chain:
    """Matrices of the absorbing chain, computed once per AEG (probabilities are immutable)."""

    ids: tuple[str, ...]
    P: _FloatArray  # full transition matrix, rows of terminals are zero
    transient: np.ndarray[Any, np.dtype[np.intp]]  # indices of non-terminal nodes
    N: _FloatArray  # fundamental matrix over transient nodes, (I − Q)⁻¹
    is_llm: _FloatArray  # 1.0 where the node is an LLM node
    tokens: _FloatArray  # prompt + output tokens of LLM nodes, 0 elsewhere
    gap: np.ndarray[Any, np.dtype[np.intp]]  # indices of tool and fan-out nodes
    N_gap: _FloatArray  # fundamental matrix of the chain stopped at LLM or terminal nodes
    h_gap: _FloatArray  # P(reach an LLM node before a terminal) from each tool node
    gap_nodes: tuple[ToolNode | ParallelNode, ...]  # the nodes at `gap` (durations per call)


@dataclass(frozen=True)
class AEG:
    """Agent Execution Graph of one agent type; validated on construction.

    Raises `AEGError` naming the node for: duplicate or unknown node ids, a missing start,
    negative probabilities, outgoing probabilities not summing to 1 (±1e-9), a terminal with
    outgoing edges, a non-terminal without any, or a node from which no terminal is reachable
    through edges of positive probability (this also catches cycles with no exit).
    Nodes unreachable from the start are allowed (a hint may declare steps never taken).
    """

    agent_type: str
    nodes: Sequence[Node]
    edges: Sequence[Edge]
    start: str
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _succ: dict[str, tuple[tuple[str, float], ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.agent_type, str) or not self.agent_type:
            raise AEGError(f"AEG.agent_type must be a non-empty string, got {self.agent_type!r}")
        nodes = tuple(self.nodes)
        edges = tuple(self.edges)
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "edges", edges)
        index, succ = check_graph(nodes, edges, self.start, f"AEG '{self.agent_type}'")
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_succ", succ)

    # --- lookup -------------------------------------------------------------------------
    def node(self, node_id: str) -> Node:
        """The node with id `node_id`."""
        return self.nodes[self._idx(node_id)]

    def _idx(self, node_id: str) -> int:
        try:
            return self._index[node_id]
        except (KeyError, TypeError):
            raise AEGError(
                f"AEG '{self.agent_type}' has no node {node_id!r}; known nodes: "
                f"{sorted(self._index)}"
            ) from None

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, str) and node_id in self._index

    @property
    def node_ids(self) -> list[str]:
        """Node ids in declaration order."""
        return list(self._index)

    def successors(self, node_id: str) -> list[tuple[str, float]]:
        """`(successor id, probability)` pairs of `node_id`, in edge order."""
        self._idx(node_id)
        return list(self._succ[node_id])

    def is_terminal(self, node_id: str) -> bool:
        """Whether the task is over at `node_id`."""
        return isinstance(self.node(node_id), TerminalNode)

    def llm_nodes(self) -> list[LLMNode]:
        """The LLM-call nodes."""
        return [n for n in self.nodes if isinstance(n, LLMNode)]

    def tool_nodes(self) -> list[ToolNode]:
        """The tool-call nodes."""
        return [n for n in self.nodes if isinstance(n, ToolNode)]

    def parallel_nodes(self) -> list[ParallelNode]:
        """The fan-out nodes."""
        return [n for n in self.nodes if isinstance(n, ParallelNode)]

    def tools(self) -> list[str]:
        """Distinct tool names (fan-out tool branches included), sorted."""
        names = {n.tool for n in self.tool_nodes()}
        names.update(t for n in self.parallel_nodes() for t in n.tools)
        return sorted(names)

    def with_agent_type(self, agent_type: str) -> AEG:
        """The same graph under another agent type name."""
        return AEG(agent_type, self.nodes, self.edges, self.start)

    # --- closed-form predictions --------------------------------------------------------
    @cached_property
    def _chain(self) -> _Chain:
        ids = tuple(self._index)
        n = len(ids)
        P = np.zeros((n, n), dtype=np.float64)
        for src, out in self._succ.items():
            for dst, p in out:
                P[self._index[src], self._index[dst]] = p
        kinds = [type(node) for node in self.nodes]
        transient = np.array(
            [i for i, k in enumerate(kinds) if k is not TerminalNode], dtype=np.intp
        )
        gap = np.array([i for i, k in enumerate(kinds) if k in (ToolNode, ParallelNode)],
                       dtype=np.intp)
        is_llm = np.array([1.0 if k is LLMNode else 0.0 for k in kinds], dtype=np.float64)
        tokens = np.array(
            [
                n.prompt_tokens + n.output_tokens if isinstance(n, LLMNode) else 0.0
                for n in self.nodes
            ],
            dtype=np.float64,
        )
        Q = P[np.ix_(transient, transient)]
        N = np.asarray(
            np.linalg.solve(np.eye(len(transient)) - Q, np.eye(len(transient))), np.float64
        )
        Qg = P[np.ix_(gap, gap)]
        N_gap = np.asarray(np.linalg.solve(np.eye(len(gap)) - Qg, np.eye(len(gap))), np.float64)
        to_llm = P[gap] @ is_llm  # one-step probability of entering an LLM node
        h_gap = np.asarray(N_gap @ to_llm, dtype=np.float64)
        gap_nodes = tuple(n for n in self.nodes if isinstance(n, ToolNode | ParallelNode))
        return _Chain(ids, P, transient, N, is_llm, tokens, gap, N_gap, h_gap, gap_nodes)

    def _transient_row(self, node_id: str) -> _FloatArray | None:
        """Row of N for `node_id` (expected visits of each transient node, this one included)."""
        c = self._chain
        i = self._idx(node_id)
        pos = np.searchsorted(c.transient, i)
        if pos >= len(c.transient) or c.transient[pos] != i:
            return None  # terminal
        return np.asarray(c.N[pos], dtype=np.float64)

    def expected_visits(self, node_id: str) -> dict[str, float]:
        """Expected visits of each non-terminal node from `node_id` on (it counts once itself)."""
        row = self._transient_row(node_id)
        c = self._chain
        if row is None:
            return {c.ids[j]: 0.0 for j in c.transient}
        return {c.ids[j]: float(row[k]) for k, j in enumerate(c.transient)}

    def _expected_sum(self, node_id: str, per_node: _FloatArray, include_current: bool) -> float:
        """`Σ_u N[v,u]·x_u` over transient u, minus the current node's `x_v` unless included."""
        row = self._transient_row(node_id)
        if row is None:
            return 0.0
        c = self._chain
        total = float(row @ per_node[c.transient])
        if not include_current:
            total -= float(per_node[self._idx(node_id)])
        return max(total, 0.0)

    def expected_remaining_llm_calls(self, node_id: str, *, include_current: bool = False) -> float:
        """Expected LLM calls still to come: `Σ_u N[v,u]·[u is LLM]` (minus the current node)."""
        return self._expected_sum(node_id, self._chain.is_llm, include_current)

    def expected_remaining_work(self, node_id: str, *, include_current: bool = False) -> float:
        """Expected remaining work W in tokens: `Σ_u N[v,u]·(prompt_u + output_u)` over LLM nodes.

        This is the AFS work estimate: the new tokens (prompt growth + output) of the LLM calls
        still to come, excluding the current node unless `include_current`.
        """
        return self._expected_sum(node_id, self._chain.tokens, include_current)

    def expected_total_llm_calls(self) -> float:
        """Expected LLM calls of a whole task (from the start node, inclusive)."""
        return self.expected_remaining_llm_calls(self.start, include_current=True)

    def expected_total_work(self) -> float:
        """Expected tokens of a whole task (from the start node, inclusive)."""
        return self.expected_remaining_work(self.start, include_current=True)

    def _first_step(self, node_id: str) -> tuple[_FloatArray, float, float]:
        """One step out of `node_id` into the chain stopped at the next LLM/terminal node.

        Returns (P(v→u) for u in the tool set, P(v→LLM directly), H = P(next LLM call happens)).
        """
        c = self._chain
        row = c.P[self._idx(node_id)]
        to_gap = np.asarray(row[c.gap], dtype=np.float64)
        direct = float(row @ c.is_llm)
        return to_gap, direct, direct + float(to_gap @ c.h_gap)

    def p_next_llm(self, node_id: str) -> float:
        """Probability that the session makes another LLM call before its task ends."""
        return self._first_step(node_id)[2]

    def expected_steps_to_next_llm(self, node_id: str) -> float:
        """Expected transitions until the session's next LLM call, given that one comes.

        Conditioned on reaching an LLM node before a terminal (inf when none can follow):
        with `h = N_g·r` (r = one-step LLM probability, N_g the fundamental matrix over tool
        nodes) and `m = N_g·h`, the answer is `(direct + Σ_u P(v→u)(h_u + m_u)) / H`.
        """
        to_gap, direct, H = self._first_step(node_id)
        if H <= 0.0:
            return math.inf
        c = self._chain
        m = c.N_gap @ c.h_gap
        return (direct + float(to_gap @ (c.h_gap + m))) / H

    def expected_time_to_next_llm(
        self, node_id: str, *, llm_call_s: float = 0.0, include_current: bool = True
    ) -> float:
        """Expected seconds until the session's next LLM call starts, given that one comes.

        The sum of the mean latencies of the tool calls on the way (`N_g·(mean ∘ h)`, each
        visit weighted by its chance of leading to an LLM call), plus the current node's own
        duration when `include_current` (a tool's mean latency, or `llm_call_s` for an LLM
        node whose call is still running). inf when no LLM call can follow.
        """
        _serde.check_finite(llm_call_s, "llm_call_s")
        if llm_call_s < 0:
            raise AEGError(f"llm_call_s must be >= 0, got {llm_call_s!r}")
        to_gap, _direct, H = self._first_step(node_id)
        if H <= 0.0:
            return math.inf
        c = self._chain
        means = np.array([_mean_s(n) for n in c.gap_nodes], dtype=np.float64)
        weighted = c.N_gap @ (means * c.h_gap)
        total = float(to_gap @ weighted) / H
        if include_current:
            node = self.node(node_id)
            if isinstance(node, ToolNode | ParallelNode):
                total += _mean_s(node)
            elif isinstance(node, LLMNode):
                total += llm_call_s
        return total

    def p_reuse(self, node_id: str, overlap: Overlap | None = None) -> float:
        """`P_reuse` of a session at `node_id`, composing the module-level `p_reuse`.

        `overlap` maps each successor to `overlap(s, u)`. When omitted, a successor LLM call
        reuses the whole prefix (1), a terminal none (0), a fan-out with a sub-agent branch the
        whole prefix (the sub-agent forks from it), and a tool call or a fan-out of tools as
        much as the chance that an LLM call follows it (its `p_next_llm`).
        """
        if overlap is None:
            c = self._chain
            h = dict(zip((c.ids[j] for j in c.gap), c.h_gap.tolist(), strict=True))

            def default_overlap(u: str) -> float:
                node = self.node(u)
                if isinstance(node, LLMNode) or (
                        isinstance(node, ParallelNode) and node.sharing):
                    return 1.0
                return float(min(max(h.get(u, 0.0), 0.0), 1.0))

            return p_reuse(self.successors(node_id), default_overlap)
        return p_reuse(self.successors(node_id), overlap)

    def shared_prefix(self, node_id: str) -> SharedPrefix | None:
        """What the fan-out at ``node_id`` says about the caller's cached prefix (readers,
        reuse probability, seconds to its next use; `saga.aeg.parallel`), or None when
        ``node_id`` is not a fan-out. For a session at an LLM call, pass its likeliest
        successor (`successors`)."""
        node = self.node(node_id)
        if not isinstance(node, ParallelNode):
            return None
        return shared_prefix(node, self.p_next_llm(node_id))

    # --- sampling -----------------------------------------------------------------------
    @cached_property
    def _cumulative(self) -> dict[str, tuple[tuple[str, ...], _FloatArray]]:
        return {
            nid: (tuple(d for d, _ in out), np.cumsum([p for _, p in out], dtype=np.float64))
            for nid, out in self._succ.items()
            if out
        }

    def sample_path(self, rng: np.random.Generator, max_steps: int = 100_000) -> list[str]:
        """Node ids of one sampled task, from the start to a terminal (both included).

        Deterministic given `rng`; raises `AEGError` past `max_steps` transitions.
        """
        path = [self.start]
        cum = self._cumulative
        current = self.start
        for _ in range(max_steps):
            if current not in cum:
                return path
            dsts, c = cum[current]
            k = int(np.searchsorted(c, rng.random() * c[-1], side="right"))
            current = dsts[min(k, len(dsts) - 1)]
            path.append(current)
        if current in cum:
            raise AEGError(f"AEG '{self.agent_type}': sampled task exceeded max_steps={max_steps}")
        return path

    def sample_task(self, rng: np.random.Generator, max_steps: int = 100_000) -> list[TaskStep]:
        """Steps of one sampled task: LLM calls with growing prompts, tools (and fan-outs, as
        `ParallelStep`s) with sampled durations.

        Token counts are the nodes' expected values rounded to integers; the prompt of each
        call is the running context (growths and outputs so far), as observed from a real
        agent. Deterministic given `rng`.
        """
        steps: list[TaskStep] = []
        context = 0
        for nid in self.sample_path(rng, max_steps):
            node = self.node(nid)
            if isinstance(node, LLMNode):
                prompt = context + round(node.prompt_tokens)
                out = round(node.output_tokens)
                steps.append(LLMStep(input_tokens=prompt, output_tokens=out))
                context = prompt + out
            elif isinstance(node, ToolNode):
                steps.append(ToolStep(node.tool, float(node.latency.sample(rng, 1)[0])))
            elif isinstance(node, ParallelNode):
                steps.append(ParallelStep(
                    tools=tuple(ToolStep(b.name, float(b.latency.sample(rng, 1)[0]))
                                for b in node.branches if b.kind == "tool"),
                    agents=tuple(ToolStep(b.name, float(b.latency.sample(rng, 1)[0]))
                                 for b in node.branches if b.kind == "agent")))
        return steps

    def sample_trace(self, rng: np.random.Generator, max_steps: int = 100_000) -> list[Step]:
        """`sample_task` of a graph without fan-outs, as sequential steps (raises `AEGError` for
        a graph with one: use `sample_task`, whose `ParallelStep`s keep the branches apart)."""
        if self.parallel_nodes():
            raise AEGError(f"AEG '{self.agent_type}' has fan-outs "
                           f"{[n.id for n in self.parallel_nodes()]}; sample it with sample_task")
        return [s for s in self.sample_task(rng, max_steps) if not isinstance(s, ParallelStep)]

    # --- serde --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "agent_type": self.agent_type,
            "start": self.start,
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [e.to_dict() for e in self.edges],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AEG:
        """Inverse of `to_dict` (validates like the constructor)."""
        d = _serde.as_mapping(data, "AEG")
        return cls(
            agent_type=_serde.get_str(d, "agent_type", "AEG"),
            nodes=[node_from_dict(n) for n in _serde.get_list(d, "nodes", "AEG")],
            edges=[Edge.from_dict(e) for e in _serde.get_list(d, "edges", "AEG")],
            start=_serde.get_str(d, "start", "AEG"),
        )

    def to_json(self, indent: int | None = None) -> str:
        """JSON text of `to_dict`."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> AEG:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))


def _mean_s(node: ToolNode | ParallelNode) -> float:
    """Expected seconds a tool call (its latency's mean) or a fan-out (its join) lasts."""
    return node.latency.mean() if isinstance(node, ToolNode) else node.mean()
