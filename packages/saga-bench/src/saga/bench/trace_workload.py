"""Workloads from a recorded trace (``saga bench --trace``): the sessions of real agent runs.

Each session of the trace becomes one task. Per call: the recorded prompt and output token
counts (new tokens = the prompt's growth since the previous call's prompt and output, at least
1); the tool after it by name, with its recorded duration where the trace has one and otherwise
a duration drawn from a named latency model (:data:`LATENCY_MODELS`, parameters printed by
:func:`describe`). What the trace cannot say is stated, never hidden:

- sessions are cut where their context would pass the workload's ``max_context`` (the
  simulator's limit); the number cut is reported;
- traces hold no prompt text, so sessions share no system prompt (0 shared tokens);
- arrivals are the bench's own: Poisson at a rate per instance, or ``concurrency`` N: the
  first N tasks start at 0 and each further task starts when the earliest running one would
  finish on an idle instance (its ideal TCT). The simulator fixes arrivals before it runs, so
  under contention more than N tasks can be in flight: N is a target, not a closed loop.

The trace's SHA-256, format and reading options are fields of :class:`TraceWorkloadSpec`, so a
stored run names exactly the trace it ran (``saga.bench.store`` hashes the spec). The same spec
and seed give the same tasks: the seed orders the sessions, draws the arrivals and the
durations the trace lacks.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from saga.aeg import LogNormalLatency, swe_bench_agent
from saga.bench.costmodel import RooflineCost, ideal_call_s
from saga.bench.workload import _SWE_TOOL_GROUP, Call, Task, Workload, WorkloadSpec
from saga.policy.errors import SagaConfigError
from saga.policy.trace_files import trace_digest
from saga.policy.traces import AgentSession, Trace, get_trace_format, read_trace

if TYPE_CHECKING:
    from saga.bench.jobs import Scale


@dataclass(frozen=True)
class LatencyModel:
    """Tool durations for the calls whose trace recorded none: log-normals by tool group."""

    name: str
    summary: str
    latencies: Callable[[], dict[str, LogNormalLatency]]
    group: Callable[[str], str]

    def table(self, cv: float | None) -> dict[str, LogNormalLatency]:
        """The model's log-normals, or ones with the same means and CV ``cv`` (table 8)."""
        lats = self.latencies()
        if cv is None:
            return lats
        return {k: LogNormalLatency.from_mean_cv(v.mean(), cv) for k, v in lats.items()}


def _swe_template() -> dict[str, LogNormalLatency]:
    return {n.tool: n.latency for n in swe_bench_agent().tool_nodes()}


def _swe_group(tool: str) -> str:
    return _SWE_TOOL_GROUP.get(tool, "python")


LATENCY_MODELS: Mapping[str, LatencyModel] = {m.name: m for m in (
    LatencyModel("swe-template", "saga-aeg's SWE-bench agent template, per tool group (tool "
                 "verbs grouped as the template does; any other name: python)",
                 _swe_template, _swe_group),
    LatencyModel("lognormal", "one log-normal for every tool",
                 lambda: {"tool": LogNormalLatency.from_median(1.0, 1.0)}, lambda t: "tool"),
)}
"""Latency models for unrecorded tool durations, by name (``saga bench --latency-model``)."""


def get_latency_model(name: str) -> LatencyModel:
    try:
        return LATENCY_MODELS[name]
    except KeyError:
        raise SagaConfigError(f"unknown latency model {name!r}; valid: "
                              f"{', '.join(LATENCY_MODELS)}") from None


@dataclass(frozen=True)
class TraceWorkloadSpec(WorkloadSpec):
    """A workload of a trace's first ``tasks`` sessions (``kind`` "trace"). ``rate_per_s`` is
    the Poisson rate of the whole deployment; unused when ``concurrency`` is set."""

    trace_path: str = ""
    trace_sha256: str = ""
    trace_format: str = "agent"
    skip_bad_lines: bool = False
    concurrency: int | None = None
    latency_model: str = "swe-template"


@dataclass(frozen=True)
class TraceSource:
    """A trace that replaces the tables' SWE and WebArena workloads (``Scale.trace``).

    ``tasks`` None: the scale's SWE task count; ``rate_per_instance`` None: the scale's SWE
    rate; ``sessions``: how many valid sessions the trace holds."""

    path: str
    sha256: str
    format: str
    sessions: int
    skip_bad_lines: bool = False
    tasks: int | None = None
    rate_per_instance: float | None = None
    concurrency: int | None = None
    latency_model: str = "swe-template"

    def spec(self, scale: Scale, seed: int, tool_cv: float | None = None) -> TraceWorkloadSpec:
        """The workload of this trace at ``scale`` for one seed."""
        n = min(self.sessions, self.tasks or scale.swe_tasks)
        rate = (1.0 if self.concurrency is not None else
                (self.rate_per_instance or scale.swe_rate_per_instance) * scale.instances)
        return TraceWorkloadSpec("trace", n, rate, seed, tool_cv, trace_path=self.path,
                                 trace_sha256=self.sha256, trace_format=self.format,
                                 skip_bad_lines=self.skip_bad_lines,
                                 concurrency=self.concurrency, latency_model=self.latency_model)


def open_trace_source(path: Path, fmt: str, *, skip_bad_lines: bool = False,
                      tasks: int | None = None, rate_per_instance: float | None = None,
                      concurrency: int | None = None,
                      latency_model: str = "swe-template") -> tuple[TraceSource, Trace]:
    """Read and check a trace for the bench (errors here, before any run starts)."""
    if not get_trace_format(fmt).sessions:
        raise SagaConfigError(
            f"--format {fmt} records independent requests, with no sessions and no tool calls "
            "between LLM calls, so it cannot drive agent tasks; replay it through the cache "
            f"with `saga replay --format {fmt}`")
    if rate_per_instance is not None and concurrency is not None:
        raise SagaConfigError("give --trace-rate or --concurrency, not both")
    if rate_per_instance is not None and not rate_per_instance > 0:
        raise SagaConfigError(f"--trace-rate must be > 0 tasks/s, got {rate_per_instance}")
    get_latency_model(latency_model)
    trace = read_trace(path, fmt, skip_bad_lines=skip_bad_lines)
    if not trace.sessions:
        raise SagaConfigError(f"trace {str(path)!r} holds no valid session")
    src = TraceSource(str(Path(path).resolve()), trace_digest(Path(path)), fmt,
                      len(trace.sessions), skip_bad_lines, tasks, rate_per_instance,
                      concurrency, latency_model)
    return src, trace


@lru_cache(maxsize=4)
def _load(path: str, sha256: str, fmt: str, skip_bad_lines: bool) -> Trace:
    """The trace of a spec, read once per process; a changed file is refused."""
    if trace_digest(Path(path)) != sha256:
        raise SagaConfigError(f"trace {path!r} changed since the bench was planned (its "
                              "SHA-256 differs); run the bench again")
    return read_trace(Path(path), fmt, skip_bad_lines=skip_bad_lines)


def session_calls(sess: AgentSession, lats: Mapping[str, LogNormalLatency],
                  group: Callable[[str], str], rng: np.random.Generator,
                  max_context: int) -> tuple[tuple[Call, ...], bool]:
    """The session's calls (``True`` with them when its context was cut at ``max_context``)."""
    calls: list[Call] = []
    ctx = prev_total = 0
    steps = sess.steps
    llm = [i for i, st in enumerate(steps) if st.kind == "llm"]
    cut = False
    for k, i in enumerate(llm):
        st = steps[i]
        new, out = max(1, st.input_tokens - prev_total), max(1, st.output_tokens)
        if calls and ctx + new + out > max_context:
            cut = True
            break
        prev_total = st.input_tokens + st.output_tokens
        nxt = steps[i + 1] if i + 1 < len(steps) and steps[i + 1].kind == "tool" else None
        if k == len(llm) - 1:
            tool, tool_s = None, 0.0
        elif nxt is None:
            tool, tool_s = "none", 0.0  # two calls in a row: nothing ran between them
        else:
            tool = nxt.tool or "tool"
            tool_s = (nxt.duration_s if nxt.duration_s is not None
                      else float(lats[group(tool)].sample(rng, 1)[0]))
        calls.append(Call(new, out, tool, tool_s))
        ctx += new + out
    if calls and calls[-1].tool is not None:
        calls[-1] = dataclasses.replace(calls[-1], tool=None, tool_s=0.0)
    return tuple(calls), cut


def _ideal_tct(task: Task, cost: RooflineCost) -> float:
    total, ctx = 0.0, 0
    for c in task.calls:
        total += ideal_call_s(cost, c.new_tokens, ctx, c.output_tokens) + c.tool_s
        ctx += c.new_tokens + c.output_tokens
    return total


def _arrivals(spec: TraceWorkloadSpec, tasks: list[Task], rng: np.random.Generator,
              ideal: Callable[[Task], float]) -> list[float]:
    n = len(tasks)
    if spec.concurrency is None:
        gaps = rng.exponential(1.0 / spec.rate_per_s, n)
        return [float(x) for x in np.cumsum(gaps) - gaps[0]]
    out: list[float] = []
    running: list[float] = []  # ideal finish times of the tasks in flight
    for t in tasks:
        start = 0.0 if len(running) < spec.concurrency else heapq.heappop(running)
        out.append(start)
        heapq.heappush(running, start + ideal(t))
    return out


def build_trace_workload(spec: WorkloadSpec, ideal: Callable[[Task], float] | None = None
                         ) -> Workload:
    """The tasks of a trace spec (deterministic in ``spec.seed``)."""
    if not isinstance(spec, TraceWorkloadSpec):
        raise SagaConfigError("a 'trace' workload needs a TraceWorkloadSpec (saga bench --trace)")
    sessions = _load(spec.trace_path, spec.trace_sha256, spec.trace_format,
                     spec.skip_bad_lines).sessions[:spec.tasks]
    model = get_latency_model(spec.latency_model)
    lats = model.table(spec.tool_cv)
    rng = np.random.default_rng(spec.seed)
    tasks = []
    for i, idx in enumerate(rng.permutation(len(sessions))):
        sess = sessions[int(idx)]
        calls, _ = session_calls(sess, lats, model.group, rng, spec.max_context)
        if spec.tool_scale != 1.0:  # the regime map's tool-latency axis
            calls = tuple(dataclasses.replace(c, tool_s=c.tool_s * spec.tool_scale)
                          for c in calls)
        tasks.append(Task(task_id=f"trace-{spec.seed}-{i}", agent_type=sess.agent_type,
                          tenant="default", arrival_s=0.0, calls=calls))
    cost = RooflineCost()
    starts = _arrivals(spec, tasks, rng, ideal or (lambda t: _ideal_tct(t, cost)))
    tasks = [dataclasses.replace(t, arrival_s=a) for t, a in zip(tasks, starts, strict=True)]
    tasks.sort(key=lambda t: t.arrival_s)
    return Workload(spec, tasks, {"trace": lats})


def describe(src: TraceSource, trace: Trace, scale: Scale) -> list[str]:
    """What the trace-driven workload took from the trace and what it assumed (printed above
    the tables and written to report.md)."""
    spec = src.spec(scale, 0)
    max_context = spec.max_context
    used = trace.sessions[:spec.tasks]
    lats = get_latency_model(src.latency_model)
    rng = np.random.default_rng(0)
    cut = sum(session_calls(s, lats.table(None), lats.group, rng, max_context)[1] for s in used)
    calls = sum(st.kind == "llm" for s in used for st in s.steps)
    lines = [f"trace: {src.path} (--format {src.format}, sha256 {src.sha256[:16]}): "
             f"{src.sessions} sessions; the first {spec.tasks} drive the tasks ({calls:,} LLM "
             "calls), in an order drawn per seed",
             *(f"trace: {n}" for n in trace.notes)]
    if trace.skipped:
        lines.append(f"skipped {len(trace.skipped)} bad line(s)/file(s) (--skip-bad-lines); "
                     f"first: {trace.skipped[0][1][:160]}")
    params = "; ".join(f"{k}: median {np.exp(v.mu):.2f} s, sigma {v.sigma:.2f} (mean "
                       f"{v.mean():.2f} s)" for k, v in lats.table(None).items())
    lines.append(f"fallback: unrecorded tool durations drawn from latency model "
                 f"'{lats.name}' ({lats.summary}), log-normal {params}")
    if src.concurrency is not None:
        lines.append(f"arrivals: concurrency {src.concurrency} (each further task starts when "
                     "the earliest running one would finish on an idle instance; a target, "
                     "not a closed loop)")
    else:
        lines.append(f"arrivals: Poisson, {spec.rate_per_s / scale.instances:g} tasks/s per "
                     f"instance x {scale.instances} instances, seeded")
    lines.append("timings: the trace's call times are not used (the simulator times every "
                 "call itself); its token counts and tool names are")
    lines.append(f"context: {cut} of {spec.tasks} sessions cut at {max_context:,} tokens "
                 "(the simulated model's limit); shared system prompt: none (traces hold no "
                 "prompt text)")
    lines.append("every SWE-bench and WebArena workload of the tables (3, 3c, 4's simulated "
                 "traces, 6-10) runs on these tasks; table 5 and table 4's real traces keep "
                 "theirs")
    return lines


__all__ = ["LATENCY_MODELS", "LatencyModel", "TraceSource", "TraceWorkloadSpec",
           "build_trace_workload", "describe", "get_latency_model", "open_trace_source",
           "session_calls"]
