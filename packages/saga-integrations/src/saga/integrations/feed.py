"""Where the adapters deliver what they see: hints at admission, finished tasks to inference.

One `WorkflowFeed` serves any number of adapters (LangChain, AutoGen, CrewAI side by side):
it registers each agent type's `WorkflowHint` when its first session is admitted, hands every
finished task's steps to saga-aeg's `PatternInference`, and answers the engine's question for
the next call — which AEG node is this, and which tool will it probably end in. Adapters may
call it from framework threads (CrewAI's event bus, LangChain's executors): a lock guards it.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from saga.aeg.errors import AEGError
from saga.aeg.graph import ParallelNode, ToolNode
from saga.aeg.hints import PLACEHOLDER_TOOL, WorkflowHint
from saga.aeg.inference import PatternInference
from saga.integrations.errors import IntegrationError
from saga.integrations.metadata import RequestMetadata
from saga.integrations.session import SessionTrace

__all__ = [
    "SessionEndHook",
    "SessionListener",
    "WorkflowFeed",
    "anotify_end",
    "end_hooks",
    "notify_end",
]

log = logging.getLogger(__name__)

SessionListener = Callable[[SessionTrace], None]

SessionEndHook = Callable[[str], object]
"""Told a session's id once its task ended, when its last call was not sent as ``final``:
``SagaEngine.end_session`` (the engine releases the session's pinned KV at once),
``AsyncSagaEngine.end_session`` or ``CoordinatorClient.end_session``. It may return an
awaitable (an async hook), which is awaited, or run on the thread's event loop."""

EndHooks = SessionEndHook | Sequence[SessionEndHook] | None
_BACKGROUND: set[asyncio.Task[object]] = set()


def end_hooks(hooks: EndHooks) -> tuple[SessionEndHook, ...]:
    """``hooks`` as a tuple (one callable, several, or None), each checked to be callable."""
    out = () if hooks is None else (hooks,) if callable(hooks) else tuple(hooks)
    for h in out:
        if not callable(h):
            raise IntegrationError(f"on_end takes callables (session_id) -> None, got {h!r}")
    return out


def _fire(hooks: Sequence[SessionEndHook], session: SessionTrace) -> list[Awaitable[object]]:
    """Call each hook unless the engine already knows (the last call was sent as final).
    A failing hook is logged, never raised into the framework's run: the pin still expires
    by its TTL."""
    calls = session.llm_calls
    if not hooks or (calls and calls[-1].metadata is not None and calls[-1].metadata.final):
        return []
    pending: list[Awaitable[object]] = []
    for hook in hooks:
        try:
            result = hook(session.session_id)
        except Exception:
            log.warning("session-end hook %r failed for %s", hook, session.session_id,
                        exc_info=True)
            continue
        if inspect.isawaitable(result):
            pending.append(result)
    return pending


async def _guarded(aw: Awaitable[object], session_id: str) -> object:
    try:
        return await aw
    except Exception:
        log.warning("session-end hook failed for %s", session_id, exc_info=True)
        return None


def notify_end(hooks: Sequence[SessionEndHook], session: SessionTrace) -> None:
    """Tell ``hooks`` that ``session`` ended, from synchronous code: an async hook runs as a
    task of this thread's event loop when one runs, else to completion here."""
    for aw in _fire(hooks, session):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(_guarded(aw, session.session_id))
            continue
        task = loop.create_task(_guarded(aw, session.session_id))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)


async def anotify_end(hooks: Sequence[SessionEndHook], session: SessionTrace) -> None:
    """Tell ``hooks`` that ``session`` ended, awaiting async hooks."""
    for aw in _fire(hooks, session):
        await _guarded(aw, session.session_id)

DEFAULT_KEEP = 1000
"""Finished sessions kept for inspection (the counts in inference keep everything)."""


@dataclass(eq=False)
class WorkflowFeed:
    """Hints and observations from framework adapters, into one `PatternInference`.

    Only tasks that finished are learnt from: a task that raised stopped at an arbitrary step,
    and its truncated path would teach the graph an edge to ``end`` that the agent never takes.
    """

    inference: PatternInference = field(default_factory=PatternInference)
    keep: int = DEFAULT_KEEP
    _finished: deque[SessionTrace] = field(init=False, repr=False)
    _active: dict[str, SessionTrace] = field(init=False, default_factory=dict, repr=False)
    _listeners: list[SessionListener] = field(init=False, default_factory=list, repr=False)
    _lock: threading.RLock = field(init=False, default_factory=threading.RLock, repr=False)
    _ids: itertools.count[int] = field(init=False, default_factory=itertools.count, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.inference, PatternInference):
            raise IntegrationError("WorkflowFeed.inference must be a saga.aeg PatternInference, "
                                   f"got {type(self.inference).__name__}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise IntegrationError(f"WorkflowFeed.keep must be an int >= 1, got {self.keep!r}")
        self._finished = deque(maxlen=self.keep)

    # --- admission ----------------------------------------------------------------------
    def admit(self, hint: WorkflowHint) -> None:
        """Register ``hint`` as its agent type's prior, unless an equal hint already is."""
        if not isinstance(hint, WorkflowHint):
            raise IntegrationError(f"admit expects a saga.aeg WorkflowHint, got "
                                   f"{type(hint).__name__}")
        with self._lock:
            if self.inference.hint(hint.agent_type) != hint:
                self.inference.register_hint(hint)

    def start_session(self, agent_type: str, framework: str, t: float, *,
                      tenant_id: str = "default", session_id: str | None = None,
                      hint: WorkflowHint | None = None) -> SessionTrace:
        """Open a task of ``agent_type`` (admitting ``hint`` first, when given)."""
        if hint is not None:
            if hint.agent_type != agent_type:
                raise IntegrationError(f"hint.agent_type {hint.agent_type!r} does not match the "
                                       f"session's agent_type {agent_type!r}")
            self.admit(hint)
        with self._lock:
            sid = session_id or f"{framework}:{agent_type}:{next(self._ids)}"
            if sid in self._active:
                raise IntegrationError(f"session {sid!r} is already running; give each task its "
                                       "own session_id")
            session = SessionTrace(sid, agent_type, framework, tenant_id, started_at=t)
            self._active[sid] = session
            return session

    def finish_session(self, session: SessionTrace, t: float, *, failed: bool = False) -> None:
        """Close ``session``; a finished task with steps goes to pattern inference."""
        with self._lock:
            if self._active.pop(session.session_id, None) is None:
                return  # already closed
            session.finish(t, failed=failed)
            if session.outcome == "finished" and session.calls:
                self.inference.observe(session.agent_type, session.steps())
            self._finished.append(session)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(session)

    def subscribe(self, listener: SessionListener) -> None:
        """Call ``listener(session)`` after each session closes."""
        with self._lock:
            self._listeners.append(listener)

    # --- state --------------------------------------------------------------------------
    @property
    def sessions(self) -> list[SessionTrace]:
        """Closed sessions, oldest first (at most ``keep``)."""
        with self._lock:
            return list(self._finished)

    @property
    def active_sessions(self) -> list[SessionTrace]:
        """Sessions still running."""
        with self._lock:
            return list(self._active.values())

    # --- what the engine is told --------------------------------------------------------
    def predict_pending_tool(self, agent_type: str, node: str) -> str | None:
        """The tool a call at ``node`` most probably ends in, by the agent type's current AEG
        (None when its likeliest successor is not a tool, is the generic prior's unnamed
        placeholder tool, or the node is new). When it most probably fans out, the fan-out's
        slowest tool branch: the session's next call waits for it."""
        with self._lock:
            aeg = self.inference.aeg_for(agent_type)
            try:
                successors = aeg.successors(node)
            except AEGError:
                return None
            if not successors:
                return None
            best = max(successors, key=lambda s: (s[1], s[0]))[0]
            target = aeg.node(best)
            if isinstance(target, ParallelNode):
                slowest = target.slowest()
                return slowest.name if slowest.kind == "tool" else None
            if isinstance(target, ToolNode) and target.tool != PLACEHOLDER_TOOL:
                return target.tool
            return None

    def metadata(self, session: SessionTrace, *, final: bool = False) -> RequestMetadata:
        """Metadata of ``session``'s next LLM call: its AEG node, the tool it will probably end
        in, and the latency of the tool that just ran."""
        node = session.next_llm_node()
        pending = None if final else self.predict_pending_tool(session.agent_type, node)
        latency = session.last_tool_latency()
        return RequestMetadata(
            session_id=session.session_id, tenant_id=session.tenant_id,
            agent_type=session.agent_type, aeg_node=node, pending_tool=pending,
            tool_latency_s=latency, final=final)
