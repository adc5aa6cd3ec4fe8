"""The step log in a real in-process vLLM engine: one record per step, for stock and SAGA.

Prompts of 100-300 tokens in a pool of 40 blocks of 32 tokens, so a batch is one prefill step
and the decode steps after it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from saga.policy.errors import SagaConfigError
from saga.vllm.compare import CompareConfig
from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.steps import StepLog, StepRecordingScheduler
from saga.vllm.testing import engine_scheduler, kv_bytes_for_blocks, run_prompts, tiny_engine_kwargs

BLOCKS = 40


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path) -> Iterator[dict[str, Any]]:
    from vllm import LLM

    kv = kv_bytes_for_blocks(BLOCKS)
    out = {
        "stock": LLM(**tiny_engine_kwargs(tiny_model_dir, kv, record_steps=64)),
        "saga": LLM(**tiny_engine_kwargs(tiny_model_dir, kv, record_steps=64,
                                         saga=SagaSchedulerConfig.from_preset("saga_no_afs"))),
    }
    yield out
    for llm in out.values():
        engine_scheduler(llm).reset_prefix_cache()


def tokens(seed: int, n: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(1, 1000, n)]


@pytest.mark.parametrize("name", ["stock", "saga"])
def test_one_record_per_step_and_the_work_adds_up(engines: dict[str, Any], name: str) -> None:
    llm = engines[name]
    sched = engine_scheduler(llm)
    assert isinstance(sched, StepRecordingScheduler) == (name == "stock")
    assert sched.step_log is not None
    sched.step_log.clear()
    prompts = [tokens(1, 100), tokens(2, 300), tokens(1, 100) + tokens(3, 60)]
    outs = run_prompts(llm, prompts, max_tokens=5)
    steps = sched.step_log.snapshot()
    computed = sum(len(p) - o.num_cached_tokens for p, o in zip(prompts, outs, strict=True))
    assert computed < sum(map(len, prompts))  # the third prompt reused the first one's blocks
    assert sum(s.prefill_tokens for s in steps) == computed
    # The step that ends a prompt samples its first token; each later token is a decode.
    assert sum(s.decode_seqs for s in steps) == sum(len(o.outputs[0].token_ids) - 1
                                                    for o in outs) == 3 * 4
    assert len(steps) == 1 + 4 and steps[0].prefill_seqs == 3 and steps[0].decode_seqs == 0
    assert [s.busy_after for s in steps] == [True] * 4 + [False]
    for a, b in itertools.pairwise(steps):
        assert a.start_s <= a.scheduled_s <= a.end_s <= b.start_s
    assert all(s.duration_s > 0 for s in steps)
    # Decode context: the KV each sequence holds before its step (the prompt, then one token
    # more per step: the token a step feeds in is computed by that step).
    assert [s.decode_context for s in steps[1:]] == [sum(map(len, prompts)) + 3 * i
                                                     for i in range(4)]


def test_engine_without_the_option_keeps_no_log(tiny_model_dir: Path) -> None:
    kw = tiny_engine_kwargs(tiny_model_dir, kv_bytes_for_blocks(BLOCKS))
    assert "scheduler_cls" not in kw and "additional_config" not in kw
    saga = tiny_engine_kwargs(tiny_model_dir, kv_bytes_for_blocks(BLOCKS),
                              saga=SagaSchedulerConfig.from_preset("saga_no_afs"))
    assert set(saga["additional_config"]) == {"saga"}


def test_the_log_is_a_ring_buffer() -> None:
    log = StepLog(2)
    reqs = {"a": SimpleNamespace(num_computed_tokens=40, num_prompt_tokens=40),
            "b": SimpleNamespace(num_computed_tokens=51, num_prompt_tokens=40)}
    for i in range(3):
        out = SimpleNamespace(total_num_scheduled_tokens=41, num_scheduled_tokens={"a": 40, "b": 1})
        log.scheduled(float(i), out, reqs)
        log.finished(out, busy_after=True)
    nothing = SimpleNamespace(total_num_scheduled_tokens=0, num_scheduled_tokens={})
    log.scheduled(9.0, nothing, reqs)
    log.finished(nothing, busy_after=False)
    kept = log.snapshot()
    assert log.total == 3 and [s.start_s for s in kept] == [1.0, 2.0]
    assert (kept[0].prefill_tokens, kept[0].prefill_context, kept[0].decode_seqs,
            kept[0].decode_context) == (40, 0, 1, 50)
    with pytest.raises(ValueError, match="capacity"):
        StepLog(0)


def test_compare_needs_the_in_process_driver_for_steps() -> None:
    with pytest.raises(SagaConfigError, match="in-process driver"):
        CompareConfig(record_steps=100, driver="async-llm")
    with pytest.raises(SagaConfigError, match="cpu_threads"):
        CompareConfig(cpu_threads=0)
