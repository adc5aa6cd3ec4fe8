"""The agent workload `saga vllm compare` runs: concurrent sessions from saga-aeg's templates.

Each session is one task sampled from an AEG template (``swe_bench_agent`` — long, growing
contexts with search/edit/test tools; ``webarena_agent`` — page observations with click/type
tools) by ``AEG.sample_trace``. The templates' token counts describe a 1M-context frontier model;
the engine here is a tiny model on a few MiB of KV, so counts are scaled (``token_scale``,
``output_scale``) and every task is cut where its context would pass ``max_context``. Tool
latencies are the templates' log-normal samples times ``tool_scale`` (capped at
``max_tool_s``): real sleeps, short enough for a run to take about a minute.

Prompts are token ids: each call's prompt is the previous prompt + the previous call's real
output + the new observation tokens drawn here (a tool's output). Sessions of one agent type
share a system prompt (as real agents do), so the prefix cache has something to share across
sessions as well as within one. Everything is drawn from one seeded generator, so a seed fixes
the workload exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from saga.aeg.graph import AEG
from saga.aeg.steps import LLMStep, ToolStep
from saga.aeg.templates import swe_bench_agent, webarena_agent
from saga.policy.errors import SagaConfigError

WorkloadKind = Literal["swe", "web", "mixed"]
WORKLOAD_KINDS: tuple[str, ...] = ("swe", "web", "mixed")

_TEMPLATES: dict[str, Callable[[], AEG]] = {"swe": swe_bench_agent, "web": webarena_agent}

__all__ = [
    "WORKLOAD_KINDS",
    "PlannedCall",
    "SessionPlan",
    "Workload",
    "WorkloadConfig",
    "WorkloadKind",
    "build_workload",
]


@dataclass(frozen=True)
class WorkloadConfig:
    """Knobs of the workload; the defaults give ~8 sessions whose contexts grow to ~3K tokens.

    ``token_scale``/``output_scale`` shrink the templates' prompt growth and outputs;
    ``min_growth``/``max_growth`` clamp the per-step prompt growth; ``system_tokens`` is the
    system prompt an agent type's sessions share (carved out of the first prompt);
    ``arrival_gap_s`` staggers the sessions' starts (uniform jitter of half a gap);
    ``tenants`` > 1 spreads sessions over tenants (their prefixes never mix).
    """

    sessions: int = 8
    kind: WorkloadKind = "mixed"
    seed: int = 0
    max_steps: int = 10
    # With the default 160-block (5,120-token) pool, 1,600-token contexts make the pool hold
    # about 3 sessions while 8 are active: the regime where sessions compete for the cache.
    max_context: int = 1600
    token_scale: float = 0.35
    output_scale: float = 0.12
    min_growth: int = 64
    max_growth: int = 400
    min_output: int = 8
    max_output: int = 48
    system_tokens: int = 160
    tool_scale: float = 1.0
    max_tool_s: float = 4.0
    arrival_gap_s: float = 1.0
    tenants: int = 1
    vocab_size: int = 1024

    def __post_init__(self) -> None:
        if self.kind not in WORKLOAD_KINDS:
            raise SagaConfigError(f"workload kind must be one of {WORKLOAD_KINDS}, "
                                  f"got {self.kind!r}")
        for name in ("sessions", "max_steps", "tenants", "min_output", "min_growth"):
            if getattr(self, name) < 1:
                raise SagaConfigError(f"workload {name} must be >= 1, got {getattr(self, name)}")
        if self.max_growth < self.min_growth or self.max_output < self.min_output:
            raise SagaConfigError("workload max_growth/max_output must be >= their minimums")
        for name in ("token_scale", "output_scale"):
            if not getattr(self, name) > 0:
                raise SagaConfigError(f"workload {name} must be > 0, got {getattr(self, name)}")
        for name in ("tool_scale", "max_tool_s", "arrival_gap_s"):
            if not getattr(self, name) >= 0:
                raise SagaConfigError(f"workload {name} must be >= 0, got {getattr(self, name)}")
        if self.system_tokens < 0:
            raise SagaConfigError(f"workload system_tokens must be >= 0, "
                                  f"got {self.system_tokens}")
        need = self.system_tokens + self.min_growth + self.max_output
        if self.max_context < need:
            raise SagaConfigError(
                f"workload max_context ({self.max_context}) must hold at least one call: "
                f"system prompt + min growth + max output = {need} tokens")
        if self.vocab_size < 2:
            raise SagaConfigError(f"workload vocab_size must be >= 2, got {self.vocab_size}")


@dataclass(frozen=True)
class PlannedCall:
    """One LLM call of a session: the tokens appended before it, its output length, and the
    tool it ends in (None on the task's last call) with that tool's sleep."""

    new_tokens: tuple[int, ...]
    max_tokens: int
    tool: str | None
    tool_s: float

    @property
    def final(self) -> bool:
        """The task's last call (no tool follows)."""
        return self.tool is None


@dataclass(frozen=True)
class SessionPlan:
    """One agent task: who runs it, when it arrives, and its calls in order."""

    session_id: str
    agent_type: str
    tenant: str
    arrival_s: float
    calls: tuple[PlannedCall, ...]

    @property
    def prompt_tokens(self) -> int:
        """Sum of every call's prompt length (outputs are re-read by the next call)."""
        total = 0
        context = 0
        for c in self.calls:
            context += len(c.new_tokens)
            total += context
            context += c.max_tokens
        return total

    @property
    def max_context(self) -> int:
        """Longest prompt + output of the task (what must fit in ``max_model_len``)."""
        return sum(len(c.new_tokens) + c.max_tokens for c in self.calls)

    @property
    def tool_s(self) -> float:
        """Total tool sleep of the task."""
        return sum(c.tool_s for c in self.calls)


@dataclass(frozen=True)
class Workload:
    """The sessions of one run, in arrival order."""

    config: WorkloadConfig
    sessions: tuple[SessionPlan, ...] = field(default=())

    @property
    def calls(self) -> int:
        """LLM calls over all sessions."""
        return sum(len(s.calls) for s in self.sessions)

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens over all calls (cached or not)."""
        return sum(s.prompt_tokens for s in self.sessions)

    @property
    def max_context(self) -> int:
        """Longest context of any session."""
        return max((s.max_context for s in self.sessions), default=0)

    def summary(self) -> dict[str, float]:
        """Sizes for reports."""
        return {
            "sessions": len(self.sessions),
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "max_context": self.max_context,
            "tool_s_total": round(sum(s.tool_s for s in self.sessions), 3),
            "last_arrival_s": round(max((s.arrival_s for s in self.sessions), default=0.0), 3),
        }


def _agent_kinds(config: WorkloadConfig) -> list[str]:
    if config.kind == "mixed":
        return ["swe" if i % 2 == 0 else "web" for i in range(config.sessions)]
    return [config.kind] * config.sessions


def _tokens(rng: np.random.Generator, n: int, vocab: int) -> tuple[int, ...]:
    # Token 0 is left out: some models treat it as padding.
    return tuple(int(t) for t in rng.integers(1, vocab, size=n))


def _plan_calls(steps: list[LLMStep | ToolStep], config: WorkloadConfig,
                rng: np.random.Generator, system: tuple[int, ...]) -> tuple[PlannedCall, ...]:
    """Scale a sampled task to the tiny model: growth and outputs scaled and clamped, tools
    scaled; cut at ``max_steps`` calls or where the context would pass ``max_context``."""
    calls: list[PlannedCall] = []
    context = 0
    prev_prompt = prev_out = 0
    i = 0
    while i < len(steps) and len(calls) < config.max_steps:
        step = steps[i]
        i += 1
        if not isinstance(step, LLMStep):
            continue
        growth_raw = step.input_tokens - (prev_prompt + prev_out)
        prev_prompt, prev_out = step.input_tokens, step.output_tokens
        growth = int(np.clip(round(growth_raw * config.token_scale),
                             config.min_growth, config.max_growth))
        out = int(np.clip(round(step.output_tokens * config.output_scale),
                          config.min_output, config.max_output))
        if not calls:
            growth = max(growth, len(system) + config.min_growth)
        if context + growth + out > config.max_context:
            break
        new = (system + _tokens(rng, growth - len(system), config.vocab_size) if not calls
               else _tokens(rng, growth, config.vocab_size))
        tool: str | None = None
        tool_s = 0.0
        if i < len(steps) and isinstance(steps[i], ToolStep):
            ts = steps[i]
            assert isinstance(ts, ToolStep)
            tool = ts.tool
            tool_s = min(config.max_tool_s, (ts.duration_s or 0.0) * config.tool_scale)
            i += 1
        calls.append(PlannedCall(new, out, tool, round(tool_s, 4)))
        context += growth + out
    if calls and calls[-1].tool is not None:
        # The task ends here: its last call is final (no pending tool, no sleep after it).
        last = calls[-1]
        calls[-1] = PlannedCall(last.new_tokens, last.max_tokens, None, 0.0)
    return tuple(calls)


def build_workload(config: WorkloadConfig | None = None) -> Workload:
    """Draw the workload of ``config`` (deterministic in ``config.seed``)."""
    config = config or WorkloadConfig()
    rng = np.random.default_rng(config.seed)
    templates = {k: build() for k, build in _TEMPLATES.items()}
    systems = {k: _tokens(rng, config.system_tokens, config.vocab_size) for k in _TEMPLATES}
    plans: list[SessionPlan] = []
    for idx, kind in enumerate(_agent_kinds(config)):
        aeg = templates[kind]
        calls: tuple[PlannedCall, ...] = ()
        # A sampled task can be too short to matter (the web agent may stop after one call);
        # redraw a few times so every session has at least two calls.
        for _ in range(8):
            calls = _plan_calls(aeg.sample_trace(rng),
                                config, rng, systems[kind])
            if len(calls) >= min(2, config.max_steps):
                break
        jitter = float(rng.uniform(-0.5, 0.5)) * config.arrival_gap_s
        arrival = max(0.0, idx * config.arrival_gap_s + jitter)
        plans.append(SessionPlan(
            session_id=f"{kind}-{idx}", agent_type=aeg.agent_type,
            tenant=f"tenant-{idx % config.tenants}" if config.tenants > 1 else "default",
            arrival_s=round(arrival, 4), calls=calls))
    plans.sort(key=lambda p: (p.arrival_s, p.session_id))
    return Workload(config, tuple(plans))
