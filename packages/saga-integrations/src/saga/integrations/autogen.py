"""AutoGen (autogen-agentchat 0.7) adapter: a model-client wrapper plus the agent's event stream.

AutoGen reports a run as a stream of messages and events: ``ToolCallRequestEvent`` (the model
asked for tools), ``ToolCallExecutionEvent`` (their results, ``is_error`` each), the final
chat message and a ``TaskResult``. It reports no time for a model call, so the adapter wraps
the agent's ``ChatCompletionClient``: each ``create`` becomes an LLM call with its duration
and usage (``RequestUsage``), and before it runs the wrapper adds the call's SAGA metadata to
``extra_create_args`` (by default as ``extra_body={"vllm_xargs": ...}``, which an OpenAI-client
talking to vLLM's server forwards). Tool calls come from the stream, timed on arrival: the
request event arrives just before the agent runs the tools and the execution event just after.
One ``run``/``run_stream`` through the attachment is one SAGA session. A ``create`` that cannot
ask for tools (none offered, or ``tool_choice="none"``: the reflection after tool use) is the
run's last and is sent as ``final``; otherwise the run's end (its ``TaskResult``, or an error)
tells the ``on_end`` hooks (``AsyncSagaEngine.end_session``...), which release the KV pinned for
a tool that will never run.

`AutoGenTracker` holds the logic and needs no AutoGen; `attach()` and `wrap_model_client()`
import it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

from saga.aeg.hints import WorkflowHint
from saga.integrations.errors import IntegrationError
from saga.integrations.feed import EndHooks, WorkflowFeed, anotify_end, end_hooks
from saga.integrations.frameworks import require
from saga.integrations.metadata import RequestMetadata
from saga.integrations.session import LLMCall, SessionTrace, ToolCall

__all__ = [
    "FRAMEWORK",
    "AutoGenAttachment",
    "AutoGenTracker",
    "attach",
    "openai_extra_body_args",
    "wrap_model_client",
]

FRAMEWORK = "autogen"
MetadataSender = Callable[[RequestMetadata, Mapping[str, Any]], Mapping[str, Any]]


def openai_extra_body_args(meta: RequestMetadata, args: Mapping[str, Any]) -> dict[str, Any]:
    """``extra_create_args`` with ``meta`` merged into ``extra_body["vllm_xargs"]`` (what
    autogen-ext's OpenAI client sends to vLLM's OpenAI server)."""
    out = dict(args)
    body = dict(out.get("extra_body") or {})
    xargs = dict(body.get("vllm_xargs") or {})
    xargs.update(meta.vllm_xargs())
    body["vllm_xargs"] = xargs
    out["extra_body"] = body
    return out


class AutoGenTracker:
    """One agent's sessions: LLM calls from the client wrapper, tools from the event stream."""

    def __init__(self, feed: WorkflowFeed, agent_type: str, *, tenant_id: str = "default",
                 tools: Sequence[str] = (), clock: Callable[[], float] = time.monotonic,
                 on_end: EndHooks = None) -> None:
        if not isinstance(feed, WorkflowFeed):
            raise IntegrationError(f"feed must be a WorkflowFeed, got {type(feed).__name__}")
        if not isinstance(agent_type, str) or not agent_type:
            raise IntegrationError(f"agent_type must be a non-empty str, got {agent_type!r}")
        self.feed = feed
        self.agent_type = agent_type
        self.tenant_id = tenant_id
        self.tools = tuple(tools)
        self.clock = clock
        self.on_end = end_hooks(on_end)
        self.session: SessionTrace | None = None
        self._open_tools: list[ToolCall] = []
        self._lock = threading.RLock()

    # --- session ------------------------------------------------------------------------
    def begin(self) -> SessionTrace:
        """Open the session of one run (the previous one must have ended)."""
        with self._lock:
            if self.session is not None:
                raise IntegrationError(
                    f"agent {self.agent_type!r} is already running a task; AutoGen agents run "
                    "one task at a time — attach a second agent for concurrent tasks")
            hint = WorkflowHint(self.agent_type, tools=self.tools, framework=FRAMEWORK) if (
                self.tools) else None
            self.session = self.feed.start_session(self.agent_type, FRAMEWORK, self.clock(),
                                                   tenant_id=self.tenant_id, hint=hint)
            self._open_tools = []
            return self.session

    def end(self, *, failed: bool = False) -> SessionTrace | None:
        """Close the current session (``failed``: the run raised)."""
        with self._lock:
            session, self.session = self.session, None
            if session is not None:
                now = self.clock()
                for call in self._open_tools:
                    session.tool_finished(call, now, error=True)
                self._open_tools = []
                self.feed.finish_session(session, now, failed=failed)
            return session

    # --- the model client -----------------------------------------------------------------
    def llm_started(self, *, final: bool = False) -> tuple[LLMCall, RequestMetadata] | None:
        """A ``create`` began (``final``: it cannot ask for tools, so it is the run's last):
        record it and return it with its metadata (None outside a run)."""
        with self._lock:
            if self.session is None:
                return None
            meta = self.feed.metadata(self.session, final=final)
            call = self.session.llm_started(self.clock())
            call.metadata = meta
            return call, meta

    def llm_ended(self, call: LLMCall, *, prompt_tokens: int, completion_tokens: int,
                  tool_calls: Sequence[str]) -> None:
        """The ``create`` returned with this usage and these function calls."""
        with self._lock:
            if self.session is not None:
                self.session.llm_finished(call, self.clock(), input_tokens=prompt_tokens,
                                          output_tokens=completion_tokens,
                                          tool_calls=tool_calls, estimated=False)

    # --- the event stream -----------------------------------------------------------------
    def observe(self, item: Any) -> None:
        """Fold one item of ``run_stream`` into the session (by AutoGen's type names, so this
        logic needs no AutoGen import)."""
        kind = type(item).__name__
        with self._lock:
            if self.session is None:
                return
            if kind == "ToolCallRequestEvent":
                now = self.clock()
                for fc in item.content:
                    self._open_tools.append(self.session.tool_started(str(fc.name), now))
            elif kind == "ToolCallExecutionEvent":
                now = self.clock()
                # Results come in the order of the calls (the agent gathers them in order).
                results = list(item.content)
                for i, call in enumerate(self._open_tools):
                    err = bool(results[i].is_error) if i < len(results) else False
                    self.session.tool_finished(call, now, error=err)
                self._open_tools = []


class AutoGenAttachment:
    """An AutoGen agent with SAGA attached: run tasks through it to record sessions."""

    def __init__(self, agent: Any, tracker: AutoGenTracker) -> None:
        self.agent = agent
        self.tracker = tracker

    @property
    def feed(self) -> WorkflowFeed:
        """Where finished sessions go."""
        return self.tracker.feed

    async def run_stream(self, task: Any = None, **kw: Any) -> AsyncIterator[Any]:
        """``agent.run_stream(task=...)``, one SAGA session; yields every item unchanged.
        The session ends (and the end hooks run) at the ``TaskResult``, before it is yielded."""
        self.tracker.begin()
        failed = True
        try:
            async for item in self.agent.run_stream(task=task, **kw):
                self.tracker.observe(item)
                if type(item).__name__ == "TaskResult":
                    await self._end(failed=False)
                yield item
            failed = False
        finally:
            await self._end(failed=failed)

    async def _end(self, *, failed: bool) -> None:
        session = self.tracker.end(failed=failed)
        if session is not None:
            await anotify_end(self.tracker.on_end, session)

    async def run(self, task: Any = None, **kw: Any) -> Any:
        """``agent.run(task=...)``, one SAGA session; returns the ``TaskResult``."""
        result: Any = None
        async for item in self.run_stream(task, **kw):
            if type(item).__name__ == "TaskResult":
                result = item
        return result


def _last_call(kw: Mapping[str, Any]) -> bool:
    """A call that cannot ask for a tool ends the agent's turn."""
    return not kw.get("tools") or kw.get("tool_choice") == "none"


def _tool_names(content: Any) -> list[str]:
    if isinstance(content, list):
        return [str(getattr(fc, "name", "")) for fc in content if getattr(fc, "name", "")]
    return []


class _PassThrough:
    """The ``ChatCompletionClient`` methods SAGA's wrapper hands straight to the client it
    wraps (everything but ``create`` and ``create_stream``)."""

    inner: Any

    async def close(self) -> None:
        await self.inner.close()

    def actual_usage(self) -> Any:
        return self.inner.actual_usage()

    def total_usage(self) -> Any:
        return self.inner.total_usage()

    def count_tokens(self, messages: Any, **kw: Any) -> int:
        return int(self.inner.count_tokens(messages, **kw))

    def remaining_tokens(self, messages: Any, **kw: Any) -> int:
        return int(self.inner.remaining_tokens(messages, **kw))

    @property
    def capabilities(self) -> Any:
        return self.inner.capabilities

    @property
    def model_info(self) -> Any:
        return self.inner.model_info


_WRAPPER_CLASS: type[Any] | None = None


def _wrapper_class() -> type[Any]:
    """The ``ChatCompletionClient`` wrapper, built on first use (imports autogen-core)."""
    global _WRAPPER_CLASS
    if _WRAPPER_CLASS is not None:
        return _WRAPPER_CLASS
    from autogen_core.models import ChatCompletionClient

    class SagaChatCompletionClient(_PassThrough, ChatCompletionClient):  # type: ignore[misc]
        """Times each model call, reads its usage, and sends SAGA's metadata with it."""

        def __init__(self, inner: Any, tracker: AutoGenTracker,
                     send: MetadataSender | None) -> None:
            self.inner = inner
            self.saga = tracker
            self._send = send

        def _args(self, meta: RequestMetadata | None,
                  extra_create_args: Mapping[str, Any]) -> Mapping[str, Any]:
            if meta is None or self._send is None:
                return extra_create_args
            return self._send(meta, extra_create_args)

        async def create(self, messages: Any, *, extra_create_args: Mapping[str, Any] = {},
                         **kw: Any) -> Any:
            started = self.saga.llm_started(final=_last_call(kw))
            args = self._args(started[1] if started else None, extra_create_args)
            result = await self.inner.create(messages, extra_create_args=args, **kw)
            if started is not None:
                self.saga.llm_ended(started[0], prompt_tokens=result.usage.prompt_tokens,
                                    completion_tokens=result.usage.completion_tokens,
                                    tool_calls=_tool_names(result.content))
            return result

        async def create_stream(self, messages: Any, *,
                                extra_create_args: Mapping[str, Any] = {},
                                **kw: Any) -> AsyncIterator[Any]:
            started = self.saga.llm_started(final=_last_call(kw))
            args = self._args(started[1] if started else None, extra_create_args)
            async for chunk in self.inner.create_stream(messages, extra_create_args=args, **kw):
                if started is not None and not isinstance(chunk, str):
                    self.saga.llm_ended(started[0], prompt_tokens=chunk.usage.prompt_tokens,
                                        completion_tokens=chunk.usage.completion_tokens,
                                        tool_calls=_tool_names(chunk.content))
                yield chunk

    _WRAPPER_CLASS = SagaChatCompletionClient
    return SagaChatCompletionClient


def wrap_model_client(client: Any, tracker: AutoGenTracker, *,
                      send: MetadataSender | None = openai_extra_body_args) -> Any:
    """``client`` as a ``ChatCompletionClient`` that reports to ``tracker`` (``send=None``:
    record only, send no metadata)."""
    require(FRAMEWORK)
    return _wrapper_class()(client, tracker, send)


def _agent_tool_names(agent: Any, tools: Iterable[Any] | None) -> tuple[str, ...]:
    """Tool names: given, else the AssistantAgent's own tool list (``_tools``)."""
    source = tools if tools is not None else getattr(agent, "_tools", None) or []
    return tuple(str(getattr(t, "name", t)) for t in source)


def attach(agent: Any, feed: WorkflowFeed | None = None, *, agent_type: str | None = None,
           tools: Iterable[Any] | None = None, tenant_id: str = "default",
           clock: Callable[[], float] = time.monotonic,
           send: MetadataSender | None = openai_extra_body_args,
           on_end: EndHooks = None) -> AutoGenAttachment:
    """Attach SAGA to an AutoGen ``AssistantAgent``: wraps its model client in place and
    returns an attachment whose ``run``/``run_stream`` record one session per task.

    ``agent_type`` defaults to the agent's name; its tools become the `WorkflowHint`.
    ``on_end`` (one callable or several, sync or async, e.g. ``engine.end_session``) is called
    with the session id when a run ends without its last call having been sent as final.
    Raises `FrameworkNotInstalledError` when autogen-agentchat is missing.
    """
    require(FRAMEWORK)
    client = getattr(agent, "_model_client", None)
    if client is None:
        raise IntegrationError(
            f"{type(agent).__name__} has no model client to wrap (an AssistantAgent keeps it "
            "in _model_client); build the agent with wrap_model_client(client, tracker) instead")
    tracker = AutoGenTracker(feed if feed is not None else WorkflowFeed(),
                             agent_type or str(getattr(agent, "name", "") or "autogen-agent"),
                             tenant_id=tenant_id, tools=_agent_tool_names(agent, tools),
                             clock=clock, on_end=on_end)
    if not isinstance(getattr(client, "saga", None), AutoGenTracker):
        agent._model_client = _wrapper_class()(client, tracker, send)
    else:
        client.saga = tracker
    return AutoGenAttachment(agent, tracker)
