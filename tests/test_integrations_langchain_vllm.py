"""End to end: a LangChain agent whose chat model is SAGA's vLLM engine on the tiny model.

The LangChain adapter computes each call's SAGA metadata (session, AEG node, the tool the call
will probably end in, the last tool's latency); the chat model sends it as
``SamplingParams.extra_args`` — the adapter's own dict, not rebuilt by saga-vllm. While the
agent's tool runs, other traffic fills the KV pool. With the metadata SAGA pins the session's KV
through the tool call and the next call finds its whole context cached; the same agent without
the metadata (stock behaviour) loses it. One engine for the module (vLLM keeps global state).
"""

from __future__ import annotations

import gc
import re
import zlib
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

from saga.integrations import WorkflowFeed
from saga.integrations.langchain import attach, request_metadata
from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.engine import SagaEngine
from saga.vllm.metadata import parse_saga_meta
from saga.vllm.testing import (
    build_tiny_llama,
    engine_scheduler,
    kv_bytes_for_blocks,
    scoped_env,
    tiny_engine_kwargs,
)

BLOCK = 32
POOL_BLOCKS = 48
NOISE_TOKENS = 30 * BLOCK  # two such prompts overrun the pool's free blocks


class WordTokenizer:
    """One token per word (the engine runs on token ids here): ``t<id>`` is token ``id`` itself,
    any other word a stable hash. Messages tokenize independently, so a conversation's tokens
    only ever grow at the end — what makes a session's context a cacheable prefix."""

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in text.split():
            m = re.fullmatch(r"t(\d+)", word)
            ids.append(int(m.group(1)) if m and int(m.group(1)) < 1024 else
                       10 + zlib.crc32(word.encode()) % 1000)
        return ids

    @staticmethod
    def decode(ids: list[int]) -> str:
        return " ".join(f"t{i}" for i in ids)


def _message_text(m: BaseMessage) -> str:
    calls = " ".join(f"{c['name']} {c['args']}" for c in getattr(m, "tool_calls", None) or [])
    return f"{m.type}: {m.content} {calls}"


class SagaEngineChat(BaseChatModel):
    """A LangChain chat model over ``SagaEngine``'s vLLM: the random model's tokens are the
    reply text; which tool to call comes from a script (the model cannot choose)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    engine: Any
    script: list[list[str]] = Field(default_factory=list)
    send_metadata: bool = True
    results: list[Any] = Field(default_factory=list)
    tenant: str = "default"

    @property
    def _llm_type(self) -> str:
        return "saga-vllm-tiny"

    def bind_tools(self, tools: Any, **kw: Any) -> SagaEngineChat:
        return self

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kw: Any) -> ChatResult:
        from vllm import SamplingParams

        ids = [i for m in messages for i in WordTokenizer().encode(_message_text(m))]
        meta = request_metadata(run_manager) if self.send_metadata else None
        params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True,
                                detokenize=False,
                                extra_args=None if meta is None else meta.extra_args())
        out = self.engine.llm.generate({"prompt_token_ids": ids, "cache_salt": self.tenant},
                                       params, use_tqdm=False)[0]
        self.results.append((out, meta))
        tools = self.script.pop(0)
        reply = AIMessage(
            content=WordTokenizer.decode(list(out.outputs[0].token_ids)),
            tool_calls=[{"name": t, "args": {"q": "x"}, "id": f"c{len(self.results)}"}
                        for t in tools],
            usage_metadata={"input_tokens": len(ids),
                            "output_tokens": len(out.outputs[0].token_ids),
                            "total_tokens": len(ids) + len(out.outputs[0].token_ids)})
        return ChatResult(generations=[ChatGeneration(message=reply)])


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaEngine]:
    gc.collect()  # let earlier modules' engines go before this one starts
    model = build_tiny_llama(Path(tmp_path_factory.getbasetemp()) / "tiny-llama")
    with scoped_env("VLLM_ENABLE_V1_MULTIPROCESSING", "0"):
        eng = SagaEngine(tiny_engine_kwargs(model, kv_bytes_for_blocks(POOL_BLOCKS),
                                            saga=SagaSchedulerConfig(ttl="tool_call")))
    yield eng
    eng.shutdown()


def _run_agent(engine: SagaEngine, tenant: str, send_metadata: bool) -> SagaEngineChat:
    """search → (other traffic floods the pool while it runs) → search → answer."""
    noise_round = iter(range(100))

    @tool
    def search(q: str) -> str:
        """Search the code base."""
        from vllm import SamplingParams

        k = next(noise_round)
        for j in range(2):  # two other tenants' long prompts, each unique
            noise = [10 + (k * 7 + j * 131 + i * 17) % 1000 for i in range(NOISE_TOKENS)]
            engine.llm.generate({"prompt_token_ids": noise, "cache_salt": f"noise-{tenant}"},
                                SamplingParams(max_tokens=1, detokenize=False),
                                use_tqdm=False)
        return "found it in parser dot py line 42"

    model = SagaEngineChat(engine=engine, script=[["search"], ["search"], []],
                           send_metadata=send_metadata, tenant=tenant)
    agent = create_agent(model, [search], name="coder",
                         system_prompt=" ".join(f"rule{i}-{tenant}" for i in range(300)))
    handler = attach(WorkflowFeed(), tools=[search], tenant_id=tenant)
    agent.invoke({"messages": [("user", "find the bug")]}, config={"callbacks": [handler]})
    assert len(handler.saga.feed.sessions) == 1
    return model


def test_saga_metadata_keeps_the_session_cached_across_tool_calls(engine: SagaEngine) -> None:
    sched = engine_scheduler(engine.llm)
    pins_before = sched.metrics.pins_created
    saga = _run_agent(engine, "with-saga", send_metadata=True)
    stock = _run_agent(engine, "without", send_metadata=False)

    metas = [parse_saga_meta(m.extra_args()) for _, m in saga.results]
    assert [m.aeg_node for m in metas] == ["llm@start", "llm@tool:search", "llm@tool:search"]
    assert all(m.pending_tool == "search" for m in metas)  # predicted from the hint's graph
    assert metas[1].tool_latency_s is not None and metas[1].tool_latency_s > 0
    assert len({m.session_id for m in metas}) == 1 and metas[0].agent_type == "coder"
    assert sched.metrics.pins_created - pins_before == 3  # each call pinned through its tool

    def cached(model: SagaEngineChat) -> list[int]:
        return [int(out.num_cached_tokens or 0) for out, _ in model.results]

    def prompts(model: SagaEngineChat) -> list[int]:
        return [len(out.prompt_token_ids) for out, _ in model.results]

    assert prompts(saga) == prompts(stock)  # the same conversation, token for token
    # With SAGA every call after a tool finds the whole previous prompt (full blocks) cached.
    for k in (1, 2):
        assert cached(saga)[k] >= (prompts(saga)[k - 1] // BLOCK) * BLOCK
    # Without the metadata the other traffic evicted the session's KV during each tool call.
    assert cached(stock)[1:] == [0, 0]
    print(f"\nprompt tokens per call: {prompts(saga)}; cached with SAGA metadata: "
          f"{cached(saga)}, without: {cached(stock)}")
