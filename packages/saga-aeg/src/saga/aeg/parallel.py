"""Parallel branches: an LLM call that fans out to several tool calls or sub-agents at once.

A model reply may ask for k tool calls that the framework runs concurrently (LangChain's
``ToolNode``, AutoGen's ``AssistantAgent``), or an orchestrator may start k sub-agents whose
calls begin from its context. The session waits until every branch has returned (the join),
then its next LLM call reads all their outputs. So in the AEG a fan-out is one transient node,
a `ParallelNode`, whose duration is the *slowest* branch's; and the parent's cached prefix
is read by each sub-agent branch (they fork from it) as well as by the call after the join.

What the scheduler derives from a fan-out (`SharedPrefix`):
- ``readers``: expected readers of the parent prefix — one per sub-agent branch plus the
  parent's own next call (with the chance that one follows);
- ``p_reuse``: the chance the prefix is read again at all (1 with a sub-agent branch);
- ``next_use_s``: seconds until it is read next — the earliest sub-agent branch's return
  (`ParallelNode.expected_first_return_s` over those branches), else the join.

Expectations of the minimum and maximum of independent log-normal branch latencies have no
closed form; they are computed as ``∫ P(T > t) dt`` by the trapezoid rule on a log-spaced grid
(relative error well below 1e-4 for the sigmas seen in agent traces).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Literal

import numpy as np

from saga.aeg import _serde
from saga.aeg.errors import AEGError
from saga.aeg.latency import LogNormalLatency

__all__ = ["BRANCH_KINDS", "Branch", "ParallelNode", "SharedPrefix"]

BranchKind = Literal["tool", "agent"]
BRANCH_KINDS: tuple[BranchKind, ...] = ("tool", "agent")
"""``tool``: a tool call run alongside the others; ``agent``: a sub-agent started from the
parent's context (its calls share the parent's prefix)."""

_GRID_POINTS = 4001
_GRID_SIGMAS = 12.0


@dataclass(frozen=True)
class Branch:
    """One branch of a fan-out: its tool (or sub-agent type) name, kind and latency."""

    name: str
    kind: BranchKind
    latency: LogNormalLatency

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise AEGError(f"Branch.name must be a non-empty string, got {self.name!r}")
        if self.kind not in BRANCH_KINDS:
            raise AEGError(f"Branch '{self.name}': kind must be 'tool' or 'agent' (a sub-agent "
                           f"forked from the caller's context), got {self.kind!r}")
        if not isinstance(self.latency, LogNormalLatency):
            raise AEGError(f"Branch '{self.name}': latency must be a LogNormalLatency, got "
                           f"{type(self.latency).__name__}")

    @property
    def shares_prefix(self) -> bool:
        """Whether the branch reads the caller's cached prefix (a sub-agent forks from it)."""
        return self.kind == "agent"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"name": self.name, "kind": self.kind, "latency": self.latency.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Branch:
        """Inverse of `to_dict`."""
        d = _serde.as_mapping(data, "branch")
        what = f"branch {d.get('name')!r}"
        kind = _serde.get_str(d, "kind", what)
        if kind not in BRANCH_KINDS:
            raise AEGError(f"{what}: field 'kind' must be 'tool' or 'agent', got {kind!r}")
        return cls(_serde.get_str(d, "name", what), "tool" if kind == "tool" else "agent",
                   LogNormalLatency.from_dict(_serde.get(d, "latency", what)))


def _survival_integral(branches: Sequence[Branch], combine: str) -> float:
    """``∫₀^∞ P(T > t) dt`` for T the ``combine`` ("min" or "max") of the branch latencies."""
    lats = [b.latency for b in branches]
    lo = min(x.mu - _GRID_SIGMAS * x.sigma for x in lats) - 1.0
    hi = max(x.mu + _GRID_SIGMAS * x.sigma for x in lats) + 1.0
    u = np.linspace(lo, hi, _GRID_POINTS)
    t = np.exp(u)
    cdfs = np.stack([x.cdf_array(t) for x in lats])
    survive = 1.0 - np.prod(cdfs, axis=0) if combine == "max" else np.prod(1.0 - cdfs, axis=0)
    f = survive * t  # dt = t du
    below = math.exp(lo)  # below the grid P(T > t) = 1 to within exp(-72)
    return below + float(np.sum((f[1:] + f[:-1]) * np.diff(u)) / 2.0)


@dataclass(frozen=True)
class ParallelNode:
    """A fan-out: the session's branches run at once, and it moves on when all have returned.

    Transient like a `ToolNode`; its duration is the slowest branch's. Branch names may repeat
    (two searches at once). At least two branches: one is a `ToolNode`.
    """

    id: str
    branches: tuple[Branch, ...]
    kind: ClassVar[str] = "parallel"

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise AEGError(f"ParallelNode.id must be a non-empty string, got {self.id!r}")
        if isinstance(self.branches, str | Branch):
            raise AEGError(f"ParallelNode '{self.id}': branches must be a sequence of Branch")
        branches = tuple(self.branches)
        for b in branches:
            if not isinstance(b, Branch):
                raise AEGError(f"ParallelNode '{self.id}': branches must be Branch objects, got "
                               f"{type(b).__name__}")
        if len(branches) < 2:
            raise AEGError(f"ParallelNode '{self.id}': a fan-out needs at least 2 branches, got "
                           f"{len(branches)}; use a ToolNode for a single call")
        object.__setattr__(self, "branches", branches)

    @property
    def tools(self) -> tuple[str, ...]:
        """Names of the tool branches, in order."""
        return tuple(b.name for b in self.branches if b.kind == "tool")

    @property
    def sharing(self) -> tuple[Branch, ...]:
        """The branches that read the caller's prefix (sub-agents)."""
        return tuple(b for b in self.branches if b.shares_prefix)

    @cached_property
    def _join_s(self) -> float:
        return _survival_integral(self.branches, "max")

    def expected_join_s(self) -> float:
        """Expected seconds until every branch has returned (E[max] of their latencies)."""
        return self._join_s

    def mean(self) -> float:
        """The node's expected duration: the join (what the chain's timing reads)."""
        return self._join_s

    def expected_first_return_s(self, branches: Sequence[Branch] | None = None) -> float:
        """Expected seconds until the first of ``branches`` (default: all) returns (E[min])."""
        chosen = self.branches if branches is None else tuple(branches)
        if not chosen:
            raise AEGError(f"ParallelNode '{self.id}': no branch to take the first return of")
        return _survival_integral(chosen, "min")

    def slowest(self) -> Branch:
        """The branch with the highest median latency (the one the join most likely waits on;
        ties: the first)."""
        return max(self.branches, key=lambda b: b.latency.median())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"kind": self.kind, "id": self.id,
                "branches": [b.to_dict() for b in self.branches]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParallelNode:
        """Inverse of `to_dict`."""
        d = _serde.as_mapping(data, "node")
        what = f"node {d.get('id')!r}"
        branches = _serde.get_list(d, "branches", what)
        return cls(_serde.get_str(d, "id", what), tuple(Branch.from_dict(b) for b in branches))


@dataclass(frozen=True)
class SharedPrefix:
    """What a fan-out says about the caller's cached prefix (see the module docstring)."""

    readers: float
    p_reuse: float
    next_use_s: float
    join_s: float

    def to_dict(self) -> dict[str, float]:
        """JSON-ready dict."""
        return {"readers": self.readers, "p_reuse": self.p_reuse,
                "next_use_s": self.next_use_s, "join_s": self.join_s}


def shared_prefix(node: ParallelNode, p_after_join: float) -> SharedPrefix:
    """`SharedPrefix` of a session in ``node``, whose next LLM call after the join comes with
    probability ``p_after_join`` (the AEG's `p_next_llm` of the node)."""
    p = _serde.check_finite(p_after_join, "p_after_join")
    if not 0.0 <= p <= 1.0 + 1e-9:
        raise AEGError(f"p_after_join must lie in [0, 1], got {p!r}")
    p = min(p, 1.0)
    sharing = node.sharing
    join = node.expected_join_s()
    if sharing:
        return SharedPrefix(len(sharing) + p, 1.0, node.expected_first_return_s(sharing), join)
    return SharedPrefix(p, p, join if p > 0.0 else math.inf, join)
