"""The vocabulary of an AEG: its nodes (kinds of LLM call, tool call, parallel fan-out, terminal
state) and its edges, each validated on construction and (de)serialised as plain dicts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from saga.aeg import _serde
from saga.aeg.errors import AEGError
from saga.aeg.latency import LogNormalLatency
from saga.aeg.parallel import ParallelNode

__all__ = [
    "PROBABILITY_TOLERANCE",
    "Edge",
    "LLMNode",
    "Node",
    "ParallelNode",
    "TerminalNode",
    "ToolNode",
    "node_from_dict",
]

PROBABILITY_TOLERANCE = 1e-9
"""Outgoing probabilities of a node must sum to 1 within this."""

def _check_id(node_id: object, what: str) -> str:
    """``node_id`` when it is a non-empty string; else `AEGError` naming ``what``."""
    if not isinstance(node_id, str) or not node_id:
        raise AEGError(f"{what} must be a non-empty string, got {node_id!r}")
    return node_id


@dataclass(frozen=True)
class LLMNode:
    """A kind of LLM call: expected new prompt tokens it adds and expected output tokens.

    `prompt_tokens` is the prompt growth: tokens appended to the session's context since the
    previous call's prompt and output (tool observation, formatting); for the first call it is
    the whole initial prompt. So the context of a call is the sum of the growths and outputs
    before it, and `prompt_tokens + output_tokens` is the new work the call brings under
    perfect prefix caching.
    """

    id: str
    prompt_tokens: float
    output_tokens: float
    kind: ClassVar[str] = "llm"

    def __post_init__(self) -> None:
        _check_id(self.id, "LLMNode.id")
        for name in ("prompt_tokens", "output_tokens"):
            v = _serde.check_finite(getattr(self, name), f"LLMNode '{self.id}' {name}")
            if v < 0:
                raise AEGError(f"LLMNode '{self.id}': {name} must be >= 0, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "kind": self.kind,
            "id": self.id,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
        }


@dataclass(frozen=True)
class ToolNode:
    """A kind of tool call with its latency distribution."""

    id: str
    tool: str
    latency: LogNormalLatency
    kind: ClassVar[str] = "tool"

    def __post_init__(self) -> None:
        _check_id(self.id, "ToolNode.id")
        if not isinstance(self.tool, str) or not self.tool:
            raise AEGError(f"ToolNode '{self.id}': tool must be a non-empty string")
        if not isinstance(self.latency, LogNormalLatency):
            raise AEGError(
                f"ToolNode '{self.id}': latency must be a LogNormalLatency, "
                f"got {type(self.latency).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "kind": self.kind,
            "id": self.id,
            "tool": self.tool,
            "latency": self.latency.to_dict(),
        }


@dataclass(frozen=True)
class TerminalNode:
    """The task is over (answer given, patch submitted, step budget exhausted...)."""

    id: str
    kind: ClassVar[str] = "terminal"

    def __post_init__(self) -> None:
        _check_id(self.id, "TerminalNode.id")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"kind": self.kind, "id": self.id}


Node = LLMNode | ToolNode | ParallelNode | TerminalNode


def node_from_dict(data: Mapping[str, Any]) -> Node:
    """Parse a node dict by its `kind` ("llm", "tool", "parallel" or "terminal")."""
    d = _serde.as_mapping(data, "node")
    kind = d.get("kind")
    what = f"node {d.get('id')!r}"
    if kind == "llm":
        return LLMNode(
            id=_serde.get_str(d, "id", what),
            prompt_tokens=_serde.get_float(d, "prompt_tokens", what),
            output_tokens=_serde.get_float(d, "output_tokens", what),
        )
    if kind == "tool":
        return ToolNode(
            id=_serde.get_str(d, "id", what),
            tool=_serde.get_str(d, "tool", what),
            latency=LogNormalLatency.from_dict(_serde.get(d, "latency", what)),
        )
    if kind == "terminal":
        return TerminalNode(id=_serde.get_str(d, "id", what))
    if kind == "parallel":
        return ParallelNode.from_dict(d)
    raise AEGError(
        f"{what}: field 'kind' must be 'llm', 'tool', 'parallel' or 'terminal', got {kind!r}")


@dataclass(frozen=True)
class Edge:
    """Transition `src → dst` taken with probability `p`."""

    src: str
    dst: str
    p: float

    def __post_init__(self) -> None:
        _check_id(self.src, "Edge.src")
        _check_id(self.dst, "Edge.dst")
        p = _serde.check_finite(self.p, f"Edge {self.src}->{self.dst} probability")
        if p < 0.0 or p > 1.0 + PROBABILITY_TOLERANCE:
            raise AEGError(
                f"Edge {self.src}->{self.dst}: probability must lie in [0, 1], got {p!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"src": self.src, "dst": self.dst, "p": self.p}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Edge:
        """Inverse of `to_dict`."""
        d = _serde.as_mapping(data, "edge")
        return cls(
            src=_serde.get_str(d, "src", "edge"),
            dst=_serde.get_str(d, "dst", "edge"),
            p=_serde.get_float(d, "p", "edge"),
        )
