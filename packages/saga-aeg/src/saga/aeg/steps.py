"""Observed task steps and the node-naming scheme shared by inference, hints and templates.

A task is observed as a sequence of steps: LLM calls (with the whole prompt's token count and
the output's), tool calls (tool name, duration if measured) and fan-outs (several tool calls or
sub-agents run at once, `ParallelStep`). Inference maps each step to an
AEG node id with the functions below; templates and hint-derived AEGs use the same ids, so an
AEG inferred from a template's sampled tasks has exactly the template's nodes, and a hint's
prior can be blended node by node with observations.

Node ids:
- `tool:<name>` — a call of tool `<name>` (whatever came before it);
- `par:<a>+<b>+@<agent>` — a fan-out: its tool branches and its `@`-marked sub-agent branches,
  each list sorted (`parallel_node_id`);
- `llm@start` — the task's first LLM call; `llm@tool:<name>` — an LLM call right after tool
  `<name>` (it reads that tool's output, so its prompt growth depends on the tool);
  `llm@llm` — an LLM call right after another LLM call;
- `end` — the task finished.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saga.aeg import _serde
from saga.aeg.errors import AEGError

__all__ = [
    "END_NODE_ID",
    "PARALLEL_PREFIX",
    "START_LLM_NODE_ID",
    "LLMStep",
    "ParallelStep",
    "Step",
    "TaskStep",
    "ToolStep",
    "llm_node_id",
    "parallel_branches",
    "parallel_node_id",
    "path_node_ids",
    "step_from_dict",
    "steps_from_trace_record",
    "tool_node_id",
]

END_NODE_ID = "end"
START_LLM_NODE_ID = "llm@start"
PARALLEL_PREFIX = "par:"
AGENT_MARK = "@"
BRANCH_SEP = "+"


@dataclass(frozen=True)
class LLMStep:
    """One observed LLM call: `input_tokens` is the whole prompt, `output_tokens` the reply."""

    input_tokens: int
    output_tokens: int

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise AEGError(f"LLMStep.{name} must be a non-negative integer, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (same `kind` tag as the agent-trace JSONL files)."""
        return {
            "kind": "llm",
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LLMStep:
        """Inverse of `to_dict`."""
        d = _serde.as_mapping(data, "LLMStep")
        return cls(
            input_tokens=_serde.get_int(d, "input_tokens", "LLMStep"),
            output_tokens=_serde.get_int(d, "output_tokens", "LLMStep"),
        )

    def to_json(self) -> str:
        """JSON text of `to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LLMStep:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class ToolStep:
    """One observed tool call; `duration_s` is None when the run did not measure it."""

    tool: str
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tool, str) or not self.tool:
            raise AEGError(f"ToolStep.tool must be a non-empty string, got {self.tool!r}")
        d = self.duration_s
        if d is not None and (
            isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d) or d <= 0
        ):
            raise AEGError(
                f"ToolStep '{self.tool}': duration_s must be a positive finite number of seconds "
                f"or None when unknown, got {d!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (same fields as the agent-trace JSONL files)."""
        return {"kind": "tool", "name": self.tool, "duration_s": self.duration_s}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolStep:
        """Inverse of `to_dict`."""
        d = _serde.as_mapping(data, "ToolStep")
        dur = d.get("duration_s")
        if dur is not None:
            dur = _serde.get_float(d, "duration_s", "ToolStep")
        return cls(tool=_serde.get_str(d, "name", "ToolStep"), duration_s=dur)

    def to_json(self) -> str:
        """JSON text of `to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ToolStep:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))


def _check_branch_name(name: str, what: str) -> None:
    if BRANCH_SEP in name or name.startswith(AGENT_MARK):
        raise AEGError(f"{what} '{name}': a branch name of a fan-out may not contain "
                       f"'{BRANCH_SEP}' nor start with '{AGENT_MARK}' (they spell its node id); "
                       "rename it or record the calls one by one")


@dataclass(frozen=True)
class ParallelStep:
    """One observed fan-out: tool calls (``tools``) and sub-agents started from the caller's
    context (``agents``, each as a `ToolStep` of the sub-agent's type and the seconds until it
    returned) that ran at once; the task moved on when all had returned. At least two."""

    tools: tuple[ToolStep, ...] = ()
    agents: tuple[ToolStep, ...] = ()

    def __post_init__(self) -> None:
        for name in ("tools", "agents"):
            value = getattr(self, name)
            if isinstance(value, ToolStep | str):
                raise AEGError(f"ParallelStep.{name} must be a sequence of ToolStep")
            items = tuple(value)
            for x in items:
                if not isinstance(x, ToolStep):
                    raise AEGError(f"ParallelStep.{name} must hold ToolSteps, got "
                                   f"{type(x).__name__}")
                _check_branch_name(x.tool, "ParallelStep branch")
            object.__setattr__(self, name, items)
        if len(self.tools) + len(self.agents) < 2:
            raise AEGError("a ParallelStep needs at least 2 branches (tools + agents); record a "
                           "single call as a ToolStep")

    @property
    def node_id(self) -> str:
        """Its AEG node id (`parallel_node_id`)."""
        return parallel_node_id([t.tool for t in self.tools], [a.tool for a in self.agents])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"kind": "parallel", "tools": [t.to_dict() for t in self.tools],
                "agents": [a.to_dict() for a in self.agents]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParallelStep:
        """Inverse of `to_dict` (``agents`` may be absent)."""
        d = _serde.as_mapping(data, "ParallelStep")
        agents = d.get("agents", [])
        if not isinstance(agents, list):
            raise AEGError("ParallelStep: field 'agents' must be a list")
        tools = _serde.get_list(d, "tools", "ParallelStep")
        return cls(tuple(ToolStep.from_dict(t) for t in tools),
                   tuple(ToolStep.from_dict(a) for a in agents))


Step = LLMStep | ToolStep
"""A sequential step (what `AEG.sample_trace` yields and callers build by hand)."""

TaskStep = LLMStep | ToolStep | ParallelStep
"""Any observed step, fan-outs included (what inference and the adapters handle)."""


def step_from_dict(data: Mapping[str, Any]) -> TaskStep:
    """Parse one step dict by its `kind` ("llm", "tool" or "parallel")."""
    d = _serde.as_mapping(data, "step")
    kind = d.get("kind")
    if kind == "llm":
        return LLMStep.from_dict(d)
    if kind == "tool":
        return ToolStep.from_dict(d)
    if kind == "parallel":
        return ParallelStep.from_dict(d)
    raise AEGError(f"step: field 'kind' must be 'llm', 'tool' or 'parallel', got {kind!r}")


def steps_from_trace_record(record: Mapping[str, Any]) -> list[TaskStep]:
    """Steps of one line of the agent-trace JSONL format (`{"steps": [...]}`); extra fields
    of each step (`t_start`, `cached_tokens`, ...) are ignored."""
    d = _serde.as_mapping(record, "trace record")
    return [step_from_dict(s) for s in _serde.get_list(d, "steps", "trace record")]


def tool_node_id(tool: str) -> str:
    """Node id of a call of `tool`."""
    if not isinstance(tool, str) or not tool:
        raise AEGError(f"tool name must be a non-empty string, got {tool!r}")
    return f"tool:{tool}"


def parallel_node_id(tools: Sequence[str], agents: Sequence[str] = ()) -> str:
    """Node id of a fan-out: ``par:`` and its sorted tool names then its sorted ``@``-marked
    sub-agent types, joined by ``+`` (repeats kept: two searches are ``par:search+search``)."""
    for name in (*tools, *agents):
        if not isinstance(name, str) or not name:
            raise AEGError(f"branch names must be non-empty strings, got {name!r}")
        _check_branch_name(name, "branch")
    if len(tools) + len(agents) < 2:
        raise AEGError("a fan-out needs at least 2 branches")
    parts = sorted(tools) + [AGENT_MARK + a for a in sorted(agents)]
    return PARALLEL_PREFIX + BRANCH_SEP.join(parts)


def parallel_branches(node_id: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Inverse of `parallel_node_id`: ``(tool names, sub-agent types)``."""
    if not node_id.startswith(PARALLEL_PREFIX):
        raise AEGError(f"{node_id!r} is not a fan-out node id (it starts with "
                       f"'{PARALLEL_PREFIX}')")
    parts = node_id[len(PARALLEL_PREFIX):].split(BRANCH_SEP)
    tools = tuple(p for p in parts if not p.startswith(AGENT_MARK))
    agents = tuple(p[len(AGENT_MARK):] for p in parts if p.startswith(AGENT_MARK))
    if parallel_node_id(tools, agents) != node_id:
        raise AEGError(f"{node_id!r} is not a well-formed fan-out node id")
    return tools, agents


def llm_node_id(previous: TaskStep | None) -> str:
    """Node id of an LLM call given the step before it (None: the task's first step)."""
    if previous is None:
        return START_LLM_NODE_ID
    if isinstance(previous, LLMStep):
        return "llm@llm"
    if isinstance(previous, ParallelStep):
        return "llm@" + previous.node_id
    return "llm@" + tool_node_id(previous.tool)


def path_node_ids(steps: Sequence[TaskStep]) -> list[str]:
    """The node ids a task visits, ending with `end`; rejects an empty task."""
    if len(steps) == 0:
        raise AEGError("a task needs at least one step; got an empty sequence")
    ids: list[str] = []
    previous: TaskStep | None = None
    for i, step in enumerate(steps):
        if isinstance(step, LLMStep):
            ids.append(llm_node_id(previous))
        elif isinstance(step, ToolStep):
            ids.append(tool_node_id(step.tool))
        elif isinstance(step, ParallelStep):
            ids.append(step.node_id)
        else:
            raise AEGError(f"step #{i} must be an LLMStep, ToolStep or ParallelStep, got "
                           f"{type(step).__name__}")
        previous = step
    ids.append(END_NODE_ID)
    return ids
