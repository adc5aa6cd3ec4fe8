"""Table 4's cache replays: online eviction policies against Bélády's offline optimum.

The agent traces are the simulator's workloads turned into request traces (each call arrives
when the task would issue it on an idle instance: ideal call time plus tool latency), so the
oracle can see the whole future; the Mooncake trace is a window of the real conversation trace
bundled in saga-policy. Each is replayed through saga-policy's ``replay_policies`` (the same
``CacheManager`` and policies the simulator uses) at a capacity of ``CAPACITY_SHARE`` of the
trace's distinct blocks, so the cache must choose.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from saga.bench.costmodel import RooflineCost, ideal_call_s
from saga.bench.workload import Workload, build_workload
from saga.policy.replay import replay_policies
from saga.policy.traces import (
    AGENT_BLOCK_TOKENS,
    BUNDLED_MOONCAKE,
    AgentSession,
    AgentStep,
    Trace,
    agent_requests,
    bundled_trace_path,
    parse_mooncake,
)

if TYPE_CHECKING:
    from saga.bench.jobs import ReplayJob

POLICIES = ("lru", "prefix_lru", "arc", "s3fifo", "walru", "kvflow", "eta", "belady")
CAPACITY_SHARE = 0.125
"""Cache capacity as a share of the trace's distinct blocks."""
MOONCAKE_WINDOW = 1500


def trace_of_workload(w: Workload, cost: RooflineCost) -> Trace:
    """The workload's calls as an agent trace (arrivals at the ideal pace of each task)."""
    sessions = []
    for task in w.tasks:
        steps: list[AgentStep] = []
        t = 0.0
        ctx = 0
        for c in task.calls:
            prompt = ctx + c.new_tokens
            steps.append(AgentStep("llm", t, prompt, c.output_tokens))
            t += ideal_call_s(cost, c.new_tokens, ctx, c.output_tokens)
            ctx = prompt + c.output_tokens
            if c.tool is not None:
                steps.append(AgentStep("tool", tool=c.tool))
                t += c.tool_s
        sessions.append(AgentSession(task.task_id, task.agent_type, task.arrival_s,
                                     tuple(steps)))
    return Trace(name=w.spec.kind, block_tokens=AGENT_BLOCK_TOKENS,
                 requests=tuple(agent_requests(sessions, AGENT_BLOCK_TOKENS)),
                 sessions=tuple(sessions))


def mooncake_window(seed: int, n: int = MOONCAKE_WINDOW) -> Trace:
    """``n`` consecutive requests of the bundled Mooncake slice, from a seed-chosen start."""
    with bundled_trace_path(BUNDLED_MOONCAKE).open() as f:
        full = parse_mooncake(f)
    start = (seed * 7919) % max(1, len(full.requests) - n)
    reqs = full.requests[start:start + n]
    t0 = reqs[0].arrival_s
    from dataclasses import replace

    return Trace(name="mooncake", block_tokens=full.block_tokens,
                 requests=tuple(replace(r, index=i, arrival_s=r.arrival_s - t0)
                                for i, r in enumerate(reqs)))


def run_replay_job(job: ReplayJob) -> dict[str, Any]:
    """Replay one trace under every policy; misses and ratios to Bélády."""
    t0 = time.perf_counter()
    if job.trace == "mooncake":
        trace = mooncake_window(job.seed, job.scale.mooncake_requests)
    else:
        cost = RooflineCost()
        spec = job.scale.workload(job.trace, job.seed)
        spec = dataclasses.replace(spec, tasks=min(spec.tasks, job.scale.replay_tasks))
        trace = trace_of_workload(build_workload(spec), cost)
    distinct = len({h for r in trace.requests for h in r.block_hashes})
    capacity = max(16, int(distinct * CAPACITY_SHARE))
    results = replay_policies(trace, list(POLICIES), capacity)
    return {
        "trace": job.trace, "capacity_blocks": capacity, "distinct_blocks": distinct,
        "requests": len(trace.requests),
        "misses": {r.policy: r.miss_blocks for r in results},
        "ratio": {r.policy: r.ratio_to_belady for r in results},
        "recomputed_tokens": {r.policy: r.recomputed_tokens for r in results},
        "wall_s": time.perf_counter() - t0,
    }


__all__ = ["CAPACITY_SHARE", "POLICIES", "mooncake_window", "run_replay_job",
           "trace_of_workload"]
