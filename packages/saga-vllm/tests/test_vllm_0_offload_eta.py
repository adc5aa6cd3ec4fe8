"""The ``saga_eta`` DRAM-tier policy in a real in-process vLLM engine (runs among the first
engine modules, after ``test_vllm_0_offload_engine``: vLLM keeps one worker-side KV connector
per process, so no engine without a tier may run while this one exists).

The engine runs ``saga_eta`` (pins off) with ``offload_engine_kwargs(..., "saga_eta")``: vLLM
builds :class:`ETACachePolicy` itself, the scheduler binds its feed to it, the policy learns the
session from it, and a session evicted from the 40-block device pool comes back from DRAM.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.metadata import SagaRequestMeta
from saga.vllm.offload import offload_engine_kwargs, offload_manager
from saga.vllm.offload_eta import SAGA_ETA, ETACachePolicy
from saga.vllm.testing import (
    engine_scheduler,
    kv_bytes_for_blocks,
    kv_bytes_per_block,
    run_prompts,
    tiny_engine_kwargs,
)

BLOCKS = 40
SESSION = np.random.default_rng(1).integers(1, 1000, 640).tolist()
FILLER = np.random.default_rng(2).integers(1, 1000, 1200).tolist()


@pytest.fixture(scope="module")
def tier(tiny_model_dir: Path) -> Iterator[Any]:
    from vllm import LLM
    from vllm.distributed.kv_transfer.kv_transfer_state import ensure_kv_transfer_shutdown

    kw = offload_engine_kwargs(200 * kv_bytes_per_block(), SAGA_ETA)
    llm = LLM(**tiny_engine_kwargs(
        tiny_model_dir, kv_bytes_for_blocks(BLOCKS), max_model_len=BLOCKS * 32,
        saga=SagaSchedulerConfig.from_preset("saga_eta", ttl="off"), **kw))
    yield llm
    del llm
    gc.collect()
    ensure_kv_transfer_shutdown()  # later test modules start engines without a connector


def test_eta_tier_is_selected_fed_and_serves_hits_from_dram(tier: Any) -> None:
    policy = offload_manager(tier)._policy
    sched = engine_scheduler(tier)
    assert isinstance(policy, ETACachePolicy)
    assert sched.eta_offload_policies == [policy] and policy.feed is sched.next_use_feed
    assert sched.policies.enactment.dram_policy == SAGA_ETA
    run_prompts(tier, [SESSION], metas=[SagaRequestMeta("S", pending_tool="bash")])
    now = sched.clock()
    assert policy.estimator.session_next_use("S", now) > now  # in its tool: back later
    run_prompts(tier, [FILLER])  # evicts the session from the device pool
    back = run_prompts(tier, [[*SESSION, 7, 8, 9]],
                       metas=[SagaRequestMeta("S", tool_latency_s=0.5, final=True)])
    assert back[0].num_cached_tokens >= len(SESSION) - 32  # loaded back from DRAM
    assert policy.estimator.session_next_use("S", sched.clock()) == float("inf")
    held = np.flatnonzero(policy._evictable)
    assert held.size > 0 and policy.values(held.astype(np.int64), sched.clock()).size == held.size
