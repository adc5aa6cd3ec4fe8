"""Per-session state of :class:`~saga.vllm.scheduler.SagaScheduler`: workflow hints, AFS tasks,
task ends, and the sizes of every per-session table (what a soak test checks for leaks).

A session is one agent task. Its calls carry :class:`~saga.vllm.metadata.SagaRequestMeta`; from
them the scheduler learns the agent type's AEG (pattern inference over finished tasks), predicts
how likely a finished call's KV is reused and how many steps away its next LLM call is (the hints
WA-LRU and KVFlow rank by), and keeps the queue's and AFS's view of the task. A task ends with a
``final`` call or :meth:`TaskTrackingMixin.end_session`; both drop every per-session entry.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from saga.policy.afs import AFS
from saga.policy.eviction.walru import UNKNOWN_REUSE
from saga.policy.pins import Pin, PinTable, ReleaseReason
from saga.policy.workflow import SessionHinter
from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.metadata import SagaRequestMeta
from saga.vllm.request_queue import SagaRequestQueue


class TaskTrackingMixin:
    """The session half of :class:`~saga.vllm.scheduler.SagaScheduler`."""

    saga_config: SagaSchedulerConfig
    hinter: SessionHinter
    afs: AFS | None
    saga_queue: SagaRequestQueue | None
    pins: PinTable
    requests: Any
    waiting: Any
    running: Any
    _preempted: dict[str, int]

    def _init_session_state(self) -> None:
        self._meta: dict[str, SagaRequestMeta | None] = {}
        self._session_steps: dict[str, int] = {}
        self._last_tool: dict[str, str] = {}
        self._afs_sessions: set[str] = set()
        self._agent_of: dict[str, str] = {}  # session -> agent type (pattern inference)
        self._ending: set[str] = set()  # ended sessions with a call still in flight
        self._task_start: dict[str, float] = {}  # session -> its first call's arrival
        self._started_at: dict[str, float] = {}  # request id -> its first step (queue service)

    if TYPE_CHECKING:  # the host scheduler's (only declared here, so the MRO finds the real ones)
        def _now(self) -> float: ...

        def _release(self, pin: Pin | None, reason: ReleaseReason) -> None: ...

        def _sync_gauges(self) -> None: ...

        def _next_use_ended(self, session_id: str) -> None: ...

    # -- workflow hints ----------------------------------------------------------------------------
    def _reuse_prob(self, meta: SagaRequestMeta | None) -> float:
        """P_reuse of a finished call's blocks: the caller's value, else the workflow's.

        With an agent type, the AEG that pattern inference learned for it (a generic prior
        during the cold start) gives ``p_reuse`` at the pending tool's node (the spec's formula
        in saga-aeg); without one, a pending tool means the session is expected back.
        """
        if meta is None:
            return UNKNOWN_REUSE
        if meta.reuse_prob is not None:
            return meta.reuse_prob
        if meta.final:
            return 0.0
        if meta.pending_tool is not None:
            if meta.agent_type is not None:
                return self.hinter.hint(meta.agent_type, meta.pending_tool).reuse_prob
            return self.saga_config.pending_tool_reuse
        return UNKNOWN_REUSE

    def _steps_to_exec(self, meta: SagaRequestMeta | None) -> float:
        """KVFlow's hint for a finished call's blocks: steps until the session's next LLM call
        (the AEG's expectation with an agent type; one step — the tool — without one; never
        after the final call; unknown for a plain request)."""
        if meta is None:
            return math.nan
        if meta.final:
            return math.inf
        if meta.pending_tool is not None:
            if meta.agent_type is not None:
                return self.hinter.hint(meta.agent_type, meta.pending_tool).steps_to_exec
            return 1.0
        return math.nan

    def _observe_workflow(self, request: Any, meta: SagaRequestMeta) -> None:
        """Feed pattern inference: this call, its pending tool, and the task's end."""
        if meta.agent_type is None:
            return
        self.hinter.observe_call(meta.session_id, int(request.num_prompt_tokens),
                                 int(request.num_output_tokens), meta.pending_tool)
        if meta.final:
            self._agent_of.pop(meta.session_id, None)
            self.hinter.finish(meta.session_id, meta.agent_type)
        else:
            self._agent_of[meta.session_id] = meta.agent_type

    # -- AFS ---------------------------------------------------------------------------------------
    def _afs_track(self, request: Any, meta: SagaRequestMeta | None) -> None:
        assert self.afs is not None
        session = meta.session_id if meta is not None else request.request_id
        max_tokens = request.max_tokens if request.max_tokens is not None else 0
        call_work = float(request.num_prompt_tokens + max_tokens)
        if session not in self._afs_sessions:
            deadline = math.inf
            if meta is not None and meta.deadline_s is not None:
                deadline = self._now() + meta.deadline_s
            self.afs.add_task(session, meta.tenant_id if meta else "default", call_work,
                              deadline)
            self._afs_sessions.add(session)
        else:
            task = self.afs.task(session)
            self.afs.update_estimate(session, task.service + call_work)

    # -- task ends ---------------------------------------------------------------------------------
    def _task_bookkeeping(self, request: Any, meta: SagaRequestMeta | None) -> None:
        session = meta.session_id if meta is not None else request.request_id
        if meta is None or meta.final:
            self._close_task(session)
        if meta is not None and meta.final:
            self._session_steps.pop(session, None)
            self._last_tool.pop(session, None)

    def _close_task(self, session: str) -> None:
        """The task's queue slot, AFS entry and start time go."""
        if self.saga_queue is not None:
            self.saga_queue.on_task_done(session)
        if self.afs is not None and session in self._afs_sessions:
            self.afs.finish(session)
            self._afs_sessions.discard(session)
        self._task_start.pop(session, None)

    def end_session(self, session_id: str) -> bool:
        """The session's task is over (its agent framework said so after the last call was
        sent): release its pin at once — the tool it was pinned for will never run — and drop
        its per-session state, learning the task's workflow without that phantom tool. A call
        of the session still in flight is treated as its final call. Returns whether a pin was
        released. Idempotent; call it from the thread that steps the engine.
        """
        pin = self.pins.pop(session_id)
        self._release(pin, ReleaseReason.ENDED)
        self._sync_gauges()
        if any(m is not None and m.session_id == session_id and not m.prefetch
               for m in self._meta.values()):
            self._ending.add(session_id)  # closed when that call finishes
            return pin is not None
        self._close_task(session_id)
        self._session_steps.pop(session_id, None)
        self._last_tool.pop(session_id, None)
        self._next_use_ended(session_id)
        agent_type = self._agent_of.pop(session_id, None)
        if agent_type is not None:
            # The pending tool the last call was expected to end in never ran.
            self.hinter.finish(session_id, agent_type, pending_tool_ran=False)
        return pin is not None

    def session_tables(self) -> dict[str, int]:
        """Sizes of every per-session and per-request structure of this scheduler: all zero
        on an idle engine whose sessions ended (what a soak test checks for leaks)."""
        queue = self.saga_queue
        return {
            "pins": len(self.pins),
            "pin_heap": self.pins.heap_size,
            "pinned_blocks": self.pins.pinned_blocks,
            "requests": len(self.requests),
            "request_meta": len(self._meta),
            "preempted": len(self._preempted),
            "session_steps": len(self._session_steps),
            "last_tool": len(self._last_tool),
            "agent_of": len(self._agent_of),
            "ending": len(self._ending),
            "afs_sessions": len(self._afs_sessions),
            "task_start": len(self._task_start),
            "in_service": len(self._started_at),
            "hinter_sessions": len(self.hinter.active_sessions()),
            "waiting": len(self.waiting),
            "running": len(self.running),
            "queue_sessions": queue.session_count() if queue is not None else 0,
            "queue_served": queue.served_count() if queue is not None else 0,
            "queue_active_tasks": queue.active_task_count() if queue is not None else 0,
        }


__all__ = ["TaskTrackingMixin"]
