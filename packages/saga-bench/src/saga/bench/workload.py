"""Agent workloads for the simulator: tasks sampled from saga-aeg's templates, or replayed.

A task is a sequence of LLM calls; each call appends ``new_tokens`` (the previous tool's output,
or the whole first prompt) to the session's context, generates ``output_tokens`` and then waits
``tool_s`` on a tool (none after the last call). Where each figure comes from:

- Steps, tokens per step, tool kinds and log-normal tool latencies: saga-aeg's
  ``swe_bench_agent`` (measured on 500 real SWE-bench Verified sessions; latencies assumed) and
  ``webarena_agent`` (WebArena's reference harness limits; assumed). See their docstrings.
- Tool-latency variability: ``tool_cv`` replaces each tool's log-normal by one with the same mean
  and coefficient of variation ``tool_cv`` (``LogNormalLatency.from_mean_cv``), for table 8.
- Tool-latency scale: ``tool_scale`` multiplies every drawn tool duration (same draws, so a task
  keeps its tokens and only its tool time changes), for the regime map (``tables_map``).
- The system prompt shared by an agent type's sessions: the first ``system_tokens`` of the first
  prompt (WebArena's few-shot prompt ~1.1K tokens; mini-swe-agent's system + instance template
  ~1.2K).
- Arrivals: Poisson at ``rate_per_s`` tasks/s, or the inter-arrival times of the Mooncake
  conversation trace bundled in saga-policy (its 3 s buckets spread uniformly), rescaled to the
  same mean rate.
- Tenants (table 5): heavy = SWE-bench agents, medium = WebArena agents, light = short WebArena
  lookups (at most 5 calls); each task's deadline is ``slo_factor x`` its ideal TCT (alone on an
  idle instance, prefixes cached), the SLO of its tenant.
- Replay (``kind="trace-swe"``): the real mini-swe-agent trajectories bundled in saga-policy
  (token counts and tool names recorded; durations drawn from the SWE template's tool groups).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from saga.aeg import AEG, LLMStep, LogNormalLatency, ToolStep, swe_bench_agent, webarena_agent
from saga.aeg.steps import Step
from saga.policy.errors import SagaConfigError
from saga.policy.traces import (
    BUNDLED_AGENT,
    BUNDLED_MOONCAKE,
    bundled_trace_path,
    parse_agent,
    parse_mooncake,
)

KINDS = ("swe", "web", "mixed", "tenants", "trace-swe", "trace")
"""``trace``: a recorded trace's sessions (``saga.bench.trace_workload``, ``--trace``)."""
ARRIVALS = ("poisson", "mooncake")

_TEMPLATES: dict[str, Callable[[], AEG]] = {"swe": swe_bench_agent, "web": webarena_agent}
SYSTEM_TOKENS = {"swe": 1200, "web": 1100}
"""Shared system-prompt tokens per agent type (module docstring)."""

TENANT_SLO = {"heavy": 3.0, "medium": 3.0, "light": 3.0}
"""Deadline = arrival + factor x ideal TCT, per tenant (one SLO factor for all: the SLO
asks every tenant for the same slowdown bound)."""
TENANT_SHARE = {"heavy": 0.5, "medium": 0.3, "light": 0.2}
"""Share of arriving tasks per tenant in the multi-tenant mix."""
LIGHT_MAX_CALLS = 5

# Tool names of the real mini-swe-agent trace grouped as the SWE template groups them.
_SWE_TOOL_GROUP = {
    **dict.fromkeys(("grep", "find", "ls", "cat", "nl", "head", "tail", "git"), "search"),
    **dict.fromkeys(("sed", "write_file", "rm", "mkdir", "cp", "mv", "touch"), "edit"),
    **dict.fromkeys(("pytest", "runtests.py", "test"), "test"),
    "format_error": "format_error", "submit": "submit",
}


@dataclass(frozen=True)
class Call:
    """One LLM call of a task and the tool call after it (``tool`` None: the task ends)."""

    new_tokens: int
    output_tokens: int
    tool: str | None
    tool_s: float


@dataclass(frozen=True)
class Task:
    """One agent task (a session): who, when, its calls, and its deadline."""

    task_id: str
    agent_type: str
    tenant: str
    arrival_s: float
    calls: tuple[Call, ...]
    deadline_s: float = float("inf")
    system_key: str = ""
    system_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """Sum of every call's prompt length."""
        total = ctx = 0
        for c in self.calls:
            ctx += c.new_tokens
            total += ctx
            ctx += c.output_tokens
        return total


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything that fixes a workload; the same spec and seed give the same tasks."""

    kind: str = "swe"
    tasks: int = 64
    rate_per_s: float = 1.0
    seed: int = 0
    tool_cv: float | None = None
    arrival: str = "poisson"
    max_context: int = 32_768
    slo_factor: float | None = None
    tool_scale: float = 1.0
    """Every tool duration is multiplied by this (the regime map's tool-latency axis)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SagaConfigError(f"WorkloadSpec.kind must be one of {KINDS}, got {self.kind!r}")
        if self.arrival not in ARRIVALS:
            raise SagaConfigError(
                f"WorkloadSpec.arrival must be one of {ARRIVALS}, got {self.arrival!r}")
        if self.tasks < 1:
            raise SagaConfigError(f"WorkloadSpec.tasks must be >= 1, got {self.tasks}")
        if not self.rate_per_s > 0:
            raise SagaConfigError(f"WorkloadSpec.rate_per_s must be > 0, got {self.rate_per_s}")
        if self.tool_cv is not None and not self.tool_cv > 0:
            raise SagaConfigError(f"WorkloadSpec.tool_cv must be > 0, got {self.tool_cv}")
        if not (self.tool_scale > 0 and math.isfinite(self.tool_scale)):
            raise SagaConfigError(f"WorkloadSpec.tool_scale must be a finite number > 0, "
                                  f"got {self.tool_scale}")
        if self.max_context < 4096:
            raise SagaConfigError(f"WorkloadSpec.max_context must be >= 4096, "
                                  f"got {self.max_context}")


@dataclass
class Workload:
    """The tasks of one run, in arrival order, and the tool-latency models they were drawn from."""

    spec: WorkloadSpec
    tasks: list[Task] = field(default_factory=list)
    latencies: dict[str, dict[str, LogNormalLatency]] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return sum(len(t.calls) for t in self.tasks)


def tool_latencies(aeg: AEG, cv: float | None) -> dict[str, LogNormalLatency]:
    """The template's per-tool log-normals, or ones with the same means and CV ``cv``."""
    out = {}
    for node in aeg.tool_nodes():
        lat = node.latency
        out[node.tool] = lat if cv is None else LogNormalLatency.from_mean_cv(lat.mean(), cv)
    return out


def _calls_from_steps(steps: Sequence[Step], lat: dict[str, LogNormalLatency],
                      rng: np.random.Generator, max_context: int, max_calls: int | None,
                      group: Callable[[str], str] = lambda t: t,
                      tool_scale: float = 1.0) -> tuple[Call, ...]:
    calls: list[Call] = []
    ctx = 0
    prev_total = 0
    for i, st in enumerate(steps):
        if not isinstance(st, LLMStep):
            continue
        new = max(1, st.input_tokens - prev_total)
        if ctx + new + st.output_tokens > max_context or (max_calls and len(calls) >= max_calls):
            break
        prev_total = st.input_tokens + st.output_tokens
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        tool = nxt.tool if isinstance(nxt, ToolStep) else None
        model = lat.get(group(tool)) if tool is not None else None
        tool_s = float(model.sample(rng, 1)[0]) if model is not None else 0.0
        if tool is not None and model is None:
            tool_s = float(lat["python"].sample(rng, 1)[0]) if "python" in lat else 1.0
        calls.append(Call(new, max(1, st.output_tokens), tool, tool_s * tool_scale))
        ctx += new + st.output_tokens
    if calls and calls[-1].tool is not None:
        last = calls[-1]
        calls[-1] = Call(last.new_tokens, last.output_tokens, None, 0.0)
    return tuple(calls)


def _arrivals(spec: WorkloadSpec, rng: np.random.Generator) -> np.ndarray:
    n = spec.tasks
    if spec.arrival == "poisson":
        gaps = rng.exponential(1.0 / spec.rate_per_s, n)
    else:
        with bundled_trace_path(BUNDLED_MOONCAKE).open() as f:
            ts = np.array([r.arrival_s for r in parse_mooncake(f).requests])
        ts = ts + rng.uniform(0.0, 3.0, ts.size)  # spread the trace's 3 s buckets
        raw = np.diff(np.sort(ts))
        raw = raw[raw > 0]
        start = int(rng.integers(0, max(1, raw.size - n)))
        gaps = np.resize(raw[start:start + n], n)
        gaps = gaps * (1.0 / spec.rate_per_s) / float(np.mean(gaps))
    out: np.ndarray = np.cumsum(gaps) - gaps[0]
    return out


def _trace_sessions() -> list[list[Step]]:
    with bundled_trace_path(BUNDLED_AGENT).open() as f:
        trace = parse_agent(f)
    out: list[list[Step]] = []
    for sess in trace.sessions:
        steps: list[Step] = []
        for st in sess.steps:
            if st.kind == "llm":
                steps.append(LLMStep(input_tokens=st.input_tokens,
                                     output_tokens=max(1, st.output_tokens)))
            else:
                steps.append(ToolStep(tool=st.tool or "python"))
        out.append(steps)
    return out


def build_workload(spec: WorkloadSpec, ideal: Callable[[Task], float] | None = None
                   ) -> Workload:
    """Draw the tasks of ``spec`` (deterministic in ``spec.seed``).

    ``ideal`` gives a task's ideal TCT, needed for deadlines when ``slo_factor`` is set or the
    kind is ``tenants``.
    """
    if spec.kind == "trace":
        from saga.bench.trace_workload import build_trace_workload

        return build_trace_workload(spec, ideal)
    rng = np.random.default_rng(spec.seed)
    aegs = {k: build() for k, build in _TEMPLATES.items()}
    lats = {k: tool_latencies(a, spec.tool_cv) for k, a in aegs.items()}
    arrivals = _arrivals(spec, rng)
    trace = _trace_sessions() if spec.kind == "trace-swe" else []
    tasks: list[Task] = []
    for i in range(spec.tasks):
        tenant = "default"
        max_calls: int | None = None
        if spec.kind == "mixed":
            kind = "swe" if i % 2 == 0 else "web"
        elif spec.kind == "tenants":
            tenant = str(rng.choice(list(TENANT_SHARE), p=list(TENANT_SHARE.values())))
            kind = "swe" if tenant == "heavy" else "web"
            max_calls = LIGHT_MAX_CALLS if tenant == "light" else None
        else:
            kind = "swe" if spec.kind in ("swe", "trace-swe") else "web"
        calls: tuple[Call, ...] = ()
        for _ in range(8):  # a sampled task may end after one call; redraw a few times
            if trace:
                steps = trace[int(rng.integers(0, len(trace)))]
                calls = _calls_from_steps(steps, lats["swe"], rng, spec.max_context, None,
                                          lambda t: _SWE_TOOL_GROUP.get(t, "python"),
                                          spec.tool_scale)
            else:
                calls = _calls_from_steps(aegs[kind].sample_trace(rng), lats[kind], rng,
                                          spec.max_context, max_calls,
                                          tool_scale=spec.tool_scale)
            if len(calls) >= 2:
                break
        task = Task(task_id=f"{kind}-{spec.seed}-{i}", agent_type=aegs[kind].agent_type,
                    tenant=tenant, arrival_s=float(arrivals[i]), calls=calls,
                    system_key=kind,
                    system_tokens=min(SYSTEM_TOKENS[kind], calls[0].new_tokens - 1))
        factor = spec.slo_factor or (TENANT_SLO.get(tenant) if spec.kind == "tenants" else None)
        if factor is not None and ideal is not None:
            task = Task(**{**task.__dict__, "deadline_s": task.arrival_s + factor * ideal(task)})
        tasks.append(task)
    return Workload(spec, tasks, lats)


def workload_summary(w: Workload) -> dict[str, float]:
    """Sizes for reports."""
    n = len(w.tasks)
    return {
        "tasks": n,
        "calls": w.calls,
        "calls_per_task": round(w.calls / n, 2) if n else 0.0,
        "prompt_tokens": sum(t.prompt_tokens for t in w.tasks),
        "last_arrival_s": round(max((t.arrival_s for t in w.tasks), default=0.0), 2),
    }


def dumps_tasks(w: Workload) -> str:
    """The tasks as JSON lines (for inspection and determinism checks)."""
    return "\n".join(json.dumps({**t.__dict__, "calls": [c.__dict__ for c in t.calls]},
                                sort_keys=True) for t in w.tasks)


__all__ = [
    "ARRIVALS",
    "KINDS",
    "Call",
    "Task",
    "Workload",
    "WorkloadSpec",
    "build_workload",
    "dumps_tasks",
    "tool_latencies",
    "workload_summary",
]
