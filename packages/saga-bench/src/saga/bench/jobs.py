"""Jobs: one simulated run (or one cache replay) described as plain, picklable data.

A table declares the jobs it needs; the runner deduplicates them across tables (the full-SAGA run
of table 3 is also table 6's "full SAGA" and table 7's "hybrid"), runs them in parallel processes
and hands each table its results. A :class:`Variant` names a preset and the parameters changed
from it; :func:`build_preset` turns it into a saga-policy ``Preset`` through a registry of
parameter setters (no branching on preset names).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from saga.bench.costmodel import RooflineCost, ideal_call_s
from saga.bench.sim import SimConfig, simulate
from saga.bench.trace_workload import TraceSource
from saga.bench.workload import Task, WorkloadSpec, build_workload
from saga.policy.errors import SagaConfigError
from saga.policy.presets import Preset, get_preset, policy
from saga.policy.spec import REFERENCE_CLUSTER, GiB
from saga.policy.stealing import R_MAX, T_IDLE_S
from saga.policy.ttl import TTL_MAX_S

Param = tuple[str, float | str]


@dataclass(frozen=True)
class Variant:
    """A preset by name with some of its parameters changed (sorted ``(name, value)`` pairs)."""

    preset: str
    params: tuple[Param, ...] = ()

    @property
    def label(self) -> str:
        if not self.params:
            return self.preset
        return self.preset + "[" + ",".join(f"{k}={v}" for k, v in self.params) + "]"

    def param(self, name: str, default: float) -> float:
        for k, v in self.params:
            if k == name:
                return float(v)
        return default


def _walru(p: Preset, v: Variant) -> Preset:
    kw = {"alpha": v.param("alpha", 0.3), "beta": v.param("beta", 0.5),
          "gamma": v.param("gamma", 0.2)}
    return dataclasses.replace(p, eviction=policy("eviction", "walru", **kw))


def _theta(p: Preset, v: Variant) -> Preset:
    kw = {"theta": v.param("theta", 0.8), "require_headroom": bool(v.param("headroom", 1.0))}
    return dataclasses.replace(p, router=policy("router", "affinity", **kw))


def _stealing(p: Preset, v: Variant) -> Preset:
    kw = {"t_idle": v.param("t_idle", T_IDLE_S), "r_max": v.param("r_max", R_MAX)}
    return dataclasses.replace(p, stealing=policy("stealing", "work_stealer", **kw))


def _ttl_max(p: Preset, v: Variant) -> Preset:
    """TTL_max of the preset's own TTL policy (SAGA's tool-call TTL when it has none)."""
    ttl_max = v.param("ttl_max", TTL_MAX_S)
    spec = policy("ttl", "tool_call") if p.ttl is None else p.ttl
    return dataclasses.replace(p, ttl=spec.with_kwargs(ttl_max=ttl_max))


def _queue(p: Preset, v: Variant) -> Preset:
    """Any registered queue by name (the registry rejects an unknown one, listing them)."""
    return dataclasses.replace(p, queue=policy("queue", str(dict(v.params)["queue"])))


def _no_change(p: Preset, v: Variant) -> Preset:
    return p


PARAM_SETTERS: Mapping[str, Callable[[Preset, Variant], Preset]] = {
    "alpha": _walru, "beta": _walru, "gamma": _walru, "theta": _theta, "headroom": _theta,
    "t_idle": _stealing,
    "r_max": _stealing, "ttl_max": _ttl_max, "queue": _queue,
    "theta_conf": _no_change,  # a simulator setting (pattern inference), see sim_config
}
"""How each sweepable parameter changes a preset."""


def build_preset(v: Variant) -> Preset:
    """The saga-policy preset of a variant."""
    p = get_preset(v.preset)
    for k, _ in v.params:
        if k not in PARAM_SETTERS:
            raise SagaConfigError(f"unknown parameter {k!r}; known: {sorted(PARAM_SETTERS)}")
        p = PARAM_SETTERS[k](p, v)
    return p


@dataclass(frozen=True)
class Scale:
    """How big a run is: cluster nodes (2 TP4 instances each), tasks and arrival rates."""

    name: str
    nodes: int
    seeds: int
    swe_tasks: int
    web_tasks: int
    swe_rate_per_instance: float = 0.15
    web_rate_per_instance: float = 0.4
    mooncake_requests: int = 1500
    """Requests of the Mooncake window replayed for table 4."""
    replay_tasks: int = 96
    """At most this many agent tasks per replayed trace of table 4 (Bélády is the slow part)."""
    seed_caps: tuple[tuple[str, int], ...] = (("3c", 1),)
    """``(table id, n)``: that table runs on the first ``n`` seeds only. Table 3c (table 3 on the
    whole reference cluster) costs 8x a one-node run per seed."""
    dram_gb_per_instance: float | None = None
    """KV tier in host DRAM per instance, GiB (the regime map's DRAM axis); None: the node's
    DRAM as the reference cluster has it. Only presets with a DRAM tier use it."""
    trace: TraceSource | None = None
    """``saga bench --trace``: the SWE and WebArena workloads run on this trace's sessions."""
    saga: str = "saga"
    """``saga bench --saga``: the preset that plays SAGA in the tables (table 6 ablates it).
    Not part of a run's hash: a run is named by its own preset, so SAGA's runs under another
    preset never mix with ``saga``'s, while the peers' runs are shared."""

    def seeds_for(self, table_id: str, seeds: Sequence[int]) -> list[int]:
        """The seeds table ``table_id`` runs on: ``seeds``, cut to its cap if it has one."""
        cap = dict(self.seed_caps).get(table_id)
        return list(seeds) if cap is None else list(seeds)[:max(1, cap)]

    @property
    def instances(self) -> int:
        return self.nodes * REFERENCE_CLUSTER.instances_per_node

    def sim_config(self, v: Variant | None = None) -> SimConfig:
        cluster = dataclasses.replace(REFERENCE_CLUSTER, nodes=self.nodes,
                                      instances=self.instances)
        theta_conf = 0.7 if v is None else v.param("theta_conf", 0.7)
        cfg = SimConfig(cluster=cluster, theta_conf=theta_conf)
        if self.dram_gb_per_instance is None:
            return cfg
        block_bytes = cfg.block_tokens * cfg.model.kv_bytes_per_token
        return dataclasses.replace(cfg, dram_blocks=int(self.dram_gb_per_instance * GiB
                                                        // block_bytes))

    def workload(self, kind: str, seed: int, *, tool_cv: float | None = None) -> WorkloadSpec:
        """The workload of ``kind`` ("swe", "web", "tenants") at this scale."""
        if self.trace is not None and kind in ("swe", "web"):
            return self.trace.spec(self, seed, tool_cv)
        if kind == "web":
            return WorkloadSpec("web", self.web_tasks, self.web_rate_per_instance
                                * self.instances, seed, tool_cv)
        n = self.swe_tasks if kind != "tenants" else self.swe_tasks + self.web_tasks // 2
        rate = self.swe_rate_per_instance * self.instances * (1.5 if kind == "tenants" else 1)
        return WorkloadSpec(kind, n, rate, seed, tool_cv)


QUICK = Scale("quick", nodes=1, seeds=2, swe_tasks=96, web_tasks=128,
              swe_rate_per_instance=0.4, web_rate_per_instance=0.75, mooncake_requests=800,
              replay_tasks=48)
"""``saga bench``: one node (2 TP4 instances), 2 seeds — a reduced grid, about a minute. 48 SWE
tasks per instance: enough that their contexts outgrow the KV pool, the regime SAGA is for."""
FULL = Scale("full", nodes=1, seeds=10, swe_tasks=96, web_tasks=128,
             swe_rate_per_instance=0.4, web_rate_per_instance=0.75,
             seed_caps=(("3c", 1), ("5", 5), ("6", 5), ("7", 5), ("8", 5), ("9", 5)))
"""``saga bench --full``: the same node and load as the quick grid, every table, within 15
minutes on 2 cores: tables 3, 4 and 10 with 10 seeds, the sweeps (tables 5-9) with 5, and table
3 again on the whole 16-instance reference cluster (table 3c) with 1 (a seed there costs ~4
minutes: ``saga bench --tables 3 --nodes 8 --seeds N`` runs more)."""


def with_nodes(scale: Scale, nodes: int) -> Scale:
    """``scale`` on ``nodes`` nodes with tasks scaled to keep the load per instance."""
    if not 1 <= nodes <= REFERENCE_CLUSTER.nodes:
        raise SagaConfigError(f"--nodes must be in [1, {REFERENCE_CLUSTER.nodes}], got {nodes}")
    f = nodes / scale.nodes
    return dataclasses.replace(scale, name=f"{scale.name}-{nodes}n", nodes=nodes,
                               swe_tasks=max(2, round(scale.swe_tasks * f)),
                               web_tasks=max(2, round(scale.web_tasks * f)))


SMOKE = Scale("smoke", nodes=1, seeds=2, swe_tasks=6, web_tasks=8, swe_rate_per_instance=0.5,
              web_rate_per_instance=1.0, mooncake_requests=200, replay_tasks=6)
"""``saga bench --smoke``: a handful of tasks per run, every table in seconds. It checks the
pipeline (runs, resume, report); the KV pool never fills, so its numbers mean nothing."""

SCALES = {"quick": QUICK, "full": FULL, "smoke": SMOKE}


@dataclass(frozen=True)
class SimJob:
    """One simulated run."""

    variant: Variant
    workload: WorkloadSpec
    scale: Scale
    kind: str = field(default="sim")


@dataclass(frozen=True)
class ReplayJob:
    """One cache replay of a trace under the online policies and Bélády (table 4)."""

    trace: str
    seed: int
    scale: Scale
    kind: str = field(default="replay")


Job = SimJob | ReplayJob


def _ideal(cost: RooflineCost) -> Callable[[Task], float]:
    def ideal(task: Task) -> float:
        ctx = 0
        total = 0.0
        for c in task.calls:
            total += ideal_call_s(cost, c.new_tokens, ctx, c.output_tokens) + c.tool_s
            ctx += c.new_tokens + c.output_tokens
        return total
    return ideal


def run_sim_job(job: SimJob) -> dict[str, Any]:
    """Simulate one job; returns the run's metrics plus wall time and simulated calls."""
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = job.scale.sim_config(job.variant)
    cost = RooflineCost(model=cfg.model, cluster=cfg.cluster)
    w = build_workload(job.workload, _ideal(cost))
    result = simulate(build_preset(job.variant), w, cfg, cost)
    out = result.to_dict()
    out["wall_s"] = time.perf_counter() - t0
    out["cpu_s"] = time.process_time() - c0
    return out


def run_job(job: Job) -> dict[str, Any]:
    """Run a job of either kind (the registry of job kinds)."""
    if isinstance(job, ReplayJob):
        from saga.bench.replay import run_replay_job

        return run_replay_job(job)
    return run_sim_job(job)


__all__ = [
    "FULL",
    "PARAM_SETTERS",
    "QUICK",
    "SCALES",
    "SMOKE",
    "Job",
    "ReplayJob",
    "Scale",
    "SimJob",
    "Variant",
    "build_preset",
    "run_job",
    "run_sim_job",
    "with_nodes",
]
