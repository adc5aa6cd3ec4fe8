"""Sufficient statistics of observed tasks of one agent type, and the AEG they imply.

Transition probabilities are count ratios, LLM token figures are means, tool latencies are
online log-normal fits. A prior AEG (a hint or template) can be blended in as `prior_strength`
pseudo-tasks: each prior node gets `prior_strength × (its expected visits per task)` pseudo
departures spread over its prior successors, so real observations outweigh the prior after a
handful of tasks, and a prior transition never observed fades like 1/(tasks observed).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from saga.aeg import _serde
from saga.aeg.errors import AEGError
from saga.aeg.graph import AEG, Edge, LLMNode, Node, ParallelNode, TerminalNode, ToolNode
from saga.aeg.latency import LogNormalLatency, ToolLatencyModel
from saga.aeg.parallel import Branch
from saga.aeg.steps import (
    AGENT_MARK,
    END_NODE_ID,
    PARALLEL_PREFIX,
    LLMStep,
    ParallelStep,
    TaskStep,
    ToolStep,
    parallel_branches,
    path_node_ids,
)

__all__ = ["TransitionCounts", "node_kind_of_id"]


def node_kind_of_id(node_id: str) -> str:
    """Kind ("llm", "tool", "parallel" or "terminal") of an id of the inference naming scheme."""
    if node_id == END_NODE_ID:
        return "terminal"
    if node_id.startswith("tool:"):
        return "tool"
    if node_id.startswith(PARALLEL_PREFIX):
        return "parallel"
    if node_id.startswith("llm@"):
        return "llm"
    raise AEGError(
        f"node id {node_id!r} is not of the inference naming scheme "
        "('llm@...', 'tool:<name>', 'par:<a>+<b>' or 'end')"
    )


def _kind_of_node(node: Node) -> str:
    if isinstance(node, LLMNode):
        return "llm"
    if isinstance(node, ToolNode):
        return "tool"
    if isinstance(node, ParallelNode):
        return "parallel"
    return "terminal"


def _latency_key(branch_kind: str, name: str) -> str:
    """The latency model's key of a fan-out branch: a tool by its name, a sub-agent by
    ``@<type>`` (its time to return is not a tool's latency)."""
    return AGENT_MARK + name if branch_kind == "agent" else name


@dataclass
class _Blend:
    """A prior's pseudo-counts and the observations, merged per node id; ``kinds`` keeps the
    order nodes were first seen in (prior first), which is the AEG's node order."""

    kinds: dict[str, str] = field(default_factory=dict)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    fallback: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    tokens: dict[str, list[float]] = field(default_factory=dict)  # [w, w·growth, w·out, g0, o0]
    tool_of: dict[str, str] = field(default_factory=dict)
    lat_priors: dict[str, LogNormalLatency] = field(default_factory=dict)
    start_weight: dict[str, tuple[float, int]] = field(default_factory=dict)  # (w, observed)
    parallel: dict[str, ParallelNode] = field(default_factory=dict)  # the prior's fan-outs

    def add_prior(self, prior: AEG, prior_strength: float) -> None:
        """Each prior node as ``prior_strength`` × its expected visits pseudo-departures."""
        visits = prior.expected_visits(prior.start)
        for node in prior.nodes:
            self.kinds[node.id] = _kind_of_node(node)
            v = prior_strength * visits.get(node.id, 0.0)
            if not isinstance(node, TerminalNode):
                succ = prior.successors(node.id)
                self.fallback[node.id] = succ
                self.weights[node.id] = {d: v * p for d, p in succ}
            if isinstance(node, LLMNode):
                self.tokens[node.id] = [
                    v,
                    v * node.prompt_tokens,
                    v * node.output_tokens,
                    node.prompt_tokens,
                    node.output_tokens,
                ]
            elif isinstance(node, ToolNode):
                self.tool_of[node.id] = node.tool
                self.lat_priors[node.tool] = node.latency
            elif isinstance(node, ParallelNode):
                self.parallel[node.id] = node
                for b in node.branches:
                    self.lat_priors[_latency_key(b.kind, b.name)] = b.latency
        self.start_weight[prior.start] = (prior_strength, 0)


@dataclass
class TransitionCounts:
    """Counts of observed tasks of one agent type (see module docstring)."""

    n_tasks: int = 0
    starts: dict[str, int] = field(default_factory=dict)
    transitions: dict[str, dict[str, int]] = field(default_factory=dict)
    llm_stats: dict[str, list[float]] = field(default_factory=dict)  # id -> [calls, growth, out]
    latency: ToolLatencyModel = field(default_factory=ToolLatencyModel)

    def add_task(self, steps: Sequence[TaskStep]) -> None:
        """Record one complete task; validates the whole task before changing anything."""
        ids = path_node_ids(steps)  # raises on empty tasks or foreign step types
        llm_updates: list[tuple[str, float, float]] = []
        durations: list[tuple[str, float]] = []
        prev_llm: LLMStep | None = None
        for node_id, step in zip(ids, steps, strict=False):
            if isinstance(step, LLMStep):
                if prev_llm is None:
                    growth = float(step.input_tokens)
                else:
                    # Tokens appended since the previous call's prompt and output; providers'
                    # counts are slightly noisy, so a negative difference is clamped to 0.
                    growth = max(
                        0.0,
                        float(step.input_tokens - prev_llm.input_tokens - prev_llm.output_tokens),
                    )
                llm_updates.append((node_id, growth, float(step.output_tokens)))
                prev_llm = step
            elif isinstance(step, ToolStep) and step.duration_s is not None:
                durations.append((step.tool, float(step.duration_s)))
            elif isinstance(step, ParallelStep):
                durations.extend((_latency_key(kind, b.tool), float(b.duration_s))
                                 for kind, group in (("tool", step.tools), ("agent", step.agents))
                                 for b in group if b.duration_s is not None)
        self.n_tasks += 1
        self.starts[ids[0]] = self.starts.get(ids[0], 0) + 1
        for src, dst in itertools.pairwise(ids):
            row = self.transitions.setdefault(src, {})
            row[dst] = row.get(dst, 0) + 1
        for node_id, growth, out in llm_updates:
            acc = self.llm_stats.setdefault(node_id, [0.0, 0.0, 0.0])
            acc[0] += 1.0
            acc[1] += growth
            acc[2] += out
        for tool, seconds in durations:
            self.latency.observe(tool, seconds)

    def confidence(self) -> float:
        """How settled the transition estimates are, in [0, 1] (0 with no tasks).

        For each node with `n` observed departures (and the start distribution, with one per
        task), the estimate's error is `e = missing + ½·Σ_j sqrt(p̂_j(1 − p̂_j)/n)`, capped at 1:
        `missing` is the Good–Turing estimate of the chance that the next departure goes to a
        successor never seen (successors seen exactly once / n) and the sum is the expected
        total-variation error of the observed frequencies. The score is the departure-weighted
        mean of `1 − e`: a deterministic pipeline is fully confident after two tasks, a
        branching loop needs many departures per node, and a single task scores 0.
        """
        rows = [self.starts, *self.transitions.values()]
        num = 0.0
        den = 0.0
        for row in rows:
            n = float(sum(row.values()))
            if n <= 0:
                continue
            singletons = sum(1 for c in row.values() if c == 1)
            spread = sum(math.sqrt((c / n) * (1.0 - c / n) / n) for c in row.values())
            err = min(1.0, singletons / n + 0.5 * spread)
            num += n * (1.0 - err)
            den += n
        return 0.0 if den == 0.0 else num / den

    def to_aeg(
        self,
        agent_type: str,
        prior: AEG | None = None,
        prior_strength: float = 0.0,
        latency_priors: Mapping[str, LogNormalLatency] | None = None,
    ) -> AEG:
        """The AEG implied by the counts, optionally blended with a prior AEG.

        Where an observed node's kind differs from the prior's node of the same id, the
        observation wins. Tool latencies pool `latency_priors` (else the prior AEG's) with the
        observed durations. Raises `AEGError` when there is neither data nor a prior.
        """
        _serde.check_finite(prior_strength, "prior_strength")
        if prior_strength < 0:
            raise AEGError(f"prior_strength must be >= 0, got {prior_strength!r}")
        if self.n_tasks == 0 and prior is None:
            raise AEGError(f"no observed tasks and no prior for agent type '{agent_type}'")
        blend = _Blend()
        if prior is not None:
            blend.add_prior(prior, prior_strength)
        if latency_priors is not None:
            blend.lat_priors.update(latency_priors)
        self._add_observed(blend)
        return self._build(agent_type, blend)

    def _add_observed(self, blend: _Blend) -> None:
        """Merge the observations into ``blend``: observed node kinds override the prior's
        (dropping its figures for that node), counts add to the prior's pseudo-counts."""
        observed_ids = {*self.starts, *self.transitions}
        for row in self.transitions.values():
            observed_ids.update(row)
        for node_id in sorted(observed_ids):
            kind = node_kind_of_id(node_id)
            if blend.kinds.get(node_id, kind) != kind:  # the data contradict the prior: drop it
                blend.weights.pop(node_id, None)
                blend.fallback.pop(node_id, None)
                blend.tokens.pop(node_id, None)
            blend.kinds[node_id] = kind
            if kind == "tool":
                blend.tool_of[node_id] = node_id.removeprefix("tool:")
        for src, row in self.transitions.items():
            acc = blend.weights.setdefault(src, {})
            for dst, c in row.items():
                acc[dst] = acc.get(dst, 0.0) + c
        for node_id, (calls, growth, out) in self.llm_stats.items():
            t = blend.tokens.setdefault(node_id, [0.0, 0.0, 0.0, 0.0, 0.0])
            t[0] += calls
            t[1] += growth
            t[2] += out
        for node_id, c in self.starts.items():
            w, _ = blend.start_weight.get(node_id, (0.0, 1))
            blend.start_weight[node_id] = (w + c, 1)

    def _build(self, agent_type: str, blend: _Blend) -> AEG:
        """The AEG of ``blend``: nodes in its order, each row's weights normalised (the prior's
        probabilities where a row has no weight), tool latencies pooled with the priors."""
        # Heaviest start wins; on a tie the observed one (flag 1) beats the prior's.
        start = max(blend.start_weight.items(), key=lambda kv: (kv[1][0], kv[1][1], kv[0]))[0]
        nodes: list[Node] = []
        edges: list[Edge] = []
        for node_id, kind in blend.kinds.items():
            if kind == "terminal":
                nodes.append(TerminalNode(node_id))
                continue
            if kind == "llm":
                w, g, o, g0, o0 = blend.tokens.get(node_id, [0.0, 0.0, 0.0, 0.0, 0.0])
                nodes.append(LLMNode(node_id, g / w if w > 0 else g0, o / w if w > 0 else o0))
            elif kind == "parallel":
                nodes.append(self._parallel_node(node_id, blend))
            else:
                tool = blend.tool_of[node_id]
                nodes.append(
                    ToolNode(node_id, tool, self.latency.latency(tool, blend.lat_priors.get(tool)))
                )
            row_w = {d: x for d, x in blend.weights.get(node_id, {}).items() if x > 0.0}
            total = math.fsum(row_w.values())
            if total > 0.0:
                edges.extend(Edge(node_id, d, row_w[d] / total) for d in sorted(row_w))
            else:
                edges.extend(Edge(node_id, d, p) for d, p in blend.fallback.get(node_id, []))
        return AEG(agent_type, nodes, edges, start)

    def _parallel_node(self, node_id: str, blend: _Blend) -> ParallelNode:
        """The fan-out its id names, each branch's latency pooled with the priors (a prior's
        fan-out named outside the inference scheme is kept as it is)."""
        if node_id in blend.parallel and not node_id.startswith(PARALLEL_PREFIX):
            return blend.parallel[node_id]
        tools, agents = parallel_branches(node_id)
        branches: list[Branch] = []
        for kind, names in (("tool", tools), ("agent", agents)):
            for name in names:
                key = _latency_key(kind, name)
                lat = self.latency.latency(key, blend.lat_priors.get(key))
                branches.append(Branch(name, "tool" if kind == "tool" else "agent", lat))
        return ParallelNode(node_id, tuple(branches))

    # --- serde --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "n_tasks": self.n_tasks,
            "starts": dict(sorted(self.starts.items())),
            "transitions": {
                k: dict(sorted(v.items())) for k, v in sorted(self.transitions.items())
            },
            "llm_stats": {k: list(v) for k, v in sorted(self.llm_stats.items())},
            "latency": self.latency.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransitionCounts:
        """Inverse of `to_dict`."""
        what = "TransitionCounts"
        d = _serde.as_mapping(data, what)
        starts = _serde.as_mapping(_serde.get(d, "starts", what), f"{what}.starts")
        trans = _serde.as_mapping(_serde.get(d, "transitions", what), f"{what}.transitions")
        stats = _serde.as_mapping(_serde.get(d, "llm_stats", what), f"{what}.llm_stats")
        out = cls(
            n_tasks=_serde.get_int(d, "n_tasks", what),
            starts={str(k): _serde.get_int(starts, k, f"{what}.starts") for k in starts},
            transitions={
                str(src): {
                    str(dst): _serde.get_int(row, dst, f"{what}.transitions[{src}]") for dst in row
                }
                for src, row in (
                    (s, _serde.as_mapping(r, f"{what}.transitions[{s}]")) for s, r in trans.items()
                )
            },
            llm_stats={},
            latency=ToolLatencyModel.from_dict(_serde.get(d, "latency", what)),
        )
        for k, v in stats.items():
            if not isinstance(v, list) or len(v) != 3:
                raise AEGError(f"{what}.llm_stats[{k}] must be [calls, growth_sum, output_sum]")
            out.llm_stats[str(k)] = [_serde.check_finite(x, f"{what}.llm_stats[{k}]") for x in v]
        return out

    def to_json(self) -> str:
        """JSON text of `to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TransitionCounts:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))
