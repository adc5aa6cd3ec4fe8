"""The session model shared by the sync and async engines: what an agent task has told so far,
and the vLLM request each of its calls becomes.

An agent framework knows which calls belong to one task, which tool a call ends in and how long
that tool took; :class:`_SessionState` records them as the agent runs (``call`` →
``tool_started`` → ``tool_finished`` → ``call`` ...) and builds each call's request with
SAGA's metadata attached (``SamplingParams.extra_args["saga"]``), the tenant as its
``cache_salt``. It holds no engine, so the two front ends in :mod:`saga.vllm.engine` cannot drift
apart in what they send.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from saga.aeg.steps import LLMStep, Step, ToolStep, llm_node_id
from saga.policy.errors import SagaError
from saga.vllm.metadata import SagaRequestMeta, saga_extra_args

Clock = Callable[[], float]


class SagaSessionError(SagaError, RuntimeError):
    """A session was used out of order (a call while a tool runs, a call after the final one,
    a tool finished that never started); the message says which and what to do instead."""


@dataclass(frozen=True)
class CallResult:
    """What one LLM call returned and what it cost.

    ``num_cached_tokens`` is vLLM's count of prompt tokens served from the prefix cache; the
    rest of the prompt was (re)computed. ``latency_s`` runs from submission to the final
    output on the engine's clock (queueing included).
    """

    output_token_ids: list[int]
    num_cached_tokens: int
    prompt_tokens: int
    latency_s: float

    @property
    def recomputed_tokens(self) -> int:
        """Prompt tokens prefilled by this call (not served from the prefix cache)."""
        return max(0, self.prompt_tokens - self.num_cached_tokens)


class _SessionState:
    """The per-session facts the metadata is built from; shared by the sync and async sessions.

    Holds no engine: it builds the (prompt, sampling params) pair for a call and records the
    call's result, so the two front ends cannot drift apart in what metadata they send.
    """

    def __init__(self, session_id: str, agent_type: str, tenant: str,
                 deadline_at: float | None, clock: Clock) -> None:
        if not agent_type:
            raise SagaSessionError("agent_type must be a non-empty str (e.g. 'swe-bench')")
        if not tenant:
            raise SagaSessionError("tenant must be a non-empty str (it salts the prefix cache)")
        self.session_id = session_id
        self.agent_type = agent_type
        self.tenant = tenant
        self.deadline_at = deadline_at
        self._clock = clock
        self._previous: Step | None = None
        self._tool: str | None = None
        self._tool_started_at = 0.0
        self._tool_latency: float | None = None
        self._in_flight = False
        self._finished = False
        self._pending_tokens: list[int] = []
        self._context: list[int] = []
        self.calls = 0

    @property
    def finished(self) -> bool:
        """True once a call with ``final=True`` was made: the task is over."""
        return self._finished

    @property
    def aeg_node(self) -> str:
        """AEG node id of the session's next call (``llm@start``, ``llm@tool:<name>``, ...)."""
        return llm_node_id(self._previous)

    def tool_started(self, name: str) -> None:
        """A tool call began (the clock starts): its duration trains the TTL's latency model."""
        if not name:
            raise SagaSessionError("tool_started needs the tool's name, got ''")
        if self._tool is not None:
            raise SagaSessionError(
                f"session {self.session_id}: tool {self._tool!r} is still running; call "
                "tool_finished() before starting another tool")
        if self._finished:
            raise SagaSessionError(f"session {self.session_id} is finished (its final call ran)")
        self._tool = name
        self._tool_started_at = self._clock()

    def tool_finished(self) -> float:
        """The running tool ended; returns its duration, which the next call reports."""
        if self._tool is None:
            raise SagaSessionError(
                f"session {self.session_id}: tool_finished() without tool_started(name)")
        duration = max(0.0, self._clock() - self._tool_started_at)
        self._previous = ToolStep(self._tool, duration if duration > 0 else None)
        self._tool = None
        self._tool_latency = duration
        return duration

    @contextmanager
    def tool(self, name: str) -> Iterator[None]:
        """``with session.tool("pytest"): run_it()`` — tool_started/tool_finished around a block."""
        self.tool_started(name)
        try:
            yield
        finally:
            self.tool_finished()

    def meta(self, *, pending_tool: str | None, final: bool) -> SagaRequestMeta:
        """Metadata of the session's next call.

        ``deadline_s`` travels as the seconds left until the task's deadline, so the scheduler
        never has to share this process's clock (its engine core may run elsewhere).
        """
        left = None if self.deadline_at is None else self.deadline_at - self._clock()
        return SagaRequestMeta(
            session_id=self.session_id, tenant_id=self.tenant, agent_type=self.agent_type,
            aeg_node=self.aeg_node, pending_tool=None if final else pending_tool,
            tool_latency_s=self._tool_latency, final=final, deadline_s=left)

    def begin_call(self, prompt_token_ids: Sequence[int], max_tokens: int,
                   pending_tool: str | None, final: bool) -> tuple[str, Any, Any]:
        """Check the call is legal now and build ``(request_id, prompt, sampling_params)``."""
        if self._finished:
            raise SagaSessionError(
                f"session {self.session_id} is finished (its final call ran); start a new one")
        if self._tool is not None:
            raise SagaSessionError(
                f"session {self.session_id}: tool {self._tool!r} is still running; call "
                "tool_finished() before the next LLM call")
        if self._in_flight:
            raise SagaSessionError(
                f"session {self.session_id}: a call is already in flight; an agent session "
                "makes one call at a time")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise SagaSessionError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        tokens = [int(t) for t in prompt_token_ids]
        if not tokens:
            raise SagaSessionError("prompt_token_ids must hold at least one token id")
        meta = self.meta(pending_tool=pending_tool, final=final)
        request_id = f"{self.session_id}:{self.calls}"
        prompt, params = _build_request(tokens, max_tokens, meta)
        self._in_flight = True
        self._pending_tokens = tokens
        return request_id, prompt, params

    def prefetch_request(self) -> tuple[str, Any, Any]:
        """``(request_id, prompt, sampling_params)`` of a prefetch: the session's context so far
        (last prompt and its output), one output token, ``prefetch`` metadata for its tool."""
        if self._tool is None:
            raise SagaSessionError(
                f"session {self.session_id}: prefetch is for a session waiting on a tool; "
                "call it between tool_started() and tool_finished()")
        if not self._context:
            raise SagaSessionError(
                f"session {self.session_id}: nothing to prefetch before the first call")
        meta = SagaRequestMeta(
            session_id=self.session_id, tenant_id=self.tenant, agent_type=self.agent_type,
            aeg_node=self.aeg_node, pending_tool=self._tool, prefetch=True)
        prompt, params = _build_request(list(self._context), 1, meta)
        return f"{self.session_id}:{self.calls}:prefetch", prompt, params

    def close(self) -> bool:
        """Mark the task over without a final call (a running tool is abandoned); True when
        the engine still has to be told (no final call ran and the session was not closed)."""
        if self._in_flight:
            raise SagaSessionError(
                f"session {self.session_id}: a call is in flight; end the session after it "
                "returns")
        was_open = not self._finished
        self._finished = True
        self._tool = None
        return was_open

    def end_call(self, result: CallResult | None, *, final: bool) -> None:
        """Record the call's outcome (None: it failed, the session may retry)."""
        self._in_flight = False
        if result is None:
            return
        self.calls += 1
        self._context = self._pending_tokens + list(result.output_token_ids)
        self._previous = LLMStep(result.prompt_tokens, len(result.output_token_ids))
        self._tool_latency = None
        if final:
            self._finished = True


def _build_request(tokens: list[int], max_tokens: int, meta: SagaRequestMeta
                   ) -> tuple[dict[str, Any], Any]:
    """The vLLM prompt (token ids salted by tenant) and greedy sampling params carrying ``meta``.

    Greedy decoding with ``ignore_eos`` makes every call produce exactly ``max_tokens`` tokens,
    so two engines given the same workload do the same work.
    """
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    prompt: dict[str, Any] = {"prompt_token_ids": tokens, "cache_salt": meta.tenant_id}
    params = SamplingParams(
        max_tokens=max_tokens, temperature=0.0, ignore_eos=True, detokenize=False,
        output_kind=RequestOutputKind.FINAL_ONLY, extra_args=saga_extra_args(meta))
    return prompt, params


def _end_request(session_id: str, tenant: str) -> tuple[dict[str, Any], Any]:
    """A one-token ``final`` call of ``session_id``: for an engine core in another process,
    the only way to reach its scheduler; scheduling it releases the session's pin and its
    finishing closes the session's bookkeeping."""
    return _build_request([0], 1, SagaRequestMeta(session_id=session_id, tenant_id=tenant,
                                                  final=True))


def _result(output: Any, latency_s: float) -> CallResult:
    """A :class:`CallResult` from vLLM's final ``RequestOutput``."""
    prompt_ids = output.prompt_token_ids or []
    completion = output.outputs[0] if output.outputs else None
    return CallResult(
        output_token_ids=list(completion.token_ids) if completion is not None else [],
        num_cached_tokens=int(output.num_cached_tokens or 0),
        prompt_tokens=len(prompt_ids),
        latency_s=latency_s,
    )


_session_counter = itertools.count()


def _new_session_id(agent_type: str) -> str:
    return f"{agent_type}-{next(_session_counter)}"


def _deadline(clock: Clock, deadline_s: float | None) -> float | None:
    """A relative deadline as an absolute time on the engine's clock (what AFS compares)."""
    if deadline_s is None:
        return None
    if not deadline_s > 0:
        raise SagaSessionError(f"deadline_s must be > 0 seconds from now, got {deadline_s!r}")
    return clock() + float(deadline_s)


__all__ = ["CallResult", "Clock", "SagaSessionError"]
