"""Stock vLLM against SAGA-in-vLLM on one agent workload: same model, KV budget and seed.

Both engines run the same client code (:class:`~saga.vllm.engine.AsyncSagaEngine`): each
session of the workload is an asyncio task that calls the engine, sleeps through its tool, and
calls again with the grown context. Stock vLLM (prefix caching on, default scheduler) ignores
the SAGA metadata; SAGA's scheduler uses it. Everything measured comes from what the engine
returns to the client (``num_cached_tokens`` per call, wall-clock times), so the two columns
are measured the same way; SAGA's own counters are added when its scheduler runs in-process.

Engines run one after the other in this process (``driver="inproc"``: the engine core lives
here and is stepped by a pump task — no second process competing for the cores) or through
vLLM's ``AsyncLLM`` with its engine-core process (``driver="async-llm"``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from saga.policy.errors import SagaConfigError
from saga.vllm.engine import AsyncSagaEngine, CallResult
from saga.vllm.testing import cpu_threads as unbound_threads
from saga.vllm.testing import scoped_env
from saga.vllm.workload import SessionPlan, Workload, WorkloadConfig, build_workload

Driver = Literal["inproc", "async-llm"]
DRIVERS: tuple[str, ...] = ("inproc", "async-llm")
OnCall = Callable[[str, int], None]
"""Progress callback: ``(engine name, calls finished so far)``."""

DEFAULT_KV_BLOCKS = 160
"""Default KV pool in blocks of 32 tokens (5,120 tokens): about two sessions' full contexts
while eight are active, so sessions compete for the cache."""

__all__ = [
    "DEFAULT_KV_BLOCKS",
    "DRIVERS",
    "SEED_METRICS",
    "CallRecord",
    "CompareConfig",
    "CompareResult",
    "EngineRun",
    "SessionRecord",
    "drive_workload",
    "run_compare",
    "run_engine",
    "seed_spread",
]


@dataclass(frozen=True)
class CompareConfig:
    """One comparison: the workload, the KV pool (blocks) and SAGA's scheduler switches.

    ``saga_overrides`` are :class:`~saga.vllm.config.SagaSchedulerConfig` fields applied over
    ``SagaSchedulerConfig.all_on()``; ``model`` names the random model's shape
    (``saga.vllm.testing.MODEL_SHAPES``); ``model_dir`` caches it between runs.
    ``dram_blocks`` > 0 gives both engines a DRAM tier of that many blocks through vLLM's
    ``OffloadingConnector``: stock vLLM with its LRU policy, SAGA with WA-LRU and a prefetch
    during each tool call at ``prefetch_quantile`` of the tool's fitted latency.
    ``record_steps`` > 0 logs each engine's last that many steps (work and wall time, see
    :mod:`saga.vllm.steps`; stock vLLM then runs vLLM's scheduler plus that log) into
    :attr:`EngineRun.steps`; it needs the in-process driver. ``cpu_threads`` runs each engine
    on that many unbound OpenMP threads (:func:`saga.vllm.testing.cpu_threads`; None: vLLM's
    core binding, which stalls on a shared machine).
    """

    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    kv_blocks: int = DEFAULT_KV_BLOCKS
    block_size: int = 32
    driver: Driver = "inproc"
    saga_overrides: Mapping[str, Any] = field(default_factory=dict)
    model_dir: Path | None = None
    engines: tuple[str, ...] = ("stock", "saga")
    model: str = "tiny"
    dram_blocks: int = 0
    prefetch_quantile: float | None = 0.5
    record_steps: int = 0
    cpu_threads: int | None = 1

    def __post_init__(self) -> None:
        from saga.vllm.testing import model_shape

        model_shape(self.model)
        if self.dram_blocks < 0:
            raise SagaConfigError(f"dram_blocks must be >= 0, got {self.dram_blocks}")
        if self.dram_blocks and self.driver == "inproc":
            # vLLM keeps the worker-side KV connector in a process-wide singleton.
            raise SagaConfigError("a DRAM tier needs each engine core in its own process: "
                                  "use --driver async-llm with --dram-mb/--dram-blocks")
        if self.prefetch_quantile is not None and not 0.0 < self.prefetch_quantile < 1.0:
            raise SagaConfigError(
                f"prefetch_quantile must be in (0, 1), got {self.prefetch_quantile}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise SagaConfigError(f"cpu_threads must be >= 1 or None, got {self.cpu_threads}")
        if self.record_steps < 0:
            raise SagaConfigError(f"record_steps must be >= 0, got {self.record_steps}")
        if self.record_steps and self.driver != "inproc":
            raise SagaConfigError("record_steps reads the scheduler's step log, which only the "
                                  "in-process driver can reach: use --driver inproc")
        if self.driver not in DRIVERS:
            raise SagaConfigError(f"driver must be one of {DRIVERS}, got {self.driver!r}")
        if self.kv_blocks < 8:
            raise SagaConfigError(f"kv_blocks must be >= 8, got {self.kv_blocks}")
        if self.block_size < 1 or self.block_size % 16:
            raise SagaConfigError(
                f"block_size must be a positive multiple of 16 (32 on CPU), got {self.block_size}")
        bad = [e for e in self.engines if e not in ("stock", "saga")]
        if bad or not self.engines:
            raise SagaConfigError(f"engines must be drawn from ('stock', 'saga'), got "
                                  f"{self.engines!r}")
        # vLLM reserves one block and refuses a max_model_len the pool cannot hold.
        fit = (self.kv_blocks - 1) * self.block_size
        if self.workload.max_context > fit:
            raise SagaConfigError(
                f"the KV pool ({self.kv_blocks} blocks = {fit} usable tokens) cannot hold one "
                f"session's longest context (max context {self.workload.max_context} tokens); "
                "raise --kv-blocks or lower --max-context")
        # Validate the SAGA config now, not after the stock engine has run for a minute.
        self.saga_config()

    def saga_config(self) -> Any:
        """The :class:`SagaSchedulerConfig` of the SAGA engine."""
        from saga.vllm.config import SagaSchedulerConfig

        # from_dict names unknown fields instead of failing with a TypeError.
        return SagaSchedulerConfig.from_dict(
            {**SagaSchedulerConfig.all_on().to_dict(), **dict(self.saga_overrides)})

    @property
    def kv_tokens(self) -> int:
        """Token capacity of the KV pool."""
        return self.kv_blocks * self.block_size


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
        stock, saga = self.run("stock"), self.run("saga")
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


# --- driving one engine ---------------------------------------------------------------------


async def _drive_session(engine: AsyncSagaEngine, plan: SessionPlan, t0: float,
                         clock: Callable[[], float], on_call: Callable[[], None]
                         ) -> SessionRecord:
    """One agent task: call → tool sleep → call ..., its context growing by each output."""
    arrival = t0 + plan.arrival_s
    await asyncio.sleep(max(0.0, arrival - clock()))
    session = engine.start_session(plan.agent_type, plan.tenant, session_id=plan.session_id)
    context: list[int] = []
    records: list[CallRecord] = []
    for i, call in enumerate(plan.calls):
        reusable = len(context)
        context.extend(call.new_tokens)
        result: CallResult = await session.call(
            context, call.max_tokens, pending_tool=call.tool, final=call.final)
        context.extend(result.output_token_ids)
        records.append(CallRecord(plan.session_id, i, result.prompt_tokens,
                                  result.num_cached_tokens, len(result.output_token_ids),
                                  result.latency_s, reusable))
        on_call()
        if call.tool is not None:
            session.tool_started(call.tool)
            await asyncio.sleep(call.tool_s)
            session.tool_finished()
    return SessionRecord(plan.session_id, plan.agent_type, plan.arrival_s,
                         clock() - arrival, tuple(records))


async def drive_workload(engine: AsyncSagaEngine, workload: Workload, *,
                         clock: Callable[[], float] = time.monotonic,
                         on_call: Callable[[], None] | None = None
                         ) -> tuple[list[SessionRecord], float]:
    """Run every session of ``workload`` concurrently; returns the records and the wall time."""
    t0 = clock()
    tick = on_call or (lambda: None)
    records = await asyncio.gather(*(
        _drive_session(engine, plan, t0, clock, tick) for plan in workload.sessions))
    return list(records), clock() - t0


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def _summarise(name: str, start_s: float, wall_s: float, records: list[SessionRecord],
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


async def _warm_up(engine: AsyncSagaEngine) -> None:
    """One short request so both engines start measuring warm, then an empty prefix cache."""
    s = engine.start_session("warmup", "__warmup__", session_id="__warmup__")
    await s.call(list(range(1, 65)), 2, final=True)
    await engine.reset_prefix_cache()


def run_engine(name: str, engine_kwargs: Mapping[str, Any], workload: Workload, *,
               driver: Driver = "inproc", on_call: OnCall | None = None,
               prefetch_quantile: float | None = None, cpu_threads: int | None = 1
               ) -> EngineRun:
    """Start one engine from ``engine_kwargs``, run ``workload`` on it, shut it down.

    ``start_s`` covers building the engine and one warm-up request; the workload's wall time
    starts after it. The engine runs on ``cpu_threads`` unbound threads
    (:func:`~saga.vllm.testing.cpu_threads`).
    """
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_call is not None:
            on_call(name, done)

    async def go(engine: AsyncSagaEngine, t_start: float
                 ) -> tuple[float, list[SessionRecord], float, float]:
        # One event loop for warm-up and run: AsyncLLM binds its output handler to it.
        await _warm_up(engine)
        t_run = time.monotonic()
        records, wall = await drive_workload(engine, workload, on_call=tick)
        return t_run - t_start, records, wall, t_run

    with unbound_threads(cpu_threads):
        t_start = time.monotonic()
        with scoped_env("VLLM_ENABLE_V1_MULTIPROCESSING", "0" if driver == "inproc" else None):
            engine = AsyncSagaEngine.from_engine_args(
                engine_kwargs, in_process=driver == "inproc", prefetch_quantile=prefetch_quantile)
        try:
            start_s, records, wall, t_run = asyncio.run(go(engine, t_start))
            stats = engine.saga_stats()
            prefetches = engine.prefetches
            steps = tuple(s for s in engine.step_records() or () if s.start_s >= t_run)
        finally:
            engine.shutdown()
            del engine
            gc.collect()
    return _summarise(name, start_s, wall, records, stats, prefetches, steps)


def engine_kwargs(config: CompareConfig, model_dir: Path, engine: str) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments of ``engine`` ("stock" or "saga") for ``config``."""
    from saga.vllm.offload import SAGA_WALRU, offload_engine_kwargs
    from saga.vllm.testing import (
        kv_bytes_for_blocks,
        kv_bytes_per_block,
        model_shape,
        tiny_engine_kwargs,
    )

    shape = model_shape(config.model)
    fit = (config.kv_blocks - 1) * config.block_size
    tier: dict[str, Any] = {}
    if config.dram_blocks:
        tier = offload_engine_kwargs(
            config.dram_blocks * kv_bytes_per_block(config.block_size, shape),
            policy=SAGA_WALRU if engine == "saga" else "lru")
    return tiny_engine_kwargs(
        model_dir, kv_bytes_for_blocks(config.kv_blocks, config.block_size, shape),
        saga=config.saga_config() if engine == "saga" else None,
        block_size=config.block_size, max_model_len=min(fit, config.workload.max_context + 64),
        max_num_seqs=max(8, config.workload.sessions), seed=config.workload.seed, shape=shape,
        record_steps=config.record_steps, **tier)


def run_compare(config: CompareConfig, *, on_call: OnCall | None = None,
                on_engine: Callable[[str], None] | None = None) -> CompareResult:
    """Run the workload on each engine of ``config`` in turn (stock first)."""
    from saga.vllm.testing import build_tiny_llama, model_shape

    workload = build_workload(config.workload)
    t0 = time.monotonic()
    # Import vLLM up front so the first engine's start time is not charged for it.
    import vllm.entrypoints.llm  # noqa: F401

    import_s = time.monotonic() - t0
    with tempfile.TemporaryDirectory(prefix="saga-vllm-model-") as tmp:
        model_dir = build_tiny_llama(config.model_dir or tmp, seed=config.workload.seed,
                                     shape=model_shape(config.model))
        build_s = time.monotonic() - t0 - import_s
        runs: list[EngineRun] = []
        for name in config.engines:
            kwargs = engine_kwargs(config, model_dir, name)
            if on_engine is not None:
                on_engine(name)
            prefetch = (config.prefetch_quantile if name == "saga" and config.dram_blocks
                        else None)
            runs.append(run_engine(name, kwargs, workload, driver=config.driver,
                                   on_call=on_call, prefetch_quantile=prefetch,
                                   cpu_threads=config.cpu_threads))
    return CompareResult(config, workload, tuple(runs), build_s, import_s)


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
