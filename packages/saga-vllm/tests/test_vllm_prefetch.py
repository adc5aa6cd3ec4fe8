"""Prefetch while a tool runs (``AsyncSession.prefetch`` and the engine's planned prefetch) in a
real in-process vLLM engine: the session's evicted context is back before its next call, and a
prefetch is no step of the task (the workflow model and the step count never see it).

The engine here has no DRAM tier (pins off, so eviction can happen), so the prefetch recomputes;
``test_vllm_0_offload_engine`` shows it loading from the DRAM tier instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.engine import AsyncSagaEngine, SagaSessionError
from saga.vllm.metadata import SagaMetadataError, SagaRequestMeta
from saga.vllm.testing import kv_bytes_for_blocks, scoped_env, tiny_engine_kwargs

BLOCKS = 40


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[AsyncSagaEngine]:
    with scoped_env("VLLM_ENABLE_V1_MULTIPROCESSING", "0"):
        eng = AsyncSagaEngine.from_engine_args(
            tiny_engine_kwargs(tiny_model_dir, kv_bytes_for_blocks(BLOCKS),
                               saga=SagaSchedulerConfig(eviction="walru")),
            in_process=True, prefetch_quantile=0.5)
    yield eng
    eng.shutdown()


def _tokens(seed: int, n: int) -> list[int]:
    return [1 + (seed * 7919 + i * 104729) % 1000 for i in range(n)]


async def _evicting_traffic(engine: AsyncSagaEngine, seed: int) -> None:
    for i in range(3):
        s = engine.start_session("filler", session_id=f"fill-{seed}-{i}")
        await s.call(_tokens(seed + i, 1100), 2, final=True)


def test_prefetch_brings_an_evicted_context_back_before_the_next_call(
        engine: AsyncSagaEngine) -> None:
    sched = engine.sync_engine.scheduler if engine.sync_engine else None
    assert sched is not None

    async def run(prefetch: bool, seed: int) -> int:
        await engine.reset_prefix_cache()
        s = engine.start_session("coder", session_id=f"pf-{prefetch}")
        prompt = _tokens(seed, 600)
        first = await s.call(prompt, 4, pending_tool="pytest")
        s.tool_started("pytest")
        await _evicting_traffic(engine, seed + 10)   # the tool runs; other sessions push it out
        if prefetch:
            steps = dict(sched._session_steps)
            await s.prefetch()
            assert sched._session_steps == steps     # no step of the task
        s.tool_finished()
        again = await s.call(prompt + first.output_token_ids + _tokens(seed + 1, 40), 2,
                             final=True)
        return again.num_cached_tokens

    without = asyncio.run(run(False, 1))
    with_prefetch = asyncio.run(run(True, 1))
    assert without <= 320                            # mostly evicted: the next call re-prefills
    assert with_prefetch == (600 + 4) // 32 * 32         # every full block of the context is back


def test_planned_prefetch_fires_once_the_tool_latency_is_known(engine: AsyncSagaEngine) -> None:
    async def main() -> tuple[int, list[float | None]]:
        before = engine.prefetches
        s = engine.start_session("coder", session_id="planned")
        context = _tokens(5, 200)
        delays: list[float | None] = []
        for step in range(5):
            r = await s.call(context, 2, pending_tool="grep")
            delays.append(engine.prefetch_delay("grep"))
            s.tool_started("grep")
            await asyncio.sleep(0.05 if step < 3 else 0.5)   # then the tool runs long
            s.tool_finished()
            context = context + r.output_token_ids + _tokens(50 + step, 16)
        await s.call(context, 2, final=True)
        return engine.prefetches - before, delays

    sent, delays = asyncio.run(main())
    # No plan before 3 observed durations; then it prefetches at the fitted median — well
    # inside the two long runs, so both sessions' prefetches went out.
    assert delays[:3] == [None, None, None]
    assert all(d is not None and d < 0.5 for d in delays[3:])
    assert sent == 2


def test_prefetch_misuse_is_a_clear_error(engine: AsyncSagaEngine) -> None:
    s = engine.start_session("coder", session_id="misuse")

    async def main() -> None:
        with pytest.raises(SagaSessionError, match="waiting on a tool"):
            await s.prefetch()
        await s.call(_tokens(9, 64), 2, pending_tool="ls")
        with pytest.raises(SagaSessionError, match="waiting on a tool"):
            await s.prefetch()
        s.tool_started("ls")
        s.tool_finished()
        await s.call(_tokens(9, 80), 2, final=True)

    asyncio.run(main())
    with pytest.raises(SagaMetadataError, match=r"saga\.prefetch needs saga\.pending_tool"):
        SagaRequestMeta("x", prefetch=True)
    with pytest.raises(SagaMetadataError, match=r"saga\.prefetch must be a bool"):
        SagaRequestMeta("x", pending_tool="t", prefetch=1)  # type: ignore[arg-type]
    with pytest.raises(SagaSessionError, match="prefetch_quantile"):
        AsyncSagaEngine(engine.sync_engine, prefetch_quantile=1.5)
