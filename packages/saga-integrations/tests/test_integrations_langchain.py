"""The LangChain adapter on real LangChain agents (``create_agent``) driven by LangChain's own
fake chat model: sessions, steps, tool names and durations, metadata, inferred graph."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import ToolException, tool
from pydantic import Field

from saga.aeg.graph import ParallelNode
from saga.aeg.inference import PatternInference
from saga.aeg.steps import LLMStep, ParallelStep, ToolStep
from saga.integrations import IntegrationError, WorkflowFeed
from saga.integrations.langchain import (
    LangChainTracker,
    agent_tools,
    attach,
    request_metadata,
)

TOOL_SECONDS = {"search": 2.5, "edit": 0.5, "run_tests": 7.0}


class ScriptedModel(GenericFakeChatModel):
    """LangChain's fake chat model, told it can call tools (it replays scripted replies)."""

    seen: list[Any] = Field(default_factory=list)

    def bind_tools(self, tools: Any, **kw: Any) -> ScriptedModel:
        return self

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                  **kw: Any) -> Any:
        self.seen.append(request_metadata(run_manager))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kw)


def _reply(tools: list[str], i: int, usage: bool = True) -> AIMessage:
    calls = [{"name": t, "args": {"arg": f"{t}-{i}"}, "id": f"call-{i}-{k}"}
             for k, t in enumerate(tools)]
    content = "" if tools else "all done"
    u = {"input_tokens": 100 + 50 * i, "output_tokens": 10 + i,
         "total_tokens": 110 + 51 * i} if usage else None
    return AIMessage(content=content, tool_calls=calls, usage_metadata=u)


def _agent(clock: Callable[[], float] | Any, name: str = "coder") -> tuple[Any, ScriptedModel]:
    @tool
    def search(arg: str) -> str:
        """Search the code base."""
        clock.advance(TOOL_SECONDS["search"])
        return f"found {arg}"

    @tool
    def edit(arg: str) -> str:
        """Edit a file."""
        clock.advance(TOOL_SECONDS["edit"])
        return f"edited {arg}"

    @tool
    def run_tests(arg: str) -> str:
        """Run the test suite."""
        clock.advance(TOOL_SECONDS["run_tests"])
        if arg == "boom":
            raise ToolException("tests crashed")
        return "2 passed"

    run_tests.handle_tool_error = True  # the agent sees the error and carries on

    model = ScriptedModel(messages=iter(()))
    return create_agent(model, [search, edit, run_tests], name=name), model


def _run(agent: Any, model: ScriptedModel, handler: Any, plan: list[list[str]],
         usage: bool = True) -> Any:
    model.messages = iter([_reply(t, i, usage) for i, t in enumerate(plan)])
    return agent.invoke({"messages": [("user", "fix the bug")]},
                        config={"callbacks": [handler]})


def test_one_task_becomes_one_session_with_exact_steps(clock: Any) -> None:
    agent, model = _agent(clock)
    feed = WorkflowFeed()
    handler = attach(feed, tools=[], clock=clock)
    _run(agent, model, handler, [["search"], ["edit"], ["run_tests"], []])
    assert not feed.active_sessions
    (s,) = feed.sessions
    assert (s.agent_type, s.framework, s.outcome) == ("coder", "langchain", "finished")
    assert s.steps() == [
        LLMStep(100, 10), ToolStep("search", 2.5), LLMStep(150, 11), ToolStep("edit", 0.5),
        LLMStep(200, 12), ToolStep("run_tests", 7.0), LLMStep(250, 13)]
    assert [c.tool_calls for c in s.llm_calls] == [("search",), ("edit",), ("run_tests",), ()]
    assert not any(c.tokens_estimated for c in s.llm_calls)
    assert s.duration_s == pytest.approx(10.0)
    assert feed.inference.n_tasks("coder") == 1


def test_metadata_reaches_the_model_with_node_and_last_tool_latency(clock: Any) -> None:
    agent, model = _agent(clock)
    handler = attach(WorkflowFeed(), clock=clock, tenant_id="acme")
    _run(agent, model, handler, [["search"], ["run_tests"], []])
    metas = model.seen
    assert [m.aeg_node for m in metas] == ["llm@start", "llm@tool:search", "llm@tool:run_tests"]
    assert [m.tool_latency_s for m in metas] == [None, 2.5, 7.0]
    assert {m.session_id for m in metas} == {handler.saga.feed.sessions[0].session_id}
    assert {(m.tenant_id, m.agent_type) for m in metas} == {("acme", "coder")}
    assert metas[1].extra_args()["saga"]["tool_latency_s"] == 2.5


def test_parallel_tool_calls_and_missing_usage(clock: Any) -> None:
    agent, model = _agent(clock)
    feed = WorkflowFeed()
    _run(agent, model, attach(feed, clock=clock), [["search", "edit"], []], usage=False)
    (s,) = feed.sessions
    assert sorted(c.tool for c in s.tool_calls) == ["edit", "search"]
    assert all(c.tokens_estimated for c in s.llm_calls)
    assert all(c.input_tokens > 0 for c in s.llm_calls)
    assert s.llm_calls[1].output_tokens == 2  # "all done": 8 characters, ~4 a token


def test_failing_tool_is_recorded_as_an_error_and_the_task_still_learnt(clock: Any) -> None:
    agent, model = _agent(clock)
    feed = WorkflowFeed()
    handler = attach(feed, clock=clock)
    model.messages = iter([AIMessage(content="", tool_calls=[
        {"name": "run_tests", "args": {"arg": "boom"}, "id": "x"}]), _reply([], 1)])
    agent.invoke({"messages": [("user", "go")]}, config={"callbacks": [handler]})
    (s,) = feed.sessions
    (t,) = s.tool_calls
    assert t.tool == "run_tests" and t.error and t.duration_s == pytest.approx(7.0)
    assert s.outcome == "finished"


def test_a_task_that_raises_is_closed_as_failed_and_not_learnt(clock: Any) -> None:
    agent, model = _agent(clock)
    feed = WorkflowFeed()
    model.messages = iter([_reply(["search"], 0)])  # the script runs out: the model raises
    with pytest.raises(RuntimeError, match="StopIteration"):
        agent.invoke({"messages": [("user", "go")]},
                     config={"callbacks": [attach(feed, clock=clock)]})
    (s,) = feed.sessions
    assert s.outcome == "failed"
    assert feed.inference.n_tasks("coder") == 0
    assert not feed.active_sessions


def _plans(n: int, seed: int) -> Iterator[list[list[str]]]:
    """The scripted agent: search (once, or again with p 0.25), edit, then run_tests; a failing
    run goes back to edit with p 1/3; then done."""
    rng = random.Random(seed)
    for _ in range(n):
        plan = [["search"]]
        while rng.random() < 0.25:
            plan.append(["search"])
        plan.append(["edit"])
        plan.append(["run_tests"])
        while rng.random() < 1 / 3:
            plan += [["edit"], ["run_tests"]]
        plan.append([])
        yield plan


def test_pattern_inference_recovers_the_scripted_graph(clock: Any) -> None:
    agent, model = _agent(clock)
    feed = WorkflowFeed(PatternInference(cold_start_tasks=30))
    handler = attach(feed, tools=agent_tools(agent), clock=clock)
    plans = list(_plans(40, seed=3))
    expected: dict[str, dict[str, int]] = {}
    for plan in plans:
        node = "llm@start"
        for tools in plan:
            nxt = f"tool:{tools[0]}" if tools else "end"
            row = expected.setdefault(node, {})
            row[nxt] = row.get(nxt, 0) + 1
            if tools:
                row = expected.setdefault(nxt, {})
                row["llm@" + nxt] = row.get("llm@" + nxt, 0) + 1
                node = "llm@" + nxt
        _run(agent, model, handler, plan)
    inf = feed.inference
    assert inf.n_tasks("coder") == 40
    assert inf.hint("coder") is not None and inf.hint("coder").tools == (
        "search", "edit", "run_tests")
    assert inf.aeg_source("coder") == "inferred"
    aeg = inf.aeg_for("coder")
    assert sorted(aeg.node_ids) == sorted({*expected, "end", *(
        d for row in expected.values() for d in row)})
    for src, row in expected.items():
        total = sum(row.values())
        assert dict(aeg.successors(src)) == pytest.approx({d: c / total for d, c in row.items()})
    latency = inf.counts("coder").latency
    visits = {t: sum(row.get(f"tool:{t}", 0) for row in expected.values()) for t in TOOL_SECONDS}
    for tool_name, seconds in TOOL_SECONDS.items():
        # Every call measured; the fitted median is the observations pooled with a 1 s prior
        # worth one observation, so it sits just below the scripted duration.
        assert latency.n_observations(tool_name) == visits[tool_name]
        median = aeg.node(f"tool:{tool_name}").latency.median()
        assert seconds ** (visits[tool_name] / (visits[tool_name] + 1)) == pytest.approx(median)
    # The engine is now told the likeliest next tool: after search, edit (p 0.75 vs 0.25).
    session = feed.start_session("coder", "langchain", clock())
    session.tool_finished(session.tool_started("search", clock()), clock() + 1)
    assert feed.metadata(session).pending_tool == "edit"


def test_tracker_without_langchain_types() -> None:
    """The run-tree logic takes plain ids: a lone model call is a one-step session."""
    feed = WorkflowFeed()
    t = LangChainTracker(feed, clock=lambda: 1.0)
    meta = t.llm_started("r1", None, "hello there", name="chat")
    assert meta.aeg_node == "llm@start" and meta.pending_tool is None
    t.llm_ended("r1", input_tokens=None, output_tokens=None, output_text="hi", tool_calls=())
    (s,) = feed.sessions
    assert (s.agent_type, s.steps()) == ("chat", [LLMStep(3, 1)])


def test_async_invocation_keeps_the_event_order(clock: Any) -> None:
    """``ainvoke`` runs the handler inline on the event loop (``run_inline``), so the steps
    are recorded in the order they happened."""
    import asyncio

    agent, model = _agent(clock)
    feed = WorkflowFeed()
    handler = attach(feed, clock=clock)
    model.messages = iter([_reply(["search"], 0), _reply(["edit"], 1), _reply([], 2)])
    asyncio.run(agent.ainvoke({"messages": [("user", "go")]}, config={"callbacks": [handler]}))
    (s,) = feed.sessions
    assert s.steps() == [LLMStep(100, 10), ToolStep("search", 2.5), LLMStep(150, 11),
                         ToolStep("edit", 0.5), LLMStep(200, 12)]
    assert [m.aeg_node for m in model.seen] == ["llm@start", "llm@tool:search", "llm@tool:edit"]


def test_agent_tools_reads_a_create_agent_graph_and_refuses_anything_else(clock: Any) -> None:
    agent, _ = _agent(clock)
    assert [t.name for t in agent_tools(agent)] == ["search", "edit", "run_tests"]
    with pytest.raises(IntegrationError, match="tools="):
        agent_tools(object())


def test_the_run_end_tells_the_end_hooks_once_with_the_session(clock: Any) -> None:
    agent, model = _agent(clock)
    ended: list[str] = []
    handler = attach(WorkflowFeed(), clock=clock, on_end=[ended.append])
    _run(agent, model, handler, [["search"], []])
    (s,) = handler.saga.feed.sessions
    assert ended == [s.session_id]
    # The last call could not know it was the last: it went out as a plain call.
    assert not any(m.final for m in model.seen)


def test_a_failing_end_hook_never_breaks_the_agent(clock: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    agent, model = _agent(clock)

    def broken(session_id: str) -> None:
        raise ConnectionError("engine gone")

    handler = attach(WorkflowFeed(), clock=clock, on_end=broken)
    out = _run(agent, model, handler, [[]])
    assert out["messages"][-1].content == "all done"
    assert "session-end hook" in caplog.text


def test_an_async_end_hook_is_run_to_completion(clock: Any) -> None:
    agent, model = _agent(clock)
    ended: list[str] = []

    async def hook(session_id: str) -> None:
        ended.append(session_id)

    _run(agent, model, attach(WorkflowFeed(), clock=clock, on_end=hook), [[]])
    assert len(ended) == 1


def test_on_end_must_be_callable(clock: Any) -> None:
    with pytest.raises(IntegrationError, match="on_end takes callables"):
        attach(WorkflowFeed(), on_end=["not callable"])  # type: ignore[list-item]


def test_parallel_tool_calls_are_one_fan_out_that_inference_learns(clock: Any) -> None:
    """One AIMessage asking for two tools: LangChain runs them at once; SAGA records one
    fan-out, times the next call by the join, learns the fan-out node, and predicts the pending
    tool of a call about to fan out as the slowest branch (the one the session waits on)."""
    agent, model = _agent(clock)
    feed = WorkflowFeed(PatternInference(cold_start_tasks=3))
    handler = attach(feed, clock=clock)
    for _ in range(4):
        _run(agent, model, handler, [["search", "edit"], ["run_tests"], []])
    s = feed.sessions[-1]
    steps = s.steps()
    assert [type(x).__name__ for x in steps] == ["LLMStep", "ParallelStep", "LLMStep",
                                                 "ToolStep", "LLMStep"]
    fan = steps[1]
    assert isinstance(fan, ParallelStep)
    assert sorted(t.tool for t in fan.tools) == ["edit", "search"] and fan.agents == ()
    metas = model.seen[-3:]
    assert [m.aeg_node for m in metas] == ["llm@start", "llm@par:edit+search",
                                          "llm@tool:run_tests"]
    # The call after the fan-out is told the join: from the first start to the last return.
    joined = TOOL_SECONDS["search"] + TOOL_SECONDS["edit"]  # the clock moves once per tool
    assert metas[1].tool_latency_s == pytest.approx(joined)
    aeg = feed.inference.aeg_for("coder")
    assert feed.inference.aeg_source("coder") == "inferred"
    node = aeg.node("par:edit+search")
    assert isinstance(node, ParallelNode)
    assert dict(aeg.successors("llm@start")) == {"par:edit+search": 1.0}
    # The last task's first call was told the slowest learnt branch as its pending tool.
    assert node.slowest().name == "search"
    assert metas[0].pending_tool == "search"
    assert feed.predict_pending_tool("coder", "llm@start") == "search"
    sp = aeg.shared_prefix("par:edit+search")
    assert sp is not None and sp.p_reuse == 1.0 and sp.next_use_s == pytest.approx(sp.join_s)
