"""LangChain adapter: a callback handler that maps a run tree to a SAGA session.

LangChain reports every run with its ``run_id`` and ``parent_run_id``: an agent invocation is a
tree whose root is the graph (or chain) run, with chat-model runs and tool runs below it. The
root becomes a session; each chat-model run under it an LLM call (usage figures from the
reply's ``usage_metadata`` when the model reports them, ~4-characters-a-token estimates when it
does not), each tool run a tool call with its measured duration. When the root ends the task
goes to pattern inference and the ``on_end`` hooks are told (``SagaEngine.end_session``: the
engine releases the KV it pinned for the tool the last call was expected to end in — LangChain
only says a call was the last once the agent finishes). Before each chat-model call the
handler computes the call's SAGA metadata (session, AEG node, predicted pending tool, last
tool latency); a SAGA-aware chat model reads it with `request_metadata(run_manager)` and sends
it as ``extra_args`` (vLLM engine) or ``extra_body={"vllm_xargs": ...}`` (vLLM's OpenAI
server).

`LangChainTracker` holds the logic and needs no LangChain; `attach()` wraps it in a real
``BaseCallbackHandler`` and is the only part that imports the framework.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from uuid import UUID

from saga.aeg.hints import WorkflowHint
from saga.integrations.errors import IntegrationError
from saga.integrations.feed import EndHooks, WorkflowFeed, end_hooks, notify_end
from saga.integrations.frameworks import require
from saga.integrations.metadata import RequestMetadata
from saga.integrations.session import LLMCall, SessionTrace, ToolCall, estimate_tokens

__all__ = [
    "FRAMEWORK",
    "LangChainTracker",
    "agent_tools",
    "attach",
    "request_metadata",
    "tool_names",
]

FRAMEWORK = "langchain"
RunId = UUID | str


class LangChainTracker:
    """Run-tree bookkeeping behind the callback handler (framework-free, thread-safe)."""

    def __init__(self, feed: WorkflowFeed, *, agent_type: str | None = None,
                 tenant_id: str = "default", tools: Sequence[str] = (),
                 clock: Callable[[], float] = time.monotonic,
                 count_tokens: Callable[[str], int] = estimate_tokens,
                 on_end: EndHooks = None) -> None:
        if not isinstance(feed, WorkflowFeed):
            raise IntegrationError(f"feed must be a WorkflowFeed, got {type(feed).__name__}")
        if agent_type is not None and (not isinstance(agent_type, str) or not agent_type):
            raise IntegrationError(f"agent_type must be a non-empty str or None (None: the "
                                   f"root run's name), got {agent_type!r}")
        self.feed = feed
        self.agent_type = agent_type
        self.tenant_id = tenant_id
        self.tools = tuple(tools)
        self.clock = clock
        self.count_tokens = count_tokens
        self.on_end = end_hooks(on_end)
        self._lock = threading.RLock()
        self._root_of: dict[RunId, RunId] = {}
        self._sessions: dict[RunId, SessionTrace] = {}
        self._llm: dict[RunId, LLMCall] = {}
        self._tool: dict[RunId, ToolCall] = {}

    # --- run tree -----------------------------------------------------------------------
    def _enter(self, run_id: RunId, parent_run_id: RunId | None, name: str | None
               ) -> SessionTrace:
        """Place ``run_id`` in its tree; a root opens a session."""
        if parent_run_id is not None and parent_run_id in self._root_of:
            root = self._root_of[parent_run_id]
            self._root_of[run_id] = root
            return self._sessions[root]
        # A root (or a child of a run started before the handler was attached).
        agent_type = self.agent_type or name or "langchain-agent"
        hint = WorkflowHint(agent_type, tools=self.tools, framework=FRAMEWORK) if (
            self.tools) else None
        session = self.feed.start_session(agent_type, FRAMEWORK, self.clock(),
                                          tenant_id=self.tenant_id, session_id=str(run_id),
                                          hint=hint)
        self._root_of[run_id] = run_id
        self._sessions[run_id] = session
        return session

    def _leave(self, run_id: RunId, *, error: bool) -> None:
        """``run_id`` ended; the root's end closes its session and tells the end hooks."""
        root = self._root_of.pop(run_id, None)
        if root is None or root != run_id:
            return
        session = self._sessions.pop(root)
        for rid in [r for r, ro in self._root_of.items() if ro == root]:
            del self._root_of[rid]
        self.feed.finish_session(session, self.clock(), failed=error)
        notify_end(self.on_end, session)

    def chain_started(self, run_id: RunId, parent_run_id: RunId | None,
                      name: str | None) -> None:
        """A chain/graph run (the agent, or one of its nodes) started."""
        with self._lock:
            self._enter(run_id, parent_run_id, name)

    def chain_ended(self, run_id: RunId, *, error: bool = False) -> None:
        """A chain/graph run ended (``error``: it raised)."""
        with self._lock:
            self._leave(run_id, error=error)

    def llm_started(self, run_id: RunId, parent_run_id: RunId | None, prompt_text: str,
                    name: str | None = None) -> RequestMetadata:
        """A chat-model (or LLM) run started; returns the metadata for its request."""
        with self._lock:
            session = self._enter(run_id, parent_run_id, name)
            meta = self.feed.metadata(session)
            call = session.llm_started(self.clock(), self.count_tokens(prompt_text),
                                       estimated=True)
            call.metadata = meta
            self._llm[run_id] = call
            return meta

    def llm_ended(self, run_id: RunId, *, input_tokens: int | None, output_tokens: int | None,
                  output_text: str, tool_calls: Sequence[str], error: bool = False) -> None:
        """The model replied (usage figures when reported, else the text is counted)."""
        with self._lock:
            call = self._llm.pop(run_id, None)
            session = self._session_of(run_id)
            if call is not None and session is not None:
                reported = input_tokens is not None and output_tokens is not None
                session.llm_finished(
                    call, self.clock(), input_tokens=input_tokens,
                    output_tokens=output_tokens if output_tokens is not None else
                    self.count_tokens(output_text), tool_calls=tool_calls,
                    estimated=not reported)
            self._leave(run_id, error=error)

    def tool_started(self, run_id: RunId, parent_run_id: RunId | None, name: str) -> None:
        """A tool run started."""
        with self._lock:
            session = self._enter(run_id, parent_run_id, name)
            self._tool[run_id] = session.tool_started(name, self.clock())

    def tool_ended(self, run_id: RunId, *, error: bool = False) -> None:
        """A tool run returned (or raised)."""
        with self._lock:
            call = self._tool.pop(run_id, None)
            session = self._session_of(run_id)
            if call is not None and session is not None:
                session.tool_finished(call, self.clock(), error=error)
            self._leave(run_id, error=error)

    # --- queries ------------------------------------------------------------------------
    def _session_of(self, run_id: RunId) -> SessionTrace | None:
        root = self._root_of.get(run_id)
        return None if root is None else self._sessions.get(root)

    def metadata_for(self, run_id: RunId) -> RequestMetadata | None:
        """The metadata computed when chat-model run ``run_id`` started (None if unknown)."""
        with self._lock:
            call = self._llm.get(run_id)
            return None if call is None else call.metadata


# --- the LangChain side ------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """Text of a message's content (a str, or a list of blocks with ``text``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b if isinstance(b, str) else str(b.get("text", "")) if isinstance(
            b, dict) else "" for b in content)
    return ""


def _messages_text(messages: Iterable[Any]) -> str:
    parts: list[str] = []
    for m in messages:
        parts.append(_text_of(getattr(m, "content", "")))
        for tc in getattr(m, "tool_calls", None) or []:
            parts.append(f"{tc.get('name', '')} {tc.get('args', '')}")
    return "\n".join(parts)


def _reply_facts(response: Any) -> tuple[int | None, int | None, str, list[str]]:
    """(input tokens, output tokens, text, tool names) of an ``LLMResult``'s first reply."""
    gens = getattr(response, "generations", None) or []
    first = gens[0][0] if gens and gens[0] else None
    if first is None:
        return None, None, "", []
    message = getattr(first, "message", None)
    text = getattr(first, "text", "") or ""
    if message is None:
        return None, None, text, []
    tools = [str(tc.get("name")) for tc in getattr(message, "tool_calls", None) or []
             if tc.get("name")]
    usage = getattr(message, "usage_metadata", None) or {}
    text = _messages_text([message])
    inp, out = usage.get("input_tokens"), usage.get("output_tokens")
    return (inp if isinstance(inp, int) else None, out if isinstance(out, int) else None,
            text, tools)


class _Callbacks:
    """LangChain's callbacks, each passed to the tracker as plain values; the handler class
    (`_handler_class`) puts these in front of ``BaseCallbackHandler``'s no-op ones."""

    saga: LangChainTracker

    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *,
                       run_id: UUID, parent_run_id: UUID | None = None,
                       **kw: Any) -> None:
        self.saga.chain_started(run_id, parent_run_id,
                                kw.get("name") or (serialized or {}).get("name"))

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kw: Any) -> None:
        self.saga.chain_ended(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kw: Any) -> None:
        self.saga.chain_ended(run_id, error=True)

    def on_chat_model_start(self, serialized: dict[str, Any] | None,
                            messages: list[list[Any]], *, run_id: UUID,
                            parent_run_id: UUID | None = None, **kw: Any) -> None:
        text = _messages_text(messages[0] if messages else [])
        self.saga.llm_started(run_id, parent_run_id, text, kw.get("name"))

    def on_llm_start(self, serialized: dict[str, Any] | None, prompts: list[str], *,
                     run_id: UUID, parent_run_id: UUID | None = None, **kw: Any) -> None:
        self.saga.llm_started(run_id, parent_run_id, "\n".join(prompts[:1]),
                              kw.get("name"))

    def on_llm_end(self, response: Any, *, run_id: UUID, **kw: Any) -> None:
        inp, out, text, tools = _reply_facts(response)
        self.saga.llm_ended(run_id, input_tokens=inp, output_tokens=out,
                            output_text=text, tool_calls=tools)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kw: Any) -> None:
        self.saga.llm_ended(run_id, input_tokens=None, output_tokens=None, output_text="",
                            tool_calls=(), error=True)

    def on_tool_start(self, serialized: dict[str, Any] | None, input_str: str, *,
                      run_id: UUID, parent_run_id: UUID | None = None,
                      **kw: Any) -> None:
        name = kw.get("name") or (serialized or {}).get("name") or "tool"
        self.saga.tool_started(run_id, parent_run_id, str(name))

    def on_tool_end(self, output: Any, *, run_id: UUID, **kw: Any) -> None:
        # A tool with handle_tool_error returns its error as a ToolMessage(status="error").
        self.saga.tool_ended(run_id, error=getattr(output, "status", None) == "error")

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kw: Any) -> None:
        self.saga.tool_ended(run_id, error=True)


_HANDLER_CLASS: type[Any] | None = None


def _handler_class() -> type[Any]:
    """The ``BaseCallbackHandler`` subclass, built on first use (imports LangChain)."""
    global _HANDLER_CLASS
    if _HANDLER_CLASS is not None:
        return _HANDLER_CLASS
    from langchain_core.callbacks import BaseCallbackHandler

    class SagaCallbackHandler(_Callbacks, BaseCallbackHandler):  # type: ignore[misc]
        """Feeds SAGA the agent's run tree (see `saga.integrations.langchain`)."""

        run_inline = True  # keep event order: never hop to an executor thread
        raise_error = True  # a bookkeeping bug should be seen, not silently logged

        def __init__(self, tracker: LangChainTracker) -> None:
            super().__init__()
            self.saga = tracker

    _HANDLER_CLASS = SagaCallbackHandler
    return SagaCallbackHandler


def tool_names(tools: Iterable[Any]) -> tuple[str, ...]:
    """Names of LangChain tools (``BaseTool``s, or plain functions by ``__name__``)."""
    names: list[str] = []
    for t in tools:
        name = getattr(t, "name", None) or getattr(t, "__name__", None)
        if not isinstance(name, str) or not name:
            raise IntegrationError(f"cannot tell the name of tool {t!r}; pass BaseTools or "
                                   "named functions")
        names.append(name)
    return tuple(names)


def agent_tools(agent: Any) -> list[Any]:
    """The tools of a ``langchain.agents.create_agent`` graph (its ``tools`` node's
    ``ToolNode``), to declare them in the hint: ``attach(feed, tools=agent_tools(agent))``."""
    nodes = getattr(agent, "nodes", None) or {}
    node = nodes.get("tools") if isinstance(nodes, dict) else None
    by_name = getattr(getattr(node, "bound", None), "tools_by_name", None)
    if not isinstance(by_name, dict):
        raise IntegrationError(
            f"{type(agent).__name__} has no 'tools' node with a ToolNode (a create_agent graph "
            "has one); pass the agent's tools to attach(tools=...) yourself")
    return list(by_name.values())


def attach(feed: WorkflowFeed | None = None, *, agent_type: str | None = None,
           tools: Iterable[Any] = (), tenant_id: str = "default",
           clock: Callable[[], float] = time.monotonic,
           count_tokens: Callable[[str], int] = estimate_tokens,
           on_end: EndHooks = None) -> Any:
    """A LangChain callback handler feeding ``feed`` (a new `WorkflowFeed` if None).

    Pass it per call (``agent.invoke(x, config={"callbacks": [handler]})``) or to the model.
    ``tools`` (the agent's tools) become the agent type's `WorkflowHint` at its first session;
    ``agent_type`` defaults to the root run's name (``create_agent(..., name=...)``).
    ``on_end`` (one callable or several, e.g. ``engine.end_session``) is called with the
    session id when the agent's run ends, finished or failed.
    Raises `FrameworkNotInstalledError` when langchain-core is missing.
    """
    require(FRAMEWORK)
    tracker = LangChainTracker(feed if feed is not None else WorkflowFeed(),
                               agent_type=agent_type, tenant_id=tenant_id,
                               tools=tool_names(tools), clock=clock, count_tokens=count_tokens,
                               on_end=on_end)
    return _handler_class()(tracker)


def request_metadata(run_manager: Any) -> RequestMetadata | None:
    """For a chat model's ``_generate``: the SAGA metadata of this call, found through the
    SAGA handler among ``run_manager.handlers`` (None when no SAGA handler is attached)."""
    if run_manager is None:
        return None
    for handler in getattr(run_manager, "handlers", None) or []:
        tracker = getattr(handler, "saga", None)
        if isinstance(tracker, LangChainTracker):
            return tracker.metadata_for(run_manager.run_id)
    return None
