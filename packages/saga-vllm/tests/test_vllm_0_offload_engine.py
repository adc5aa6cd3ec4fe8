"""Runs first among the engine modules (the `0` in its name): vLLM keeps one worker-side KV
connector and one distributed state per process, and an older in-process engine collected in the
middle of this module's steps tears that state down under the engine with the DRAM tier.

The DRAM tier in a real in-process vLLM engine: a session's blocks evicted from the device
pool come back from DRAM as cached tokens, with the same output as a fresh prefill.

Pool: 40 blocks of 32 tokens (1,280 tokens); the 1,200-token filler evicts the session's
640-token prompt from it. On the CPU build the tier runs through
``saga.vllm.offload_host.HostOffloadingSpec`` (vLLM's own worker is CUDA/XPU only).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.metadata import SagaRequestMeta, saga_extra_args
from saga.vllm.offload import REUSE_PARAM, WALRUCachePolicy, offload_engine_kwargs, offload_manager
from saga.vllm.testing import (
    engine_scheduler,
    kv_bytes_for_blocks,
    kv_bytes_per_block,
    tiny_engine_kwargs,
)

BLOCKS = 40
MAX_LEN = BLOCKS * 32
SESSION = np.random.default_rng(1).integers(1, 1000, 640).tolist()
FILLER = np.random.default_rng(2).integers(1, 1000, 1200).tolist()


def session_then_filler_then_session(llm: Any) -> tuple[Any, Any]:
    first = generate(llm, SESSION)
    generate(llm, FILLER)  # evicts the session from the 40-block device pool
    return first, generate(llm, SESSION)


@pytest.fixture(scope="module")
def stock_run(tiny_model_dir: Path) -> tuple[Any, Any]:
    """The baseline, run before the tier engine exists: vLLM's worker-side connector is a
    process-wide singleton, so no other engine may run in this process while one is set."""
    from vllm import LLM

    llm = LLM(**tiny_engine_kwargs(tiny_model_dir, kv_bytes_for_blocks(BLOCKS),
                                   max_model_len=MAX_LEN))
    try:
        return session_then_filler_then_session(llm)
    finally:
        del llm
        gc.collect()  # shut it down now, not in the middle of the tier engine's steps


@pytest.fixture(scope="module")
def tier(tiny_model_dir: Path, stock_run: tuple[Any, Any]) -> Iterator[Any]:
    from vllm import LLM
    from vllm.distributed.kv_transfer.kv_transfer_state import ensure_kv_transfer_shutdown

    kw = offload_engine_kwargs(200 * kv_bytes_per_block())
    # SAGA's scheduler with the stock preset: vLLM's behaviour, plus the engine's hint table.
    llm = LLM(**tiny_engine_kwargs(tiny_model_dir, kv_bytes_for_blocks(BLOCKS),
                                   max_model_len=MAX_LEN, saga=SagaSchedulerConfig(), **kw))
    yield llm
    del llm
    gc.collect()
    ensure_kv_transfer_shutdown()  # later test modules start engines without a connector


def generate(llm: Any, tokens: list[int], kv_params: dict[str, Any] | None = None,
             meta: SagaRequestMeta | None = None) -> Any:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    extra = {"kv_transfer_params": kv_params} if kv_params is not None else None
    if meta is not None:
        extra = {**(extra or {}), **saga_extra_args(meta)}
    params = SamplingParams(max_tokens=4, temperature=0.0, detokenize=False, ignore_eos=True,
                            extra_args=extra)
    return llm.generate([TokensPrompt(prompt_token_ids=tokens)], params, use_tqdm=False)[0]


def test_policy_is_walru(tier: Any) -> None:
    assert isinstance(offload_manager(tier)._policy, WALRUCachePolicy)


def test_evicted_session_comes_back_from_dram_as_a_hit(tier: Any,
                                                       stock_run: tuple[Any, Any]) -> None:
    first, again = session_then_filler_then_session(tier)
    assert list(again.outputs[0].token_ids) == list(first.outputs[0].token_ids)
    assert list(first.outputs[0].token_ids) == list(stock_run[0].outputs[0].token_ids)
    assert stock_run[1].num_cached_tokens <= 64  # the pool kept at most a block or two
    assert again.num_cached_tokens >= len(SESSION) - 32  # loaded back, not recomputed


def test_the_policy_reads_its_engines_hint_table(tier: Any) -> None:
    """The scheduler's own table (not a process-wide one) feeds this engine's DRAM tier."""
    policy = offload_manager(tier)._policy
    sched = engine_scheduler(tier)
    assert policy.hints is sched.reuse_hints and sched.offload_policies == [policy]
    tokens = np.random.default_rng(5).integers(1, 1000, 256).tolist()
    generate(tier, tokens, meta=SagaRequestMeta("hinted", reuse_prob=0.125))
    generate(tier, FILLER)
    assert np.count_nonzero(policy._reuse == 0.125) >= 256 // 32


def test_request_reuse_probability_reaches_the_policy(tier: Any) -> None:
    policy = offload_manager(tier)._policy
    tokens = np.random.default_rng(3).integers(1, 1000, 256).tolist()
    generate(tier, tokens, {REUSE_PARAM: 0.0})
    generate(tier, FILLER)
    assert np.count_nonzero(policy._reuse == 0.0) >= 256 // 32


def test_prefetch_during_the_tool_loads_the_session_from_dram(tier: Any) -> None:
    import asyncio

    from saga.vllm.engine import AsyncSagaEngine

    engine = AsyncSagaEngine(tier)
    context = np.random.default_rng(4).integers(1, 1000, 640).tolist()

    async def main() -> tuple[int, int]:
        s = engine.start_session("coder", session_id="dram-prefetch")
        first = await s.call(context, 4, pending_tool="pytest")
        s.tool_started("pytest")
        generate(tier, FILLER)  # while the tool runs, the session is pushed out to DRAM
        loaded = await s.prefetch()
        s.tool_finished()
        again = await s.call(context + first.output_token_ids + [5] * 40, 2, final=True)
        return loaded.num_cached_tokens, again.num_cached_tokens

    loaded, again = asyncio.run(main())
    assert loaded >= len(context) - 32      # the prefetch found it in DRAM: loaded, not computed
    assert again >= len(context) - 32       # and the next call finds it in device memory
