"""What one simulated run measured, and how it is computed from the run's state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from saga.bench.costmodel import StepCost
from saga.bench.sim.entities import TaskState
from saga.bench.sim.instance import Instance


@dataclass
class RunResult:
    """What one simulated run measured (times in simulated seconds)."""

    preset: str
    tasks: int
    calls: int
    tct_mean_s: float
    tct_p50_s: float
    tct_p95_s: float
    makespan_s: float
    throughput_tasks_per_min: float
    prompt_tokens: int
    hit_tokens: int
    recomputed_tokens: int
    reprefilled_tokens: int
    output_tokens: int
    eviction_rate: float
    ttl_accuracy: float
    slo_attainment: dict[str, float]
    latency_vs_ideal: float
    hbm_utilisation: float
    reprefill_gpu_share: float
    steals: int
    migrations: int
    rehomed_kv: int
    """KV copies that followed a moved session (``rehome_kv``: re-homing or stealing)."""
    events: int
    tct_by_task: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("tct_by_task")
        return d


@dataclass
class Counters:
    """Running totals of one run."""

    prompt: int = 0
    hit: int = 0
    reprefill: int = 0
    output: int = 0
    followups: int = 0
    missed_context: int = 0
    pins: int = 0
    pins_held: int = 0
    steals: int = 0
    migrations: int = 0
    rehome_kv: int = 0
    queue_delay_ema: float = 0.0


def build_result(preset: str, states: Sequence[TaskState], instances: Sequence[Instance],
                 n: Counters, cost: StepCost, end: float, events: int) -> RunResult:
    """The run's figures (raises when a task never finished)."""
    done = [s for s in states if s.done_s is not None]
    if len(done) != len(states):
        raise RuntimeError(f"{len(states) - len(done)} tasks never finished")
    tct = np.array([s.done_s - s.task.arrival_s for s in done])  # type: ignore[operator]
    ideal = np.array([max(s.ideal_s, 1e-9) for s in done])
    first = min(s.task.arrival_s for s in done)
    span = max(end - first, 1e-9)
    tenants: dict[str, list[bool]] = {}
    for s, t in zip(done, tct, strict=True):
        tenants.setdefault(s.task.tenant, []).append(
            bool(t + s.task.arrival_s <= s.task.deadline_s))
    slo = {k: float(np.mean(v)) for k, v in sorted(tenants.items())}
    if math.isfinite(min((s.task.deadline_s for s in done), default=math.inf)):
        slo["overall"] = float(np.mean([x for v in tenants.values() for x in v]))
    busy = sum(i.busy_s for i in instances)
    hbm = instances[0].cache.hbm_blocks
    return RunResult(
        preset=preset, tasks=len(done), calls=sum(len(s.task.calls) for s in done),
        tct_mean_s=float(tct.mean()), tct_p50_s=float(np.percentile(tct, 50)),
        tct_p95_s=float(np.percentile(tct, 95)), makespan_s=span,
        throughput_tasks_per_min=len(done) / span * 60.0,
        prompt_tokens=n.prompt, hit_tokens=n.hit, recomputed_tokens=n.prompt - n.hit,
        reprefilled_tokens=n.reprefill, output_tokens=n.output,
        eviction_rate=n.missed_context / n.followups if n.followups else 0.0,
        ttl_accuracy=n.pins_held / n.pins if n.pins else math.nan,
        slo_attainment=slo, latency_vs_ideal=float(np.mean(tct / ideal)),
        hbm_utilisation=sum(i.ref_block_s for i in instances) / (
            hbm * span * len(instances)),
        reprefill_gpu_share=(n.reprefill * cost.prefill_token_s() / busy) if busy
        else 0.0,
        steals=n.steals, migrations=n.migrations, rehomed_kv=n.rehome_kv, events=events,
        tct_by_task={s.task_id: float(t) for s, t in zip(done, tct, strict=True)})


__all__ = ["Counters", "RunResult", "build_result"]
