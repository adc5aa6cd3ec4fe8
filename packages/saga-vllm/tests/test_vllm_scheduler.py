"""SagaScheduler in a real in-process vLLM engine: stock equivalence, WA-LRU eviction order,
tenant isolation, metadata errors and metrics.

Pools are 12 blocks of 32 tokens, so a few requests already compete for the cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.metadata import SagaRequestMeta
from saga.vllm.scheduler import SagaScheduler
from saga.vllm.testing import (
    ManualClock,
    engine_scheduler,
    kv_bytes_for_blocks,
    run_prompts,
    tiny_engine_kwargs,
)

BLOCKS = 12




@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path) -> Iterator[dict[str, Any]]:
    from vllm import LLM

    kv = kv_bytes_for_blocks(BLOCKS)
    out = {
        "stock": LLM(**tiny_engine_kwargs(tiny_model_dir, kv)),
        "off": LLM(**tiny_engine_kwargs(tiny_model_dir, kv, saga=SagaSchedulerConfig())),
        "walru": LLM(**tiny_engine_kwargs(tiny_model_dir, kv,
                                          saga=SagaSchedulerConfig(eviction="walru"))),
        # No front-end validator: malformed metadata reaches the scheduler itself.
        "bare": LLM(**tiny_engine_kwargs(tiny_model_dir, kv, saga=SagaSchedulerConfig(),
                                         logits_processors=None)),
    }
    yield out
    for llm in out.values():
        engine_scheduler(llm).reset_prefix_cache()


def tokens(seed: int, n: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(1, 1000, n)]


def test_saga_scheduler_is_loaded(engines: dict[str, Any]) -> None:
    assert isinstance(engine_scheduler(engines["off"]), SagaScheduler)
    assert not isinstance(engine_scheduler(engines["stock"]), SagaScheduler)


def test_all_off_behaves_like_stock(engines: dict[str, Any]) -> None:
    base = tokens(1, 96)
    batches = [
        [base + tokens(2, 40)],
        [base + tokens(3, 20), tokens(4, 150)],
        [base + tokens(2, 40) + tokens(5, 30)],          # grows an earlier prompt
        [tokens(6, 200), tokens(7, 100)],                # forces evictions
        [base + tokens(3, 20)],
        [tokens(4, 150)],
    ]
    results: dict[str, list[tuple[list[int], int]]] = {}
    for name in ("stock", "off"):
        got = []
        for batch in batches:
            for o in run_prompts(engines[name], batch, max_tokens=3):
                got.append((list(o.outputs[0].token_ids), int(o.num_cached_tokens)))
        results[name] = got
    assert results["off"] == results["stock"]
    assert any(cached > 0 for _, cached in results["stock"])
    sched = engine_scheduler(engines["off"])
    assert sched.block_pool.get_num_free_blocks() == BLOCKS


def test_walru_keeps_a_tool_calling_session(engines: dict[str, Any]) -> None:
    """A session waiting on a tool survives a burst that evicts it under vLLM's LRU."""
    clock = ManualClock(0.0)
    engine_scheduler(engines["walru"]).clock = clock
    cached = {}
    for name in ("stock", "walru"):
        llm = engines[name]
        engine_scheduler(llm).reset_prefix_cache()
        a = tokens(10, 128)
        clock.t = 0.0
        run_prompts(llm, [a], metas=[SagaRequestMeta("A", pending_tool="bash")])
        clock.t = 50.0
        run_prompts(llm, [tokens(11, 200)])      # 7 blocks, freed: 6 cached
        clock.t = 100.0
        run_prompts(llm, [tokens(12, 200)])      # needs 5 cached blocks evicted
        clock.t = 110.0
        out = run_prompts(llm, [a + tokens(13, 40)],
                          metas=[SagaRequestMeta("A", tool_latency_s=1.0)])
        cached[name] = out[0].num_cached_tokens
    assert cached["stock"] == 0
    assert cached["walru"] == 128
    stats = engine_scheduler(engines["walru"]).saga_stats()
    assert stats["evictions"]["capacity"] >= 5
    assert stats["prefix_hit_tokens"] >= 128


def test_tenant_isolation(engines: dict[str, Any]) -> None:
    llm = engines["off"]
    prompt = tokens(20, 160)
    meta_a = SagaRequestMeta("sa", tenant_id="tenant-a")
    meta_b = SagaRequestMeta("sb", tenant_id="tenant-b")
    first = run_prompts(llm, [prompt], metas=[meta_a], cache_salts=["tenant-a"])
    other = run_prompts(llm, [prompt], metas=[meta_b], cache_salts=["tenant-b"])
    again = run_prompts(llm, [prompt], metas=[meta_a], cache_salts=["tenant-a"])
    assert first[0].num_cached_tokens == 0
    assert other[0].num_cached_tokens == 0      # tenant B never sees A's prefix
    assert again[0].num_cached_tokens == 128    # while A still hits it
    assert other[0].outputs[0].token_ids == first[0].outputs[0].token_ids


def test_malformed_metadata_is_rejected_and_engine_keeps_serving(
        engines: dict[str, Any]) -> None:
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.inputs import TokensPrompt

    llm = engines["off"]
    bad = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, ignore_eos=True,
                         extra_args={"saga": {"session_id": "s", "reuse_prob": "high"}})
    # vLLM turns the validator's ValueError into a per-request VLLMValidationError (HTTP 400).
    with pytest.raises(VLLMValidationError, match="reuse_prob"):
        llm.generate([TokensPrompt(prompt_token_ids=tokens(30, 40))], bad, use_tqdm=False)
    ok = run_prompts(llm, [tokens(30, 40)], metas=[SagaRequestMeta("s")])
    assert len(ok[0].outputs[0].token_ids) == 1
    assert engine_scheduler(llm).saga_stats()["malformed_metadata"] == 0


def test_scheduler_degrades_malformed_metadata_to_plain(engines: dict[str, Any]) -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm = engines["bare"]
    bad = SamplingParams(max_tokens=2, temperature=0.0, detokenize=False, ignore_eos=True,
                         extra_args={"saga": {"session_id": 5}})
    out = llm.generate([TokensPrompt(prompt_token_ids=tokens(31, 40))], bad, use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 2
    assert engine_scheduler(llm).saga_stats()["malformed_metadata"] == 1
    assert len(run_prompts(llm, [tokens(32, 40)])[0].outputs[0].token_ids) == 1


def test_metrics_and_prometheus(engines: dict[str, Any]) -> None:
    from prometheus_client import CollectorRegistry

    llm = engines["off"]
    sched = engine_scheduler(llm)
    before = sched.saga_stats()
    prompt = tokens(40, 100)
    run_prompts(llm, [prompt])
    run_prompts(llm, [prompt])
    after = sched.saga_stats()
    assert after["prompt_tokens"] - before["prompt_tokens"] == 200
    assert after["prefix_hit_tokens"] - before["prefix_hit_tokens"] == 96
    assert after["recomputed_tokens"] - before["recomputed_tokens"] == 104
    registry = CollectorRegistry()
    sched.publish_metrics(registry)
    label = {"scheduler": str(id(sched))}
    assert registry.get_sample_value("saga_prefix_hit_tokens_total", label) == \
        after["prefix_hit_tokens"]
    assert registry.get_sample_value("saga_pinned_blocks", label) == 0
    sched.publish_metrics(registry)  # publishing again adds nothing
    assert registry.get_sample_value("saga_recomputed_tokens_total", label) == \
        after["recomputed_tokens"]
