"""`AsyncSagaEngine`: sessions as asyncio tasks over an in-process stepped `vllm.LLM`, and once
over vLLM's `AsyncLLM` (engine core in its own process) to show the same client code runs there.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.engine import AsyncSagaEngine, CallResult, SagaSessionError
from saga.vllm.testing import (
    build_tiny_llama,
    kv_bytes_for_blocks,
    scoped_env,
    tiny_engine_kwargs,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(Path(tmp_path_factory.getbasetemp()) / "tiny-llama")


@pytest.fixture(scope="module")
def engine(model: Path) -> Iterator[AsyncSagaEngine]:
    with scoped_env("VLLM_ENABLE_V1_MULTIPROCESSING", "0"):
        eng = AsyncSagaEngine.from_engine_args(
            tiny_engine_kwargs(model, kv_bytes_for_blocks(96),
                               saga=SagaSchedulerConfig.from_preset("saga_no_afs")),
            in_process=True)
    yield eng
    eng.shutdown()


def _tokens(seed: int, n: int) -> list[int]:
    return [1 + (seed * 7919 + i * 104729) % 1000 for i in range(n)]


async def _agent(engine: AsyncSagaEngine, seed: int, steps: int) -> list[CallResult]:
    s = engine.start_session("swe-bench", tenant=f"t{seed % 2}")
    context = _tokens(seed, 200)
    out: list[CallResult] = []
    for i in range(steps):
        final = i == steps - 1
        r = await s.call(context, 6, pending_tool=None if final else "search", final=final)
        out.append(r)
        if not final:
            s.tool_started("search")
            await asyncio.sleep(0.01 * (seed + 1))
            s.tool_finished()
            context = context + r.output_token_ids + _tokens(seed + 100 * i, 40)
    return out


def test_concurrent_sessions_batch_and_reuse_their_prefixes(engine: AsyncSagaEngine) -> None:
    async def main() -> list[list[CallResult]]:
        return await asyncio.gather(*(_agent(engine, seed, 3) for seed in range(4)))

    results = asyncio.run(main())
    for calls in results:
        assert [len(r.output_token_ids) for r in calls] == [6, 6, 6]
        assert calls[0].prompt_tokens == 200
        # Each later call finds at least the previous prompt's full blocks in the cache.
        for prev, cur in itertools.pairwise(calls):
            assert cur.num_cached_tokens >= (prev.prompt_tokens // 32) * 32
    stats = engine.saga_stats()
    assert stats is not None and stats["pins_created"] >= 4


def test_async_misuse_is_rejected_before_reaching_the_engine(engine: AsyncSagaEngine) -> None:
    async def main() -> None:
        s = engine.start_session("webarena")
        s.tool_started("click")
        with pytest.raises(SagaSessionError, match="still running"):
            await s.call([1, 2, 3], 2)
        s.tool_finished()
        r = await s.call([1, 2, 3], 2, final=True)
        assert r.prompt_tokens == 3
        with pytest.raises(SagaSessionError, match="finished"):
            await s.call([1, 2, 3], 2)

    asyncio.run(main())
    with pytest.raises(SagaSessionError, match="AsyncLLM"):
        AsyncSagaEngine(object())


def test_the_same_client_runs_over_asyncllm(model: Path) -> None:
    """Engine core in its own process (stock scheduler here): metadata is passed and ignored."""
    kw = tiny_engine_kwargs(model, kv_bytes_for_blocks(64))

    async def main() -> list[CallResult]:
        engine = AsyncSagaEngine.from_engine_args(kw)
        try:
            return await _agent(engine, 7, 2)
        finally:
            engine.shutdown()

    calls = asyncio.run(main())
    assert [len(r.output_token_ids) for r in calls] == [6, 6]
    assert calls[1].num_cached_tokens >= 192
