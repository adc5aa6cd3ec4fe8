"""Session end on a real vLLM engine (tiny random Llama, SAGA's scheduler, in-process):

- a soak of a few hundred agent sessions through a loopback coordinator and a worker hosting
  the engine (the ``saga cluster`` worker adapter) leaves SAGA's pin table, session maps and
  queues empty, and the coordinator's tables too;
- a LangChain agent, whose last call cannot be marked final, ends its task through the adapter's
  ``on_end`` hook: the engine releases the KV pinned for the tool that never runs, at once.

One engine for the module (vLLM keeps process-wide state).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from pydantic import ConfigDict, Field

from saga.coordinator.soak import SoakConfig, run_soak
from saga.integrations import WorkflowFeed
from saga.integrations.langchain import attach, request_metadata
from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.testing import build_tiny_llama, kv_bytes_for_blocks, tiny_engine_kwargs
from saga.vllm.worker import VllmEngine

BLOCKS = 256


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmEngine]:
    gc.collect()  # let earlier modules' engines go before this one starts
    model = build_tiny_llama(Path(tmp_path_factory.getbasetemp()) / "tiny-llama")
    eng = VllmEngine(tiny_engine_kwargs(model, kv_bytes_for_blocks(BLOCKS),
                                        saga=SagaSchedulerConfig.from_preset("saga_no_afs"),
                                        max_num_seqs=16))
    yield eng
    eng.shutdown()


def _scheduler(engine: VllmEngine) -> Any:
    sync = engine.engine.sync_engine
    assert sync is not None
    return sync.scheduler


class _EngineChat(BaseChatModel):
    """A chat model over the engine's vLLM: one token per word, scripted tool choices."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    llm: Any
    script: list[list[str]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "saga-vllm-tiny"

    def bind_tools(self, tools: Any, **kw: Any) -> _EngineChat:
        return self

    def _generate(self, messages: list[BaseMessage], stop: Any = None,
                  run_manager: Any = None, **kw: Any) -> ChatResult:
        from vllm import SamplingParams

        ids = [10 + sum(map(ord, w)) % 1000 for m in messages for w in str(m.content).split()]
        ids = (ids or [1]) * 8
        meta = request_metadata(run_manager)
        assert meta is not None
        params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True,
                                detokenize=False, extra_args=meta.extra_args())
        out = self.llm.generate({"prompt_token_ids": ids}, params, use_tqdm=False)[0]
        tools = self.script.pop(0)
        reply = AIMessage(content=" ".join(f"t{i}" for i in out.outputs[0].token_ids),
                          tool_calls=[{"name": t, "args": {"q": "x"}, "id": f"c{len(ids)}"}
                                      for t in tools])
        return ChatResult(generations=[ChatGeneration(message=reply)])


def test_a_langchain_run_end_releases_the_pin_at_once(engine: VllmEngine) -> None:
    sync = engine.engine.sync_engine
    assert sync is not None
    sched = sync.scheduler

    @tool
    def grep(q: str) -> str:
        """Search the code."""
        return "found it " * 20

    model = _EngineChat(llm=sync.llm, script=[["grep"], []])
    agent = create_agent(model, [grep], name="fixer")
    feed = WorkflowFeed()
    pinned: list[bool] = []

    def end(session_id: str) -> None:
        pinned.append(session_id in sched.pins)
        sync.end_session(session_id)

    handler = attach(feed, tools=[grep], on_end=end)
    before = sched.saga_stats()["pin_releases"].get("ended", 0)
    agent.invoke({"messages": [("user", "fix it")]}, config={"callbacks": [handler]})
    (s,) = feed.sessions
    # The last call went out predicting another grep, so the engine pinned its KV; the run's
    # end released it at once instead of after the tool's TTL.
    assert pinned == [True]
    assert s.session_id not in sched.pins
    assert sched.saga_stats()["pin_releases"]["ended"] == before + 1
    assert all(v == 0 for v in sched.session_tables().values()), sched.session_tables()


def test_a_soak_through_the_coordinator_leaves_the_scheduler_empty(engine: VllmEngine) -> None:
    """Runs last: the worker host shuts its engine down when the soak stops."""
    sched = _scheduler(engine)
    r = run_soak(SoakConfig(sessions=200, workers=1, concurrency=24, warmup=0,
                            prompt_tokens=16, output_tokens=2, max_seconds=120.0),
                 engine_factory=lambda i: engine, probe=sched.session_tables)
    assert (r.sessions, r.sessions_ended) == (200, 200)
    assert r.leaks == [], (r.tables_before, r.tables_after)
    after = sched.session_tables()
    assert all(v == 0 for v in after.values()), after
    stats = sched.saga_stats()
    assert stats["pins_created"] > 0 and stats["free_blocks"] == BLOCKS
