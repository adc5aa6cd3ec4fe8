"""Workflow hints: what a framework adapter knows about a session when it is admitted.

LangChain, AutoGen and CrewAI know an agent's type and tools (sometimes its planned steps, or a
full graph) before it runs. A `WorkflowHint` carries that knowledge; `hint_aeg` turns it into a
prior AEG in the inference naming scheme (`saga.aeg.steps`), so that `PatternInference` can
blend it with observations node by node. A hint is never trusted blindly: it only seeds the
prior, worth a few pseudo-tasks, and observations override it (a declared tool that never
appears loses weight with every task observed; once confident, only observations count).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from saga.aeg import _serde
from saga.aeg.counts import TransitionCounts
from saga.aeg.errors import AEGError
from saga.aeg.graph import AEG, Edge, LLMNode, Node, TerminalNode, ToolNode
from saga.aeg.latency import LogNormalLatency
from saga.aeg.steps import (
    END_NODE_ID,
    START_LLM_NODE_ID,
    LLMStep,
    Step,
    ToolStep,
    tool_node_id,
)

__all__ = [
    "DEFAULT_FIRST_PROMPT_TOKENS",
    "DEFAULT_LLM_CALLS",
    "DEFAULT_OUTPUT_TOKENS",
    "DEFAULT_PROMPT_GROWTH_TOKENS",
    "LLM_STEP",
    "PLACEHOLDER_TOOL",
    "WorkflowHint",
    "hint_aeg",
]

LLM_STEP = "llm"
"""The name of an LLM call in `WorkflowHint.steps` (every other name is a tool)."""

PLACEHOLDER_TOOL = "tool"
"""Tool name used when a hint declares no tools: an unspecified tool call between LLM calls."""

# Token defaults for hint-derived AEGs, from the real SWE-bench trace in
# /work/shared/data/agent_traces (mini-swe-agent, 20,163 calls): median first prompt 1,647
# tokens; the prompt grows ~604 tokens per call, of which ~276 are the previous output, so the
# tool observation adds ~330; mean output 275.6 tokens.
DEFAULT_FIRST_PROMPT_TOKENS = 1650.0
DEFAULT_PROMPT_GROWTH_TOKENS = 330.0
DEFAULT_OUTPUT_TOKENS = 276.0
DEFAULT_LLM_CALLS = 20.0
"""Expected LLM calls of a task when nothing says otherwise: between the ~15 of a WebArena-like
web agent and the ~40 of the SWE-bench trace."""


@dataclass(frozen=True)
class WorkflowHint:
    """What a framework adapter declares at session admission (all but `agent_type` optional).

    - `tools`: tool names the agent may call.
    - `steps`: a planned step sequence, `"llm"` for an LLM call, a tool name otherwise
      (e.g. a CrewAI task list); with `tools` declared, every tool step must be one of them.
    - `expected_llm_calls`: expected LLM calls per task (>= 1), used when `steps` is absent.
    - `aeg`: an explicit graph; when given it is the prior as is.
    - `framework`: which adapter produced the hint (for logs).
    """

    agent_type: str
    tools: tuple[str, ...] = ()
    steps: tuple[str, ...] | None = None
    expected_llm_calls: float | None = None
    aeg: AEG | None = None
    framework: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.agent_type, str) or not self.agent_type:
            raise AEGError(
                f"WorkflowHint.agent_type must be a non-empty string, got {self.agent_type!r}"
            )
        where = f"WorkflowHint '{self.agent_type}'"
        if isinstance(self.tools, str):
            raise AEGError(f"{where}: tools must be a sequence of names, not one string")
        tools = tuple(self.tools)
        for t in tools:
            if not isinstance(t, str) or not t:
                raise AEGError(f"{where}: tool names must be non-empty strings, got {t!r}")
            if t == LLM_STEP:
                raise AEGError(f"{where}: '{LLM_STEP}' names LLM calls; rename that tool")
        if len(set(tools)) != len(tools):
            raise AEGError(f"{where}: tools contain duplicates: {list(tools)}")
        object.__setattr__(self, "tools", tools)
        if self.steps is not None:
            if isinstance(self.steps, str):
                raise AEGError(f"{where}: steps must be a sequence of names, not one string")
            steps = tuple(self.steps)
            if not steps:
                raise AEGError(f"{where}: steps, when given, must not be empty (use None)")
            for i, s in enumerate(steps):
                if not isinstance(s, str) or not s:
                    raise AEGError(f"{where}: step #{i} must be a non-empty string, got {s!r}")
                if s != LLM_STEP and tools and s not in tools:
                    raise AEGError(
                        f"{where}: step #{i} '{s}' is not a declared tool "
                        f"{list(tools)}; declare it in tools or fix the step"
                    )
            object.__setattr__(self, "steps", steps)
        e = self.expected_llm_calls
        if e is not None and (
            isinstance(e, bool) or not isinstance(e, int | float) or not math.isfinite(e) or e < 1.0
        ):
            raise AEGError(f"{where}: expected_llm_calls must be a finite number >= 1, got {e!r}")
        if self.aeg is not None:
            if not isinstance(self.aeg, AEG):
                raise AEGError(f"{where}: aeg must be an AEG, got {type(self.aeg).__name__}")
            if self.aeg.agent_type != self.agent_type:
                raise AEGError(
                    f"{where}: aeg.agent_type is '{self.aeg.agent_type}'; it must "
                    "match the hint's agent_type"
                )
        if self.framework is not None and (
            not isinstance(self.framework, str) or not self.framework
        ):
            raise AEGError(f"{where}: framework must be a non-empty string or None")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "agent_type": self.agent_type,
            "tools": list(self.tools),
            "steps": None if self.steps is None else list(self.steps),
            "expected_llm_calls": self.expected_llm_calls,
            "aeg": None if self.aeg is None else self.aeg.to_dict(),
            "framework": self.framework,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkflowHint:
        """Inverse of `to_dict` (absent optional fields default)."""
        what = "WorkflowHint"
        d = _serde.as_mapping(data, what)
        tools = d.get("tools", [])
        steps = d.get("steps")
        if not isinstance(tools, list) or (steps is not None and not isinstance(steps, list)):
            raise AEGError(f"{what}: tools and steps must be lists")
        e = d.get("expected_llm_calls")
        if e is not None:
            e = _serde.get_float(d, "expected_llm_calls", what)
        aeg = d.get("aeg")
        return cls(
            agent_type=_serde.get_str(d, "agent_type", what),
            tools=tuple(tools),
            steps=None if steps is None else tuple(steps),
            expected_llm_calls=e,
            aeg=None if aeg is None else AEG.from_dict(aeg),
            framework=d.get("framework"),
        )

    def to_json(self) -> str:
        """JSON text of `to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WorkflowHint:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))


def _steps_of_plan(plan: tuple[str, ...]) -> list[Step]:
    """A declared plan as observed steps with the default token figures."""
    steps: list[Step] = []
    context = 0
    for name in plan:
        if name == LLM_STEP:
            growth = DEFAULT_PROMPT_GROWTH_TOKENS if context else DEFAULT_FIRST_PROMPT_TOKENS
            prompt = context + round(growth)
            steps.append(LLMStep(prompt, round(DEFAULT_OUTPUT_TOKENS)))
            context = prompt + round(DEFAULT_OUTPUT_TOKENS)
        else:
            steps.append(ToolStep(name))
    return steps


def hint_aeg(
    hint: WorkflowHint,
    *,
    default_llm_calls: float = DEFAULT_LLM_CALLS,
    latency_prior: LogNormalLatency | None = None,
) -> AEG:
    """The prior AEG a hint implies.

    In order: the explicit `aeg`; else the declared `steps` read as one observed task; else a
    loop where each LLM call picks one of the declared tools uniformly (or the placeholder
    `"tool"`) or ends the task with probability `q = 1/expected_llm_calls`, so a task makes
    `expected_llm_calls` calls on average. Tool latencies come from `latency_prior`
    (default: median 1 s, sigma 1).
    """
    if hint.aeg is not None:
        return hint.aeg
    lat = latency_prior if latency_prior is not None else LogNormalLatency(0.0, 1.0)
    if hint.steps is not None:
        counts = TransitionCounts()
        counts.add_task(_steps_of_plan(hint.steps))
        for tool in {s for s in hint.steps if s != LLM_STEP}:
            counts.latency.set_prior(tool, lat)
        return counts.to_aeg(hint.agent_type)
    calls = hint.expected_llm_calls if hint.expected_llm_calls is not None else default_llm_calls
    _serde.check_finite(calls, "default_llm_calls")
    if calls < 1.0:
        raise AEGError(f"expected LLM calls must be >= 1, got {calls!r}")
    q = 1.0 / calls
    tools = hint.tools or (PLACEHOLDER_TOOL,)
    nodes: list[Node] = [
        LLMNode(START_LLM_NODE_ID, DEFAULT_FIRST_PROMPT_TOKENS, DEFAULT_OUTPUT_TOKENS)
    ]
    edges: list[Edge] = []
    llm_ids = [START_LLM_NODE_ID]
    for tool in tools:
        tid = tool_node_id(tool)
        lid = "llm@" + tid
        nodes.append(ToolNode(tid, tool, lat.copy()))
        nodes.append(LLMNode(lid, DEFAULT_PROMPT_GROWTH_TOKENS, DEFAULT_OUTPUT_TOKENS))
        edges.append(Edge(tid, lid, 1.0))
        llm_ids.append(lid)
    nodes.append(TerminalNode(END_NODE_ID))
    for lid in llm_ids:
        edges.append(Edge(lid, END_NODE_ID, q))
        edges.extend(Edge(lid, tool_node_id(t), (1.0 - q) / len(tools)) for t in tools)
    return AEG(hint.agent_type, nodes, edges, START_LLM_NODE_ID)
