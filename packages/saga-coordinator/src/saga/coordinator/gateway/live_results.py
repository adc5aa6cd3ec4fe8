"""What one live run measured, and the figures drawn from it (per run, then over seeds).

The cache figures come from the engines' own Prometheus counters, read before and after a run
(deltas, summed over the engines): ``vllm:prefix_cache_queries_total`` counts every prompt
token an engine looked up when it scheduled a request (again after a preemption),
``vllm:prefix_cache_hits_total`` those found in its device pool and
``vllm:external_prefix_cache_hits_total`` those loaded through its KV connector (the DRAM tier,
or KV moved from another engine through SAGA's node KV store, whose blocks loaded are counted by
``vllm:saga_kv_store_loaded_blocks_total``; the gateway counts the calls it sent to a session's
new engine in ``saga_gateway_kv_moves_total``: re-homed by the router, or stolen, counted in
``saga_gateway_steals_total``). What was neither had to be computed: the
prefilled tokens. Of those, the calls' new tokens had to be computed anyway; the rest is
**re-prefilled context**, the waste a cache exists to avoid. The responses' ``cached_tokens``
give the same per call (without preemptions) and are kept as a cross-check.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BLOCK_TOKENS",
    "COUNTERS",
    "FIGURES",
    "CallRecord",
    "RunResult",
    "TaskRecord",
    "counter_delta",
    "over_seeds",
    "parse_counters",
    "summarize",
]

COUNTERS = {
    "vllm:prefix_cache_queries_total": "queries",
    "vllm:prefix_cache_hits_total": "hits",
    "vllm:external_prefix_cache_queries_total": "external_queries",
    "vllm:external_prefix_cache_hits_total": "external_hits",
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:generation_tokens_total": "generation_tokens",
    "vllm:num_preemptions_total": "preemptions",
    "vllm:saga_kv_store_loaded_blocks_total": "kv_loaded_blocks",
    "vllm:saga_kv_store_saved_blocks_total": "kv_saved_blocks",
    "vllm:saga_kv_store_load_s_total": "kv_load_s",
    "saga_gateway_rehomes_total": "rehomes",
    "saga_gateway_kv_moves_total": "kv_moves",
    "saga_gateway_steals_total": "steals",
    "saga_gateway_retries_total": "retries",
}
"""Counter → short name (summed over label sets: engines, models)."""

SKIPPED = {"saga_gateway_steals_total": 'where="missed"'}
"""Label sets a counter's sum leaves out (a steal that missed its call moved nothing)."""

BLOCK_TOKENS = 32
"""Tokens per KV block of SAGA's engines (``saga.vllm.serve``'s block size)."""

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_counters(text: str) -> dict[str, float]:
    """The :data:`COUNTERS` found in a Prometheus text exposition, by short name."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None or m.group(1) not in COUNTERS:
            continue
        if SKIPPED.get(m.group(1), "\0") in (m.group(2) or ""):
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        key = COUNTERS[m.group(1)]
        out[key] = out.get(key, 0.0) + value
    return out


def counter_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """``after - before`` for every counter ``after`` has."""
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


@dataclass(frozen=True)
class CallRecord:
    """One call as the client saw it (times from the run's start)."""

    task_id: str
    index: int
    start_s: float
    end_s: float
    status: int
    prompt_tokens: int
    new_tokens: int
    context_tokens: int
    """Tokens of the prompt that an earlier call of the task had seen (prompt - new)."""
    cached_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class TaskRecord:
    """One task: its calls, when it started (its arrival) and ended (its last answer)."""

    task_id: str
    start_s: float
    end_s: float
    calls: tuple[CallRecord, ...]
    planned_calls: int
    error: str = ""

    @property
    def tct_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class RunResult:
    """One system on one seed: records, counter deltas (engines summed, gateway) and figures."""

    system: str
    seed: int
    position: int
    """Where this run came in the seed's order (0: first)."""
    tasks: list[TaskRecord]
    engine_counters: list[dict[str, float]]
    gateway_counters: dict[str, float]
    wall_s: float
    load_before: float
    load_after: float
    figures: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"system": self.system, "seed": self.seed, "position": self.position,
                "wall_s": self.wall_s, "load_before": self.load_before,
                "load_after": self.load_after, "figures": self.figures,
                "engine_counters": self.engine_counters,
                "gateway_counters": self.gateway_counters,
                "tasks": [{**asdict(t), "tct_s": t.tct_s} for t in self.tasks]}


def _p95(xs: Sequence[float]) -> float:
    return float(np.percentile(xs, 95)) if xs else math.nan


def summarize(run: RunResult) -> dict[str, float]:
    """The run's figures: TCT, cache use from the engines' counters (and from the responses),
    calls per second, failures."""
    done = [t for t in run.tasks if not t.error]
    calls = [c for t in run.tasks for c in t.calls if c.status == 200]
    tot: dict[str, float] = {}
    for e in run.engine_counters:
        for k, v in e.items():
            tot[k] = tot.get(k, 0.0) + v
    queries = tot.get("queries", 0.0)
    hits = tot.get("hits", 0.0) + tot.get("external_hits", 0.0)
    # No prefix cache: no lookups; every prompt token the engine took was computed.
    prefilled = queries - hits if queries else tot.get("prompt_tokens", 0.0)
    new = float(sum(c.new_tokens for c in calls))
    span = (max(c.end_s for c in calls) - min(c.start_s for c in calls)) if calls else 0.0
    tcts = [t.tct_s for t in done]
    return {
        "tasks": float(len(run.tasks)), "tasks_failed": float(len(run.tasks) - len(done)),
        "calls": float(len(calls)),
        "calls_planned": float(sum(t.planned_calls for t in run.tasks)),
        "tct_mean_s": float(np.mean(tcts)) if tcts else math.nan, "tct_p95_s": _p95(tcts),
        "calls_per_s": len(calls) / span if span > 0 else math.nan,
        "prompt_tokens": float(sum(c.prompt_tokens for c in calls)),
        "new_tokens": new,
        "engine_queries": queries, "engine_hits": tot.get("hits", 0.0),
        "engine_external_hits": tot.get("external_hits", 0.0),
        "engine_prefilled_tokens": prefilled,
        "reprefilled_context_tokens": max(0.0, prefilled - new),
        "hit_rate": hits / queries if queries else 0.0,
        "preemptions": tot.get("preemptions", 0.0),
        "response_cached_tokens": float(sum(c.cached_tokens for c in calls)),
        "response_reprefilled_context_tokens": float(sum(
            max(0, c.context_tokens - c.cached_tokens) for c in calls)),
        # Only full blocks can be cached: the context's last partial block is always computed.
        "response_reprefilled_block_tokens": float(sum(
            max(0, c.context_tokens // BLOCK_TOKENS * BLOCK_TOKENS - c.cached_tokens)
            for c in calls)),
        "rehomes": run.gateway_counters.get("rehomes", 0.0),
        "steals": run.gateway_counters.get("steals", 0.0),
        "kv_moves": run.gateway_counters.get("kv_moves", 0.0),
        "kv_loaded_blocks": tot.get("kv_loaded_blocks", 0.0),
    }


FIGURES = ("tct_mean_s", "tct_p95_s", "reprefilled_context_tokens", "hit_rate", "calls_per_s",
           "response_reprefilled_context_tokens", "response_reprefilled_block_tokens",
           "preemptions", "rehomes", "steals", "kv_moves", "kv_loaded_blocks")
"""The figures reported per system over seeds (mean ± std)."""


def over_seeds(runs: Sequence[RunResult], systems: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per system: each figure's mean, standard deviation and per-seed values."""
    out: dict[str, dict[str, Any]] = {}
    for s in systems:
        mine = sorted((r for r in runs if r.system == s), key=lambda r: r.seed)
        row: dict[str, Any] = {"seeds": [r.seed for r in mine]}
        for f in FIGURES:
            xs = [r.figures.get(f, math.nan) for r in mine]
            finite = [x for x in xs if math.isfinite(x)]
            row[f] = {"mean": float(np.mean(finite)) if finite else math.nan,
                      "std": float(np.std(finite)) if len(finite) > 1 else 0.0, "values": xs}
        out[s] = row
    return out
