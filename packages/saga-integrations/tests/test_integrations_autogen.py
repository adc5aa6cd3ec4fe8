"""The AutoGen adapter on a real ``AssistantAgent`` with real tools, driven by AutoGen's own
``ReplayChatCompletionClient``: sessions, steps, durations, metadata sent, inferred graph."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import ToolCallRequestEvent
from autogen_core import FunctionCall
from autogen_core.models import CreateResult, ModelFamily, RequestUsage
from autogen_ext.models.replay import ReplayChatCompletionClient

from saga.aeg.graph import ParallelNode
from saga.aeg.inference import PatternInference
from saga.aeg.steps import LLMStep, ParallelStep, ToolStep
from saga.integrations import IntegrationError, WorkflowFeed
from saga.integrations.autogen import attach

TOOL_SECONDS = {"lookup": 1.5, "book": 4.0}
MODEL_INFO = {"vision": False, "function_calling": True, "json_output": False,
              "family": ModelFamily.UNKNOWN, "structured_output": False}


def _calls(tools: list[str], i: int) -> CreateResult:
    return CreateResult(
        finish_reason="function_calls", cached=False,
        content=[FunctionCall(id=f"c{i}-{k}", name=t, arguments=json.dumps({"what": t}))
                 for k, t in enumerate(tools)],
        usage=RequestUsage(prompt_tokens=0, completion_tokens=20 + i))


def _final(i: int) -> CreateResult:
    return CreateResult(finish_reason="stop", cached=False, content="booked",
                        usage=RequestUsage(prompt_tokens=0, completion_tokens=5 + i))


def _script(plan: list[list[str]]) -> list[CreateResult]:
    return [_calls(t, i) if t else _final(i) for i, t in enumerate(plan)]


def _agent(clock: Any, script: list[CreateResult]) -> tuple[AssistantAgent, Any]:
    def lookup(what: str) -> str:
        """Look up flights."""
        clock.advance(TOOL_SECONDS["lookup"])
        return "3 flights"

    def book(what: str) -> str:
        """Book a flight."""
        clock.advance(TOOL_SECONDS["book"])
        if what == "fail":
            raise RuntimeError("sold out")
        return "booked"

    client = ReplayChatCompletionClient(script, model_info=MODEL_INFO)  # type: ignore[arg-type]
    agent = AssistantAgent("travel", model_client=client, tools=[lookup, book],
                           max_tool_iterations=20)
    return agent, client


def test_one_run_is_one_session_with_exact_steps_and_metadata_sent(clock: Any) -> None:
    agent, replay = _agent(clock, _script([["lookup"], ["book"], []]))
    feed = WorkflowFeed()
    saga = attach(agent, feed, clock=clock, tenant_id="acme")
    result = asyncio.run(saga.run("book me a flight"))
    assert isinstance(result, TaskResult)
    (s,) = feed.sessions
    assert (s.agent_type, s.framework, s.outcome) == ("travel", "autogen", "finished")
    requests = [m for m in result.messages if isinstance(m, ToolCallRequestEvent)]
    prompts = [m.models_usage.prompt_tokens for m in requests]  # what AutoGen reported
    assert s.steps()[1:4:2] == [ToolStep("lookup", 1.5), ToolStep("book", 4.0)]
    assert [c.input_tokens for c in s.llm_calls[:2]] == prompts
    assert [c.output_tokens for c in s.llm_calls] == [20, 21, 7]
    assert [c.tool_calls for c in s.llm_calls] == [("lookup",), ("book",), ()]
    assert isinstance(s.steps()[0], LLMStep) and isinstance(s.steps()[-1], LLMStep)
    # Every model call carried SAGA's metadata in the OpenAI server's vllm_xargs form.
    sent = [c["extra_create_args"]["extra_body"]["vllm_xargs"] for c in replay.create_calls]
    assert [x["saga_aeg_node"] for x in sent] == ["llm@start", "llm@tool:lookup",
                                                  "llm@tool:book"]
    assert [x.get("saga_tool_latency_s") for x in sent] == [None, 1.5, 4.0]
    assert {(x["saga_session_id"], x["saga_tenant_id"]) for x in sent} == {(s.session_id,
                                                                             "acme")}


def test_parallel_and_failing_tools(clock: Any) -> None:
    script = [CreateResult(finish_reason="function_calls", cached=False, usage=RequestUsage(
        prompt_tokens=0, completion_tokens=9), content=[
            FunctionCall(id="a", name="lookup", arguments='{"what": "x"}'),
            FunctionCall(id="b", name="book", arguments='{"what": "fail"}')]), _final(1)]
    agent, _ = _agent(clock, script)
    feed = WorkflowFeed()
    asyncio.run(attach(agent, feed, clock=clock).run("go"))
    (s,) = feed.sessions
    assert [(c.tool, c.error) for c in s.tool_calls] == [("lookup", False), ("book", True)]
    # Both ran in one batch: each is timed with the batch (AutoGen reports no per-call time).
    assert [c.duration_s for c in s.tool_calls] == pytest.approx([5.5, 5.5])


def test_a_run_that_raises_is_a_failed_session(clock: Any) -> None:
    agent, _ = _agent(clock, _script([["lookup"]]))  # the replay runs out mid-task
    feed = WorkflowFeed()
    with pytest.raises(ValueError, match="No more mock responses"):
        asyncio.run(attach(agent, feed, clock=clock).run("go"))
    (s,) = feed.sessions
    assert s.outcome == "failed" and feed.inference.n_tasks("travel") == 0


def test_attach_refuses_an_agent_without_a_model_client() -> None:
    with pytest.raises(IntegrationError, match="wrap_model_client"):
        attach(object())


def test_pattern_inference_recovers_the_scripted_graph(clock: Any) -> None:
    rng = random.Random(7)
    plans: list[list[list[str]]] = []
    for _ in range(35):
        plan = [["lookup"]]
        while rng.random() < 0.4:  # look again
            plan.append(["lookup"])
        plan += [["book"], []]
        plans.append(plan)
    script = [r for plan in plans for r in _script(plan)]
    agent, _ = _agent(clock, script)
    feed = WorkflowFeed(PatternInference(cold_start_tasks=30))
    saga = attach(agent, feed, clock=clock)
    assert saga.tracker.tools == ("lookup", "book")

    async def run_all() -> None:
        for _ in plans:
            await saga.run("book me a flight")

    asyncio.run(run_all())
    inf = feed.inference
    assert inf.n_tasks("travel") == 35 and inf.aeg_source("travel") == "inferred"
    aeg = inf.aeg_for("travel")
    again = sum(len(p) - 3 for p in plans)
    assert dict(aeg.successors("llm@start")) == {"tool:lookup": 1.0}
    assert dict(aeg.successors("llm@tool:lookup")) == pytest.approx(
        {"tool:lookup": again / (again + 35), "tool:book": 35 / (again + 35)})
    assert dict(aeg.successors("llm@tool:book")) == {"end": 1.0}
    assert set(aeg.node_ids) == {"llm@start", "tool:lookup", "llm@tool:lookup", "tool:book",
                                 "llm@tool:book", "end"}


def test_the_task_result_ends_the_session_and_tells_the_async_hook(clock: Any) -> None:
    agent, _ = _agent(clock, _script([["lookup"], []]))
    ended: list[tuple[str, bool]] = []
    feed = WorkflowFeed()

    async def hook(session_id: str) -> None:
        ended.append((session_id, bool(feed.active_sessions)))

    saga = attach(agent, feed, clock=clock, on_end=hook)

    async def consume() -> None:
        async for item in saga.run_stream("book"):
            if isinstance(item, TaskResult):
                assert ended  # told before the caller sees the result
    asyncio.run(consume())
    (s,) = feed.sessions
    assert ended == [(s.session_id, False)]


def test_a_call_that_cannot_ask_for_tools_is_sent_as_final(clock: Any) -> None:
    client = ReplayChatCompletionClient([_final(0)],
                                        model_info=MODEL_INFO)  # type: ignore[arg-type]
    agent = AssistantAgent("chat", model_client=client)   # no tools: one call, the last
    ended: list[str] = []
    asyncio.run(attach(agent, WorkflowFeed(), clock=clock, on_end=ended.append).run("hi"))
    (sent,) = [c["extra_create_args"]["extra_body"]["vllm_xargs"] for c in client.create_calls]
    assert sent["saga_final"] is True and "saga_pending_tool" not in sent
    assert ended == []  # the engine already knows: no end signal needed


def test_parallel_function_calls_are_one_fan_out(clock: Any) -> None:
    """A CreateResult with two FunctionCalls: the AssistantAgent runs them as one batch; SAGA
    records one fan-out, the next call is sent its node and the batch's join time, and the
    learnt graph holds the fan-out."""
    plans = [[["lookup", "book"], []] for _ in range(3)]
    agent, replay = _agent(clock, [r for plan in plans for r in _script(plan)])
    feed = WorkflowFeed(PatternInference(cold_start_tasks=2))
    saga = attach(agent, feed, clock=clock)

    async def run_all() -> None:
        for _ in plans:
            await saga.run("book me a flight")

    asyncio.run(run_all())
    s = feed.sessions[-1]
    fan = s.steps()[1]
    assert isinstance(fan, ParallelStep)
    assert [t.tool for t in fan.tools] == ["lookup", "book"]
    sent = [c["extra_create_args"]["extra_body"]["vllm_xargs"] for c in replay.create_calls]
    assert [x["saga_aeg_node"] for x in sent[-2:]] == ["llm@start", "llm@par:book+lookup"]
    assert sent[-1]["saga_tool_latency_s"] == pytest.approx(5.5)  # 1.5 + 4.0, one batch
    aeg = feed.inference.aeg_for("travel")
    node = aeg.node("par:book+lookup")
    assert isinstance(node, ParallelNode)
    assert sorted(b.name for b in node.branches) == ["book", "lookup"]
    assert sent[-2]["saga_pending_tool"] == node.slowest().name
