"""What a stock-vs-SAGA comparison measured: per call, per session, per engine, and the ratios.

Everything here comes from what the engine returned to the client (``num_cached_tokens`` per
call, wall-clock times), so both engines are measured the same way; SAGA's own counters are
added when its scheduler runs in-process (``EngineRun.saga_stats``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.workload import Workload

if TYPE_CHECKING:
    from saga.vllm.compare import CompareConfig


STOCK_ENGINE, SAGA_ENGINE = "stock", "saga"
ENGINES = (STOCK_ENGINE, SAGA_ENGINE)
"""The engines a comparison runs: vLLM's stock scheduler, and ``SagaScheduler``."""


@dataclass(frozen=True)
class CallRecord:
    """One finished call as the client saw it.

    ``reusable_tokens`` is the part of the prompt the engine has computed before for this
    session (the previous prompt and output); only those can be re-prefilled. The rest (the
    new tool observation) is new to any cache.
    """

    session_id: str
    index: int
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    latency_s: float
    reusable_tokens: int = 0

    @property
    def reprefilled_tokens(self) -> int:
        """Tokens of the session's earlier context that had to be prefilled again."""
        return max(0, min(self.reusable_tokens, self.prompt_tokens) - self.cached_tokens)


@dataclass(frozen=True)
class SessionRecord:
    """One finished task: task completion time runs from its arrival to its last output."""

    session_id: str
    agent_type: str
    arrival_s: float
    tct_s: float
    calls: tuple[CallRecord, ...]


@dataclass(frozen=True)
class EngineRun:
    """What one engine did with the workload."""

    name: str
    start_s: float
    wall_s: float
    calls: int
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    tct_mean_s: float
    tct_p95_s: float
    call_latency_mean_s: float
    call_latency_p95_s: float
    reprefilled_tokens: int = 0
    sessions: tuple[SessionRecord, ...] = ()
    saga_stats: dict[str, Any] | None = None
    prefetches: int = 0
    steps: tuple[Any, ...] = ()
    """The engine's :class:`~saga.vllm.steps.StepRecord` of the workload (warm-up left out),
    when the run recorded steps."""

    @property
    def recomputed_tokens(self) -> int:
        """Prompt tokens prefilled because the prefix cache did not hold them (prompt − cached),
        new observation tokens included; see ``reprefilled_tokens`` for evicted context only."""
        return self.prompt_tokens - self.cached_tokens

    @property
    def hit_rate(self) -> float:
        """Share of prompt tokens served from the prefix cache."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def calls_per_s(self) -> float:
        """LLM calls finished per second of wall time."""
        return self.calls / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Prompt and output tokens served per second of wall time."""
        total = self.prompt_tokens + self.output_tokens
        return total / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self, *, sessions: bool = False) -> dict[str, Any]:
        """JSON-ready summary (``sessions``: per-session and per-call records too)."""
        out: dict[str, Any] = {
            "name": self.name,
            "engine_start_s": round(self.start_s, 3),
            "wall_s": round(self.wall_s, 3),
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "recomputed_tokens": self.recomputed_tokens,
            "reprefilled_tokens": self.reprefilled_tokens,
            "output_tokens": self.output_tokens,
            "prefix_hit_rate": round(self.hit_rate, 4),
            "tct_mean_s": round(self.tct_mean_s, 3),
            "tct_p95_s": round(self.tct_p95_s, 3),
            "call_latency_mean_s": round(self.call_latency_mean_s, 4),
            "call_latency_p95_s": round(self.call_latency_p95_s, 4),
            "calls_per_s": round(self.calls_per_s, 3),
            "tokens_per_s": round(self.tokens_per_s, 1),
            "prefetches": self.prefetches,
            "saga_stats": self.saga_stats,
            "steps_recorded": len(self.steps),
        }
        if sessions:
            out["sessions"] = [dataclasses.asdict(s) for s in self.sessions]
            out["steps"] = [dataclasses.asdict(s) for s in self.steps]
        return out


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return 1.0 if a == 0 else math.inf
    return a / b


@dataclass(frozen=True)
class CompareResult:
    """Both runs and the SAGA/stock ratios."""

    config: CompareConfig
    workload: Workload
    runs: tuple[EngineRun, ...]
    model_build_s: float = 0.0
    vllm_import_s: float = 0.0

    def run(self, name: str) -> EngineRun | None:
        """The run of engine ``name`` ("stock" or "saga"), if it ran."""
        return next((r for r in self.runs if r.name == name), None)

    def ratios(self) -> dict[str, float]:
        """SAGA ÷ stock for each metric (empty unless both ran)."""
        stock, saga = self.run(STOCK_ENGINE), self.run(SAGA_ENGINE)
        if stock is None or saga is None:
            return {}
        return {
            "recomputed_tokens": _ratio(saga.recomputed_tokens, stock.recomputed_tokens),
            "reprefilled_tokens": _ratio(saga.reprefilled_tokens, stock.reprefilled_tokens),
            "prefix_hit_rate": _ratio(saga.hit_rate, stock.hit_rate),
            "tct_mean_s": _ratio(saga.tct_mean_s, stock.tct_mean_s),
            "tct_p95_s": _ratio(saga.tct_p95_s, stock.tct_p95_s),
            "calls_per_s": _ratio(saga.calls_per_s, stock.calls_per_s),
            "tokens_per_s": _ratio(saga.tokens_per_s, stock.tokens_per_s),
            "wall_s": _ratio(saga.wall_s, stock.wall_s),
        }

    def to_dict(self, *, sessions: bool = False) -> dict[str, Any]:
        """JSON-ready report: settings, workload sizes, both runs and the ratios."""
        cfg = self.config
        return {
            "settings": {
                "workload": dataclasses.asdict(cfg.workload),
                "model": cfg.model,
                "kv_blocks": cfg.kv_blocks,
                "kv_tokens": cfg.kv_tokens,
                "dram_blocks": cfg.dram_blocks,
                "prefetch_quantile": cfg.prefetch_quantile if cfg.dram_blocks else None,
                "block_size": cfg.block_size,
                "driver": cfg.driver,
                "saga_config": cfg.saga_config().to_dict(),
                "record_steps": cfg.record_steps,
                "cpu_threads": cfg.cpu_threads,
            },
            "workload": self.workload.summary(),
            "vllm_import_s": round(self.vllm_import_s, 3),
            "model_build_s": round(self.model_build_s, 3),
            "runs": {r.name: r.to_dict(sessions=sessions) for r in self.runs},
            "saga_over_stock": {k: (round(v, 4) if math.isfinite(v) else v)
                                for k, v in self.ratios().items()},
        }


    def measurement(self) -> dict[str, Any]:
        """Both runs as plain data in the form ``saga.bench.validate`` reads: the sessions,
        each engine's preset (``Preset.layers()``: what the simulator must run to stand for
        it), its recorded steps, outputs and times. Needs both runs, with steps recorded."""
        cfg = self.config
        saga_cfg = cfg.saga_config()
        presets = {STOCK_ENGINE: SagaSchedulerConfig().effective_preset(),
                   SAGA_ENGINE: saga_cfg.effective_preset()}
        saga_run = self.run(SAGA_ENGINE)
        usable = ((saga_run.saga_stats or {}).get("usable_blocks") if saga_run is not None
                  else None) or cfg.kv_blocks
        runs: dict[str, Any] = {}
        for run in self.runs:
            preset = presets[run.name]
            runs[run.name] = {
                "preset": {"name": preset.name, "layers": preset.layers()},
                "pin_cap_fraction": saga_cfg.pin_cap_fraction,
                "steps": [[s.start_s, s.prefill_tokens, s.prefill_context, s.decode_seqs,
                           s.decode_context, s.busy_after] for s in run.steps],
                "tct_mean_s": run.tct_mean_s, "recomputed_tokens": run.recomputed_tokens,
                "call_time_s": sum(c.latency_s for t in run.sessions for c in t.calls)
                / max(1, len(run.sessions)),
                "outputs": {t.session_id: [c.output_tokens for c in t.calls]
                            for t in run.sessions}}
        w = cfg.workload
        return {
            "engine": {"block_size": cfg.block_size, "kv_blocks": cfg.kv_blocks,
                       "usable_blocks": int(usable)},
            "workload": {"seed": w.seed, "sessions": w.sessions, "max_context": w.max_context,
                         "system_tokens": w.system_tokens},
            "sessions": [{"session_id": p.session_id, "agent_type": p.agent_type,
                          "tenant": p.tenant, "arrival_s": p.arrival_s,
                          "calls": [{"new_tokens": len(c.new_tokens),
                                     "max_tokens": c.max_tokens, "tool": c.tool,
                                     "tool_s": c.tool_s} for c in p.calls]}
                         for p in self.workload.sessions],
            "runs": runs}


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def summarise(name: str, start_s: float, wall_s: float, records: list[SessionRecord],
               saga_stats: dict[str, Any] | None, prefetches: int = 0,
               steps: tuple[Any, ...] = ()) -> EngineRun:
    calls = [c for s in records for c in s.calls]
    tcts = [s.tct_s for s in records]
    lat = [c.latency_s for c in calls]
    return EngineRun(
        name=name, start_s=start_s, wall_s=wall_s, calls=len(calls),
        prompt_tokens=sum(c.prompt_tokens for c in calls),
        cached_tokens=sum(min(c.cached_tokens, c.prompt_tokens) for c in calls),
        output_tokens=sum(c.output_tokens for c in calls),
        tct_mean_s=float(np.mean(tcts)) if tcts else 0.0, tct_p95_s=_percentile(tcts, 95),
        call_latency_mean_s=float(np.mean(lat)) if lat else 0.0,
        call_latency_p95_s=_percentile(lat, 95),
        reprefilled_tokens=sum(c.reprefilled_tokens for c in calls),
        sessions=tuple(records), saga_stats=saga_stats, prefetches=prefetches, steps=steps)


SEED_METRICS: tuple[str, ...] = ("recomputed_tokens", "reprefilled_tokens", "prefix_hit_rate",
                                 "tct_mean_s", "tct_p95_s", "calls_per_s")
"""The SAGA ÷ stock ratios summarised over seeds."""


def seed_spread(results: list[CompareResult]) -> dict[str, dict[str, float]]:
    """Median, min and max over seeds of each SAGA ÷ stock ratio (and the geometric mean, the
    right average of ratios); runs where one engine is missing are skipped."""
    out: dict[str, dict[str, float]] = {}
    for key in SEED_METRICS:
        vals = [r.ratios()[key] for r in results if r.ratios()]
        vals = [v for v in vals if math.isfinite(v) and v > 0]
        if not vals:
            continue
        arr = np.asarray(vals, dtype=np.float64)
        out[key] = {"median": float(np.median(arr)), "min": float(arr.min()),
                    "max": float(arr.max()), "geomean": float(np.exp(np.log(arr).mean())),
                    "seeds": float(arr.size)}
    return out


__all__ = [
    "SEED_METRICS",
    "CallRecord",
    "CompareResult",
    "EngineRun",
    "SessionRecord",
    "seed_spread",
    "summarise",
]
