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
import gc
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from saga.policy.errors import SagaConfigError
from saga.vllm.compare_results import (
    ENGINES,
    SAGA_ENGINE,
    SEED_METRICS,
    STOCK_ENGINE,
    CallRecord,
    CompareResult,
    EngineRun,
    SessionRecord,
    seed_spread,
    summarise,
)
from saga.vllm.engine import AsyncSagaEngine, CallResult
from saga.vllm.models import cpu_threads as unbound_threads
from saga.vllm.models import scoped_env
from saga.vllm.workload import SessionPlan, Workload, WorkloadConfig, build_workload

Driver = Literal["inproc", "async-llm"]
DRIVERS: tuple[str, ...] = ("inproc", "async-llm")
OnCall = Callable[[str, int], None]
"""Progress callback: ``(engine name, calls finished so far)``."""

SAGA_PRESET = "saga_no_afs"
"""The SAGA engine's default preset here: WA-LRU, tool-call TTL pins and the hybrid queue, no
AFS (one engine serving one workload; ``saga_overrides={"preset": "saga"}`` adds it)."""

DEFAULT_KV_BLOCKS = 160
"""Default KV pool in blocks of 32 tokens (5,120 tokens): about two sessions' full contexts
while eight are active, so sessions compete for the cache."""

__all__ = [
    "DEFAULT_KV_BLOCKS",
    "DRIVERS",
    "ENGINES",
    "SAGA_ENGINE",
    "SAGA_PRESET",
    "SEED_METRICS",
    "STOCK_ENGINE",
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
    ``SagaSchedulerConfig.from_preset(SAGA_PRESET)`` (``"preset"`` picks another); ``model``
    is ``tiny`` or ``small`` (a random model's shape, ``saga.vllm.models.MODEL_SHAPES``;
    ``model_dir`` caches it between runs) or the path of a local Hugging Face model directory
    (:func:`saga.vllm.models.resolve_model`).
    ``dram_blocks`` > 0 gives both engines a DRAM tier of that many blocks through vLLM's
    ``OffloadingConnector``: stock vLLM with its LRU policy, SAGA with WA-LRU (``saga_eta``,
    ranked by predicted next use, when the preset's eviction is ``eta``) and a prefetch during
    each tool call at ``prefetch_quantile`` of the tool's fitted latency.
    ``record_steps`` > 0 logs each engine's last that many steps (work and wall time, see
    :mod:`saga.vllm.steps`; stock vLLM then runs vLLM's scheduler plus that log) into
    :attr:`EngineRun.steps`; it needs the in-process driver. ``cpu_threads`` runs each engine
    on that many unbound OpenMP threads (:func:`saga.vllm.models.cpu_threads`; None: vLLM's
    core binding, which stalls on a shared machine).
    """

    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    kv_blocks: int = DEFAULT_KV_BLOCKS
    block_size: int = 32
    driver: Driver = "inproc"
    saga_overrides: Mapping[str, Any] = field(default_factory=dict)
    model_dir: Path | None = None
    engines: tuple[str, ...] = ENGINES
    model: str = "tiny"
    dram_blocks: int = 0
    prefetch_quantile: float | None = 0.5
    record_steps: int = 0
    cpu_threads: int | None = 1

    def __post_init__(self) -> None:
        from saga.vllm.models import resolve_model

        # A bad name or directory fails here, before any engine starts.
        resolve_model(self.model).check_workload(self.workload.max_context,
                                                 self.workload.vocab_size)
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
        bad = [e for e in self.engines if e not in ENGINES]
        if bad or not self.engines:
            raise SagaConfigError(f"engines must be drawn from {ENGINES}, got {self.engines!r}")
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
        return SagaSchedulerConfig.from_dict({"preset": SAGA_PRESET, **dict(self.saga_overrides)})

    @property
    def kv_tokens(self) -> int:
        """Token capacity of the KV pool."""
        return self.kv_blocks * self.block_size


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
    (:func:`~saga.vllm.models.cpu_threads`).
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
    return summarise(name, start_s, wall, records, stats, prefetches, steps)


def dram_policy(config: CompareConfig) -> str:
    """The SAGA engine's DRAM-tier cache policy: the one matching its preset's eviction
    (``saga_eta`` for ``eta``, else WA-LRU)."""
    from saga.vllm.policies import eviction_enactment

    eviction = config.saga_config().effective_preset().eviction.build()
    return eviction_enactment(eviction).dram_policy


def engine_kwargs(config: CompareConfig, model_dir: Path, engine: str) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments of ``engine`` ("stock" or "saga") for ``config``."""
    from saga.vllm.models import (
        kv_bytes_for_blocks,
        kv_bytes_per_block,
        model_shape,
        vllm_engine_kwargs,
    )
    from saga.vllm.offload import offload_engine_kwargs

    shape = model_shape(config.model)
    fit = (config.kv_blocks - 1) * config.block_size
    tier: dict[str, Any] = {}
    if config.dram_blocks:
        tier = offload_engine_kwargs(
            config.dram_blocks * kv_bytes_per_block(config.block_size, shape),
            policy=dram_policy(config) if engine == SAGA_ENGINE else "lru")
    return vllm_engine_kwargs(
        model_dir, kv_bytes_for_blocks(config.kv_blocks, config.block_size, shape),
        saga=config.saga_config() if engine == SAGA_ENGINE else None,
        block_size=config.block_size,
        max_model_len=min(fit, config.workload.max_context + 64, shape.max_positions),
        max_num_seqs=max(8, config.workload.sessions), seed=config.workload.seed, shape=shape,
        record_steps=config.record_steps, **tier)


def run_compare(config: CompareConfig, *, on_call: OnCall | None = None,
                on_engine: Callable[[str], None] | None = None) -> CompareResult:
    """Run the workload on each engine of ``config`` in turn (stock first)."""
    from saga.vllm.models import resolve_model

    workload = build_workload(config.workload)
    t0 = time.monotonic()
    # Import vLLM up front so the first engine's start time is not charged for it.
    import vllm.entrypoints.llm  # noqa: F401

    import_s = time.monotonic() - t0
    with tempfile.TemporaryDirectory(prefix="saga-vllm-model-") as tmp:
        model_dir = resolve_model(config.model).local_dir(config.model_dir or tmp,
                                                          seed=config.workload.seed)
        build_s = time.monotonic() - t0 - import_s
        runs: list[EngineRun] = []
        for name in config.engines:
            kwargs = engine_kwargs(config, model_dir, name)
            if on_engine is not None:
                on_engine(name)
            prefetch = (config.prefetch_quantile if name == SAGA_ENGINE and config.dram_blocks
                        else None)
            runs.append(run_engine(name, kwargs, workload, driver=config.driver,
                                   on_call=on_call, prefetch_quantile=prefetch,
                                   cpu_threads=config.cpu_threads))
    return CompareResult(config, workload, tuple(runs), build_s, import_s)
