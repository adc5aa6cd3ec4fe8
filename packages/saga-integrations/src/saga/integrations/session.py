"""One agent task as an adapter saw it: its LLM and tool calls, in the order they started.

Every framework reports the same few facts in its own vocabulary (LangChain runs, AutoGen
events, CrewAI bus events); the adapters translate them into a `SessionTrace`, which turns
them into saga-aeg's observed steps (`LLMStep`/`ToolStep`, and `ParallelStep` for the tool
calls or sub-agents one reply started at once) for pattern inference and into the current AEG
node for the engine. Times are seconds on whatever clock the adapter uses; only
differences within one session matter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from saga.aeg.errors import AEGError
from saga.aeg.steps import LLMStep, ParallelStep, TaskStep, ToolStep, llm_node_id
from saga.integrations.errors import IntegrationError
from saga.integrations.metadata import RequestMetadata

__all__ = ["LLMCall", "SessionTrace", "ToolCall", "estimate_tokens"]

CHARS_PER_TOKEN = 4.0
"""The common rule of thumb for English text with BPE tokenizers (OpenAI's guidance)."""


def estimate_tokens(text: str) -> int:
    """Token count of ``text`` when the framework reports none: ~4 characters a token."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


@dataclass
class LLMCall:
    """One LLM call. Token counts are the framework's usage figures when it reports them,
    else estimates (`tokens_estimated`); ``tool_calls`` are the tools the reply asked for."""

    started_at: float
    input_tokens: int = 0
    output_tokens: int = 0
    ended_at: float | None = None
    tool_calls: tuple[str, ...] = ()
    tokens_estimated: bool = False
    metadata: RequestMetadata | None = None

    @property
    def duration_s(self) -> float | None:
        """Seconds the call took (None while it runs)."""
        return None if self.ended_at is None else max(0.0, self.ended_at - self.started_at)


@dataclass
class ToolCall:
    """One tool call; ``error`` when the tool raised (it still ran for ``duration_s``);
    ``agent``: a sub-agent started from the caller's context rather than a tool."""

    tool: str
    started_at: float
    ended_at: float | None = None
    error: bool = False
    agent: bool = False

    @property
    def duration_s(self) -> float | None:
        """Seconds the tool ran (None while it runs)."""
        return None if self.ended_at is None else max(0.0, self.ended_at - self.started_at)


Call = LLMCall | ToolCall


@dataclass
class SessionTrace:
    """A task of one agent type, recorded call by call (see module docstring)."""

    session_id: str
    agent_type: str
    framework: str
    tenant_id: str = "default"
    started_at: float = 0.0
    ended_at: float | None = None
    outcome: str = "running"
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("session_id", "agent_type", "framework", "tenant_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise IntegrationError(f"SessionTrace.{name} must be a non-empty str, "
                                       f"got {value!r}")

    # --- recording ----------------------------------------------------------------------
    def llm_started(self, t: float, input_tokens: int = 0, *, estimated: bool = False) -> LLMCall:
        """An LLM call began at ``t``."""
        self._check_open()
        call = LLMCall(started_at=t, input_tokens=_tokens(input_tokens, "input_tokens"),
                       tokens_estimated=estimated)
        self.calls.append(call)
        return call

    def llm_finished(self, call: LLMCall, t: float, *, input_tokens: int | None = None,
                     output_tokens: int | None = None, tool_calls: Sequence[str] = (),
                     estimated: bool | None = None) -> None:
        """The call returned at ``t``; usage figures replace the estimates made at its start."""
        call.ended_at = t
        if input_tokens is not None:
            call.input_tokens = _tokens(input_tokens, "input_tokens")
        if output_tokens is not None:
            call.output_tokens = _tokens(output_tokens, "output_tokens")
        if estimated is not None:
            call.tokens_estimated = estimated
        call.tool_calls = tuple(tool_calls)

    def tool_started(self, tool: str, t: float, *, agent: bool = False) -> ToolCall:
        """Tool ``tool`` began at ``t`` (``agent``: a sub-agent of that type, forked from the
        session's context)."""
        self._check_open()
        if not isinstance(tool, str) or not tool:
            raise IntegrationError(f"a tool call needs the tool's name, got {tool!r}")
        call = ToolCall(tool=tool, started_at=t, agent=agent)
        self.calls.append(call)
        return call

    def tool_finished(self, call: ToolCall, t: float, *, error: bool = False) -> None:
        """The tool returned (or raised, ``error``) at ``t``."""
        call.ended_at = t
        call.error = error

    def finish(self, t: float, *, failed: bool = False) -> None:
        """The task ended at ``t`` (``failed``: it raised; its steps are kept but not learnt)."""
        if self.outcome != "running":
            return
        self.ended_at = t
        self.outcome = "failed" if failed else "finished"

    def _check_open(self) -> None:
        if self.outcome != "running":
            raise IntegrationError(
                f"session {self.session_id} is {self.outcome}; start a new session for a new task")

    # --- views --------------------------------------------------------------------------
    @property
    def llm_calls(self) -> list[LLMCall]:
        """The LLM calls in start order."""
        return [c for c in self.calls if isinstance(c, LLMCall)]

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The tool calls in start order."""
        return [c for c in self.calls if isinstance(c, ToolCall)]

    @property
    def duration_s(self) -> float | None:
        """Seconds from the first event to the end (None while running)."""
        return None if self.ended_at is None else max(0.0, self.ended_at - self.started_at)

    def steps(self) -> list[TaskStep]:
        """The task as saga-aeg observed steps, in start order (unmeasured or zero-length tool
        durations become None: saga-aeg only fits positive durations).

        The tool calls (and sub-agents) that follow one LLM call whose reply asked for several
        tools are one fan-out (`ParallelStep`): LangChain's ``ToolNode`` and AutoGen's agents
        run a reply's tool calls at once and call the model again when all returned.
        """
        out: list[TaskStep] = []
        for group in self._groups():
            if len(group) == 1:
                c = group[0]
                out.append(LLMStep(c.input_tokens, c.output_tokens) if isinstance(c, LLMCall)
                           else _tool_step(c))
                continue
            tools = [c for c in group if isinstance(c, ToolCall)]
            try:
                out.append(ParallelStep(tuple(_tool_step(c) for c in tools if not c.agent),
                                        tuple(_tool_step(c) for c in tools if c.agent)))
            except AEGError:  # a name that cannot spell a fan-out id: one call after another
                out.extend(_tool_step(c) for c in tools)
        return out

    def _groups(self) -> list[list[Call]]:
        """The calls in start order, the tool calls of each multi-tool reply in one group."""
        groups: list[list[Call]] = []
        fan: list[Call] | None = None
        for c in self.calls:
            if isinstance(c, LLMCall):
                groups.append([c])
                fan = [] if len(c.tool_calls) >= 2 else None
            elif fan is not None:
                if not fan:
                    groups.append(fan)
                fan.append(c)
            else:
                groups.append([c])
        # A "fan-out" in which only one call ran is that call.
        return [g for g in groups if g]

    def fan_out(self) -> list[ToolCall]:
        """The tool calls of the fan-out the session is in or just left (empty when its last
        step is not one)."""
        groups = self._groups()
        last = groups[-1] if groups else []
        if len(last) < 2:
            return []
        return [c for c in last if isinstance(c, ToolCall)]

    def next_llm_node(self) -> str:
        """AEG node id of the session's next LLM call (``llm@start``, ``llm@tool:<name>``...)."""
        steps = self.steps()
        return llm_node_id(steps[-1] if steps else None)

    def last_tool_latency(self) -> float | None:
        """Duration of the tool that just finished, when the last call was a finished tool;
        after a fan-out, the time from its first start to its last return (the join)."""
        fan = self.fan_out()
        if fan:
            ends = [c.ended_at for c in fan]
            if any(e is None for e in ends):
                return None
            return max(0.0, max(e for e in ends if e is not None)
                       - min(c.started_at for c in fan))
        if self.calls and isinstance(self.calls[-1], ToolCall):
            return self.calls[-1].duration_s
        return None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary (the CLI and logs)."""
        return {
            "session_id": self.session_id,
            "agent_type": self.agent_type,
            "framework": self.framework,
            "tenant_id": self.tenant_id,
            "outcome": self.outcome,
            "duration_s": self.duration_s,
            "steps": [s.to_dict() for s in self.steps()],
        }


def _tool_step(c: ToolCall) -> ToolStep:
    d = c.duration_s
    return ToolStep(c.tool, d if d is not None and d > 0 else None)


def _tokens(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise IntegrationError(f"{name} must be a non-negative int, got {value!r}")
    return value
