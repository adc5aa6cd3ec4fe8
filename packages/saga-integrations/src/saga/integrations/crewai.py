"""CrewAI adapter: listens on CrewAI's event bus and turns each crew kickoff into a session.

CrewAI announces everything on ``crewai_event_bus``: ``CrewKickoffStarted``/``Completed``/
``Failed`` (one task of the crew as a whole — SAGA's session), ``LLMCallStarted``/``Completed``
(emitted by the LLM implementation, with the messages and the response text but no token
usage, so tokens are estimated at ~4 characters a token), and ``ToolUsageStarted``/
``Finished`` (CrewAI's own ``started_at``/``finished_at``) or ``ToolUsageError`` (the tool
raised; CrewAI retries it, and each attempt is a tool call). Events carry the ``task_id`` of
the crew task they belong to, which maps them to the kickoff whose crew holds that task, so
concurrent kickoffs stay apart. At admission the crew's agents' tools and its task count
become the `WorkflowHint`. CrewAI says a call was the last only once the kickoff completed (or
failed): then the ``on_end`` hooks are told (``SagaEngine.end_session``...), which release the
KV the engine pinned for a tool that will never run.

The bus runs synchronous handlers on a thread pool (in no fixed order), so the adapter
registers async handlers, which the bus runs one after another on its own event loop in
emission order; `CrewAIAttachment.flush()` waits until every event emitted so far has been
handled. `CrewAITracker` holds the logic and needs no CrewAI; `attach()` imports it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from saga.aeg.hints import WorkflowHint
from saga.integrations.errors import IntegrationError
from saga.integrations.feed import EndHooks, WorkflowFeed, end_hooks, notify_end
from saga.integrations.frameworks import require
from saga.integrations.metadata import RequestMetadata
from saga.integrations.session import LLMCall, SessionTrace, ToolCall, estimate_tokens

__all__ = ["FRAMEWORK", "CrewAIAttachment", "CrewAITracker", "attach", "crew_hint"]

FRAMEWORK = "crewai"
DEFAULT_AGENT_TYPE = "crew"


def _seconds(t: datetime | float | None) -> float:
    if isinstance(t, datetime):
        return t.timestamp()
    if isinstance(t, int | float):
        return float(t)
    raise IntegrationError(f"an event time must be a datetime or epoch seconds, got {t!r}")


def _text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    if isinstance(messages, list):
        return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m)
                         for m in messages)
    return "" if messages is None else str(messages)


def crew_hint(crew: Any, agent_type: str | None = None) -> WorkflowHint:
    """The hint a crew declares: its agents' tools, and at least one LLM call per task plus
    one more for each task whose agent has tools (a prior guess; observations replace it)."""
    tasks = list(getattr(crew, "tasks", None) or [])
    tools: list[str] = []
    calls = 0
    for task in tasks:
        agent = getattr(task, "agent", None)
        names = [str(t.name) for t in (getattr(agent, "tools", None) or [])]
        names += [str(t.name) for t in (getattr(task, "tools", None) or [])]
        for n in names:
            if n not in tools:
                tools.append(n)
        calls += 2 if names else 1
    name = agent_type or str(getattr(crew, "name", None) or DEFAULT_AGENT_TYPE)
    return WorkflowHint(name, tools=tuple(tools), expected_llm_calls=float(max(1, calls)),
                        framework=FRAMEWORK)


@dataclass
class _Run:
    """One kickoff in flight: its session and the calls still open."""

    session: SessionTrace
    llm: list[LLMCall] = field(default_factory=list)
    tools: list[ToolCall] = field(default_factory=list)


class CrewAITracker:
    """Kickoffs, LLM calls and tool calls into sessions (framework-free: plain values in)."""

    def __init__(self, feed: WorkflowFeed, *, agent_type: str | None = None,
                 tenant_id: str = "default", crew_name: str | None = None,
                 on_end: EndHooks = None) -> None:
        if not isinstance(feed, WorkflowFeed):
            raise IntegrationError(f"feed must be a WorkflowFeed, got {type(feed).__name__}")
        self.feed = feed
        self.agent_type = agent_type
        self.tenant_id = tenant_id
        self.crew_name = crew_name
        self.on_end = end_hooks(on_end)
        self._runs: dict[int, _Run] = {}
        self._task_run: dict[str, int] = {}
        self._lock = threading.RLock()

    def _run_of(self, task_id: str | None) -> _Run | None:
        key = self._task_run.get(task_id) if task_id is not None else None
        if task_id is None and len(self._runs) == 1:
            key = next(iter(self._runs))  # an event without a task: the only kickoff running
        return None if key is None else self._runs.get(key)

    def kickoff_started(self, crew: Any, t: float) -> SessionTrace | None:
        """A crew began a task (ignored when this tracker follows another crew by name)."""
        name = getattr(crew, "name", None)
        if self.crew_name is not None and name != self.crew_name:
            return None
        with self._lock:
            hint = crew_hint(crew, self.agent_type)
            session = self.feed.start_session(hint.agent_type, FRAMEWORK, t,
                                              tenant_id=self.tenant_id, hint=hint)
            key = id(crew)
            self._runs[key] = _Run(session)
            for task in getattr(crew, "tasks", None) or []:
                self._task_run[str(task.id)] = key
            return session

    def kickoff_ended(self, crew: Any, t: float, *, failed: bool = False) -> None:
        """The crew's task completed (or failed): close its session, tell the end hooks."""
        with self._lock:
            run = self._runs.pop(id(crew), None)
            if run is None:
                return
            for tid in [k for k, v in self._task_run.items() if v == id(crew)]:
                del self._task_run[tid]
            for call in run.tools:
                run.session.tool_finished(call, t, error=True)
            self.feed.finish_session(run.session, t, failed=failed)
        notify_end(self.on_end, run.session)

    def llm_started(self, task_id: str | None, messages: Any, t: float) -> None:
        """An LLM call began (its prompt is counted, ~4 characters a token)."""
        with self._lock:
            run = self._run_of(task_id)
            if run is None:
                return
            meta = self.feed.metadata(run.session)
            call = run.session.llm_started(t, estimate_tokens(_text(messages)), estimated=True)
            call.metadata = meta
            run.llm.append(call)

    def llm_ended(self, task_id: str | None, response: Any, t: float, *,
                  failed: bool = False) -> None:
        """The LLM call returned ``response`` (or failed)."""
        with self._lock:
            run = self._run_of(task_id)
            if run is None or not run.llm:
                return
            call = run.llm.pop(0)
            text = "" if failed else _text(response)
            run.session.llm_finished(call, t, output_tokens=estimate_tokens(text))

    def tool_started(self, task_id: str | None, tool: str, t: float) -> None:
        """A tool attempt began."""
        with self._lock:
            run = self._run_of(task_id)
            if run is not None:
                run.tools.append(run.session.tool_started(tool, t))

    def tool_ended(self, task_id: str | None, tool: str, t: float, *,
                   started_at: float | None = None, error: bool = False) -> None:
        """The attempt finished at ``t`` (CrewAI's own ``started_at`` when it reports one)."""
        with self._lock:
            run = self._run_of(task_id)
            if run is None:
                return
            call = next((c for c in run.tools if c.tool == tool), None)
            if call is None:
                return
            run.tools.remove(call)
            if started_at is not None:
                call.started_at = started_at
            run.session.tool_finished(call, t, error=error)

    def metadata_for_task(self, task_id: str | None) -> RequestMetadata | None:
        """Metadata of the LLM call now open in ``task_id``'s kickoff (None if none)."""
        with self._lock:
            run = self._run_of(task_id)
            if run is None or not run.llm:
                return None
            return run.llm[-1].metadata


class CrewAIAttachment:
    """SAGA's handlers on CrewAI's event bus; `detach()` stops them."""

    def __init__(self, tracker: CrewAITracker, bus: Any) -> None:
        self.tracker = tracker
        self.bus = bus
        self.active = True
        from crewai.events.base_events import BaseEvent

        class SagaFlushEvent(BaseEvent):  # type: ignore[misc]
            """Emitted by `flush`: handled after every event emitted before it."""

            type: str = "saga_flush"

        self._flush_event = SagaFlushEvent

        async def _flushed(source: Any, event: Any) -> None:
            return None

        bus.register_handler(SagaFlushEvent, _flushed)

    @property
    def feed(self) -> WorkflowFeed:
        """Where finished sessions go."""
        return self.tracker.feed

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the bus has handled every event emitted before this call."""
        future = self.bus.emit(self, self._flush_event())
        if future is not None:
            future.result(timeout=timeout)

    def kickoff(self, crew: Any, inputs: dict[str, Any] | None = None) -> Any:
        """``crew.kickoff(inputs)``, then `flush`, so its session is closed on return."""
        try:
            return crew.kickoff(inputs=inputs)
        finally:
            self.flush()

    def request_metadata(self, task: Any) -> RequestMetadata | None:
        """For a SAGA-aware LLM's ``call(..., from_task=task)``, after it emitted its
        ``LLMCallStartedEvent``: the metadata of this call."""
        self.flush()
        return self.tracker.metadata_for_task(None if task is None else str(task.id))

    def detach(self) -> None:
        """Stop recording (CrewAI's bus has no public way to remove a handler)."""
        self.active = False


def attach(feed: WorkflowFeed | None = None, *, crew: Any | None = None,
           agent_type: str | None = None, tenant_id: str = "default",
           bus: Any | None = None, on_end: EndHooks = None) -> CrewAIAttachment:
    """Record crew kickoffs from CrewAI's event bus into ``feed``.

    With ``crew``, only kickoffs of crews of that name are recorded and its hint is admitted
    now; ``agent_type`` defaults to the crew's name. ``on_end`` (one callable or several, e.g.
    ``engine.end_session``) is called with the session id when a kickoff completes or fails
    (on the bus's thread, before `CrewAIAttachment.kickoff` returns). Raises
    `FrameworkNotInstalledError` when crewai is missing.
    """
    require(FRAMEWORK)
    from crewai.events import crewai_event_bus

    feed = feed if feed is not None else WorkflowFeed()
    crew_name = None
    if crew is not None:
        crew_name = getattr(crew, "name", None)
        feed.admit(crew_hint(crew, agent_type))
    tracker = CrewAITracker(feed, agent_type=agent_type, tenant_id=tenant_id,
                            crew_name=crew_name, on_end=on_end)
    bus = bus if bus is not None else crewai_event_bus
    att = CrewAIAttachment(tracker, bus)
    for events, handler in _handlers(att):
        for event_type in events:
            bus.register_handler(event_type, handler)
    return att


def _handlers(att: CrewAIAttachment) -> Sequence[tuple[Iterable[Any], Any]]:
    """Each CrewAI event SAGA listens to, with its handler: the event's facts to the tracker
    as plain values, nothing once the attachment is detached."""
    from crewai.events import (
        CrewKickoffCompletedEvent,
        CrewKickoffFailedEvent,
        CrewKickoffStartedEvent,
        LLMCallCompletedEvent,
        LLMCallFailedEvent,
        LLMCallStartedEvent,
        ToolUsageErrorEvent,
        ToolUsageFinishedEvent,
        ToolUsageStartedEvent,
    )

    tracker = att.tracker

    async def on_kickoff(source: Any, ev: Any) -> None:
        if att.active:
            tracker.kickoff_started(source, _seconds(ev.timestamp))

    async def on_kickoff_end(source: Any, ev: Any) -> None:
        if att.active:
            tracker.kickoff_ended(source, _seconds(ev.timestamp),
                                  failed=isinstance(ev, CrewKickoffFailedEvent))

    async def on_llm(source: Any, ev: Any) -> None:
        if att.active:
            tracker.llm_started(ev.task_id, ev.messages, _seconds(ev.timestamp))

    async def on_llm_end(source: Any, ev: Any) -> None:
        if att.active:
            failed = isinstance(ev, LLMCallFailedEvent)
            tracker.llm_ended(ev.task_id, None if failed else ev.response,
                              _seconds(ev.timestamp), failed=failed)

    async def on_tool(source: Any, ev: Any) -> None:
        if att.active:
            tracker.tool_started(ev.task_id, str(ev.tool_name), _seconds(ev.timestamp))

    async def on_tool_end(source: Any, ev: Any) -> None:
        if not att.active:
            return
        if isinstance(ev, ToolUsageFinishedEvent):
            tracker.tool_ended(ev.task_id, str(ev.tool_name), _seconds(ev.finished_at),
                               started_at=_seconds(ev.started_at))
        else:
            tracker.tool_ended(ev.task_id, str(ev.tool_name), _seconds(ev.timestamp),
                               error=True)

    return (
        ((CrewKickoffStartedEvent,), on_kickoff),
        ((CrewKickoffCompletedEvent, CrewKickoffFailedEvent), on_kickoff_end),
        ((LLMCallStartedEvent,), on_llm),
        ((LLMCallCompletedEvent, LLMCallFailedEvent), on_llm_end),
        ((ToolUsageStartedEvent,), on_tool),
        ((ToolUsageFinishedEvent, ToolUsageErrorEvent), on_tool_end),
    )
