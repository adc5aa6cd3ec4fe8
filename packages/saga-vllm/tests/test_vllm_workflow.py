"""The scheduler's workflow model: reuse predictions come from the AEG it learns from tasks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.metadata import SagaRequestMeta
from saga.vllm.testing import engine_scheduler, kv_bytes_for_blocks, run_prompts, tiny_engine_kwargs


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> Iterator[Any]:
    from vllm import LLM

    yield LLM(**tiny_engine_kwargs(tiny_model_dir, kv_bytes_for_blocks(16),
                                   saga=SagaSchedulerConfig(eviction="walru")))


def _task(llm: Any, sid: str, token: int) -> None:
    prompt = [token] * 40  # a prompt of its own per task: no prefix shared with another task
    run_prompts(llm, [prompt], metas=[SagaRequestMeta(sid, agent_type="coder",
                                                      pending_tool="grep")])
    # The last call asks for `submit`, after which the task ends.
    run_prompts(llm, [prompt + [3] * 40], metas=[SagaRequestMeta(
        sid, agent_type="coder", pending_tool="submit", tool_latency_s=0.5, final=True)])


def test_learned_aeg_drives_reuse_predictions(llm: Any) -> None:
    sched = engine_scheduler(llm)
    for i in range(30):
        _task(llm, f"task-{i}", token=i + 1)
    assert sched.hinter.inference.aeg_source("coder") == "inferred"
    # After `grep` this agent always calls the LLM again; after `submit` it never does.
    assert sched._reuse_prob(SagaRequestMeta("x", agent_type="coder", pending_tool="grep")) == 1.0
    assert sched._reuse_prob(SagaRequestMeta("x", agent_type="coder",
                                             pending_tool="submit")) == 0.0
    # Without an agent type there is no AEG: a pending tool means "expected back".
    assert sched._reuse_prob(SagaRequestMeta("x", pending_tool="grep")) == (
        sched.saga_config.pending_tool_reuse)


def test_finished_calls_feed_the_dram_tier_hint_table(llm: Any) -> None:
    hints = engine_scheduler(llm).reuse_hints
    before = len(hints)
    _task(llm, "hinted", token=500)
    assert len(hints) > before


@pytest.fixture(scope="module")
def other(tiny_model_dir: Path) -> Iterator[Any]:
    """A second engine in the same process, alive as long as the first."""
    from vllm import LLM

    yield LLM(**tiny_engine_kwargs(tiny_model_dir, kv_bytes_for_blocks(8),
                                   saga=SagaSchedulerConfig(eviction="walru")))


def test_each_engine_has_its_own_hint_table(llm: Any, other: Any) -> None:
    """Two engines in one process: hints one scheduler records never reach the other's
    table (their DRAM-tier policies read their own engine's)."""
    mine, theirs = engine_scheduler(llm).reuse_hints, engine_scheduler(other).reuse_hints
    assert mine is not theirs
    before_theirs = len(theirs)
    _task(llm, "only-mine", token=700)
    assert len(theirs) == before_theirs
    seen_by_mine = len(mine)
    run_prompts(other, [[900] * 40], metas=[SagaRequestMeta("theirs", pending_tool="grep")])
    assert len(theirs) > before_theirs and len(mine) == seen_by_mine
