"""`SagaEngine` (sync) against a real in-process vLLM engine running `SagaScheduler`.

One engine for the whole module (starting one costs seconds on 2 cores). A spy on
``LLMEngine.add_request`` records what each call sent, so the tests check the metadata the
session filled in as well as what the engine did with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.engine import Call, SagaEngine, SagaSessionError
from saga.vllm.metadata import parse_saga_meta
from saga.vllm.testing import (
    build_tiny_llama,
    kv_bytes_for_blocks,
    scoped_env,
    tiny_engine_kwargs,
)

BLOCK = 32


class _Spy:
    """Wraps ``llm_engine.add_request`` and keeps (request_id, prompt, params)."""

    def __init__(self, llm_engine: Any) -> None:
        self.inner = llm_engine.add_request
        self.sent: list[tuple[str, Any, Any]] = []
        llm_engine.add_request = self

    def __call__(self, request_id: str, prompt: Any, params: Any, *a: Any, **kw: Any) -> Any:
        self.sent.append((request_id, prompt, params))
        return self.inner(request_id, prompt, params, *a, **kw)

    def meta(self, i: int = -1) -> Any:
        return parse_saga_meta(self.sent[i][2].extra_args)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaEngine]:
    model = build_tiny_llama(Path(tmp_path_factory.getbasetemp()) / "tiny-llama")
    with scoped_env("VLLM_ENABLE_V1_MULTIPROCESSING", "0"):
        eng = SagaEngine(tiny_engine_kwargs(model, kv_bytes_for_blocks(96),
                                            saga=SagaSchedulerConfig.from_preset("saga_no_afs")))
    yield eng
    eng.shutdown()


@pytest.fixture
def spy(engine: SagaEngine) -> Iterator[_Spy]:
    s = _Spy(engine.llm.llm_engine)
    yield s
    engine.llm.llm_engine.add_request = s.inner


def _tokens(seed: int, n: int) -> list[int]:
    return [1 + (seed * 7919 + i * 104729) % 1000 for i in range(n)]


def test_a_session_carries_its_metadata_and_reuses_its_prefix(engine: SagaEngine,
                                                              spy: _Spy) -> None:
    s = engine.start_session("swe-bench", tenant="acme", deadline_s=60.0)
    context = _tokens(1, 300)
    r1 = s.call(context, 8, pending_tool="search")
    assert len(r1.output_token_ids) == 8 and r1.prompt_tokens == 300
    assert r1.latency_s > 0
    m1 = spy.meta()
    assert (m1.session_id, m1.tenant_id, m1.agent_type) == (s.session_id, "acme", "swe-bench")
    assert m1.aeg_node == "llm@start" and m1.pending_tool == "search"
    assert m1.tool_latency_s is None and not m1.final
    assert m1.deadline_s is not None and 0 < m1.deadline_s <= 60.0
    assert spy.sent[-1][1]["cache_salt"] == "acme"

    with s.tool("search"):
        pass
    context += r1.output_token_ids + _tokens(2, 100)
    r2 = s.call(context, 8, final=True)
    m2 = spy.meta()
    assert m2.session_id == m1.session_id
    assert m2.aeg_node == "llm@tool:search"
    assert m2.tool_latency_s is not None and m2.tool_latency_s >= 0
    assert m2.final and m2.pending_tool is None
    # The whole first prompt (full blocks) came from the cache: the session's KV was kept.
    assert r2.num_cached_tokens >= (300 // BLOCK) * BLOCK
    assert r2.recomputed_tokens == r2.prompt_tokens - r2.num_cached_tokens
    assert s.finished
    with pytest.raises(SagaSessionError, match="finished"):
        s.call(context, 4)
    stats = engine.saga_stats()
    assert stats is not None and stats["pins_created"] >= 1


def test_tool_duration_is_measured_on_the_engine_clock(engine: SagaEngine, spy: _Spy) -> None:
    now = [100.0]
    timed = SagaEngine(engine.llm, clock=lambda: now[0])
    s = timed.start_session("webarena")
    s.call(_tokens(3, 64), 4, pending_tool="click")
    s.tool_started("click")
    now[0] += 2.5
    assert s.tool_finished() == pytest.approx(2.5)
    s.call(_tokens(3, 80), 4)
    assert spy.meta().tool_latency_s == pytest.approx(2.5)
    s.call(_tokens(3, 90), 4)
    # The latency belongs to the call right after the tool only.
    assert spy.meta().tool_latency_s is None and spy.meta().aeg_node == "llm@llm"


def test_tenants_never_share_cached_prefixes(engine: SagaEngine) -> None:
    prompt = _tokens(4, 256)
    a = engine.start_session("swe-bench", tenant="tenant-a")
    b = engine.start_session("swe-bench", tenant="tenant-b")
    a2 = engine.start_session("swe-bench", tenant="tenant-a")
    assert a.call(prompt, 2, final=True).num_cached_tokens == 0
    assert b.call(prompt, 2, final=True).num_cached_tokens == 0
    assert a2.call(prompt, 2, final=True).num_cached_tokens >= 224


def test_run_batch_runs_sessions_together_in_order(engine: SagaEngine) -> None:
    sessions = [engine.start_session("swe-bench") for _ in range(3)]
    calls = [Call(s, _tokens(10 + i, 100 + 40 * i), 3 + i, pending_tool="edit")
             for i, s in enumerate(sessions)]
    results = engine.run_batch(calls)
    assert [r.prompt_tokens for r in results] == [100, 140, 180]
    assert [len(r.output_token_ids) for r in results] == [3, 4, 5]
    assert not engine.has_pending


def test_out_of_order_use_is_rejected_with_a_clear_error(engine: SagaEngine) -> None:
    s = engine.start_session("swe-bench")
    with pytest.raises(SagaSessionError, match="without tool_started"):
        s.tool_finished()
    with pytest.raises(SagaSessionError, match="max_tokens"):
        s.call([1, 2, 3], 0)
    with pytest.raises(SagaSessionError, match="at least one token"):
        s.call([], 4)
    s.tool_started("test")
    with pytest.raises(SagaSessionError, match="still running"):
        s.call([1, 2, 3], 4)
    with pytest.raises(SagaSessionError, match="still running"):
        s.tool_started("edit")
    s.tool_finished()
    assert s.call(_tokens(5, 40), 2).prompt_tokens == 40
    with pytest.raises(SagaSessionError, match="tenant"):
        engine.start_session("swe-bench", tenant="")
    with pytest.raises(SagaSessionError, match="deadline_s"):
        engine.start_session("swe-bench", deadline_s=0)
