"""Every preset runs in a real in-process vLLM engine: the scheduler holds the preset's policy
objects, serves a small two-tenant agent workload with them, and leaves no state behind.

One engine (model runner, KV memory) serves all presets: for each, a fresh ``SagaScheduler`` is
built by vLLM's own constructor from the engine's config with the preset in
``additional_config["saga"]`` and put in the engine core's place, so the run costs seconds
rather than an engine start per preset.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saga.policy.presets import PRESETS
from saga.vllm.config import PRESET_ENV_VAR, SagaSchedulerConfig
from saga.vllm.metadata import SagaRequestMeta
from saga.vllm.testing import (
    engine_scheduler,
    kv_bytes_for_blocks,
    run_prompts,
    swap_scheduler,
    tiny_engine_kwargs,
)

BLOCKS = 24


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> Iterator[Any]:
    from vllm import LLM

    yield LLM(**tiny_engine_kwargs(tiny_model_dir, kv_bytes_for_blocks(BLOCKS),
                                   saga=SagaSchedulerConfig()))


def tokens(seed: int, n: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(1, 1000, n)]


def agent_workload(llm: Any, seed: int) -> None:
    """Four sessions of two tenants: a call that ends in a tool, then the final call."""
    prompts = {s: tokens(seed + s, 60 + 10 * s) for s in range(4)}
    metas = [SagaRequestMeta(f"s{s}", tenant_id=f"t{s % 2}", agent_type="coder",
                             pending_tool="grep", deadline_s=30.0) for s in range(4)]
    out = run_prompts(llm, list(prompts.values()), metas=metas, max_tokens=4)
    assert all(len(o.outputs[0].token_ids) == 4 for o in out)
    follow = [prompts[s] + list(out[s].outputs[0].token_ids) + tokens(100 + s, 8)
              for s in range(4)]
    metas = [SagaRequestMeta(f"s{s}", tenant_id=f"t{s % 2}", agent_type="coder",
                             tool_latency_s=0.5, final=True) for s in range(4)]
    out = run_prompts(llm, follow, metas=metas, max_tokens=2)
    assert all(len(o.outputs[0].token_ids) == 2 for o in out)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_runs_in_the_engine(llm: Any, name: str) -> None:
    cfg = SagaSchedulerConfig.from_preset(name)
    sched = swap_scheduler(llm, cfg.to_dict())
    try:
        policies = sched.policies
        assert policies.preset == cfg.effective_preset()
        assert sched.bundle is policies.bundle and sched.ttl_policy is policies.ttl
        assert sched.afs is policies.fairness
        preset = PRESETS[name]
        assert (sched.ttl_policy is None) == (preset.ttl is None)
        assert (sched.afs is None) == (preset.fairness is None)
        # vLLM's own deque stays exactly when the order is FCFS without fairness.
        assert (sched.saga_queue is None) == policies.native_queue
        if sched.saga_queue is not None:
            assert sched.waiting is sched.saga_queue
            assert sched.saga_queue.order is policies.queue
        assert sched.saga_stats()["eviction_enacted"] == policies.enactment.mode
        agent_workload(llm, seed=10 * sorted(PRESETS).index(name))
        stats = sched.saga_stats()
        assert stats["scheduled_requests"] == 8 and stats["preset"] == name
        assert (stats["pins_created"] > 0) == (preset.ttl is not None)
        assert stats["token_time_ema_s"] > 0  # the reload estimate Continuum's TTL gets
        if sched.block_queue.steps:  # KVFlow: the finished calls' blocks carry their hint
            assert np.isinf(sched.block_queue._steps).any()
        tables = sched.session_tables()
        assert not any(tables.values()), tables
        assert sched.block_pool.get_num_free_blocks() == BLOCKS
    finally:
        sched.release_all_pins()
        swap_scheduler(llm, SagaSchedulerConfig().to_dict())


def test_a_preset_name_in_the_environment_selects_it(llm: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``--scheduler-cls saga.vllm.scheduler.SagaScheduler`` with only ``SAGA_PRESET`` set."""
    monkeypatch.setenv(PRESET_ENV_VAR, "vllm_kvflow")
    sched = swap_scheduler(llm, None)
    try:
        assert sched.policies.preset.name == "vllm_kvflow"
        assert sched.block_queue.steps and np.isnan(sched.block_queue._steps).all()
    finally:
        monkeypatch.delenv(PRESET_ENV_VAR)
        swap_scheduler(llm, SagaSchedulerConfig().to_dict())
    assert engine_scheduler(llm).policies.preset.name == "vllm_apc"
