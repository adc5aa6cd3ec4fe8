"""Observed task steps and the node-naming scheme shared by inference, hints and templates.

A task is observed as a sequence of steps: LLM calls (with the whole prompt's token count and
the output's) and tool calls (tool name, duration if measured). Inference maps each step to an
AEG node id with the functions below; templates and hint-derived AEGs use the same ids, so an
AEG inferred from a template's sampled tasks has exactly the template's nodes, and a hint's
prior can be blended node by node with observations.

Node ids:
- `tool:<name>` — a call of tool `<name>` (whatever came before it);
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
    "START_LLM_NODE_ID",
    "LLMStep",
    "Step",
    "ToolStep",
    "llm_node_id",
    "path_node_ids",
    "step_from_dict",
    "steps_from_trace_record",
    "tool_node_id",
]

END_NODE_ID = "end"
START_LLM_NODE_ID = "llm@start"


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


Step = LLMStep | ToolStep


def step_from_dict(data: Mapping[str, Any]) -> Step:
    """Parse one step dict by its `kind` ("llm" or "tool")."""
    d = _serde.as_mapping(data, "step")
    kind = d.get("kind")
    if kind == "llm":
        return LLMStep.from_dict(d)
    if kind == "tool":
        return ToolStep.from_dict(d)
    raise AEGError(f"step: field 'kind' must be 'llm' or 'tool', got {kind!r}")


def steps_from_trace_record(record: Mapping[str, Any]) -> list[Step]:
    """Steps of one line of the agent-trace JSONL format (`{"steps": [...]}`); extra fields
    of each step (`t_start`, `cached_tokens`, ...) are ignored."""
    d = _serde.as_mapping(record, "trace record")
    return [step_from_dict(s) for s in _serde.get_list(d, "steps", "trace record")]


def tool_node_id(tool: str) -> str:
    """Node id of a call of `tool`."""
    if not isinstance(tool, str) or not tool:
        raise AEGError(f"tool name must be a non-empty string, got {tool!r}")
    return f"tool:{tool}"


def llm_node_id(previous: Step | None) -> str:
    """Node id of an LLM call given the step before it (None: the task's first step)."""
    if previous is None:
        return START_LLM_NODE_ID
    if isinstance(previous, LLMStep):
        return "llm@llm"
    return "llm@" + tool_node_id(previous.tool)


def path_node_ids(steps: Sequence[Step]) -> list[str]:
    """The node ids a task visits, ending with `end`; rejects an empty task."""
    if len(steps) == 0:
        raise AEGError("a task needs at least one step; got an empty sequence")
    ids: list[str] = []
    previous: Step | None = None
    for i, step in enumerate(steps):
        if isinstance(step, LLMStep):
            ids.append(llm_node_id(previous))
        elif isinstance(step, ToolStep):
            ids.append(tool_node_id(step.tool))
        else:
            raise AEGError(f"step #{i} must be an LLMStep or ToolStep, got {type(step).__name__}")
        previous = step
    ids.append(END_NODE_ID)
    return ids
