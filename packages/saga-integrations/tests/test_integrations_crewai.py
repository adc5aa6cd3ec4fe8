"""The CrewAI adapter on real crews (sequential process, two agents, real tools), driven by a
scripted ``BaseLLM`` that emits CrewAI's LLM events the way its built-in providers do:
sessions, steps, durations CrewAI measured, the crew's hint, inferred graph."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from crewai import Agent, Crew, Task
from crewai.events.types.llm_events import LLMCallType
from crewai.llms.base_llm import BaseLLM
from crewai.tools import tool

from saga.aeg.inference import PatternInference
from saga.integrations import WorkflowFeed
from saga.integrations.crewai import CrewAIAttachment, attach, crew_hint

SLEEP = {"search": 0.03, "fetch": 0.01}


class ScriptedLLM(BaseLLM):
    """Replays ReAct-format replies, emitting LLMCallStarted/Completed like CrewAI's own LLMs;
    with an attachment it also reads the SAGA metadata of each call."""

    def __init__(self, replies: list[str], saga: CrewAIAttachment | None = None) -> None:
        super().__init__(model="scripted-react")
        self.replies = list(replies)
        self.saga = saga
        self.seen: list[Any] = []

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None,
             available_functions: Any = None, from_task: Any = None, from_agent: Any = None,
             response_model: Any = None) -> str:
        self._emit_call_started_event(messages=messages, from_task=from_task,
                                      from_agent=from_agent)
        if self.saga is not None:
            self.seen.append(self.saga.request_metadata(from_task))
        reply = self.replies.pop(0)
        self._emit_call_completed_event(response=reply, call_type=LLMCallType.LLM_CALL,
                                        from_task=from_task, from_agent=from_agent,
                                        messages=messages)
        return reply

    def supports_function_calling(self) -> bool:
        return False


@tool("search")
def search(query: str) -> str:
    """Search the web."""
    time.sleep(SLEEP["search"])
    if query == "fail":
        raise RuntimeError("search is down")
    return f"results for {query}"


@tool("fetch")
def fetch(url: str) -> str:
    """Fetch a page."""
    time.sleep(SLEEP["fetch"])
    return f"page {url}"


def _act(name: str, arg: str, value: str) -> str:
    return f'Thought: use {name}\nAction: {name}\nAction Input: {{"{arg}": "{value}"}}'


FINAL = "Thought: I now know the final answer\nFinal Answer: done"


def _crew(research: list[str], write: list[str], saga: CrewAIAttachment | None = None) -> Crew:
    researcher = Agent(role="researcher", goal="find facts", backstory="thorough",
                       tools=[search, fetch], llm=ScriptedLLM(research, saga), verbose=False)
    writer = Agent(role="writer", goal="write", backstory="brief",
                   llm=ScriptedLLM(write, saga), verbose=False)
    return Crew(name="report", agents=[researcher, writer], cache=False, verbose=False,
                tasks=[Task(description="research the topic", expected_output="facts",
                            agent=researcher),
                       Task(description="write the report", expected_output="text",
                            agent=writer)])


@pytest.fixture
def saga() -> Iterator[CrewAIAttachment]:
    att = attach(WorkflowFeed(PatternInference(cold_start_tasks=30)))
    yield att
    att.detach()


def test_a_kickoff_is_one_session_with_crewai_timed_tools(saga: CrewAIAttachment) -> None:
    crew = _crew([_act("search", "query", "q1"), _act("fetch", "url", "u1"), FINAL], [FINAL])
    assert str(saga.kickoff(crew)) == "done"
    (s,) = saga.feed.sessions
    assert (s.agent_type, s.framework, s.outcome) == ("report", "crewai", "finished")
    steps = s.steps()
    assert [type(x).__name__ for x in steps] == ["LLMStep", "ToolStep", "LLMStep", "ToolStep",
                                                 "LLMStep", "LLMStep"]
    assert [c.tool for c in s.tool_calls] == ["search", "fetch"]
    for call in s.tool_calls:
        assert SLEEP[call.tool] <= call.duration_s < SLEEP[call.tool] + 1.0
        assert not call.error
    assert all(c.tokens_estimated and c.input_tokens > 0 and c.output_tokens > 0
               for c in s.llm_calls)
    hint = saga.feed.inference.hint("report")
    assert hint is not None and hint.tools == ("search", "fetch")
    assert hint.expected_llm_calls == 3.0  # research (has tools) 2 + write 1


def test_a_raising_tool_is_an_error_per_attempt(saga: CrewAIAttachment) -> None:
    crew = _crew([_act("search", "query", "fail"), FINAL], [FINAL])
    saga.kickoff(crew)
    (s,) = saga.feed.sessions
    assert s.tool_calls and all(c.tool == "search" and c.error for c in s.tool_calls)
    assert s.outcome == "finished"


def test_a_failed_kickoff_is_not_learnt(saga: CrewAIAttachment) -> None:
    crew = _crew([_act("search", "query", "q")], [])  # the script runs out: the LLM raises
    with pytest.raises(IndexError):
        saga.kickoff(crew)
    (s,) = saga.feed.sessions
    assert s.outcome == "failed" and saga.feed.inference.n_tasks("report") == 0


def test_the_llm_reads_saga_metadata_for_each_call(saga: CrewAIAttachment) -> None:
    crew = _crew([_act("search", "query", "q2"), FINAL], [FINAL], saga)
    saga.kickoff(crew)
    metas = [m for agent in crew.agents for m in agent.llm.seen]
    assert [m.aeg_node for m in metas] == ["llm@start", "llm@tool:search", "llm@llm"]
    assert metas[1].tool_latency_s is not None and metas[1].tool_latency_s >= SLEEP["search"]
    assert len({m.session_id for m in metas}) == 1


def test_crew_hint_without_a_kickoff() -> None:
    hint = crew_hint(_crew([], []), agent_type="writer-crew")
    assert (hint.agent_type, hint.tools, hint.framework) == ("writer-crew", ("search", "fetch"),
                                                              "crewai")


def test_pattern_inference_recovers_the_crew_graph(saga: CrewAIAttachment) -> None:
    rng = random.Random(11)
    counts = {"llm@tool:search": {"tool:fetch": 0, "llm@llm": 0},
              "llm@tool:fetch": {"tool:fetch": 0, "llm@llm": 0}}
    for i in range(32):
        research = [_act("search", "query", f"q{i}")]
        node = "llm@tool:search"
        while rng.random() < 0.5:
            research.append(_act("fetch", "url", f"u{i}-{len(research)}"))
            counts[node]["tool:fetch"] += 1
            node = "llm@tool:fetch"
        counts[node]["llm@llm"] += 1
        saga.kickoff(_crew([*research, FINAL], [FINAL]))
    inf = saga.feed.inference
    assert inf.n_tasks("report") == 32 and inf.aeg_source("report") == "inferred"
    aeg = inf.aeg_for("report")
    assert set(aeg.node_ids) == {"llm@start", "tool:search", "llm@tool:search", "tool:fetch",
                                 "llm@tool:fetch", "llm@llm", "end"}
    assert dict(aeg.successors("llm@start")) == {"tool:search": 1.0}
    for node, row in counts.items():
        total = sum(row.values())
        assert dict(aeg.successors(node)) == pytest.approx(
            {d: c / total for d, c in row.items() if c})
    assert dict(aeg.successors("llm@llm")) == {"end": 1.0}
    # CrewAI's tool timings train the latency model: search sleeps 3x longer than fetch.
    assert aeg.node("tool:search").latency.median() > aeg.node("tool:fetch").latency.median()


def test_a_completed_or_failed_kickoff_tells_the_end_hooks() -> None:
    ended: list[str] = []
    att = attach(WorkflowFeed(), on_end=ended.append)
    try:
        att.kickoff(_crew([_act("search", "query", "q"), FINAL], [FINAL]))
        with pytest.raises(IndexError):
            att.kickoff(_crew([], []))
        assert ended == [s.session_id for s in att.feed.sessions]
        assert [s.outcome for s in att.feed.sessions] == ["finished", "failed"]
    finally:
        att.detach()
