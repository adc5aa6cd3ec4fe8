"""The ``saga_eta`` preset in a real in-process vLLM engine: the free-block queue ranks by
predicted-next-use value, fed by the scheduler, and under memory pressure keeps the session in
a short tool call while the ended session's blocks go first; vLLM's LRU does the opposite.

One engine (12 blocks of 32 tokens) serves both: its scheduler is swapped per preset.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.metadata import SagaRequestMeta
from saga.vllm.policies import ETA_VALUE, NATIVE_LRU
from saga.vllm.testing import (
    ManualClock,
    kv_bytes_for_blocks,
    run_prompts,
    swap_scheduler,
    tiny_engine_kwargs,
)

BLOCKS = 12


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> Iterator[Any]:
    from vllm import LLM

    yield LLM(**tiny_engine_kwargs(tiny_model_dir, kv_bytes_for_blocks(BLOCKS),
                                   saga=SagaSchedulerConfig()))


def tokens(seed: int, n: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(1, 1000, n)]


def run(llm: Any, config: SagaSchedulerConfig) -> tuple[dict[str, int], Any]:
    """A in a tool, B ended, then a plain burst that needs cached blocks evicted; then A comes
    back and B's prompt is asked for again. Returns the cached tokens of both."""
    sched = swap_scheduler(llm, config.to_dict())
    clock = ManualClock(0.0)
    sched.clock = clock
    try:
        a, b = tokens(1, 128), tokens(2, 128)
        run_prompts(llm, [a], metas=[SagaRequestMeta("A", pending_tool="bash")])
        clock.t = 1.0
        run_prompts(llm, [b], metas=[SagaRequestMeta("B", final=True)])
        clock.t = 2.0
        run_prompts(llm, [tokens(3, 200)])  # 7 blocks: 4 free, 3 cached evicted
        clock.t = 3.0
        back = run_prompts(llm, [a + tokens(4, 40)],
                           metas=[SagaRequestMeta("A", tool_latency_s=2.0, final=True)])
        again = run_prompts(llm, [b])
        return {"A": back[0].num_cached_tokens, "B": again[0].num_cached_tokens}, sched
    finally:
        sched.reset_prefix_cache()


def test_eta_keeps_the_session_in_a_tool_and_drops_the_ended_one(llm: Any) -> None:
    # Pins off: what keeps A's blocks here is the eviction order alone.
    eta, sched = run(llm, SagaSchedulerConfig.from_preset("saga_eta", ttl="off"))
    stats = sched.saga_stats()
    assert stats["eviction_enacted"] == ETA_VALUE and stats["preset"].startswith("saga_eta")
    assert sched.block_queue.ranker is sched.value_ranker is not None
    assert sched.value_ranker.estimator is sched.policies.eviction.next_use_model()
    assert stats["evictions"]["capacity"] >= 3
    assert eta["A"] == 128  # the session in a tool kept its whole prefix
    assert eta["B"] < 128   # the ended session's blocks went first
    lru, sched = run(llm, SagaSchedulerConfig())
    assert sched.saga_stats()["eviction_enacted"] == NATIVE_LRU
    assert lru["A"] < 128   # vLLM's LRU evicts the older session, the one coming back


def test_the_whole_saga_eta_preset_serves_and_leaves_no_state(llm: Any) -> None:
    """With its value TTL on: the engine serves both sessions and frees every block."""
    sched = swap_scheduler(llm, SagaSchedulerConfig.from_preset("saga_eta").to_dict())
    try:
        a = tokens(5, 100)
        out = run_prompts(llm, [a], metas=[SagaRequestMeta("S", pending_tool="grep")],
                          max_tokens=3)
        follow = a + list(out[0].outputs[0].token_ids) + tokens(6, 20)
        run_prompts(llm, [follow], metas=[SagaRequestMeta("S", tool_latency_s=0.1, final=True)])
        est = sched.value_ranker.estimator
        assert est.session_next_use("S", sched.clock()) == float("inf")  # ended
        assert sched.saga_stats()["scheduled_requests"] == 2
        sched.release_all_pins()
        assert not any(sched.session_tables().values())
        assert sched.block_pool.get_num_free_blocks() == BLOCKS
    finally:
        sched.release_all_pins()
        swap_scheduler(llm, SagaSchedulerConfig().to_dict())
