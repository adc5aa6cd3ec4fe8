"""Workflow knowledge for the cache: from a session's AEG position to per-block hints.

When an agent's LLM call ends with a pending tool call, the session sits at that tool's node of
its agent type's AEG. From there the AEG says how likely the session's cached prefix is reused
(`AEG.p_reuse`, the spec's formula) and how many steps away its next LLM call is — the hints
WA-LRU and KVFlow read. The AEG comes from pattern inference over the tasks completed so far
(a generic prior during the cold start), so a replay never learns from the future.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from saga.aeg import AEG, LLMStep, PatternInference, Step, ToolStep
from saga.aeg.steps import tool_node_id


@dataclass(frozen=True)
class ReuseHint:
    """What the workflow predicts for a session's cached prefix after its latest call."""

    reuse_prob: float
    steps_to_exec: float
    node: str
    source: str


@dataclass
class SessionHinter:
    """Per-session AEG position → cache hints; learns AEGs from completed tasks.

    ``observe_call`` records a session's LLM call and its pending tool; ``hint`` predicts reuse of
    the session's KV from the agent type's current AEG; ``finish`` hands the completed task to
    pattern inference, whose AEG replaces the prior once confident (θ_conf after the cold start).
    """

    inference: PatternInference = field(default_factory=PatternInference)
    _steps: dict[str, list[Step]] = field(default_factory=dict)

    def observe_call(self, session_id: str, input_tokens: int, output_tokens: int,
                     pending_tool: str | None) -> None:
        """Record one LLM call of a session and the tool it asked for (None: it ended)."""
        steps = self._steps.setdefault(session_id, [])
        steps.append(LLMStep(input_tokens=input_tokens, output_tokens=output_tokens))
        if pending_tool is not None:
            steps.append(ToolStep(tool=pending_tool))

    def hint(self, agent_type: str, pending_tool: str | None) -> ReuseHint:
        """Reuse probability and steps to the next LLM call of a session waiting on a tool."""
        aeg = self.inference.aeg_for(agent_type)
        source = self.inference.aeg_source(agent_type)
        if pending_tool is None:
            return ReuseHint(0.0, math.inf, "end", source)
        node: str | None = tool_node_id(pending_tool)
        if node not in aeg:
            node = _unseen_tool_node(aeg)
        if node is None:
            return ReuseHint(1.0, 1.0, "unseen", source)
        p = aeg.p_reuse(node)
        steps = aeg.expected_steps_to_next_llm(node) if aeg.p_next_llm(node) > 0 else math.inf
        return ReuseHint(p, steps, node, source)

    def finish(self, session_id: str, agent_type: str, *, pending_tool_ran: bool = True) -> None:
        """The session's task is complete: let pattern inference learn from it.

        ``pending_tool_ran=False``: the task ended while waiting on the tool its last call asked
        for (an explicit session end), so that tool never ran and is not learnt."""
        steps = self._steps.pop(session_id, None)
        if steps and not pending_tool_ran and isinstance(steps[-1], ToolStep):
            steps.pop()
        if steps:
            self.inference.observe(agent_type, steps)

    def active_sessions(self) -> Sequence[str]:
        return list(self._steps)


def _unseen_tool_node(aeg: AEG) -> str | None:
    """For a tool the AEG has not seen, the most likely tool node stands in (None: no tools)."""
    tools = aeg.tool_nodes()
    if not tools:
        return None
    visits = aeg.expected_visits(aeg.start)
    return max(tools, key=lambda t: (visits.get(t.id, 0.0), t.id)).id
